"""Policy documents: Kubernetes defaults and validation, podnet kinds, manifest round trip."""

from __future__ import annotations

import ipaddress
import json

import pytest

from podnet.errors import ObjectError, PodnetError
from podnet.objects.registry import parse_document, parse_documents
from podnet.policy.objects import ClusterPolicy, Namespace, NetworkPolicy
from podnet.policy.rules import NetworkPolicyPort, PortRange

NP = "networking.k8s.io/v1"
PODNET = "podnet.io/v1"


def netpol(spec: dict, name: str = "p", namespace: str | None = "x") -> dict:
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {"apiVersion": NP, "kind": "NetworkPolicy", "metadata": meta, "spec": spec}


def cluster(spec: dict, name: str = "cp") -> dict:
    return {"apiVersion": PODNET, "kind": "ClusterPolicy", "metadata": {"name": name},
            "spec": spec}


def error_of(doc: dict) -> str:
    with pytest.raises(ObjectError) as err:
        parse_document(doc, 3)
    assert isinstance(err.value, PodnetError)
    return str(err.value)


def test_namespace_always_labelled_with_its_name():
    ns = parse_document({"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": "x", "labels": {"ns": "x"}}}, 0)
    assert isinstance(ns, Namespace) and ns.namespace is None
    assert dict(ns.labels) == {"kubernetes.io/metadata.name": "x", "ns": "x"}
    assert ns.key == "policy/namespaces/x"
    msg = error_of({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "x", "labels": {"kubernetes.io/metadata.name": "y"}}})
    assert msg.startswith("Namespace x: metadata.labels.kubernetes.io/metadata.name: 'y' differs")


def test_network_policy_defaults():
    p = parse_document(netpol({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]},
                              namespace=None), 0)
    assert isinstance(p, NetworkPolicy)
    assert p.namespace == "default" and p.key == "policy/networkpolicies/default/p"
    assert p.pod_selector.selects_all and p.policy_types == ("Ingress",)
    assert p.ingress[0].ports == (NetworkPolicyPort("TCP", 80),)  # protocol defaults to TCP
    assert p.ingress[0].peers is None and p.egress == ()


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({}, ("Ingress",)),  # every policy without policyTypes affects ingress
        ({"ingress": [{}]}, ("Ingress",)),
        ({"egress": [{}]}, ("Ingress", "Egress")),  # an egress section adds Egress
        ({"egress": []}, ("Ingress",)),  # Kubernetes: only a NON-EMPTY egress list counts
        ({"policyTypes": []}, ("Ingress",)),  # empty = unset, defaulted
        ({"policyTypes": ["Egress"]}, ("Egress",)),
        ({"policyTypes": ["Egress", "Ingress"], "egress": [{}]}, ("Ingress", "Egress")),
    ],
)
def test_policy_types_inferred_like_kubernetes(spec, types):
    assert parse_document(netpol({"podSelector": {}} | spec), 0).policy_types == types


