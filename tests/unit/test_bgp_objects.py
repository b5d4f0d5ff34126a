"""BGPConfiguration and BGPPeer (bgp/objects.py, bgp/kinds.py, bgp/selector.py): what
apply takes and refuses (with the field path), Calico's selector subset, one node's
effective configuration and the sessions the peers give it. Pure."""

from __future__ import annotations

import pytest

from podnet import keys
from podnet.bgp.objects import (
    DEFAULTS,
    BGPConfiguration,
    BGPPeer,
    NodeInfo,
    PeerTarget,
    effective_config,
    node_infos,
    peers_for,
)
from podnet.bgp.selector import parse_selector
from podnet.errors import ObjectError
from podnet.model.base import CorruptRecord
from podnet.model.cluster import NodeLease
from podnet.objects import store as repo
from podnet.objects.registry import lookup, parse_documents
from podnet.schema.fields import Loc
from podnet.store import open_store

API = "projectcalico.org/v3"


def config(name: str = "default", **spec) -> dict:
    return {"apiVersion": API, "kind": "BGPConfiguration", "metadata": {"name": name}, "spec": spec}


def peer(name: str = "tor", **spec) -> dict:
    return {"apiVersion": API, "kind": "BGPPeer", "metadata": {"name": name}, "spec": spec}


def one(doc: dict):
    (obj,) = parse_documents([doc])
    return obj


def sel(text: str):
    return parse_selector(text, Loc("test"))


# -- parsing --------------------------------------------------------------------------


def test_a_calico_configuration_reads_and_renders_back():
    doc = config(asNumber=63400, nodeToNodeMeshEnabled=False, serviceClusterIPs=[{"cidr": "10.96.0.0/12"}],
                 serviceExternalIPs=[{"cidr": "104.244.42.129/32"}, {"cidr": "172.217.3.0/24"}],
                 listenPort=178, logSeverityScreen="Info")
    obj = one(doc)
    assert (obj.as_number, obj.node_to_node_mesh, obj.listen_port, obj.log_severity) == (63400, False, 178, "Info")
    assert obj.service_external_ips == ("104.244.42.129/32", "172.217.3.0/24")
    assert obj.to_dict() == doc and one(obj.to_dict()) == obj
    assert obj.key == "bgpconfigurations/default" and obj.node is None
    rr = one(config("node.node1", routeReflectorClusterID="244.0.0.1", asNumber=65001))
    assert rr.node == "node1" and rr.rr_cluster_id == "244.0.0.1" and rr.node_to_node_mesh is None
    assert one(config()) == BGPConfiguration("default")  # nothing given: everything from the defaults


def test_a_calico_peer_reads_and_renders_back():
    tor = one(peer(node="node1", peerIP="192.168.1.1", asNumber=63400))
    assert (tor.node, tor.peer_address, tor.peer_port, tor.as_number) == ("node1", "192.168.1.1", None, 63400)
    with_port = one(peer(peerIP="192.168.1.1:1790", asNumber=63400, keepOriginalNextHop=True))
    assert (with_port.peer_address, with_port.peer_port, with_port.peer_ip) == ("192.168.1.1", 1790, "192.168.1.1:1790")
    rr = one(peer("to-rr", nodeSelector="all()", peerSelector="route-reflector == 'true'"))
    assert rr.as_number is None and rr.node_selector.terms == () and rr.peer_selector.text == "route-reflector == 'true'"
    for obj in (tor, with_port, rr):
        assert one(obj.to_dict()) == obj
    assert rr.key == "bgppeers/to-rr" == keys.object_key(keys.BGP_PEERS, "to-rr")


