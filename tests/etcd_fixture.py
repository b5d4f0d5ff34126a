"""etcd for tests: real etcd processes started here, on 127.0.0.1 only.

Every member listens (client and peer) on 127.0.0.1 at a free high port, keeps its
data in the test's tmp dir, and is stopped by its recorded PID (never by name); an
atexit hook stops whatever a crashed test left running. Elections are tuned fast
(heartbeat 20 ms, election 200 ms) so failover tests take fractions of a second.

Use `needs_etcd()` to skip cleanly where the binary is missing, and the fixtures
`etcd_server` (one member, whole session) and `etcd_cluster3` (three members, per test:
failover tests stop and start them).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ETCD = shutil.which("etcd")
_RUNNING: dict[int, subprocess.Popen[bytes]] = {}  # pid -> process, for the atexit hook


def needs_etcd() -> None:
    """Skip the calling test when etcd or its Python client is not installed."""
    if ETCD is None:
        pytest.skip("etcd binary not found (Debian: apt-get install etcd-server)")
    pytest.importorskip("aetcd", reason="the etcd client is not installed (pip install aetcd)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Exited(RuntimeError):
    """An etcd member died while starting (typically: its port was taken)."""


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """`size` etcd members in `base_dir`, all on 127.0.0.1."""

    def __init__(self, base_dir: Path, size: int = 1) -> None:
        self.base_dir = base_dir
        self.token = f"pn-t-{secrets.token_hex(4)}"
        self.members = [
            Member(f"pn{i}", free_port(), free_port(), base_dir / f"pn{i}") for i in range(size)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, prefix: str = "podnet") -> str:
        """The open_store URL of the whole cluster."""
        return f"etcd://{','.join(self.endpoints)}/{prefix}"

    def start(self, timeout: float = 15.0, attempts: int = 3) -> EtcdCluster:
        for attempt in range(attempts):
            for index in range(len(self.members)):
                self.start_member(index, wait=False)
            try:
                self.wait_healthy(range(len(self.members)), timeout)
                return self
            except _Exited:
                self.stop()
                if attempt == attempts - 1:
                    raise
                # Someone took a port between free_port() and etcd's bind: start over.
                self.token = f"pn-t-{secrets.token_hex(4)}"
                for member in self.members:
                    member.client_port, member.peer_port = free_port(), free_port()
                    shutil.rmtree(member.data_dir, ignore_errors=True)
        raise AssertionError("unreachable")

    def start_member(self, index: int, wait: bool = True, timeout: float = 15.0) -> None:
        """(Re)start one member; a restarted member finds its data dir and rejoins."""
        member = self.members[index]
        assert not member.running, f"{member.name} is already running"
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        client = f"http://{member.endpoint}"
        argv = [
            str(ETCD),
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            # One member cannot split its vote: let it elect itself at once.
            "--heartbeat-interval", "20" if len(self.members) > 1 else "10",
            "--election-timeout", "200" if len(self.members) > 1 else "50",
            "--logger", "zap",
            "--log-level", "error",
        ]  # fmt: skip
        self.base_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.base_dir / f"{member.name}.log", "ab")  # noqa: SIM115 - the child owns it
        member.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        _RUNNING[member.proc.pid] = member.proc
        if wait:
            self.wait_healthy([index], timeout)

    def wait_healthy(self, indexes: object, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        for index in indexes:  # type: ignore[attr-defined]
            member = self.members[index]
            while not self._healthy(member):
                if not member.running:
                    raise _Exited(f"etcd {member.name} exited: {self.log(index)[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {member.name} not healthy: {self.log(index)[-2000:]}")
                time.sleep(0.02)

    def _healthy(self, member: Member) -> bool:
        try:  # a member not ready yet holds the request: poll with a short timeout
            with urllib.request.urlopen(f"http://{member.endpoint}/health", timeout=0.2) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def status(self, index: int) -> dict:
        """The member's maintenance status (via etcd's JSON gateway): ids and leader."""
        request = urllib.request.Request(
            f"http://{self.members[index].endpoint}/v3/maintenance/status", data=b"{}"
        )
        with urllib.request.urlopen(request, timeout=2) as resp:
            return json.loads(resp.read())

    def leader(self) -> int:
        """Index of the current leader (asked of the first running member)."""
        for index, member in enumerate(self.members):
            if member.running:
                leader = self.status(index)["leader"]
                for candidate in range(len(self.members)):
                    if self.members[candidate].running and (
                        self.status(candidate)["header"]["member_id"] == leader
                    ):
                        return candidate
        raise RuntimeError("no running leader")

    def stop_member(self, index: int, kill: bool = True) -> None:
        """Stop one member by its recorded PID: SIGKILL (a crash) or SIGTERM."""
        member = self.members[index]
        if member.proc is None:
            return
        _stop(member.proc, signal.SIGKILL if kill else signal.SIGTERM)
        member.proc = None

    def stop(self) -> None:
        for index in range(len(self.members)):
            self.stop_member(index)

    def log(self, index: int) -> str:
        path = self.base_dir / f"{self.members[index].name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    _RUNNING.pop(proc.pid, None)


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_RUNNING.values()):
        _stop(proc)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One etcd member for the whole session (tests use their own key prefixes)."""
    needs_etcd()
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_cluster3(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A fresh three-member cluster per test: failover tests stop and start members."""
    needs_etcd()
    cluster = EtcdCluster(tmp_path / "etcd", size=3).start()
    yield cluster
    cluster.stop()
