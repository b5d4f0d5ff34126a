"""Starting a sleeve forwarder as a process inside a named network namespace (the lab
tests and the bench), and reading what it costs: the argv, the readiness wait (its
stats file appears once the TUN is up) and its CPU time from /proc.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class SleeveSpec:
    """One end of a sleeve: its namespace, TUN, inner address, underlay address and
    the peers and routes it is given (peer name -> underlay address, prefix -> peer)."""

    netns: str
    name: str
    tun: str
    address: str
    listen: str
    peers: dict[str, str] = field(default_factory=dict)
    routes: dict[str, str] = field(default_factory=dict)
    secret_file: str | None = None
    queues: int = 1
    offload: bool = True
    udp_gso: bool = True
    threads_per_queue: int = 1
    mtu: int | None = None


def forwarder_argv(spec: SleeveSpec, stats_file: str) -> list[str]:
    """nsenter execs the interpreter itself: the PID the caller records is the
    forwarder's."""
    argv = ["nsenter", f"--net={NETNS_DIR / spec.netns}", "--", sys.executable]
    argv += ["-m", "podnet.fabric.sleeve.forwarder", "--tun", spec.tun]
    argv += ["--address", spec.address, "--listen", spec.listen, "--name", spec.name]
    argv += [f"--peer={name}={where}" for name, where in spec.peers.items()]
    argv += [f"--route={prefix}={peer}" for prefix, peer in spec.routes.items()]
    argv += ["--stats", stats_file, "--queues", str(spec.queues)]
    argv += ["--threads-per-queue", str(spec.threads_per_queue)]
    if spec.secret_file:
        argv += ["--secret-file", spec.secret_file]
    if not spec.offload:
        argv.append("--no-offload")
    if not spec.udp_gso:
        argv.append("--no-udp-gso")
    if spec.mtu:
        argv += ["--mtu", str(spec.mtu)]
    return argv


def child_env() -> dict[str, str]:
    """The environment with this checkout's src/ importable."""
    src = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def wait_ready(stats_file: str, proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(stats_file):
        if proc.poll() is not None:
            raise RuntimeError(f"sleeve forwarder exited with {proc.returncode} before it was up")
        if time.monotonic() > deadline:
            raise TimeoutError(f"sleeve forwarder: {stats_file} did not appear in {timeout}s")
        time.sleep(0.02)


def read_stats(stats_file: str) -> dict[str, int]:
    with open(stats_file) as handle:
        return json.load(handle)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