@pytest.mark.parametrize(("doc", "message"), [
    (config(asNumber=0), "spec.asNumber: 0 is not an AS number (1-4294967295)"),
    (config(asNumber=4294967296), "spec.asNumber: 4294967296 is not an AS number"),
    (config(asNumber="64512"), "spec.asNumber: '64512' is not an integer"),
    (config(asNumber=True), "spec.asNumber: True is not an integer"),
    (config(asNumber=1.5), "spec.asNumber: 1.5 is not an integer"),
    (config(listenPort=70000), "spec.listenPort: 70000 is not a port"),
    (config(nodeToNodeMeshEnabled="yes"), "spec.nodeToNodeMeshEnabled: 'yes' is not true or false"),
    (config(logSeverityScreen="info"), "spec.logSeverityScreen: 'info' is not one of Info, Debug"),
    (config(serviceClusterIPs=[{"cidr": "10.96.0.1/12"}]), "spec.serviceClusterIPs[0].cidr: '10.96.0.1/12' has host"),
    (config(serviceClusterIPs=["10.96.0.0/12"]), "spec.serviceClusterIPs[0]: must be a mapping"),
    (config(serviceExternalIPs=[{"cidr": "fd00::/64"}]), "spec.serviceExternalIPs[0].cidr: CIDR 'fd00::/64' is IPv6"),
    (config(serviceExternalIPs=[{"net": "10.0.0.0/8"}]), "spec.serviceExternalIPs[0].net: unknown field"),
    (config(asnumber=65000), "spec.asnumber: unknown field"),
    (config(routeReflectorClusterID="244.0.0.1"), "spec.routeReflectorClusterID: a route reflector is one node"),
    (config("node.n1", routeReflectorClusterID="244.0.0"), "spec.routeReflectorClusterID: '244.0.0' is not a cluster"),
    (config("node.n1", routeReflectorClusterID="rr1"), "spec.routeReflectorClusterID: 'rr1' is not a cluster ID"),
    (config("node.n1", routeReflectorClusterID=1), "spec.routeReflectorClusterID: 1 is not a cluster ID"),
    (config("node.n1", nodeToNodeMeshEnabled=False), "spec.nodeToNodeMeshEnabled: the node-to-node mesh is cluster"),
    (config("global"), "metadata.name: 'global' is neither 'default' nor node.<node>"),
    (config("node.a.b"), "metadata.name: 'a.b' is not a DNS label"),
    ({**config(), "metadata": {"name": "default", "namespace": "x"}}, "metadata.namespace: BGPConfiguration is cluster"),
    (peer(peerIP="tor.example", asNumber=1), "spec.peerIP: 'tor.example' is not an IP address"),
    (peer(peerIP="10.0.0.300", asNumber=1), "spec.peerIP: '10.0.0.300' is not an IP address"),
    (peer(peerIP="10.0.0.1:0", asNumber=1), "spec.peerIP: 0 is not a port"),
    (peer(peerIP="10.0.0.1:bgp", asNumber=1), "spec.peerIP: '10.0.0.1:bgp': 'bgp' is not a port"),
    (peer(peerIP="10.0.0.1:", asNumber=1), "spec.peerIP: '10.0.0.1:': '' is not a port"),
    (peer(peerIP="[10.0.0.1]:179", asNumber=1), "spec.peerIP: '[10.0.0.1]:179': only an IPv6 address is written"),
    (peer(peerIP="2001:db8::1", asNumber=1), "spec.peerIP: peer '2001:db8::1' is IPv6"),
    (peer(peerIP="[2001:db8::1]:179", asNumber=1), "spec.peerIP: peer '2001:db8::1' is IPv6"),
    (peer(peerIP=167772161, asNumber=1), "spec.peerIP: 167772161 is not an IP address"),
    (peer(peerIP="10.0.0.1"), "spec.asNumber: required with peerIP"),
    (peer(peerIP="10.0.0.1", asNumber=-1), "spec.asNumber: -1 is not an AS number"),
    (peer(peerIP="10.0.0.1", asNumber=1, password="x"), "spec.password: unknown field"),
    (peer(peerIP="10.0.0.1", asNumber=1, keepOriginalNextHop="true"), "spec.keepOriginalNextHop: 'true' is not"),
    (peer(peerIP="10.0.0.1", asNumber=1, node="node1", nodeSelector="all()"), "spec.nodeSelector: give node or"),
    (peer(peerIP="10.0.0.1", asNumber=1, peerSelector="all()"), "spec.peerIP: give exactly one of peerIP and peer"),
    (peer(asNumber=1), "spec.peerIP: give exactly one of peerIP and peerSelector"),
    (peer(peerIP="10.0.0.1", asNumber=1, node="Node_1"), "spec.node: 'Node_1' is not a DNS label"),
    (peer(peerSelector="rack = 'r0'"), "spec.peerSelector: cannot read \"rack = 'r0'\""),
    (peer(peerSelector="a == 'x' || b == 'y'"), "spec.peerSelector: cannot read"),
    (peer(peerSelector="rack in {'r0'}"), "spec.peerSelector: cannot read"),
    (peer(peerSelector="(has(a))"), "spec.peerSelector: cannot read"),
    (peer(peerSelector="has(a) &&"), "spec.peerSelector: cannot read ''"),
    (peer(peerSelector="  "), "spec.peerSelector: an empty selector"),
    (peer(peerSelector=["all()"]), "spec.peerSelector: ['all()'] is not a selector"),
    (peer(peerIP="10.0.0.1", asNumber=1, nodeSelector="rack == 'r 0'"), "spec.nodeSelector: label value 'r 0'"),
    (peer(peerIP="10.0.0.1", asNumber=1, nodeSelector="has(-rack)"), "spec.nodeSelector: label key '-rack'"),
])
def test_bad_input_is_refused_with_the_field_path(doc, message):
    with pytest.raises(ObjectError) as err:
        parse_documents([doc])
    where = f"{doc['kind']} {doc['metadata']['name']}: "
    assert f"{where}{message}" in str(err.value.msg)


