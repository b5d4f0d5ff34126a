"""Drive `podnet container ...` as a user would, inside a host namespace the test made.

The CLI and the agent run as `nsenter --net=/run/netns/HOST ...`, not `ip netns exec`:
the latter gives each command a private mount namespace, and a container namespace
that the CLI creates under /run/netns would then be invisible to the agent (and gone
with the CLI). Teardown removes every container through the CLI, then kills any
process left by its recorded pid and deletes any pnc-* namespace left by its recorded
path, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path

from podnet import keys
from podnet.lab.sandbox import Sandbox, wait_for_path
from podnet.model.network import NetworkRecord, Subnet
from podnet.procs import owner_alive

PR_SET_CHILD_SUBREAPER = 36
NETWORK = "tnet"
SUBNET = "10.89.1.0/24"
GATEWAY = "10.89.1.1"


def conflist(name: str, subnet: str, gateway: str, bridge: str, socket_path: str, data_dir: str) -> dict:
    """The conflist `podnet network create` renders (networks/conflist.py)."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "podnet", "mode": "bridge", "bridge": bridge, "isGateway": True,
            "isDefaultGateway": True, "ipMasq": True, "agentSocket": socket_path,
            "capabilities": {"portMappings": True, "ips": True},
            "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                     "dataDir": data_dir},
        }],
    }


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Orphans of our descendants come to this process instead of PID 1 (which reaps
    nobody here), so a test can kill a container whose parent it killed and reap it
    (os.waitpid) without leaving a zombie behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def kill_orphan(pid: int) -> None:
    """SIGKILL a process reparented to us (see subreaper) and reap it."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@dataclass
class ContainerEnv:
    sandbox: Sandbox
    state_dir: Path
    host: str
    socket: str = field(default_factory=lambda: f"/run/podnet/t-{secrets.token_hex(4)}.sock")
    agent: subprocess.Popen | None = None
    seen_netns: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, sandbox: Sandbox, tmp_path: Path, agent: bool = True) -> ContainerEnv:
        env = cls(sandbox, tmp_path / "state", sandbox.netns("host"))
        env.state_dir.mkdir()
        if agent:
            env.start_agent()
        return env

    # -- processes in the host namespace -------------------------------------------
    def nsenter(self, ns: str | None = None) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{ns or self.host}", "--"]

    def environ(self) -> dict[str, str]:
        return {**os.environ, "PODNET_STATE_DIR": str(self.state_dir), "PODNET_AGENT_SOCKET": self.socket,
                "COLUMNS": "200"}  # tables unwrapped, so a test can look for a cell

    def start_agent(self) -> None:
        log = self.sandbox.keep_open(open(self.state_dir.parent / "agent.log", "ab"))  # noqa: SIM115
        argv = [*self.nsenter(), sys.executable, "-m", "podnet.cli", "agent", "--socket", self.socket,
                "--state-dir", str(self.state_dir)]
        self.agent = self.sandbox.spawn(None, argv, env=self.environ(), stdout=log, stderr=subprocess.STDOUT)
        wait_for_path(self.socket, timeout=30, proc=self.agent)

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.sandbox.stop(self.agent)
            self.agent = None
        Path(self.socket).unlink(missing_ok=True)

    def agent_log(self) -> str:
        path = self.state_dir.parent / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def podnet(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [*self.nsenter(), sys.executable, "-m", "podnet.cli", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.environ(),
                              stdin=subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"podnet {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def container(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.podnet("container", *args, **kw)

    def container_bg(self, *args: str) -> subprocess.Popen:
        """A CLI left running (a foreground `run`), recorded for teardown."""
        argv = [*self.nsenter(), sys.executable, "-m", "podnet.cli", "container", *args]
        return self.sandbox.spawn(None, argv, env=self.environ(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def in_host(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.nsenter(), *argv], capture_output=True, text=True, timeout=60, check=check)

    # -- networks (written as `podnet network create` does) ---------------------------
    def add_network(self, name: str = NETWORK, subnet: str = SUBNET, gateway: str = GATEWAY) -> str:
        from podnet.store import open_store

        bridge = f"pntb-{self.sandbox.token}"
        net_d = self.state_dir / "net.d"
        net_d.mkdir(exist_ok=True)
        conf = conflist(name, subnet, gateway, bridge, self.socket, str(self.state_dir))
        (net_d / f"{name}.conflist").write_text(json.dumps(conf, indent=2))
        record = NetworkRecord(name, secrets.token_hex(32), "bridge",
                               (Subnet(ip_network(subnet), ip_address(gateway)),), bridge=bridge)
        store = open_store(str(self.state_dir / "store.db"))
        try:
            store.put(record.key, record.encode())
        finally:
            store.close()
        return name

    # -- containers ------------------------------------------------------------------
    def run_d(self, name: str, *cmd: str, opts: tuple[str, ...] = ()) -> dict:
        out = self.container("run", "-d", "-o", "json", "--name", name, *opts, "--", *cmd)
        record = json.loads(out.stdout)
        if record.get("netns"):
            self.seen_netns.add(record["netns"])
        return record

    def inspect(self, name: str) -> dict:
        record = json.loads(self.container("inspect", name).stdout)
        if record.get("netns"):
            self.seen_netns.add(record["netns"])
        return record

    def records(self) -> list[dict]:
        """The container records as the store holds them (JSON, as `inspect` prints)."""
        from podnet.store import open_store

        store = open_store(str(self.state_dir / "store.db"))
        try:
            return [e.json() for e in store.list(keys.CONTAINERS)]
        finally:
            store.close()

    def log(self, record: dict) -> str:
        path = self.state_dir / "containers" / record["id"] / "container.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, record: dict, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(record):
            assert time.monotonic() < deadline, f"{text!r} not in the log of {record['name']}: {self.log(record)!r}"
            time.sleep(0.05)

    def wait_state(self, name: str, state: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            record = next((r for r in self.records() if r["name"] == name), None)
            if record is not None and record["state"] == state:
                return record
            assert time.monotonic() < deadline, f"{name} never became {state}: {record}"
            time.sleep(0.1)

    def reservations(self, network: str = NETWORK) -> list:
        from podnet.ipam.service import IpamService
        from podnet.store import open_store

        path = self.state_dir / "podnet.db"
        if not path.exists():
            return []
        store = open_store(str(path))
        try:
            return IpamService(store).reservations(network)
        finally:
            store.close()

    def nat_rules(self) -> int:
        """podnet port-mapping rules in the host namespace."""
        return self.in_host("nft", "list", "ruleset").stdout.count("podnet:")

    def wait_running(self, name: str, timeout: float = 20) -> dict:
        record = self.wait_state(name, "running", timeout)
        if record.get("netns"):
            self.seen_netns.add(record["netns"])
        return record

    # -- teardown ----------------------------------------------------------------------
    @contextlib.contextmanager
    def fresh(self) -> Iterator[ContainerEnv]:
        """This env as a new one would be, for one test of a module that shares it
        (starting an agent is most of what a small test costs): its agent up; after the
        test, every container it kept removed (an error here fails that test's teardown,
        and what is left shows in the next test's own checks)."""
        if self.agent is None:
            self.start_agent()
        yield self
        if self.agent is None:
            self.start_agent()
        for record in self.records():
            if record.get("netns"):
                self.seen_netns.add(record["netns"])
            self.container("rm", "-f", record["name"])

    def close(self) -> None:
        for record in self.records():
            if record.get("netns"):
                self.seen_netns.add(record["netns"])
            self.container("rm", "-f", record["name"], check=False, timeout=60)
        for record in self.records():  # whatever rm could not remove: by recorded pid
            if record.get("process") and owner_alive(record["process"]):
                os.kill(record["pid"], signal.SIGKILL)
        for path in sorted(self.seen_netns):
            if os.path.basename(path).startswith("pnc-") and os.path.lexists(path):
                subprocess.run(["ip", "netns", "del", os.path.basename(path)], capture_output=True, check=False)
        self.stop_agent()
        shutil.rmtree(self.socket + ".stores", ignore_errors=True)  # the plugin fallback's notes

    def __enter__(self) -> ContainerEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
