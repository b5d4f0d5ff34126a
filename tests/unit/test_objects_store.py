"""Objects in the store (objects/store.py) and the kind registry, against the in-memory store."""

from __future__ import annotations

import pytest

from podnet.errors import ObjectError
from podnet.model.policy import PodRecord
from podnet.objects import store as repo
from podnet.objects.registry import lookup, parse_documents
from podnet.policy.kinds import NAMESPACE, NETWORK_POLICY, POD
from podnet.store import open_store

DENY_ALL = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
NS_X = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}}


@pytest.fixture
def store():
    with open_store("memory://") as s:
        yield s


def test_apply_creates_then_is_unchanged_then_configures(store):
    objs = parse_documents([DENY_ALL, NS_X])
    assert [c.what for c in repo.apply(store, objs)] == ["created", "created"]
    assert [c.what for c in repo.apply(store, objs)] == ["unchanged", "unchanged"]
    changed = {**DENY_ALL, "spec": {"podSelector": {"matchLabels": {"pod": "a"}}}}
    assert [c.shown for c in repo.apply(store, parse_documents([changed]))] == [
        "networkpolicy/x/deny-all configured"]
    stored = repo.get(store, NETWORK_POLICY, "x")
    assert stored[0]["spec"]["podSelector"] == {"matchLabels": {"pod": "a"}}
    assert repo.get(store, NETWORK_POLICY, "y") == []


def test_delete_names_only(store):
    repo.apply(store, parse_documents([DENY_ALL]))
    assert [c.what for c in repo.delete(store, parse_documents([DENY_ALL, NS_X]))] == ["deleted", "not found"]
    assert repo.get(store, NETWORK_POLICY) == []


def test_kind_aliases():
    assert lookup("netpol") is lookup("NetworkPolicies") is lookup("networkpolicy") is NETWORK_POLICY
    assert lookup("ns").kind == "Namespace" and lookup("hep").kind == "HostEndpoint"
    assert lookup("no").kind == "Node" and lookup("po") is POD
    with pytest.raises(ObjectError, match="unknown kind") as err:
        lookup("deployment")
    assert ("ClusterPolicy, EndpointSlice, HTTPRoute, Host, HostEndpoint, MeshAuthorizationPolicy, MeshTrafficPolicy, "
            "Namespace, NetworkPolicy, Node, PeerAuthentication, Pod, Service, ServiceExport, ServiceImport, "
            "Tier") in err.value.details


def test_register_pods_keeps_user_namespace_labels(store):
    repo.apply(store, parse_documents([NS_X]))
    repo.label(store, NAMESPACE, "x", ["team=red"])
    pod = PodRecord("x", "a", "node0", ("10.244.0.2",), {"pod": "a"},
                         ({"name": "serve-80-tcp", "port": 80, "protocol": "TCP"},))
    repo.register_pods(store, [pod], {"x": {"ns": "x"}, "y": {"ns": "y"}})
    ns = {d["metadata"]["name"]: d["metadata"]["labels"] for d in repo.get(store, NAMESPACE)}
    assert ns["x"] == {"ns": "x", "team": "red", "kubernetes.io/metadata.name": "x"}
    assert ns["y"] == {"ns": "y", "kubernetes.io/metadata.name": "y"}
    (stored,) = repo.get(store, POD, "x")
    assert PodRecord.from_json(stored) == pod


def test_label_sets_and_removes(store):
    repo.register_pods(store, [PodRecord("x", "a", labels={"pod": "a", "old": "1"})], {})
    assert repo.label(store, POD, "x/a", ["tier=web", "old-"]).shown == "pod/x/a labeled"
    assert repo.get(store, POD, "x")[0]["metadata"]["labels"] == {"pod": "a", "tier": "web"}
    repo.label(store, NAMESPACE, "new", ["env=prod"])  # a namespace nobody declared yet
    assert repo.get(store, NAMESPACE)[0]["metadata"]["labels"]["env"] == "prod"


@pytest.mark.parametrize("changes, message", [
    ([], "no label changes"),
    (["justakey"], "bad label change"),
    (["kubernetes.io/metadata.name=evil"], "always the namespace's name"),
    (["bad key=v"], "bad key"),
])
def test_label_errors(store, changes, message):
    with pytest.raises(ObjectError, match=message):
        repo.label(store, NAMESPACE, "x", changes)


def test_label_unknown_pod_and_bad_target(store):
    with pytest.raises(ObjectError, match="not known"):
        repo.label(store, POD, "x/ghost", ["a=b"])
    with pytest.raises(ObjectError, match="NAMESPACE/NAME"):
        repo.label(store, POD, "ghost", ["a=b"])


def test_apply_is_all_or_nothing(store):
    """A file that fails to parse changes nothing (parse happens before any write)."""
    bad = {**DENY_ALL, "metadata": {"name": "bad", "namespace": "x"}, "spec": {"podSelector": 7}}
    with pytest.raises(ObjectError):
        repo.apply(store, parse_documents([NS_X, bad]))
    assert repo.get(store, NAMESPACE) == []


def test_the_shipped_examples_parse():
    import pathlib

    import yaml

    files = sorted((pathlib.Path(__file__).parents[2] / "examples" / "policy").glob("*.yaml"))
    assert files
    for path in files:
        assert parse_documents(d for d in yaml.safe_load_all(path.read_text()) if d), path
