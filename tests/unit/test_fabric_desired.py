"""Desired-state computation of both fabrics, and the cluster conflist (pure)."""

from __future__ import annotations

import ipaddress
import types
from pathlib import Path

import pytest

from podnet import keys
from podnet.agent.node_conflist import render_conflist
from podnet.agent.node_service import NodeService
from podnet.cluster import leases
from podnet.cluster.options import NodeOptions
from podnet.cni.config import parse_conf, store_path_for
from podnet.fabric import FABRICS
from podnet.fabric.base import ApplyReport, FabricContext, FdbSpec, NeighSpec, RouteSpec
from podnet.fabric.vxlan import vtep_mac
from podnet.model.cluster import BlockClaim, NodeLease, block_key
from podnet.state import StatePaths
from podnet.store import open_store
from podnet.store.base import Entry


def lease(name: str, block: str, ip: str, fabric: str = "vxlan") -> NodeLease:
    backend = {"vtep_mac": vtep_mac(name)} if fabric == "vxlan" else {}
    return NodeLease(name, block, ip, "eth0", fabric, backend, 0.0)


def ctx(fabric: str = "vxlan", underlay: str = "172.31.0.1/24", *extra: str) -> FabricContext:
    own = lease("a", "10.244.0.0/24", underlay.split("/")[0], fabric)
    return FabricContext(own, ipaddress.IPv4Interface(underlay), 1500, ipaddress.IPv4Network("10.244.0.0/16"), 24,
                         tuple(ipaddress.IPv4Network(p) for p in extra))


def claims(*peers: NodeLease) -> dict[str, str]:
    """The `blocks/` claims that back these leases: block -> node."""
    return {peer.block: peer.name for peer in peers}


def test_vxlan_one_route_neigh_fdb_per_peer():
    fabric = FABRICS["vxlan"]()
    peers = [lease("a", "10.244.0.0/24", "172.31.0.1"), lease("b", "10.244.1.0/24", "172.31.0.2"),
             lease("c", "10.244.2.0/24", "172.31.9.3")]
    want = fabric.desired(ctx(), peers, claims(*peers))
    mac_b = vtep_mac("b")
    assert RouteSpec("10.244.1.0/24", "10.244.1.0", "pnvx0", onlink=True) in want.routes
    assert NeighSpec("10.244.1.0", mac_b, "pnvx0") in want.neighbours
    assert FdbSpec(mac_b, "172.31.0.2", "pnvx0") in want.fdb
    assert len(want.routes) == len(want.neighbours) == len(want.fdb) == 2  # c is off-segment: fine for vxlan
    assert want.peers == {"b": "ok", "c": "ok"}
    assert fabric.mtu(1500) == 1450
    assert fabric.backend_data("b")["vtep_mac"] == mac_b


def test_vtep_mac_is_stable_unicast_and_local():
    mac = vtep_mac("node-1")
    assert mac == vtep_mac("node-1") != vtep_mac("node-2")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_hostgw_routes_via_underlay_and_refuses_off_link():
    fabric = FABRICS["host-gw"]()
    peers = [lease("b", "10.244.1.0/24", "172.31.0.2", "host-gw"), lease("c", "10.244.2.0/24", "172.31.1.3", "host-gw")]
    want = fabric.desired(ctx("host-gw"), peers, claims(*peers))
    assert want.routes == {RouteSpec("10.244.1.0/24", "172.31.0.2", "eth0")}
    assert want.peers["b"] == "ok"
    assert want.peers["c"].startswith("refused: not on-link") and "172.31.1.3" in want.peers["c"]
    assert not want.neighbours and not want.fdb
    assert fabric.mtu(1500) == 1500


def test_bad_or_overlapping_or_mixed_peers_are_refused():
    fabric = FABRICS["vxlan"]()
    peers = [lease("b", "10.244.0.0/23", "172.31.0.2"), lease("c", "not-a-cidr", "172.31.0.3"),
             lease("d", "10.244.3.0/24", "172.31.0.4", "host-gw")]
    want = fabric.desired(ctx(), peers, {"10.244.0.0/23": "b", "10.244.3.0/24": "d"})
    assert not want.routes
    assert all(state.startswith("refused:") for state in want.peers.values()) and len(want.peers) == 3



# A hijacking lease next to a valid peer n2 (10.244.1.0/24): (block, the claims beside
# n2's, extra underlay prefixes, what the refusal must say). "evil" sorts before "n2",
# so a duplicate block is decided by the claim, not by the order of the leases.
HIJACKS = {
    "half-the-internet": ("128.0.0.0/1", {"128.0.0.0/1": "evil"}, (), "outside the cluster CIDR 10.244.0.0/16"),
    "outside-the-cidr": ("10.96.0.0/24", {"10.96.0.0/24": "evil"}, (), "outside the cluster CIDR 10.244.0.0/16"),
    "wrong-prefix": ("10.244.4.0/23", {"10.244.4.0/23": "evil"}, (), "not a /24 block"),
    "underlay": ("10.244.7.0/24", {"10.244.7.0/24": "evil"}, ("10.244.7.0/24",),
                 "overlaps the underlay prefix 10.244.7.0/24"),
    "no-claim": ("10.244.5.0/24", {}, (), "no claim under blocks/"),
    "claim-of-another": ("10.244.5.0/24", {"10.244.5.0/24": "c"}, (), "claimed by node c"),
    "same-block-as-a-peer": ("10.244.1.0/24", {}, (), "claimed by node n2"),
}


