"""The agent's services service (agent/services_service.py), no root: a memory store and
a fake nft. The first pass applies the whole table, a later change only its difference;
a bad record is left out and reported while the others apply; an nft refusal keeps
the plan in force; a pod with a probe is a backend only once its node judged it ready."""

from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

import pytest

from podnet import keys
from podnet.agent.services_service import ServicesService
from podnet.kernel.nft import FakeNft
from podnet.model.cluster import NodeLease
from podnet.model.policy import PodRecord
from podnet.model.probe import parse_probe
from podnet.model.service import Readiness
from podnet.objects import store as objects
from podnet.objects.registry import parse_documents
from podnet.services import render
from podnet.services.applied import AppliedTable
from podnet.services.generation import plan_generation
from podnet.services.plan import Backend, NodePlan, ServicePort
from podnet.store import open_store

WEB = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
       "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.20", "ports": [{"port": 80}]}}


def pod(name: str, ip: str, probe: bool = False) -> PodRecord:
    return PodRecord("default", name, "node0", (ip,), {"app": "web"}, (),
                     parse_probe({"tcpSocket": {"port": 80}}) if probe else None)


def lease(node: str) -> str:
    return NodeLease(node, "10.244.0.0/24", "172.31.0.10", "eth0", "vxlan", {}, 0.0).encode()


@pytest.fixture
def store():
    with open_store("memory://") as handle:
        objects.apply(handle, parse_documents([WEB]))
        handle.put(keys.node("node0"), lease("node0"))  # the pods' node is alive
        yield handle


def service(store, nft: FakeNft) -> ServicesService:
    agent = SimpleNamespace(node_options=SimpleNamespace(node="node0", cluster_cidr="10.244.0.0/16"),
                            store_path="memory://", service=SimpleNamespace(store=lambda _path: store))
    return ServicesService(agent, nft)  # type: ignore[arg-type]


def backends(svc: ServicesService) -> list[str]:
    assert svc.applied is not None
    return [b.ip for port in svc.applied.services for b in port.backends]


def test_full_table_first_then_only_the_difference(store):
    nft = FakeNft()
    svc = service(store, nft)
    store.put(keys.pod("default", "a"), pod("a", "10.244.0.2").encode())
    assert svc.converge()["service_ports"] == 1 and svc.stats["applied"] == "full"
    assert "add table inet podnet-svc" in nft.scripts[-1]
    svc.converge()
    assert len(nft.scripts) == 1  # nothing changed: nothing applied
    store.put(keys.pod("default", "b"), pod("b", "10.244.0.3").encode())
    svc.converge()
    assert svc.stats["applied"] == "diff" and "delete table" not in nft.scripts[-1]
    assert backends(svc) == ["10.244.0.2", "10.244.0.3"]


def test_a_bad_record_is_left_out_and_the_rest_applies(store):
    nft = FakeNft()
    svc = service(store, nft)
    store.put(keys.pod("default", "a"), pod("a", "10.244.0.2").encode())
    store.put(keys.pod("default", "bad"), '{"apiVersion": "v1", "kind": "Pod", "metadata": {}}')
    status = svc.converge()
    assert backends(svc) == ["10.244.0.2"]
    assert any("policy/pods/default/bad" in p for p in status["problems"]), status


def test_an_nft_refusal_keeps_the_plan_in_force_and_is_reported(store):
    nft = FakeNft()
    svc = service(store, nft)
    store.put(keys.pod("default", "a"), pod("a", "10.244.0.2").encode())
    svc.converge()
    store.put(keys.pod("default", "b"), pod("b", "10.244.0.3").encode())
    nft.fail = "Error: Could not process rule"
    status = svc.converge()
    assert backends(svc) == ["10.244.0.2"] and any("keeping the table in force" in p for p in status["problems"])
    svc.converge()  # the next pass tries again
    assert backends(svc) == ["10.244.0.2", "10.244.0.3"]