# -- selectors ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "labels", "matches"), [
    ("all()", {}, True),
    ("rack == 'r0'", {"rack": "r0"}, True),
    ("rack == 'r0'", {"rack": "r1"}, False),
    ("rack == 'r0'", {}, False),
    ('rack == "r0"', {"rack": "r0"}, True),
    ("rack != 'r0'", {"rack": "r1"}, True),
    ("rack != 'r0'", {}, True),  # Calico: an absent label is "not equal"
    ("rack != 'r0'", {"rack": "r0"}, False),
    ("has(route-reflector)", {"route-reflector": ""}, True),
    ("has(route-reflector)", {}, False),
    ("!has(route-reflector)", {}, True),
    ("!has(route-reflector)", {"route-reflector": "true"}, False),
    ("rack == 'r0' && has(rr)", {"rack": "r0"}, False),
    ("rack == 'r0' && has(rr)", {"rack": "r0", "rr": "true"}, True),
    ("all() && example.com/zone == 'a'", {"example.com/zone": "a"}, True),
])
def test_selectors_match_as_calico_does(text, labels, matches):
    assert sel(text).matches(labels) is matches


def test_a_selector_has_one_canonical_text():
    assert sel("rack=='r0'&&has( rr )").text == "rack == 'r0' && has(rr)"
    assert sel('all() && k != "v"').text == "k != 'v'"
    assert sel("all()").text == "all()" == sel(" all( ) ").text
    assert sel("has(a) && has(b)") != sel("has(b) && has(a)")  # order kept as written


# -- effective configuration -----------------------------------------------------------


def test_effective_config_is_defaults_then_default_then_the_nodes_own():
    assert effective_config([], "node0") == DEFAULTS
    assert (DEFAULTS.as_number, DEFAULTS.node_to_node_mesh, DEFAULTS.listen_port) == (64512, True, 179)
    default = one(config(asNumber=65000, serviceClusterIPs=[{"cidr": "10.96.0.0/12"}], listenPort=1179))
    node1 = one(config("node.node1", asNumber=65001, serviceClusterIPs=[], routeReflectorClusterID="244.0.0.1"))
    configs = [node1, default]
    mine = effective_config(configs, "node1")
    assert (mine.name, mine.as_number, mine.listen_port, mine.service_cluster_ips, mine.rr_cluster_id,
            mine.node_to_node_mesh) == ("node.node1", 65001, 1179, (), "244.0.0.1", True)
    other = effective_config(configs, "node0")
    assert (other.name, other.as_number, other.service_cluster_ips, other.rr_cluster_id) == (
        "default", 65000, ("10.96.0.0/12",), None)
    alone = effective_config([node1], "node1")  # a node config without a default: over the defaults
    assert (alone.as_number, alone.listen_port, alone.node_to_node_mesh) == (65001, 179, True)