@pytest.mark.parametrize("fabric", ["vxlan", "host-gw"])
@pytest.mark.parametrize("case", sorted(HIJACKS))
def test_a_lease_cannot_hijack_routes(fabric, case):
    block, extra_claims, underlay_prefixes, reason = HIJACKS[case]
    good = lease("n2", "10.244.1.0/24", "172.31.0.2", fabric)
    evil = lease("evil", block, "172.31.0.66", fabric)
    here = ctx(fabric, "172.31.0.1/24", *underlay_prefixes)
    alone = FABRICS[fabric]().desired(here, [good], claims(good))
    want = FABRICS[fabric]().desired(here, [evil, good], {**claims(good), **extra_claims})
    assert want.peers["n2"] == "ok"
    assert want.peers["evil"].startswith("refused: ") and reason in want.peers["evil"], want.peers["evil"]
    assert (want.routes, want.neighbours, want.fdb) == (alone.routes, alone.neighbours, alone.fdb)


def test_a_lease_under_another_nodes_key_is_skipped():
    """`nodes/evil` saying it is n2 would replace n2's lease (and its underlay IP)."""
    real = lease("n2", "10.244.1.0/24", "172.31.0.2")
    forged = lease("n2", "10.244.1.0/24", "172.31.0.66")
    entries = [Entry(keys.node("evil"), forged.encode(), 2, 2), Entry(keys.node("n2"), real.encode(), 1, 1)]
    assert leases.parse_leases(entries) == [real]


def node_service(store) -> NodeService:
    """A node service on `store` that never touches a kernel (apply is a no-op)."""
    agent = types.SimpleNamespace(node_options=NodeOptions("a", fabric="host-gw"), store_path="memory://",
                                  service=types.SimpleNamespace(store=lambda _path: store),
                                  state=StatePaths(Path("/nonexistent/podnet-state")))  # host-gw writes nothing
    svc = NodeService(agent)  # type: ignore[arg-type]
    svc.fabric = FABRICS["host-gw"]()
    svc.fabric.apply = lambda _ipr, _want, trust=False, writer=None: ApplyReport()  # type: ignore[method-assign]
    svc.ctx = ctx("host-gw")
    svc.claim = leases.Claim(svc.ctx.own, 10.0)
    svc._ipr = object()  # type: ignore[assignment]
    return svc


def test_node_status_reports_refused_leases_with_their_reason():
    store = open_store("memory://")
    good = lease("n2", "10.244.1.0/24", "172.31.0.2", "host-gw")
    evil = lease("evil", "128.0.0.0/1", "172.31.0.66", "host-gw")
    for record in (good, evil):
        store.put(record.key, record.encode(), ttl=30)
    store.put(block_key(good.block), BlockClaim("n2", good.block).encode(), ttl=30)
    svc = node_service(store)
    svc._converge(repair=False)
    status = svc.status()
    assert {p["name"]: p["state"] for p in status["peers"]}["n2"] == "ok"
    assert status["refused"] == [{"name": "evil", "block": "128.0.0.0/1",
                                  "reason": "block 128.0.0.0/1 is outside the cluster CIDR 10.244.0.0/16"}]


def test_a_vanished_forged_lease_frees_nothing():
    """A lease for 10.0.0.0/8 that goes away must not free the cluster's addresses."""
    store = open_store("memory://")
    reservation = keys.ipam_address(leases.CLUSTER_NETWORK, "10.244.1.5")
    store.put(reservation, '{"id": "c1", "ifname": "eth0", "state": "ready", "owner": "", "ts": 0}')
    evil = lease("evil", "10.0.0.0/8", "172.31.0.66", "host-gw")
    store.put(evil.key, evil.encode(), ttl=30)
    svc = node_service(store)
    svc._converge(repair=False)
    store.delete(evil.key)
    svc._converge(repair=False)
    assert store.get(reservation) is not None

def test_cluster_conflist_shape():
    doc = render_conflist("10.244.3.0/24", "10.244.0.0/16", 1450, "/run/podnet/n1.sock", "/var/lib/pn/cluster.db")
    plugin = doc["plugins"][0]
    assert doc["name"] == "cluster" and doc["cniVersion"] == "1.0.0"
    assert plugin["ipMasq"] is True and plugin["ipMasqExclude"] == ["10.244.0.0/16"]
    assert plugin["mtu"] == 1450 and plugin["bridge"] == "pncl0"
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]
    # the node's pods are numbered in the shared cluster store, not in its state dir
    assert plugin["ipam"]["store"] == "/var/lib/pn/cluster.db" and "dataDir" not in plugin["ipam"]
    assert store_path_for(plugin) == "/var/lib/pn/cluster.db"
    url = "etcd://10.0.0.1:2379,10.0.0.2:2379/podnet-x"
    etcd_doc = render_conflist("10.244.3.0/24", "10.244.0.0/16", 1450, "/run/podnet/n1.sock", url)
    assert store_path_for(etcd_doc["plugins"][0]) == url
    from podnet.networks.conflist import validate

    validate(doc)
    assert "gsoMaxSize" not in plugin
    big = render_conflist("10.244.3.0/24", "10.244.0.0/16", 1500, "/run/podnet/n1.sock", url, 196608)
    plugin = {**big["plugins"][0], "cniVersion": "1.0.0", "name": "cluster"}
    assert plugin["gsoMaxSize"] == 196608 and parse_conf(plugin).gso_max_size == 196608


def test_vxlan_caps_gso_at_the_legacy_limit():
    """BIG TCP does not go through the tunnel (fabric/vxlan.py); host-gw has no cap."""
    from podnet.fabric import FABRICS
    from podnet.kernel.gso import LEGACY

    assert FABRICS["vxlan"]().gso_cap == LEGACY and FABRICS["host-gw"]().gso_cap is None


def test_the_flags_know_every_fabric():
    from podnet.defaults import FABRIC_NAMES
    from podnet.fabric import FABRICS

    assert tuple(FABRICS) == FABRIC_NAMES