def test_probed_pods_wait_for_their_node_to_judge_them(store):
    nft = FakeNft()
    svc = service(store, nft)
    store.put(keys.pod("default", "a"), pod("a", "10.244.0.2", probe=True).encode())
    svc.converge()
    assert backends(svc) == []  # not judged yet: not ready
    store.put(keys.readiness("default", "a"), Readiness(True, "node0").encode())
    svc.converge()
    assert backends(svc) == ["10.244.0.2"]
    store.put(keys.readiness("default", "a"), Readiness(False, "node0", reason="refused").encode())
    svc.converge()
    assert backends(svc) == []


class KernelNft(FakeNft):
    """Keeps the generation stamp as the kernel would hold it."""

    def apply(self, script: str) -> None:
        super().apply(script)
        found = re.findall(r"add element inet podnet-svc generation \{ (\d+) \}", script)
        if found:
            self.tables[("inet", "podnet-svc")] = {"nftables": [{"set": {"name": "generation",
                                                                         "elem": [int(found[-1])]}}]}


def test_a_restarted_agent_keeps_its_table_when_nothing_changed(store):
    nft = KernelNft()
    store.put(keys.pod("default", "a"), pod("a", "10.244.0.2").encode())
    first = service(store, nft)
    first.converge()
    store.put(keys.pod("default", "b"), pod("b", "10.244.0.3").encode())
    first.converge()
    assert first.stats["applied"] == "diff"  # a difference is stamped too
    applied = len(nft.scripts)
    again = service(store, nft)  # the agent restarted
    assert again.converge()["service_ports"] == 1 and again.stats["applied"] == "kept"
    assert len(nft.scripts) == applied
    store.put(keys.pod("default", "c"), pod("c", "10.244.0.4").encode())
    restarted_on_change = service(store, nft)
    restarted_on_change.converge()
    assert restarted_on_change.stats["applied"] == "full" and len(nft.scripts) == applied + 1


def test_the_periodic_check_reads_only_the_generation(store):
    nft = KernelNft()
    store.put(keys.pod("default", "a"), pod("a", "10.244.0.2").encode())
    svc = service(store, nft)
    svc.converge()
    assert svc._intact() and nft.list_calls == []  # never `nft list table` (29 MB at 10,000 services)
    del nft.tables[("inet", "podnet-svc")]  # deleted by hand
    assert not svc._intact()
    svc.converge(full=True)
    assert svc._intact() and svc.stats["applied"] == "full"


def events_since(store, revision: int) -> list:
    return store.watch("", revision, 0)


def test_a_watched_change_renders_only_its_own_port(store):
    docs = [{**WEB, "metadata": {"name": f"s{i}", "namespace": "default"},
             "spec": {"selector": {"app": f"s{i}"}, "clusterIP": f"10.96.1.{i}", "ports": [{"port": 80}]}}
            for i in range(1, 21)]
    objects.apply(store, parse_documents(docs))
    for i in range(1, 21):
        store.put(keys.pod("default", f"p{i}"), PodRecord("default", f"p{i}", "node1", (f"10.244.1.{i}",),
                                                         {"app": f"s{i}"}).encode())
    store.put(keys.node("node1"), lease("node1"))
    nft = KernelNft()
    svc = service(store, nft)
    svc.converge()
    start = store.revision()
    store.put(keys.pod("default", "p7"), PodRecord("default", "p7", "node1", ("10.244.1.77",), {"app": "s7"}).encode())
    store.put(keys.node("node1"), lease("node1"))  # another node's lease renewed: nothing to plan
    svc.converge(events=events_since(store, start))
    (port,) = [p for p in svc.applied.services if p.ref == "default/s7:80"]
    assert svc.stats["applied"] == "diff" and [b.ip for b in port.backends] == ["10.244.1.77"]
    chains = set(re.findall(r"chain inet podnet-svc (\S+)", nft.scripts[-1]))
    assert chains and all(port.id in c for c in chains), nft.scripts[-1]  # no other port is touched
    again = service(store, KernelNft())
    again.converge()  # planned from scratch: the same plan, the same stamp
    assert again.applied == svc.applied
    assert nft.set_elements("inet", "podnet-svc", "generation") == [plan_generation(svc.applied)]


