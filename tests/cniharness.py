"""Drive the installed podnet executables exactly as a runtime does, inside namespaces
the test created. Shared by the namespace, interop and concurrency tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podnet.kernel.gso import GsoLimits
from podnet.kernel.gso import read as read_gso
from podnet.kernel.rtnl import RtnlSocket
from podnet.lab.sandbox import Sandbox, wait_for_path
from podnet.naming import is_tombstone
from podnet.runtime.libcni import PluginResult, invoke

REFERENCE_DIR = "/usr/lib/cni"


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (creates network namespaces)")
    if not shutil.which("nft"):
        pytest.skip("nft is not installed")


@dataclass
class Agent:
    """A `podnet agent` process inside a namespace, stopped by PID."""

    sandbox: Sandbox
    ns: str | None
    socket: str
    store: str
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def start(self) -> Agent:
        # A socket file left by an agent that had to be SIGKILLed (a stop slower than its
        # grace on a loaded machine) would pass wait_for_path at once: this agent would be
        # "started", and stopped, before it had even logged (an empty log, seen once).
        Path(self.socket).unlink(missing_ok=True)
        argv = [sys.executable, "-m", "podnet.cli", "agent", "--socket", self.socket, "--store", self.store,
                "--init"]  # a test's store is new: the agent makes a missing --store only when told
        self.proc = self.sandbox.spawn(
            self.ns, argv, env={**os.environ, **self.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        wait_for_path(self.socket, timeout=20, proc=self.proc)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.sandbox.processes.remove(self.proc)
        Path(self.socket).unlink(missing_ok=True)

    def stop(self) -> str:
        """Stop gracefully; return its log."""
        assert self.proc is not None
        self.sandbox.stop(self.proc)
        return self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""


@dataclass
class Cni:
    """One network: its config, the bin dir, and the namespace the runtime runs in."""

    bin_dir: str
    host_ns: str
    config: dict
    sandbox: Sandbox

    @property
    def path(self) -> list[str]:
        return [self.bin_dir, REFERENCE_DIR]

    def call(
        self,
        command: str,
        container_ns: str | None = None,
        cid: str = "c1",
        ifname: str = "eth0",
        config: dict | None = None,
        plugin: str | None = None,
        netns_path: str | None = None,
        args: str = "",
        env: dict | None = None,
    ) -> PluginResult:
        conf = config if config is not None else self.config
        plugin_type = plugin or conf["type"]
        binary = os.path.join(self.bin_dir, plugin_type)
        if not os.path.exists(binary):
            binary = os.path.join(REFERENCE_DIR, plugin_type)
        netns = netns_path if netns_path is not None else (Sandbox.path(container_ns) if container_ns else "")
        return invoke(
            binary, command, conf, container_id=cid if command in ("ADD", "DEL", "CHECK") else "",
            netns=netns, ifname=ifname if command in ("ADD", "DEL", "CHECK") else "",
            cni_path=self.path, netns_exec=self.host_ns, args=args, extra_env=env,
        )

    def add(self, container_ns: str, cid: str = "c1", **kw) -> dict:
        result = self.call("ADD", container_ns, cid, **kw)
        assert result.ok, result.output or result.stderr
        return result.output

    def delete(self, container_ns: str | None, cid: str = "c1", **kw) -> None:
        result = self.call("DEL", container_ns, cid, **kw)
        assert result.ok, result.output or result.stderr

    def in_ns(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.sandbox.exec(ns, list(argv), check=check)


def bridge_config(
    name: str, data_dir: str, subnet: str = "10.80.0.0/24", bridge: str = "pntbr0", **extra
) -> dict:
    return {
        "cniVersion": "1.1.0",
        "name": name,
        "type": "podnet",
        "bridge": bridge,
        "isDefaultGateway": True,
        "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir},
        **extra,
    }


def links(sandbox: Sandbox, ns: str, kind: str = "veth", settle: float = 5.0) -> list[str]:
    """The links of `kind` in `ns`, once the veth pairs an agent's DEL retired are
    deleted (kernel/tombstone.py: its reaper does so just after DEL); a tombstone
    still there after `settle` seconds is listed, and fails the test's comparison."""
    deadline = time.monotonic() + settle
    while True:
        out = sandbox.exec(ns, ["ip", "-j", "link", "show", "type", kind]).stdout
        names = [link["ifname"] for link in json.loads(out or "[]")]
        if not any(is_tombstone(name) for name in names) or time.monotonic() > deadline:
            return names
        time.sleep(0.05)


