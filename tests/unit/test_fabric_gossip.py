"""The gossip fabric's fast path (pure): direct peers as vxlan, relayed peers via their
first hop's VTEP, the sleeve's peers left to it, a peer with no path refused."""

from __future__ import annotations

import ipaddress

from podnet.fabric.base import FabricContext, FdbSpec, NeighSpec, RouteSpec
from podnet.fabric.gossip import SLEEVE_DEVICE, UNREACHABLE, GossipFabric, Routing
from podnet.fabric.vxlan import vtep_mac
from podnet.model.cluster import NodeLease

BLOCKS = {"a": "10.244.0.0/24", "b": "10.244.1.0/24", "c": "10.244.2.0/24", "d": "10.244.3.0/24"}


def lease(name: str, fabric: str = "gossip") -> NodeLease:
    index = list(BLOCKS).index(name)
    return NodeLease(name, BLOCKS[name], f"172.31.0.{index + 1}", "eth0", fabric, {"vtep_mac": vtep_mac(name)}, 0.0)


def ctx() -> FabricContext:
    return FabricContext(lease("a"), ipaddress.IPv4Interface("172.31.0.1/24"), 1500,
                         ipaddress.IPv4Network("10.244.0.0/16"), 24)


def desired(via: dict[str, str], sleeve: frozenset[str] = frozenset(), peers: tuple[str, ...] = ("b", "c", "d")):
    fabric = GossipFabric()
    fabric.routing = Routing(via, sleeve)
    leases = [lease(p) for p in peers]
    return fabric.desired(ctx(), leases, {BLOCKS[p]: p for p in peers})


def test_a_full_mesh_is_the_vxlan_fabric():
    want = desired({"b": "b", "c": "c", "d": "d"})
    assert want.peers == {"b": "ok", "c": "ok", "d": "ok"}
    assert RouteSpec("10.244.2.0/24", "10.244.2.0", "pnvx0", onlink=True) in want.routes
    assert FdbSpec(vtep_mac("c"), "172.31.0.3", "pnvx0") in want.fdb
    assert len(want.routes) == len(want.neighbours) == len(want.fdb) == 3


def test_a_cut_link_routes_through_the_middle_peer_in_the_kernel():
    want = desired({"b": "b", "c": "b", "d": "d"})  # a cannot reach c; both reach b
    assert want.peers == {"b": "ok", "c": "ok: via b", "d": "ok"}
    assert RouteSpec("10.244.2.0/24", "10.244.1.0", "pnvx0", onlink=True) in want.routes  # c's block via b's VTEP
    assert NeighSpec("10.244.2.0", vtep_mac("c"), "pnvx0") not in want.neighbours  # no entry towards c itself
    assert {f.dst for f in want.fdb} == {"172.31.0.2", "172.31.0.4"}


def test_a_first_hop_that_is_not_direct_or_no_path_is_unreachable():
    want = desired({"b": "c", "c": "b"})  # nonsense: neither is direct
    assert want.peers["b"] == want.peers["c"] == want.peers["d"] == UNREACHABLE
    assert not want.routes and not want.fdb and not want.neighbours


def test_sleeve_peers_are_routed_to_the_sleeve_device_and_other_fabrics_refused():
    want = desired({"b": "b", "c": "b", "d": "d"}, frozenset({"c", "d"}))
    assert want.peers["c"] == "ok: sleeve via b" and want.peers["d"] == "ok: sleeve"
    assert [r for r in want.routes if r.dst == "10.244.2.0/24"] == [RouteSpec("10.244.2.0/24", "", SLEEVE_DEVICE)]
    assert RouteSpec("10.244.3.0/24", "", SLEEVE_DEVICE) in want.routes  # the sleeve picks the first hop
    # direct peers keep their fast-path entries (the probe's way out), the relayed one has none
    assert {f.dst for f in want.fdb} == {"172.31.0.2", "172.31.0.4"}
    assert NeighSpec("10.244.3.0", vtep_mac("d"), "pnvx0") in want.neighbours
    fabric = GossipFabric()
    fabric.routing = Routing({"b": "b"})
    other = fabric.desired(ctx(), [lease("b", "vxlan")], {BLOCKS["b"]: "b"})
    assert other.peers["b"].startswith("refused: peer runs fabric 'vxlan'")


def test_a_peers_adjacent_blocks_are_one_route():
    fabric = GossipFabric()
    fabric.routing = Routing({"b": "b"})
    claims = {"10.244.1.0/24": "b", "10.244.4.0/24": "b", "10.244.5.0/24": "b", "10.244.6.0/24": "b",
              "10.244.7.0/24": "b"}
    want = fabric.desired(ctx(), [lease("b")], claims)
    assert {r.dst for r in want.routes} == {"10.244.1.0/24", "10.244.4.0/22"}


def test_one_mtu_for_both_paths_and_routing_read_back_checked():
    assert GossipFabric().mtu(1500) == 1420 and GossipFabric().mtu(9000) == 8920
    assert Routing.from_json({"via": {"b": "b"}, "sleeve": ["b"]}) == Routing({"b": "b"}, frozenset({"b"}))
    for bad in (None, [], {"via": {"b": 1}}, {"via": "b"}, {"via": {"b": "b"}, "sleeve": "b"}):
        routing = Routing.from_json(bad)
        assert routing.sleeve == frozenset() and (routing.via in ({}, {"b": "b"}))