def test_missing_and_empty_lists_are_kept_apart():
    p = parse_document(netpol({"podSelector": {}, "ingress": [
        {}, {"from": []}, {"ports": []}, {"from": [{"podSelector": {}}]}]}), 0)
    assert [r.peers for r in p.ingress][:2] == [None, ()]
    assert p.ingress[2].ports == () and p.ingress[0].ports is None
    assert parse_document(p.to_dict(), 0) == p


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "NetworkPolicy x/p: spec.podSelector: required"),
        ({"podSelector": {}, "ingress": [{}, {"ports": [{"port": 80}, {"port": 70000}]}]},
         "NetworkPolicy x/p: spec.ingress[1].ports[1].port: 70000 is not a port (1-65535)"),
        ({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
         "spec.ingress[0].ports[0].protocol: 'ICMP' is not one of TCP, UDP, SCTP"),
        ({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
         "spec.ingress[0].ports[0].endPort: needs a numeric port"),
        ({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
         "spec.ingress[0].ports[0].endPort: 80 is below port 90"),
        ({"podSelector": {}, "ingress": [{"ports": [{"endPort": 80}]}]},
         "spec.ingress[0].ports[0].endPort: needs a numeric port"),
        ({"podSelector": {}, "ingress": [{"ports": [{"port": "Serve_80"}]}]},
         "'Serve_80' is neither a port number nor a port name"),
        ({"podSelector": {}, "ingress": [{"ports": [{"port": "a-very-long-port-name"}]}]},
         "neither a port number nor a port name"),
        ({"podSelector": {}, "ingress": [{"ports": [{"port": True}]}]}, "True is not an integer"),
        ({"podSelector": {}, "ingress": [{"from": [{}]}]},
         "spec.ingress[0].from[0]: a peer needs at least one of"),
        ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"},
                                                "podSelector": {}}]}]},
         "spec.egress[0].to[0]: ipBlock cannot be combined with podSelector"),
        ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                             "except": ["11.0.0.0/16"]}}]}]},
         "spec.egress[0].to[0].ipBlock.except[0]: 11.0.0.0/16 is not strictly inside"),
        ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                             "except": ["10.0.0.0/8"]}}]}]},
         "10.0.0.0/8 is not strictly inside cidr 10.0.0.0/8"),
        ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]},
         "spec.egress[0].to[0].ipBlock.cidr: '10.0.0.1/8' has host bits set"),
        ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]},
         "is not a CIDR (address/prefix-length)"),
        ({"podSelector": {}, "egress": [{"to": [{"nets": ["10.0.0.0/8"]}]}]},
         "spec.egress[0].to[0].nets: unknown field"),
        ({"podSelector": {}, "policyTypes": ["ingress"]},
         "spec.policyTypes[0]: 'ingress' is not Ingress or Egress"),
        ({"podselector": {}}, "NetworkPolicy x/p: spec.podselector: unknown field"),
        ({"podSelector": {"matchLabels": {"pod": "a b"}}}, "spec.podSelector.matchLabels: label"),
    ],
)
def test_network_policy_validation(spec, message):
    assert message in error_of(netpol(spec))