def nft_rules(sandbox: Sandbox, ns: str) -> str:
    return sandbox.exec(ns, ["nft", "list", "ruleset"]).stdout


def reservations(data_dir: str, network: str) -> list:
    from podnet.ipam.service import IpamService
    from podnet.store import open_store

    store = open_store(os.path.join(data_dir, "podnet.db"))
    try:
        return IpamService(store).reservations(network)
    finally:
        store.close()


def tcp_probe(sandbox: Sandbox, ns: str, host: str, port: int, timeout: float = 3) -> str | None:
    """Connect from `ns` and return the first line the server sends (None on failure)."""
    code = (
        "import socket,sys\n"
        "s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))\n"
        "s.sendall(b'ping\\n'); print(s.recv(100).decode().strip())"
    )
    proc = sandbox.exec(ns, [sys.executable, "-c", code, host, str(port), str(timeout)], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


ECHO_SERVER = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    c,a=s.accept(); c.recv(100); c.sendall(('hello from '+sys.argv[3]+'\\n').encode()); c.close()\n"
)


def start_echo(sandbox: Sandbox, ns: str, port: int, label: str, bind: str = "0.0.0.0") -> subprocess.Popen:
    proc = sandbox.spawn(ns, [sys.executable, "-c", ECHO_SERVER, bind, str(port), label],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "ready" in line, line
    return proc


def gso_of(ns: str, ifname: str) -> GsoLimits:
    """The GSO limits of `ifname` in namespace `ns`, read with podnet's own netlink."""
    fd = os.open(Sandbox.path(ns), os.O_RDONLY)
    try:
        with RtnlSocket(fd) as sock:
            index = sock.link_index(ifname)
            assert index is not None, f"{ifname} missing in {ns}"
            found = read_gso(sock, index)
            assert found is not None
            return found[0]
    finally:
        os.close(fd)


def podnet_cli(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    """`podnet ARGS` as a user runs it; with `check`, a failure shows its output."""
    proc = subprocess.run([sys.executable, "-m", "podnet.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podnet {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def bird_routes(netns: str) -> dict[str, str]:
    """What BIRD installed in a namespace's kernel (`proto bird`): prefix -> next hop,
    or "blackhole" for the node's own blocks."""
    out = subprocess.run(["ip", "-n", netns, "-4", "route", "show", "proto", "bird"], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    routes = {}
    for line in out.splitlines():
        words = line.split()
        if words[:1] == ["blackhole"]:
            routes[words[1]] = "blackhole"
        elif "via" in words:
            routes[words[0]] = words[words.index("via") + 1]
    return routes


@contextlib.contextmanager
def topology_lab(prefix: str, topology: dict, workdir: Path, *flags: str) -> Iterator[dict]:
    """`lab up -f` of `topology` under a fresh name `<prefix><hex>`; the lab's state;
    always `lab down` (the bgp lab tests: BIRD must be there)."""
    import secrets

    import yaml

    from podnet.lab.state import state_file

    if not shutil.which("bird") and "bgp" in flags:
        pytest.skip("bird2 is not installed (make deps installs it)")
    name = f"{prefix}{secrets.token_hex(2)}"
    path = workdir / "topology.yaml"
    path.write_text(yaml.safe_dump(topology))
    try:
        podnet_cli("lab", "up", "--name", name, "-f", str(path), *flags)
        yield json.loads(state_file(name).read_text())
    finally:
        if state_file(name).exists():
            podnet_cli("lab", "down", "--name", name)


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    """`check()`'s first true result, polled every 0.2 s; AssertionError naming `what`
    after `timeout` seconds (the gossip lab tests wait on the cluster's own pace)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)
    return result
