"""agent/dns_service.py without root: networks whose gateways are loopback addresses
(127.0.7x.1, always local), records written through a second store handle as the CLI
would from another process, servers on free high ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from dnslib import RCODE, DNSRecord

from podnet.agent.dns_service import DnsService, agent_upstream
from podnet.store import open_store
from podnet.store.base import Store


def network(name: str, third: int, **extra) -> dict:
    return {
        "name": name, "id": name, "driver": "bridge", "internal": False, "bridge": f"pnt{name}",
        "subnets": [{"subnet": f"127.0.{third}.0/24", "gateway": f"127.0.{third}.1", "ip_range": None}],
        **extra,
    }


def container(name: str, net: str, ip: str, state: str = "running", aliases: tuple[str, ...] = ()) -> dict:
    return {"name": name, "id": name * 12, "network_mode": "bridge", "network": net, "ips": [f"{ip}/24"],
            "aliases": list(aliases), "hostname": name, "state": state}


def wait_until(check: Callable[[], object], timeout: float = 3.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


class Env:
    def __init__(self, path: str, upstream: tuple[str, int] | None = None) -> None:
        self.writer: Store = open_store(path)  # plays the CLI: another handle on the file
        self.reader: Store = open_store(path)
        self.service = DnsService(lambda: self.reader, port=0, upstream=upstream, poll=0.1)

    def server(self, net: str) -> dict | None:
        return next((s for s in self.service.status() if s["network"] == net), None)

    def serving(self, net: str) -> dict | None:
        entry = self.server(net)
        return entry if entry and entry["serving"] else None

    def ask(self, net: str, name: str, source: str, qtype: str = "A") -> DNSRecord:
        entry = self.serving(net)
        assert entry, self.service.status()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.settimeout(2)
            q = DNSRecord.question(name, qtype)
            sock.sendto(q.pack(), (entry["address"], entry["port"]))
            return DNSRecord.parse(sock.recv(4096))

    def resolves(self, net: str, name: str, source: str) -> list[str]:
        reply = self.ask(net, name, source)
        return [str(rr.rdata) for rr in reply.rr] if reply.header.rcode == RCODE.NOERROR else []


@pytest.fixture
def env(tmp_path):
    e = Env(str(tmp_path / "store.db"))
    e.service.start()
    yield e
    e.service.stop()
    e.writer.close()
    e.reader.close()


def test_names_follow_the_store(env: Env) -> None:
    w = env.writer
    w.put_json("networks/lnet", network("lnet", 71))
    assert wait_until(lambda: env.serving("lnet"))
    assert env.server("lnet")["address"] == "127.0.71.1"

    w.put_json("containers/a", container("a", "lnet", "127.0.71.2", aliases=("alpha",)))
    started = time.monotonic()
    assert wait_until(lambda: env.resolves("lnet", "alpha", "127.0.71.9")) == ["127.0.71.2"]
    assert time.monotonic() - started < 1.0
    assert env.resolves("lnet", "A.lnet", "127.0.71.9") == ["127.0.71.2"]
    assert "alpha.lnet" in env.server("lnet")["names"]

    w.put_json("containers/a", container("a", "lnet", "127.0.71.2", state="exited"))
    assert wait_until(lambda: env.ask("lnet", "a", "127.0.71.9").header.rcode == RCODE.NXDOMAIN)

    port = env.server("lnet")["port"]
    w.delete("networks/lnet")
    assert wait_until(lambda: env.server("lnet") is None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # the port is free again
        sock.bind(("127.0.71.1", port))


def test_networks_do_not_see_each_other(env: Env) -> None:
    w = env.writer
    w.put_json("networks/red", network("red", 72))
    w.put_json("networks/blue", network("blue", 73))
    w.put_json("containers/r", container("r", "red", "127.0.72.2"))
    w.put_json("containers/b", container("b", "blue", "127.0.73.2"))
    assert wait_until(lambda: env.serving("red") and env.serving("blue"))
    assert wait_until(lambda: env.resolves("red", "r", "127.0.72.9")) == ["127.0.72.2"]
    assert env.ask("red", "b", "127.0.72.9").header.rcode == RCODE.NXDOMAIN
    assert env.ask("red", "b.blue", "127.0.72.9").header.rcode == RCODE.REFUSED
    # A blue client asking red's gateway directly is refused: names stay per network.
    assert env.ask("red", "r", "127.0.73.9").header.rcode == RCODE.REFUSED


def test_waits_for_the_gateway_and_skips_macvlan(env: Env) -> None:
    w = env.writer
    far = network("far", 0)
    far["subnets"] = [{"subnet": "10.254.77.0/24", "gateway": "10.254.77.1", "ip_range": None}]
    w.put_json("networks/far", far)
    w.put_json("networks/mac", network("mac", 74, driver="macvlan"))
    w.put_json("networks/junk", {"name": "junk", "subnets": "no"})
    w.put("networks/garbage", "{not json")
    assert wait_until(lambda: env.server("far"))
    assert env.server("far")["serving"] is False
    assert env.server("far")["state"].startswith("waiting")
    time.sleep(0.3)
    assert env.server("mac") is None and env.server("junk") is None


def test_status_op_and_upstream_policy(tmp_path) -> None:
    e = Env(str(tmp_path / "store.db"), upstream=("127.0.0.53", 5353))
    e.service.start()
    try:
        e.writer.put_json("networks/open", network("open", 75))
        e.writer.put_json("networks/closed", network("closed", 76, internal=True))
        assert wait_until(lambda: e.serving("open") and e.serving("closed"))
        status = {s["network"]: s for s in e.service.ops()["dns.status"]({}, [])}
        assert status["open"]["upstream"] == "127.0.0.53:5353"
        assert status["closed"]["upstream"] is None  # internal: nothing goes out
        assert set(status["open"]) >= {"network", "address", "port", "names"}
    finally:
        e.service.stop()
        e.writer.close()
        e.reader.close()


def test_stop_ends_every_server(env: Env) -> None:
    env.writer.put_json("networks/s", network("s", 77))
    entry = wait_until(lambda: env.serving("s"))
    assert entry
    env.service.stop()
    assert env.service.status() == []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.77.1", entry["port"]))


def test_agent_upstream(monkeypatch) -> None:
    monkeypatch.delenv("PODNET_DNS_UPSTREAM", raising=False)
    assert agent_upstream(SimpleNamespace()) is None
    assert agent_upstream(SimpleNamespace(dns_upstream="192.0.2.1:5353")) == ("192.0.2.1", 5353)
    monkeypatch.setenv("PODNET_DNS_UPSTREAM", "192.0.2.2")
    assert agent_upstream(SimpleNamespace()) == ("192.0.2.2", 53)
    monkeypatch.setenv("PODNET_DNS_UPSTREAM", "dns.example")
    assert agent_upstream(SimpleNamespace()) is None  # fail closed, agent still starts
