"""The policy service's decisions (agent/policy_service.py), no root: a memory store and
a fake nft that keeps the policy table as the kernel would. Fail closed: the table in
force goes only when the store records that the last policy was deleted; a record or
a script that cannot be used is reported and the last good table stays."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest

from podnet import keys
from podnet.agent.policy_service import PolicyService
from podnet.errors import KernelError
from podnet.kernel.nft import FakeNft
from podnet.model.cluster import NodeLease
from podnet.model.policy import PodRecord
from podnet.objects import store as objects
from podnet.objects.registry import parse_documents
from podnet.store import open_store
from podnet.store.base import dumps

TABLE = ("inet", "podnet-policy")
DENY_X = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}}
NS_X = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}}


class KernelNft(FakeNft):
    """FakeNft holding `inet podnet-policy` as the kernel would: there after a script
    that builds it, gone after one that deletes it, its generation readable. `reject`:
    refuse every script (as nft refuses a bad one: nothing changes)."""

    def __init__(self, generation: int | None = None) -> None:
        super().__init__()
        self.reject: str | None = None
        if generation is not None:
            self._hold(generation)

    def _hold(self, generation: int) -> None:
        self.tables[TABLE] = {"nftables": [{"set": {"name": "generation"}},
                                           {"counter": {"name": f"generation_{generation}"}}]}

    def holds(self) -> bool:
        return TABLE in self.tables

    def apply(self, script: str) -> None:
        if self.reject is not None:
            raise KernelError("nft transaction failed", details=self.reject)
        super().apply(script)
        if script.rstrip().endswith("delete table inet podnet-policy"):
            self.tables.pop(TABLE, None)
        found = re.search(r"add counter inet podnet-policy generation_(\d+)\n", script)
        if found:
            self._hold(int(found.group(1)))


def agent(store, node: str = "node0") -> SimpleNamespace:
    return SimpleNamespace(node_options=SimpleNamespace(node=node), store_path="memory://",
                           service=SimpleNamespace(store=lambda _path: store))


@pytest.fixture
def store():
    with open_store("memory://") as handle:
        objects.apply(handle, parse_documents([NS_X]))
        yield handle


def pod(store, name: str, ip: str, node: str = "node0") -> None:
    record = PodRecord("x", name, node, (ip,), {"pod": name})
    store.put(record.key, record.encode())


def enforcing(store) -> tuple[PolicyService, KernelNft]:
    """x/a on node0 under a default deny, converged: a table in force."""
    pod(store, "a", "10.244.0.2")
    objects.apply(store, parse_documents([DENY_X]))
    nft = KernelNft()
    svc = PolicyService(agent(store), nft)
    svc.converge()
    return svc, nft


def in_map(svc: PolicyService) -> list[str]:
    assert svc.applied is not None
    return [element.split(" : ")[0] for element in svc.applied.maps["in4"][1]]


# -- an empty store never removes the table in force


def test_a_store_without_policy_or_marker_keeps_the_table_in_force(store):
    """A mistyped --store or etcd prefix looks like a store without policy: the table
    the node enforces (from before this start) stays, and status says why."""
    nft = KernelNft(generation=1234)
    svc = PolicyService(agent(store), nft)
    svc.converge()
    assert nft.holds() and nft.scripts == []
    status = svc.status()
    assert "no record that the last policy was deleted" in status["error"], status
    assert status["table"] == "inet podnet-policy"


def test_no_policy_and_no_table_is_quiet(store):
    nft = KernelNft()
    svc = PolicyService(agent(store), nft)
    svc.converge()
    assert nft.scripts == [] and svc.status()["error"] is None and svc.status()["table"] is None


def test_deleting_the_last_policy_writes_the_marker_then_the_table_goes(store):
    pod(store, "a", "10.244.0.2")
    nft = KernelNft()
    svc = PolicyService(agent(store), nft)
    deny = parse_documents([DENY_X])
    objects.apply(store, deny)
    svc.converge()
    assert nft.holds() and store.get(keys.none_left("policy")) is None
    objects.delete(store, deny)
    assert store.get(keys.none_left("policy")) is not None  # written with the delete
    svc.converge()
    assert not nft.holds() and svc.status()["error"] is None
    # a restarted agent on that store knows as much
    nft2 = KernelNft(generation=1)
    PolicyService(agent(store), nft2).converge()
    assert not nft2.holds()
    objects.apply(store, deny)  # policy again: the marker goes
    assert store.get(keys.none_left("policy")) is None


def test_policies_removed_behind_podnets_back_keep_the_table(store):
    """Keys deleted without `podnet delete` (no marker): fail closed, say so."""
    svc, nft = enforcing(store)
    store.delete_prefix(keys.NETWORK_POLICIES)
    svc.converge()
    assert nft.holds() and "no record that the last policy was deleted" in svc.status()["error"]


def test_deleting_a_policy_that_is_not_there_writes_no_marker(store):
    objects.delete(store, parse_documents([DENY_X]))
    assert store.get(keys.none_left("policy")) is None


# -- records that cannot be used


def bad_pod(store, name: str, ip: str) -> str:
    raw = PodRecord("x", name, "node0", ("10.244.0.99",), {"pod": name}).to_json()
    raw["status"]["podIPs"] = [ip]
    key = keys.pod("x", name)
    store.put(key, dumps(raw))
    return key


def test_a_malformed_pod_is_reported_and_the_other_changes_still_apply(store):
    svc, nft = enforcing(store)
    assert in_map(svc) == ["10.244.0.2"]
    key = bad_pod(store, "c", "10.244.0.300")
    pod(store, "d", "10.244.0.4")  # a change made meanwhile
    svc.converge()
    status = svc.status()
    assert key in status["error"] and "10.244.0.300" in status["error"], status
    assert in_map(svc) == ["10.244.0.2", "10.244.0.4"]  # x/d is enforced all the same
    assert nft.holds()


def test_a_pod_record_gone_bad_keeps_its_last_good_version(store):
    svc, _nft = enforcing(store)
    key = bad_pod(store, "a", "fe80::1%eth0;flush ruleset")
    svc.converge()
    assert key in svc.status()["error"]
    assert in_map(svc) == ["10.244.0.2"]  # x/a keeps its chain
    pod(store, "a", "10.244.0.2")  # repaired
    svc.converge()
    assert svc.status()["error"] is None


def test_a_malformed_policy_never_seen_good_keeps_the_whole_table(store):
    """Leaving out a policy could open what it closes: nothing new is applied."""
    svc, nft = enforcing(store)
    scripts = len(nft.scripts)
    store.put(keys.object_key(keys.NETWORK_POLICIES, "broken", "x"), '{"kind": "NetworkPolicy"}')
    pod(store, "d", "10.244.0.4")
    svc.converge()
    assert "policy/networkpolicies/x/broken" in svc.status()["error"]
    assert len(nft.scripts) == scripts and in_map(svc) == ["10.244.0.2"]


def test_an_unexpected_failure_is_reported_not_raised(store, monkeypatch):
    """Any exception (not only podnet's own) keeps the table and the policy thread."""
    import podnet.policy.compile

    pod(store, "a", "10.244.0.2")
    objects.apply(store, parse_documents([DENY_X]))
    svc = PolicyService(agent(store), KernelNft())

    def broken(*_args, **_kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(podnet.policy.compile, "compile_node", broken)
    result = svc.converge()
    assert result["revision"] is None and "a bug" in svc.status()["error"]


def test_an_nft_rejection_is_reported_and_the_last_table_stays(store):
    pod(store, "a", "10.244.0.2")
    objects.apply(store, parse_documents([DENY_X]))
    nft = KernelNft()
    svc = PolicyService(agent(store), nft)
    nft.fail = "Error: syntax error, unexpected newline"
    svc.converge()
    assert "syntax error, unexpected newline" in svc.status()["error"]
    assert svc.applied is None and not nft.holds()
    svc.converge()  # nft takes it now
    assert svc.status()["error"] is None and nft.holds()
    nft.reject = "Error: Could not process rule"  # every script from now on
    pod(store, "d", "10.244.0.4")
    svc.converge()
    assert "Could not process rule" in svc.status()["error"]
    assert in_map(svc) == ["10.244.0.2"]  # what the kernel still holds


def test_each_distinct_error_is_logged_once(store, caplog):
    svc, _nft = enforcing(store)
    key = bad_pod(store, "c", "10.244.0.300")
    with caplog.at_level(logging.WARNING, logger="podnet.agent.policy"):
        svc.converge()
        svc.converge(full=True)
        svc.converge()
    assert len([r for r in caplog.records if key in r.getMessage()]) == 1, caplog.text


# -- addresses of this node's block that no pod owns


def test_the_nodes_block_from_its_lease_drops_unowned_addresses(store):
    pod(store, "a", "10.244.0.2")
    pod(store, "b", "10.244.1.2", node="node1")
    lease = NodeLease("node0", "10.244.0.0/24", "172.31.0.10", "eth0", "host-gw")
    store.put(lease.key, lease.encode())
    objects.apply(store, parse_documents([DENY_X]))
    svc = PolicyService(agent(store), KernelNft())
    svc.converge()
    assert svc.applied is not None
    assert svc.applied.sets["owned4"].elements == ("10.244.0.2",)
    assert any(line.startswith("ip saddr 10.244.0.0/24 ip saddr != @owned4 ") and line.split(" comment ")[0]
               .endswith("drop") for line in svc.applied.chains["egress"])
    assert any(line.startswith("ip daddr 10.244.0.0/24 ip daddr != @owned4 ")
               for line in svc.applied.chains["ingress"])


def test_two_pods_claiming_one_address_own_it_neither(store):
    """A recycled address still named by a former pod's record: neither chain applies,
    the address is dropped as unowned, and status says which pods collide."""
    pod(store, "a", "10.244.0.2")
    pod(store, "old", "10.244.0.2")
    pod(store, "b", "10.244.0.3")
    lease = NodeLease("node0", "10.244.0.0/24", "172.31.0.10", "eth0", "host-gw")
    store.put(lease.key, lease.encode())
    objects.apply(store, parse_documents([DENY_X]))
    svc = PolicyService(agent(store), KernelNft())
    svc.converge()
    assert svc.applied is not None and svc.applied.sets["owned4"].elements == ("10.244.0.3",)
    assert in_map(svc) == ["10.244.0.3"]
    assert "10.244.0.2" in svc.status()["error"] and "x/old" in svc.status()["error"]
