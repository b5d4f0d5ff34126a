"""Policy inside this node's macvlan pods (agent/pod_policy.py), no root: a memory store
and a fake kernel holding each pod namespace's table generation as nft would. Which pods
get a table, a table already right is not rewritten, removal when nothing selects a
pod, an nft error keeps the last good table and shows in status."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from podnet import keys
from podnet.agent.pod_policy import PodPolicy, local_targets, node_addresses
from podnet.agent.policy_service import PolicyService
from podnet.errors import InvalidNetNS, KernelError
from podnet.kernel.nft import FakeNft
from podnet.model.cluster import NodeLease
from podnet.model.endpoint import PENDING, READY, EndpointRecord
from podnet.model.policy import PodRecord
from podnet.objects import store as objects
from podnet.objects.registry import parse_documents
from podnet.policy.world import load_world
from podnet.store import open_store

NS_X = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
DENY_A = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny-a", "namespace": "x"},
          "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"]}}
REMOVE = "table inet podnet-pod-policy\ndelete table inet podnet-pod-policy\n"


class FakeKernel:
    """Pod namespaces as nft would leave them: netns -> the generation of its table
    (absent: no table). `fail`: refuse the next apply; `gone`: namespaces that no
    longer exist."""

    def __init__(self) -> None:
        self.tables: dict[str, int] = {}
        self.applied: list[tuple[str, str]] = []
        self.reads: list[str] = []
        self.fail: str | None = None
        self.gone: set[str] = set()

    def _check(self, netns: str) -> None:
        if netns in self.gone:
            raise InvalidNetNS(f"network namespace {netns!r} does not exist")

    def apply(self, netns: str, script: str) -> None:
        self._check(netns)
        if self.fail is not None:
            msg, self.fail = self.fail, None
            raise KernelError("nft transaction failed", details=msg)
        self.applied.append((netns, script))
        found = re.search(r"add element inet podnet-pod-policy generation \{ (\d+) \}", script)
        if found:
            self.tables[netns] = int(found.group(1))
        else:
            assert script == REMOVE
            self.tables.pop(netns, None)

    def generation(self, netns: str) -> int | None:
        self._check(netns)
        self.reads.append(netns)
        return self.tables.get(netns)

    def open_flows(self, netns: str) -> SimpleNamespace:
        return SimpleNamespace(close=lambda: None)

    def list_table(self, netns: str) -> dict | None:
        self._check(netns)
        if netns not in self.tables:
            return None
        return {"nftables": [{"rule": {"comment": "default deny ingress x/a (isolated by x/deny-a)",
                                       "expr": [{"counter": {"packets": 3, "bytes": 180}}]}}]}


def endpoint(store, cid: str, ip: str, mode: str = "macvlan", node: str = "node0", state: str = READY,
             ifname: str = "eth0") -> tuple[str, EndpointRecord]:
    record = EndpointRecord(state=state, attach_id="0123456789ab", mode=mode, netns=f"/run/netns/{cid}",
                            host_netns=(1, 2), ips=(f"{ip}/24",) if state == READY else (), node=node,
                            nat=False if state == READY else None, owner="" if state == READY else "pid:1")
    key = keys.endpoint("pods", cid, ifname)
    store.put(key, record.encode())
    return key, record


def pod(store, name: str, ip: str) -> None:
    record = PodRecord("x", name, "node0", (ip,), {"app": name})
    store.put(record.key, record.encode())


@pytest.fixture
def store():
    with open_store("memory://") as handle:
        objects.apply(handle, parse_documents([NS_X, DENY_A]))
        for name, ip in (("a", "10.250.0.2"), ("b", "10.250.0.3"), ("c", "10.250.0.4")):
            pod(handle, name, ip)
        endpoint(handle, "ca", "10.250.0.2")  # x/a: selected
        endpoint(handle, "cb", "10.250.0.3")  # x/b: macvlan, selected by nothing
        yield handle


def service(store, kernel: FakeKernel) -> PodPolicy:
    pods = PodPolicy(lambda: store, "node0", kernel)
    pods.refresh()
    return pods


def world(store):
    return load_world(store, problems=[])[0]


def test_only_local_ready_macvlan_pods_are_judged(store):
    endpoint(store, "cc", "10.250.0.4", mode="bridge")  # the node's forward hook judges it
    endpoint(store, "cd", "10.250.0.9", node="node1")  # another node's
    endpoint(store, "ce", "10.250.0.8", state=PENDING)  # not built yet
    records = {e.key: EndpointRecord.decode(e.value) for e in store.list(keys.ENDPOINTS)}
    assert sorted(local_targets(records, "node0")) == ["/run/netns/ca", "/run/netns/cb"]


def test_a_selected_pod_gets_a_table_and_one_nothing_selects_none(store):
    kernel = FakeKernel()
    pods = service(store, kernel)
    assert kernel.applied == [] and kernel.reads == []  # the world is not known yet: touch nothing
    pods.enforce(world(store))
    assert [netns for netns, _ in kernel.applied] == ["/run/netns/ca"]
    assert "default deny ingress x/a (isolated by x/deny-a)" in kernel.applied[0][1]
    assert sorted(kernel.tables) == ["/run/netns/ca"]
    assert pods.status() == {"pod_tables": 1, "macvlan_pods": 2} and pods.error() is None


def test_a_multi_network_pod_is_judged_on_all_its_addresses(store):
    endpoint(store, "ca", "10.250.1.2", mode="bridge", ifname="eth1")
    records = {e.key: EndpointRecord.decode(e.value) for e in store.list(keys.ENDPOINTS)}
    assert local_targets(records, "node0")["/run/netns/ca"].ips == ("10.250.0.2", "10.250.1.2")


def test_the_listing_reads_a_multi_network_pods_other_links_too(store):
    """x/a owns 10.250.0.2 only: a second link it does not own makes its table the
    unowned drop, which shows that the listing read that (bridge) link too."""
    endpoint(store, "ca", "10.250.1.2", mode="bridge", ifname="eth1")
    kernel = FakeKernel()
    pods = service(store, kernel)
    pods.enforce(world(store))
    script = dict(kernel.applied)["/run/netns/ca"]
    assert 'comment "unowned address of pod x/a"' in script and "default deny ingress" not in script


def test_a_node_without_macvlan_pods_decodes_no_record_of_the_others(monkeypatch):
    decoded = []
    real = EndpointRecord.decode
    monkeypatch.setattr(EndpointRecord, "decode", classmethod(lambda cls, text, what="": decoded.append(what)
                                                               or real(text, what)))
    with open_store("memory://") as handle:
        for i in range(40):
            endpoint(handle, f"b{i}", f"10.250.0.{i + 2}", mode="bridge", node=f"node{i % 2}")
        endpoint(handle, "m1", "10.250.1.2", node="node1")  # another node's macvlan pod
        pods = service(handle, FakeKernel())
        assert decoded == [keys.endpoint("pods", "m1", "eth0")] and pods.status()["macvlan_pods"] == 0
        endpoint(handle, "b0", "10.250.2.2", ifname="eth1")  # now a macvlan link of a node0 pod
        decoded.clear()
        pods.refresh()
        assert len(decoded) == 42  # ... so its other links are read, and with them the rest


def test_an_unregistered_macvlan_container_is_dropped_while_policy_exists(store):
    kernel = FakeKernel()
    endpoint(store, "cz", "10.250.0.77")
    pods = service(store, kernel)
    pods.enforce(world(store))
    (script,) = [s for netns, s in kernel.applied if netns == "/run/netns/cz"]
    assert 'comment "unowned address of unregistered container cz"' in script
    pods.enforce(None)  # the last policy was deleted: nothing left to enforce
    assert kernel.tables == {}


def test_a_table_already_right_is_not_rewritten(store):
    kernel = FakeKernel()
    pods = service(store, kernel)
    pods.enforce(world(store))
    pods.enforce(world(store))
    pods.refresh(events=[])
    assert len(kernel.applied) == 1
    # a restarted agent reads each pod's generation back and writes nothing, but
    # listens to the verdicts of the table it found
    again = PodPolicy(lambda: store, "node0", kernel, on_flows=lambda _packets: None)
    again.refresh()
    again.enforce(world(store))
    assert len(kernel.applied) == 1 and kernel.reads.count("/run/netns/ca") == 2
    assert again.readers.watched() == ["/run/netns/ca"]
    # the periodic pass notices a table deleted by hand and rebuilds it
    kernel.tables.clear()
    again.refresh()
    assert len(kernel.applied) == 2 and "/run/netns/ca" in kernel.tables


def test_a_pod_nothing_selects_any_more_loses_its_table(store):
    kernel = FakeKernel()
    pods = service(store, kernel)
    pods.enforce(world(store))
    objects.delete(store, parse_documents([DENY_A]))
    objects.apply(store, parse_documents([{**DENY_A, "metadata": {"name": "deny-b", "namespace": "x"},
                                           "spec": {"podSelector": {"matchLabels": {"app": "b"}}}}]))
    pods.enforce(world(store))
    assert kernel.applied[1] == ("/run/netns/ca", REMOVE)
    assert sorted(kernel.tables) == ["/run/netns/cb"]


def test_a_deleted_attachment_takes_its_table_and_a_gone_namespace_is_forgotten(store):
    kernel = FakeKernel()
    pods = service(store, kernel)
    pods.enforce(world(store))
    store.delete(keys.endpoint("pods", "ca", "eth0"))
    pods.refresh()
    assert kernel.applied[-1] == ("/run/netns/ca", REMOVE) and pods.status()["macvlan_pods"] == 1
    kernel.gone.add("/run/netns/cb")
    objects.apply(store, parse_documents([{**DENY_A, "spec": {"podSelector": {}}}]))
    pods.enforce(world(store))  # selects x/b now, but its namespace is gone (the pod died)
    assert pods.error() is None and "/run/netns/cb" not in kernel.tables


def test_an_nft_error_keeps_the_last_good_table_and_shows_until_fixed(store):
    kernel = FakeKernel()
    pods = service(store, kernel)
    pods.enforce(world(store))
    good = kernel.tables["/run/netns/ca"]
    kernel.fail = "Error: Could not process rule"
    objects.apply(store, parse_documents([{**DENY_A, "spec": {**DENY_A["spec"], "policyTypes": ["Ingress", "Egress"]}}]))
    pods.enforce(world(store))
    assert kernel.tables["/run/netns/ca"] == good
    assert pods.error() == ("nft refused the pod table of x/a (the last good one stays): nft transaction failed: "
                            "Error: Could not process rule")
    pods.refresh(events=[])  # the next event retries
    assert kernel.tables["/run/netns/ca"] != good and pods.error() is None


def test_an_add_programs_the_table_before_it_returns(store):
    kernel = FakeKernel()
    pods = service(store, kernel)
    pods.enforce(world(store))
    pod(store, "d", "10.250.0.5")
    pods.enforce(world(store))
    key, record = endpoint(store, "cd", "10.250.0.5")  # written, the watch has not seen it
    pods.attached("other-store", key, record)
    assert "/run/netns/cd" not in kernel.tables  # not the cluster store's: not ours
    pods.store_path = "memory://"
    pods.attached("memory://", key, record)
    assert "/run/netns/cd" not in kernel.tables  # x/d is selected by nothing
    objects.apply(store, parse_documents([{**DENY_A, "spec": {"podSelector": {}}}]))
    pods.enforce(world(store))
    key, record = endpoint(store, "ce", "10.250.0.6")  # not registered yet: dropped until it is
    pods.attached("memory://", key, record)
    assert "unregistered container ce" in kernel.applied[-1][1]


def test_the_policy_service_reports_pod_table_errors_in_its_status(store):
    kernel = FakeKernel()
    agent = SimpleNamespace(node_options=SimpleNamespace(node="node0"), store_path="memory://",
                            service=SimpleNamespace(store=lambda _path: store, after_add=[]))
    svc = PolicyService(agent, nft=FakeNft(), pod_kernel=kernel)
    assert agent.service.after_add == [svc.pods.attached]
    svc.pods.refresh()
    kernel.fail = "Error: no"
    assert svc.converge(full=True)["error"].startswith("nft refused the pod table of x/a")  # policy.sync's reply
    status = svc.status()
    assert status["error"].startswith("nft refused the pod table of x/a")
    assert status["pod_tables"] == 0 and status["macvlan_pods"] == 2


def test_an_unreadable_endpoint_record_of_this_node_is_reported_another_nodes_is_not(store):
    kernel = FakeKernel()
    store.put(keys.endpoint("pods", "bad", "eth0"), '{"state": "ready", "node": "node0", "mode": "macvlan"}')
    store.put(keys.endpoint("pods", "other", "eth0"), '{"state": "ready", "node": "node1"}')
    pods = service(store, kernel)
    pods.enforce(world(store))
    error = pods.error()
    assert error is not None and "endpoints/pods/bad/eth0" in error and "that pod gets no table" in error
    assert "other" not in error
    assert sorted(kernel.tables) == ["/run/netns/ca"]  # the readable ones still get their tables


def test_the_pods_own_node_is_never_judged(store):
    kernel = FakeKernel()
    pods = service(store, kernel)
    pods.enforce(world(store), node_ips=node_addresses(["10.250.0.0/26", "fd00:1::/64"]))
    script = kernel.applied[0][1]
    assert 'ip saddr { 10.250.0.1 } accept comment "this node"' in script
    assert 'ip6 saddr { fd00:1::1 } accept comment "this node"' in script
    assert script.index('saddr { 10.250.0.1 }') < script.index("jump in_")  # before the pod's policy


def test_the_policy_service_hands_its_block_and_world_to_the_pod_tables(store):
    lease = NodeLease("node0", "10.250.0.0/26", "192.168.0.10", "eth0", "macvlan")
    store.put(keys.node("node0"), lease.encode())
    kernel = FakeKernel()
    agent = SimpleNamespace(node_options=SimpleNamespace(node="node0"), store_path="memory://",
                            service=SimpleNamespace(store=lambda _path: store, after_add=[]))
    svc = PolicyService(agent, nft=FakeNft(), pod_kernel=kernel)
    svc.pods.refresh()
    svc.converge(full=True)
    assert [netns for netns, _ in kernel.applied] == ["/run/netns/ca"]
    assert 'ip saddr { 10.250.0.1 } accept comment "this node"' in kernel.applied[0][1]


def test_pod_tables_counters_join_the_node_tables_rows(store):
    kernel = FakeKernel()
    pods = service(store, kernel)
    pods.enforce(world(store))
    totals = {"default deny ingress x/a (isolated by x/deny-a)": (1, 60), "node rule": (5, 500)}
    pods.add_counters(totals)
    assert totals == {"default deny ingress x/a (isolated by x/deny-a)": (4, 240), "node rule": (5, 500)}
    kernel.gone.add("/run/netns/ca")  # a pod gone meanwhile is left out, not an error
    again: dict = {}
    pods.add_counters(again)
    assert again == {}
