"""Desired-state computation of both fabrics, and the cluster conflist (pure)."""

from __future__ import annotations

import ipaddress

from podnet.agent.node_service import render_conflist
from podnet.cni.config import parse_conf, store_path_for
from podnet.fabric import FABRICS
from podnet.fabric.base import FabricContext, FdbSpec, NeighSpec, RouteSpec
from podnet.fabric.vxlan import vtep_mac
from podnet.model.cluster import NodeLease


def lease(name: str, block: str, ip: str, fabric: str = "vxlan") -> NodeLease:
    backend = {"vtep_mac": vtep_mac(name)} if fabric == "vxlan" else {}
    return NodeLease(name, block, ip, "eth0", fabric, backend, 0.0)


def ctx(fabric: str = "vxlan") -> FabricContext:
    own = lease("a", "10.244.0.0/24", "172.31.0.1", fabric)
    return FabricContext(own, ipaddress.IPv4Interface("172.31.0.1/24"), 1500)


def test_vxlan_one_route_neigh_fdb_per_peer():
    fabric = FABRICS["vxlan"]()
    peers = [lease("a", "10.244.0.0/24", "172.31.0.1"), lease("b", "10.244.1.0/24", "172.31.0.2"),
             lease("c", "10.244.2.0/24", "172.31.9.3")]
    want = fabric.desired(ctx(), peers)
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
    want = fabric.desired(ctx("host-gw"), peers)
    assert want.routes == {RouteSpec("10.244.1.0/24", "172.31.0.2", "eth0")}
    assert want.peers["b"] == "ok"
    assert want.peers["c"].startswith("refused: not on-link") and "172.31.1.3" in want.peers["c"]
    assert not want.neighbours and not want.fdb
    assert fabric.mtu(1500) == 1500


def test_bad_or_overlapping_or_mixed_peers_are_refused():
    fabric = FABRICS["vxlan"]()
    peers = [lease("b", "10.244.0.0/23", "172.31.0.2"), lease("c", "not-a-cidr", "172.31.0.3"),
             lease("d", "10.244.3.0/24", "172.31.0.4", "host-gw")]
    want = fabric.desired(ctx(), peers)
    assert not want.routes
    assert all(state.startswith("refused:") for state in want.peers.values()) and len(want.peers) == 3


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