def test_after_a_failed_pass_the_next_one_lists_the_store_again(store):
    nft = FakeNft()
    svc = service(store, nft)
    store.put(keys.pod("default", "a"), pod("a", "10.244.0.2").encode())
    svc.converge()
    start = store.revision()
    store.put(keys.pod("default", "b"), pod("b", "10.244.0.3").encode())
    nft.fail = "Error: Could not process rule"
    svc.converge(events=events_since(store, start))
    store.put(keys.pod("default", "c"), pod("c", "10.244.0.4").encode())
    svc.converge(events=[])  # the watch lost c's event: the listing finds it
    assert backends(svc) == ["10.244.0.2", "10.244.0.3", "10.244.0.4"]


def test_a_udp_backend_leaves_when_its_last_port_goes():
    def udp(id: str, *ips: str) -> ServicePort:
        return ServicePort(id, f"ns/{id}:53", "udp", 53, ("10.96.0.1",), backends=tuple(Backend(ip, 53) for ip in ips))

    table = AppliedTable()
    first = NodePlan((), (), (udp("a", "10.244.0.2", "10.244.0.3"), udp("b", "10.244.0.2")))
    assert table.replace(first, 1, render.shared_counts(first.services)) == set()
    assert table.update({"a": udp("a", "10.244.0.3")}, ["a"], 2, Counter()) == set()  # b still sends to .2
    assert table.update({}, ["b"], 3, Counter()) == {("10.244.0.2", 53)}
    assert table.backends == 1 and table.generation == 3


def test_the_count_of_shared_elements_follows_every_change(store):
    """The agent's count of ports holding each hairpin element is what a full render of
    its table counts, after any change (else an element would stay, or go too soon)."""
    nft = FakeNft()
    svc = service(store, nft)
    for name, ip in (("a", "10.244.0.2"), ("b", "10.244.0.3")):
        store.put(keys.pod("default", name), pod(name, ip).encode())
    objects.apply(store, parse_documents([{**WEB, "metadata": {"name": "two", "namespace": "default"},
                                           "spec": {**WEB["spec"], "clusterIP": "10.96.0.21"}}]))
    svc.converge()
    for change in (lambda: store.delete(keys.pod("default", "a")),
                   lambda: store.put(keys.pod("default", "c"), pod("c", "10.244.0.3").encode()),
                   lambda: objects.delete(store, parse_documents([WEB]))):
        change()
        svc.converge()
        assert svc.stats["applied"] == "diff"
        assert svc.table.shared == render.render_full(svc.applied)[1]


def test_the_pods_of_a_node_whose_lease_is_gone_back_nothing_until_it_returns(store):
    """As Kubernetes marks the pods of a lost node NotReady: a dead agent's pods (and
    its DNS pod) leave every service within the lease TTL, not never."""
    nft = FakeNft()
    svc = service(store, nft)
    store.put(keys.pod("default", "a"), pod("a", "10.244.0.2").encode())
    remote = PodRecord("default", "r", "node1", ("10.244.1.2",), {"app": "web"})
    store.put(keys.pod("default", "r"), remote.encode())
    svc.converge()
    assert backends(svc) == ["10.244.0.2"]  # node1 never had a lease
    store.put(keys.node("node1"), lease("node1"))
    svc.converge()
    assert backends(svc) == ["10.244.0.2", "10.244.1.2"] and svc.stats["applied"] == "diff"
    store.put(keys.node("node1"), lease("node1"))  # a renewal changes nothing
    svc.converge()
    assert svc.stats["applied"] == "diff" and len(nft.scripts) == 2
    store.delete(keys.node("node1"))  # the lease expired
    svc.converge()
    assert backends(svc) == ["10.244.0.2"]