def test_ipblock_ipv6_and_named_ports_parse():
    p = parse_document(netpol({"podSelector": {}, "egress": [{
        "to": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::/96"]}}],
        "ports": [{"port": "serve-80-udp", "protocol": "UDP"},
                  {"port": 8000, "endPort": 8080, "protocol": "SCTP"}]}]}), 0)
    block = p.egress[0].peers[0].ip_block
    assert block.contains(ipaddress.ip_address("fd00::1:0:0"))
    assert not block.contains(ipaddress.ip_address("fd00::1"))
    assert not block.contains(ipaddress.ip_address("10.0.0.1"))
    assert p.egress[0].ports[1] == NetworkPolicyPort("SCTP", 8000, 8080)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}},
         "document 3: kind: 'Pod' is not a kind podnet apply takes"),
        ({"apiVersion": "networking.k8s.io/v1beta1", "kind": "NetworkPolicy",
          "metadata": {"name": "a"}, "spec": {"podSelector": {}}},
         "document 3: apiVersion: 'networking.k8s.io/v1beta1' is not the apiVersion"),
        ({"apiVersion": NP, "kind": "NetworkPolicy", "metadata": {}, "spec": {}},
         "document 3: metadata.name: None is not a DNS subdomain name"),
        ({"apiVersion": NP, "kind": "NetworkPolicy", "metadata": {"name": "a"}, "spek": {}},
         "document 3: spek: unknown field"),
        ({"apiVersion": PODNET, "kind": "Tier", "metadata": {"name": "t", "namespace": "x"},
          "spec": {"order": 1}}, "Tier t: metadata.namespace: Tier is cluster-scoped"),
        ({"apiVersion": PODNET, "kind": "Tier", "metadata": {"name": "default"},
          "spec": {"order": 5}}, "Tier default: spec.order: the built-in tier 'default'"),
        ({"apiVersion": PODNET, "kind": "Tier", "metadata": {"name": "t"}},
         "Tier t: spec.order: required"),
        ({"apiVersion": PODNET, "kind": "HostEndpoint", "metadata": {"name": "h"},
          "spec": {"node": "n1", "host": "h1"}}, "HostEndpoint h: spec: give exactly one"),
        ({"apiVersion": PODNET, "kind": "HostEndpoint", "metadata": {"name": "h"},
          "spec": {"host": "h1", "ips": ["10.0.0.300"]}},
         "HostEndpoint h: spec.ips[0]: '10.0.0.300' is not an IP address"),
    ],
)
def test_document_errors_name_document_and_field(doc, message):
    assert message in error_of(doc)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"selector": {}}, "ClusterPolicy cp: spec.selector: selects nothing"),
        ({"ingress": [{"action": "Allow"}]}, "ClusterPolicy cp: spec.selector: required"),
        ({"selector": {"podSelector": {}}, "ingress": [{"protocol": "TCP"}]},
         "ClusterPolicy cp: spec.ingress[0].action: required"),
        ({"selector": {"podSelector": {}}, "ingress": [{"action": "Drop"}]},
         "spec.ingress[0].action: 'Drop' is not one of Allow, Deny, Pass, Log"),
        ({"selector": {"podSelector": {}}, "ingress": [{"action": "Deny", "ports": [80]}]},
         "spec.ingress[0].ports: ports need protocol TCP, UDP or SCTP"),
        ({"selector": {"podSelector": {}}, "ingress": [{"action": "Deny", "protocol": "ICMP",
                                                         "ports": [80]}]},
         "ports need protocol TCP, UDP or SCTP"),
        ({"selector": {"podSelector": {}}, "ingress": [{"action": "Deny", "protocol": "TCP",
                                                         "ports": [80, "90-85"]}]},
         "spec.ingress[0].ports[1]: '90-85': the range ends below its start"),
        ({"selector": {"podSelector": {}}, "ingress": [{"action": "Deny", "protocol": "TCP",
                                                         "ports": ["http"]}]},
         "spec.ingress[0].ports[0]: 'http' is not a port or a 'lo-hi' range"),
        ({"selector": {"podSelector": {}}, "types": ["Ingress"],
          "egress": [{"action": "Deny"}]},
         "spec.egress: has rules but spec.types does not list Egress"),
        ({"selector": {"podSelector": {}}, "ingress": [{"action": "Deny", "from": [
            {"podSelector": {}, "hostEndpointSelector": {}}]}]},
         "spec.ingress[0].from[0]: hostEndpointSelector cannot be combined"),
        ({"selector": {"podSelector": {}}, "egress": [{"action": "Deny", "to": [
            {"nets": ["10.0.0.0/33"]}]}]}, "spec.egress[0].to[0].nets[0]: '10.0.0.0/33'"),
        ({"selector": {"podSelector": {}}, "order": "first"},
         "ClusterPolicy cp: spec.order: 'first' is not a number"),
        ({"selector": {"podSelector": {}}, "tier": "Security"},
         "spec.tier: 'Security' is not a DNS label"),
    ],
)
def test_cluster_policy_validation(spec, message):
    assert message in error_of(cluster(spec))


