"""agent/dns_service.py without root: networks whose gateways are loopback addresses
(127.0.7x.1, always local), records written through a second store handle as the CLI
would from another process, servers on free high ports."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time
from collections.abc import Callable
from ipaddress import ip_network
from types import SimpleNamespace

import pytest
from dnslib import RCODE, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnet import keys
from podnet.agent.dns_service import DnsService, agent_upstream, decode
from podnet.dns.records import build_zones
from podnet.model.container import ContainerRecord
from podnet.model.network import NetworkRecord, Subnet
from podnet.store import open_store
from podnet.store.base import Entry, Store


def network(name: str, third: int, subnet: str | None = None, **changes) -> NetworkRecord:
    """A bridge network on 127.0.<third>.0/24 (gateway .1), or on `subnet`."""
    net = ip_network(subnet or f"127.0.{third}.0/24")
    record = NetworkRecord(name, name, "bridge", (Subnet(net, net.network_address + 1),), bridge=f"pnt{name}")
    return dataclasses.replace(record, **changes)


def container(name: str, net: str, ip: str, state: str = "running", aliases: tuple[str, ...] = ()) -> ContainerRecord:
    return ContainerRecord(name, name * 12, "bridge", state=state, network=net, ips=(f"{ip}/24",), aliases=aliases,
                           hostname=name)


def put(store: Store, *records: NetworkRecord | ContainerRecord) -> None:
    """Write records as `podnet network` / `podnet container` do."""
    for record in records:
        store.put(record.key, record.encode())


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
    put(w, network("lnet", 71))
    assert wait_until(lambda: env.serving("lnet"))
    assert env.server("lnet")["address"] == "127.0.71.1"

    put(w, container("a", "lnet", "127.0.71.2", aliases=("alpha",)))
    started = time.monotonic()
    assert wait_until(lambda: env.resolves("lnet", "alpha", "127.0.71.9")) == ["127.0.71.2"]
    assert time.monotonic() - started < 1.0
    assert env.resolves("lnet", "A.lnet", "127.0.71.9") == ["127.0.71.2"]
    assert "alpha.lnet" in env.server("lnet")["names"]

    put(w, container("a", "lnet", "127.0.71.2", state="exited"))
    assert wait_until(lambda: env.ask("lnet", "a", "127.0.71.9").header.rcode == RCODE.NXDOMAIN)

    port = env.server("lnet")["port"]
    w.delete(keys.network("lnet"))
    assert wait_until(lambda: env.server("lnet") is None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # the port is free again
        sock.bind(("127.0.71.1", port))


def test_networks_do_not_see_each_other(env: Env) -> None:
    w = env.writer
    put(w, network("red", 72), network("blue", 73))
    put(w, container("r", "red", "127.0.72.2"), container("b", "blue", "127.0.73.2"))
    assert wait_until(lambda: env.serving("red") and env.serving("blue"))
    assert wait_until(lambda: env.resolves("red", "r", "127.0.72.9")) == ["127.0.72.2"]
    assert env.ask("red", "b", "127.0.72.9").header.rcode == RCODE.NXDOMAIN
    assert env.ask("red", "b.blue", "127.0.72.9").header.rcode == RCODE.REFUSED
    # A blue client asking red's gateway directly is refused: names stay per network.
    assert env.ask("red", "r", "127.0.73.9").header.rcode == RCODE.REFUSED


def test_a_bad_record_is_skipped_and_logged_once(env: Env, caplog) -> None:
    caplog.set_level(logging.WARNING, "podnet.dns")
    w = env.writer
    put(w, network("bad", 78), container("good", "bad", "127.0.78.2"))
    w.put(keys.container("broken"), json.dumps({"name": "broken", "id": "b" * 64, "network": "bad",
                                                "state": "running", "ips": ["127.0.78.3/24"], "aliases": [7]}))
    assert wait_until(lambda: env.serving("bad"))
    assert wait_until(lambda: env.resolves("bad", "good", "127.0.78.9")) == ["127.0.78.2"]
    assert env.ask("bad", "broken", "127.0.78.9").header.rcode == RCODE.NXDOMAIN
    put(w, container("later", "bad", "127.0.78.4"))  # another refresh, the bad record still there
    assert wait_until(lambda: env.resolves("bad", "later", "127.0.78.9")) == ["127.0.78.4"]
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert skipped == [f"dns: skipping {keys.container('broken')}: field 'aliases' must be a list of strings, got [7]"]


def test_waits_for_the_gateway_and_skips_macvlan(env: Env) -> None:
    w = env.writer
    put(w, network("far", 0, subnet="10.254.77.0/24"), network("mac", 74, driver="macvlan"))
    w.put(keys.network("junk"), json.dumps({"name": "junk", "subnets": "no"}))
    w.put(keys.network("garbage"), "{not json")
    assert wait_until(lambda: env.server("far"))
    assert env.server("far")["serving"] is False
    assert env.server("far")["state"].startswith("waiting")
    time.sleep(0.3)
    assert env.server("mac") is None and env.server("junk") is None


def test_status_op_and_upstream_policy(tmp_path) -> None:
    e = Env(str(tmp_path / "store.db"), upstream=("127.0.0.53", 5353))
    e.service.start()
    try:
        put(e.writer, network("open", 75), network("closed", 76, internal=True))
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
    put(env.writer, network("s", 77))
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


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
mutated_container = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=20), json_values),
        "id": st.text(max_size=70) | json_values,
        "network": st.sampled_from(["AppNet", "other", None]) | json_values,
        "network_mode": st.sampled_from(["bridge", "host", "container"]) | json_values,
        "ips": st.lists(st.sampled_from(["10.89.1.5/24", "fd00:89::5/64", "x", ""]) | json_values),
        "aliases": st.lists(st.text(max_size=70)) | json_values,
        "state": st.sampled_from(["running", "exited"]) | json_values,
    },
)
mutated_network = st.fixed_dictionaries(
    {"name": st.sampled_from(["AppNet", "other"]) | json_values, "id": st.text(max_size=5) | json_values},
    optional={
        "driver": st.sampled_from(["bridge", "macvlan"]) | json_values,
        "subnets": st.lists(st.fixed_dictionaries({"subnet": st.sampled_from(["10.89.1.0/24", "10.89.1.5/24"])
                                                   | json_values, "gateway": json_values}) | json_values),
    },
)


def entries(prefix: str, values: list) -> list[Entry]:
    return [Entry(f"{prefix}{i}", v if isinstance(v, str) else json.dumps(v), i + 1, i + 1)
            for i, v in enumerate(values)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_container | json_values | st.text(max_size=10), max_size=6),
       st.lists(mutated_network | json_values, max_size=3))
def test_whatever_the_store_holds_zones_are_built(containers, networks) -> None:
    """Nothing a faulty writer leaves under networks/ or containers/ raises: what does
    not decode is rejected (with a reason), the rest makes zones."""
    rejected: dict[str, str] = {}
    good = network("AppNet", 0, subnet="10.89.1.0/24")
    nets = [good, *decode(entries(keys.NETWORKS, networks), NetworkRecord.from_json, rejected)]
    found = decode(entries(keys.CONTAINERS, containers), ContainerRecord.from_json, rejected)
    assert len(nets) - 1 + len(found) + len(rejected) == len(networks) + len(containers)
    assert all(why for why in rejected.values())
    zones = build_zones(nets, found)
    for zone in zones.values():
        for name in zone.names():
            assert zone.lookup(name, "ANY")


def test_the_agents_dns_service_reads_through_the_shared_handle_and_leaves_it_open(tmp_path):
    """Through the CNI service's handle of the state dir's store (one watch tail and one
    inotify instance per file and process), which the agent, not the service, closes."""
    from podnet.agent.dns_service import dns_service

    path = str(tmp_path / "store.db")
    with open_store(path, create=True) as shared:
        put(shared, network("blue", 7))
        asked: list[str] = []

        def store(p: str) -> Store:
            asked.append(p)
            return shared

        agent = SimpleNamespace(store_path=path, state=SimpleNamespace(store=tmp_path / "." / "store.db"),
                                service=SimpleNamespace(store=store), dns_upstream=None)
        service = dns_service(agent)  # type: ignore[arg-type]
        service.port, service.poll = 0, 0.1
        service.start()
        try:
            wait_until(lambda: [s for s in service.status() if s.get("network") == "blue"])
        finally:
            service.stop()
        assert asked and set(asked) == {path}  # the same name the CNI service caches it by
        assert shared.get(keys.network("blue")) is not None  # still open: not the service's to close