# -- sessions -----------------------------------------------------------------------------


def rack_nodes() -> dict[str, NodeInfo]:
    """Four nodes in two racks; node0 and node2 are route reflectors of one cluster."""
    rr = {"route-reflector": "true"}
    return {
        "node0": NodeInfo("172.31.0.10", {"rack": "r0", **rr}, 64512, "244.0.0.1"),
        "node1": NodeInfo("172.31.0.11", {"rack": "r0"}, 64512),
        "node2": NodeInfo("172.31.1.10", {"rack": "r1", **rr}, 64512, "244.0.0.1"),
        "node3": NodeInfo("172.31.1.11", {"rack": "r1"}, 65003, listen_port=1179),
    }


def sessions(node: str, peers: list[BGPPeer], nodes: dict[str, NodeInfo] | None = None) -> list[tuple]:
    nodes = nodes or rack_nodes()
    return [(t.name, t.address, t.asn, t.port, t.rr_client) for t in peers_for(node, nodes[node].labels, peers, nodes)]


def test_global_node_and_selected_peers_to_a_router():
    peers = [one(peer("global", peerIP="172.31.255.1", asNumber=65100)),
             one(peer("only-node1", node="node1", peerIP="172.31.255.2:1790", asNumber=65101)),
             one(peer("rack1-tor", nodeSelector="rack == 'r1'", peerIP="172.31.255.3", asNumber=65102,
                      keepOriginalNextHop=True))]
    assert sessions("node0", peers) == [("global", "172.31.255.1", 65100, 179, False)]
    assert sessions("node1", peers) == [("global", "172.31.255.1", 65100, 179, False),
                                        ("only-node1", "172.31.255.2", 65101, 1790, False)]
    nodes = rack_nodes()
    tor = peers_for("node3", nodes["node3"].labels, peers, nodes)[1]
    assert tor == PeerTarget("rack1-tor", "172.31.255.3", 65102, 179, None, True, False)


def test_a_route_reflector_topology_from_peer_selectors():
    """Calico's recipe: reflectors peer with each other, every other node with them."""
    peers = [one(peer("rr-mesh", nodeSelector="has(route-reflector)", peerSelector="has(route-reflector)")),
             one(peer("to-rr", nodeSelector="!has(route-reflector)", peerSelector="route-reflector == 'true'"))]
    # a reflector: the other reflector (same cluster ID: not a client), and, peering back
    # (sessions are symmetric, as Calico renders them), the clients that select it
    assert sessions("node0", peers) == [("rr-mesh", "172.31.1.10", 64512, 179, False),
                                        ("to-rr", "172.31.0.11", 64512, 179, True),
                                        ("to-rr", "172.31.1.11", 65003, 1179, True)]
    assert sessions("node1", peers) == [("to-rr", "172.31.0.10", 64512, 179, False),
                                        ("to-rr", "172.31.1.10", 64512, 179, False)]
    # the reflectors' clients open their sessions with their own AS as the far one's
    everyone = [one(peer("all-to-rr", peerSelector="has(route-reflector)"))]
    assert sessions("node0", everyone) == [("all-to-rr", "172.31.1.10", 64512, 179, False),
                                           ("all-to-rr", "172.31.0.11", 64512, 179, True),
                                           ("all-to-rr", "172.31.1.11", 65003, 1179, True)]
    clients = [one(peer("rr-to-clients", nodeSelector="has(route-reflector)", peerSelector="!has(route-reflector)"))]
    assert sessions("node2", clients) == [("rr-to-clients", "172.31.0.11", 64512, 179, True),
                                          ("rr-to-clients", "172.31.1.11", 65003, 1179, True)]
    names = [t.node for t in peers_for("node2", rack_nodes()["node2"].labels, clients, rack_nodes())]
    assert names == ["node1", "node3"]