def test_cluster_policy_defaults_and_rules():
    cp = parse_document(cluster({
        "selector": {"namespaceSelector": {"matchLabels": {"ns": "x"}}},
        "egress": [{"action": "Deny", "name": "no-db", "protocol": "TCP",
                    "ports": [5432, "8000-8080", "9000"],
                    "to": [{"nets": ["10.0.0.0/8", "192.0.2.1"], "notNets": ["10.1.0.0/16"]},
                           {"hostEndpointSelector": {}}]}]}), 0)
    assert isinstance(cp, ClusterPolicy)
    assert (cp.tier, cp.order, cp.types) == ("default", 1000, ("Ingress", "Egress"))
    assert cp.key == "policy/clusterpolicies/cp" and cp.namespace is None
    assert cp.selector.selects_pods and not cp.selector.selects_hosts
    rule = cp.egress[0]
    assert rule.ports == (PortRange(5432, 5432), PortRange(8000, 8080), PortRange(9000, 9000))
    assert rule.peers[0].nets[1] == ipaddress.ip_network("192.0.2.1/32")


ROUND_TRIP = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}},
    netpol({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                {"key": "pod", "operator": "In", "values": ["b", "c"]}]},
                "namespaceSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8",
                                                      "except": ["10.1.0.0/16"]}}],
                         "ports": [{"port": "serve-80-tcp"}, {"protocol": "UDP", "port": 81,
                                                              "endPort": 90}]}],
            "egress": [{"to": []}, {}]}),
    {"apiVersion": PODNET, "kind": "Tier", "metadata": {"name": "security"},
     "spec": {"order": 100}},
    cluster({"tier": "security", "order": 10.5,
             "selector": {"podSelector": {}, "hostEndpointSelector": {"matchLabels": {"r": "db"}}},
             "types": ["Ingress"],
             "ingress": [{"action": "Log"}, {"action": "Allow", "name": "web", "protocol": "TCP",
                                             "ports": [80, "8000-8080"],
                                             "from": [{"podSelector": {}, "notNets": ["fd00::/8"]}]},
                         {"action": "Pass", "from": []}, {"action": "Deny"}]}),
    {"apiVersion": PODNET, "kind": "HostEndpoint",
     "metadata": {"name": "node1-eth0", "labels": {"role": "node"}},
     "spec": {"node": "node1", "ips": ["10.9.0.1", "fd00::1"]}},
]


@pytest.mark.parametrize("doc", ROUND_TRIP, ids=lambda d: d["kind"])
def test_manifest_round_trip(doc):
    obj = parse_document(doc, 0)
    manifest = obj.to_dict()
    assert manifest["apiVersion"] == doc["apiVersion"] and manifest["kind"] == doc["kind"]
    again = parse_document(manifest, 0)
    assert again == obj and again.to_dict() == manifest
    assert manifest["metadata"]["name"] == doc["metadata"]["name"]


def test_parse_documents_skips_none_and_refuses_duplicates():
    objs = parse_documents([None, *ROUND_TRIP, None])
    assert [o.kind for o in objs] == ["Namespace", "NetworkPolicy", "Tier", "ClusterPolicy",
                                      "HostEndpoint"]
    assert [o.key for o in objs] == [
        "policy/namespaces/x", "policy/networkpolicies/x/p", "policy/tiers/security",
        "policy/clusterpolicies/cp", "policy/hostendpoints/node1-eth0"]
    with pytest.raises(ObjectError, match=r"NetworkPolicy x/p: defined twice \(documents 0 and 2\)"):
        parse_documents([netpol({"podSelector": {}}), None, netpol({"podSelector": {}})])
    # the same name in another namespace is another object
    assert len(parse_documents([netpol({"podSelector": {}}),
                                netpol({"podSelector": {}}, namespace="y")])) == 2


def test_stored_objects_parse_by_their_key():
    from podnet.model.base import CorruptRecord
    from podnet.policy.world import parse_stored

    with pytest.raises(CorruptRecord, match="expected a Tier manifest"):
        parse_stored("policy/tiers/p", json.dumps(netpol({"podSelector": {}})))
    host = parse_stored("policy/hostendpoints/gw", json.dumps(
        {"apiVersion": PODNET, "kind": "HostEndpoint", "metadata": {"name": "gw"}, "spec": {"host": "router"}}))
    assert (host.node, host.host, host.ips, host.machine) == (None, "router", (), "router")
