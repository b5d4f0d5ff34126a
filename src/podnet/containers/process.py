"""The container's process: the argv that enters its namespaces, the foreground tee,
and stopping a process known only by its "pid:starttime" owner tag.

`nsenter --net=PATH` (not `ip netns exec`, which remounts /sys and gives the command
a private mount namespace), then `unshare --uts --mount` and runtime/init.py, which
makes the mounts, sets the hostname and execs CMD. Neither nsenter nor unshare forks
here, so the pid the caller sees *is* the container's process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import BinaryIO

from podnet.containers.files import ContainerFiles
from podnet.procs import owner_alive

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def launch_argv(netns: str | None, hostname: str, files: ContainerFiles, cmd: Sequence[str],
                own_netns: bool) -> list[str]:
    """`own_netns`: the container has a namespace of its own (bridge, none), so
    /sys is remounted to show its interfaces rather than the host's."""
    enter = ["nsenter", f"--net={netns}", "--"] if netns else []
    init = [sys.executable, "-I", "-m", "podnet.runtime.init", "--hostname", hostname,
            "--resolv", str(files.resolv), "--hosts", str(files.hosts)]
    if own_netns:
        init.append("--sysfs")
    return [*enter, "unshare", "--uts", "--mount", "--propagation", "private", "--",
            *init, "--", *cmd]


def exec_argv(pid: int, cmd: Sequence[str]) -> list[str]:
    """Into a running container's network, UTS and mount namespaces (by its pid)."""
    return ["nsenter", f"--target={pid}", "--net", "--uts", "--mount", "--", *cmd]


def container_env(hostname: str, extra: dict[str, str]) -> dict[str, str]:
    """A small, predictable environment (the host's is not the container's)."""
    env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "HOSTNAME": hostname, "HOME": "/root"}
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    env.update(extra)
    return env


class Tee:
    """Copy a child's stdout and stderr to ours (optionally) and to its log file."""

    def __init__(self, proc: subprocess.Popen, log: BinaryIO, echo: bool) -> None:
        self.log = log
        self.lock = threading.Lock()
        streams = [(proc.stdout, sys.stdout.buffer if echo else None),
                   (proc.stderr, sys.stderr.buffer if echo else None)]
        self.threads = [threading.Thread(target=self._copy, args=pair, daemon=True) for pair in streams]
        for thread in self.threads:
            thread.start()

    def _copy(self, source: BinaryIO | None, sink: BinaryIO | None) -> None:
        if source is None:
            return
        while chunk := os.read(source.fileno(), 65536):
            with self.lock:
                self.log.write(chunk)
                self.log.flush()
            if sink is not None:
                try:
                    sink.write(chunk)
                    sink.flush()
                except OSError:  # our reader went away: keep draining into the log
                    sink = None

    def join(self, timeout: float = 5.0) -> None:
        for thread in self.threads:
            thread.join(timeout)


class ForwardSignals:
    """While the CLI waits on a foreground container, ^C and SIGTERM go to it (as
    `docker run` does); the container decides when to exit, the CLI then cleans up.
    An interactive container shares our process group, so the terminal already
    delivers its ^C: forwarding SIGINT too would deliver it twice."""

    def __init__(self, proc: subprocess.Popen, interactive: bool = False) -> None:
        self.proc = proc
        self.signals = [signal.SIGTERM, signal.SIGHUP] + ([] if interactive else [signal.SIGINT])
        self.saved: dict[int, object] = {}

    def __enter__(self) -> ForwardSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self.saved[sig] = signal.signal(sig, lambda num, _frame: self.proc.send_signal(num))
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def send_signal(owner: str | None, signum: int) -> bool:
    """Signal the process named by "pid:starttime" if it is still that process."""
    if not owner or not owner_alive(owner):
        return False
    try:
        os.kill(int(owner.split(":")[0]), signum)
    except ProcessLookupError:
        return False
    return True


def wait_gone(owner: str | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while owner and owner_alive(owner):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(owner: str | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; returns once it is gone (a
    zombie whose parent has yet to reap it counts as gone)."""
    if send_signal(owner, signal.SIGTERM) and not wait_gone(owner, timeout):
        send_signal(owner, signal.SIGKILL)
        wait_gone(owner, 10.0)
