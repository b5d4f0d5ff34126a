"""`podnet describe` and `podnet get` of every kind, from an in-memory store that
holds what a lab would: node leases, pods, policies."""

from __future__ import annotations

import pytest

from podnet import keys
from podnet.errors import ObjectError
from podnet.model.cluster import NodeLease
from podnet.model.policy import PodRecord
from podnet.objects import store as objects
from podnet.objects.describe import describe, render
from podnet.objects.registry import KINDS, lookup, parse_documents
from podnet.store import open_store

POLICIES = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "a"}}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "x"},
     "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}},
    {"apiVersion": "podnet.io/v1", "kind": "Tier", "metadata": {"name": "security"}, "spec": {"order": 10}},
    {"apiVersion": "podnet.io/v1", "kind": "ClusterPolicy", "metadata": {"name": "guard"},
     "spec": {"tier": "security", "order": 5, "selector": {"namespaceSelector": {"matchLabels": {"team": "a"}}},
              "types": ["Egress"], "egress": [{"action": "Deny", "to": [{"nets": ["198.51.100.0/24"]}]}]}},
    {"apiVersion": "podnet.io/v1", "kind": "HostEndpoint", "metadata": {"name": "n0-host"}, "spec": {"node": "node0"}},
]


@pytest.fixture
def store():
    with open_store("memory://") as s:
        lease = NodeLease("node0", "10.244.1.0/24", "172.31.0.10", "eth0", "vxlan", {"vtep_mac": "02:00:00:00:00:01"})
        s.put(lease.key, lease.encode())
        objects.register_pods(s, [
            PodRecord("x", "web-1", "node0", ("10.244.1.2",), {"app": "web"},
                      ({"name": "http", "port": 80, "protocol": "TCP"},)),
            PodRecord("x", "db-1", "node0", ("10.244.1.3",), {"app": "db"})], {"x": {"team": "a"}})
        objects.apply(s, parse_documents(POLICIES))
        yield s


def details(store, kind: str, name: str, namespace: str | None = None) -> dict:
    return dict(describe(store, lookup(kind), name, namespace)["details"])


def test_a_pod_says_which_policies_select_it(store):
    web = details(store, "pod", "web-1", "x")
    assert web["IPs"] == "10.244.1.2"
    assert web["Selected by"] == ["ClusterPolicy guard (tier security, order 5, Egress)",
                                  "NetworkPolicy x/web (Ingress)"]
    assert details(store, "po", "db-1", "x")["Selected by"] == ["ClusterPolicy guard (tier security, order 5, Egress)"]


def test_a_policy_says_what_it_selects(store):
    assert details(store, "netpol", "web", "x")["Selects"] == ["pod x/web-1"]
    guard = details(store, "cp", "guard")
    assert guard["Tier"] == "security (order 10)" and guard["Selects"] == ["pod x/db-1", "pod x/web-1"]
    assert details(store, "tiers", "security")["ClusterPolicies (in order)"] == ["5  guard"]
    assert details(store, "ns", "x")["NetworkPolicies"] == ["web"]


def test_a_host_endpoint_gets_its_nodes_address(store):
    hep = details(store, "hep", "n0-host")
    assert hep["Addresses"] == "172.31.0.10" and hep["Selected by"] == ["(none: everything is allowed)"]


def test_nodes_are_leases_shown_as_manifests(store):
    (node,) = objects.get(store, lookup("nodes"))
    assert node["kind"] == "Node" and node["spec"]["block"] == "10.244.1.0/24"
    assert details(store, "node", "node0")["Pods"] == ["x/db-1  10.244.1.3", "x/web-1  10.244.1.2"]
    text = render(lookup("no"), describe(store, lookup("no"), "node0"))
    assert text.startswith("Name:       node0\nKind:       Node (podnet.io/v1)")
    assert "underlayIP: 172.31.0.10" in text


def test_describe_of_a_missing_object(store):
    with pytest.raises(ObjectError, match="networkpolicy 'x/nope' not found"):
        describe(store, lookup("netpol"), "nope", "x")


def test_every_kind_is_declared_consistently():
    names = [name for kind in KINDS for name in kind.names]
    assert len(names) == len(set(names)), "two kinds share a name"
    prefixes = {f.prefix for f in keys.FAMILIES}
    for kind in KINDS:
        assert kind.prefix in prefixes, kind.kind
        assert lookup(kind.kind) is kind and lookup(kind.plural) is kind
    with pytest.raises(ObjectError, match="is not a kind podnet apply takes"):
        parse_documents([{"apiVersion": "podnet.io/v1", "kind": "Node", "metadata": {"name": "n"}}])
