"""The agent's services service (agent/services_service.py), no root: a memory store and
a fake nft. The first pass applies the whole table, a later change only its difference;
a bad record is left out and reported while the others apply; an nft refusal keeps
the plan in force; a pod with a probe is a backend only once its node judged it ready."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from podnet import keys
from podnet.agent.services_service import ServicesService
from podnet.kernel.nft import FakeNft
from podnet.model.policy import PodRecord
from podnet.model.probe import parse_probe
from podnet.model.service import Readiness
from podnet.objects import store as objects
from podnet.objects.registry import parse_documents
from podnet.store import open_store

WEB = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
       "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.20", "ports": [{"port": 80}]}}


def pod(name: str, ip: str, probe: bool = False) -> PodRecord:
    return PodRecord("default", name, "node0", (ip,), {"app": "web"}, (),
                     parse_probe({"tcpSocket": {"port": 80}}) if probe else None)


@pytest.fixture
def store():
    with open_store("memory://") as handle:
        objects.apply(handle, parse_documents([WEB]))
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