def test_peer_selector_as_number_is_the_fallback_and_one_session_per_address():
    nodes = {"a": NodeInfo("10.0.0.1", {"x": "1"}), "b": NodeInfo("10.0.0.2", {"x": "1"})}
    peers = [one(peer("z-by-ip", peerIP="10.0.0.2", asNumber=65009)),
             one(peer("a-by-label", peerSelector="x == '1'", asNumber=65001)),
             one(peer("self", peerIP="10.0.0.1", asNumber=65010))]  # the node's own address: never a session
    assert sessions("a", peers, nodes) == [("a-by-label", "10.0.0.2", 65001, 179, False)]
    assert sessions("a", [one(peer("p", peerSelector="all()"))], nodes) == [("p", "10.0.0.2", 64512, 179, False)]


def test_node_infos_take_each_nodes_effective_config():
    configs = [one(config(asNumber=65000)), one(config("node.b", asNumber=65002, listenPort=1179,
                                                      routeReflectorClusterID="244.0.0.9"))]
    infos = node_infos({"a": ("10.0.0.1", {"x": "1"}), "b": ("10.0.0.2", {})}, configs)
    assert infos["a"] == NodeInfo("10.0.0.1", {"x": "1"}, 65000, None, 179)
    assert infos["b"] == NodeInfo("10.0.0.2", {}, 65002, "244.0.0.9", 1179)


# -- node labels in the lease ----------------------------------------------------------


def test_a_lease_carries_labels_and_one_without_them_is_unchanged():
    old = NodeLease("node0", "10.244.0.0/24", "172.31.0.10", "eth0", "bgp", {}, 1.0)
    assert '"labels"' not in old.encode() and NodeLease.from_json(old.to_json()).labels == {}
    labelled = NodeLease("node0", "10.244.0.0/24", "172.31.0.10", "eth0", "bgp", {}, 1.0,
                         {"rack": "r0", "route-reflector": "true"})
    assert NodeLease.from_json(labelled.to_json()) == labelled
    for bad in ({"bad key": "x"}, {"rack": "no spaces"}, {"rack": 0}, ["rack"]):
        with pytest.raises(CorruptRecord, match="'labels'"):
            NodeLease.from_json({**old.to_json(), "labels": bad})


# -- through the registry and the store -------------------------------------------------


@pytest.fixture
def store():
    with open_store("memory://") as s:
        for name, ip, labels in (("node0", "172.31.0.10", {"route-reflector": "true"}),
                                 ("node1", "172.31.0.11", {})):
            lease = NodeLease(name, "10.244.0.0/24", ip, "eth0", "bgp", {}, 1.0, labels)
            s.put(lease.key, lease.encode())
        yield s


def test_apply_get_describe_delete(store):
    from podnet.objects.describe import describe

    docs = [config(asNumber=65000), config("node.node0", routeReflectorClusterID="244.0.0.1"),
            peer("to-rr", nodeSelector="!has(route-reflector)", peerSelector="has(route-reflector)")]
    assert [c.shown for c in repo.apply(store, parse_documents(docs))] == [
        "bgpconfiguration/default created", "bgpconfiguration/node.node0 created", "bgppeer/to-rr created"]
    assert [c.what for c in repo.apply(store, parse_documents(docs))] == ["unchanged"] * 3
    assert [d["metadata"]["name"] for d in repo.get(store, lookup("bgpconfigs"))] == ["default", "node.node0"]
    details = dict(describe(store, lookup("bgpp"), "to-rr")["details"])
    assert details["Sessions"] == ["node0 -> 172.31.0.11:179 AS 65000 (node node1) route reflector client",
                                   "node1 -> 172.31.0.10:179 AS 65000 (node node0)"]  # both ends
    rr = dict(describe(store, lookup("bgpconfig"), "node.node0")["details"])
    assert "routeReflectorClusterID: 244.0.0.1" in rr["Effective for node0"] and rr["Node"] == "node0"
    default = dict(describe(store, lookup("bgpconfigurations"), "default")["details"])
    assert default["Nodes (config that applies)"] == ["node0  node.node0", "node1  default"]
    assert [c.what for c in repo.delete(store, parse_documents(docs[2:]))] == ["deleted"]
    assert repo.get(store, lookup("bgppeers")) == []
