"""The macvlan fabric's pure parts: peers' verdicts and its one route, the conflist,
the CNI config's `segment`, an address put on the segment, the block kept for hosts."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.agent.node_conflist import render_conflist, to_macvlan
from podnet.cluster import leases
from podnet.cluster.dualstack import Pools
from podnet.cni.config import parse_conf
from podnet.endpoints.result import on_segment
from podnet.errors import InvalidConfig
from podnet.fabric.base import FabricContext, RouteSpec
from podnet.fabric.macvlan import MacvlanFabric, nat_script, shim_address
from podnet.ipam.result import IpamAddress, IpamResult
from podnet.model.cluster import NodeLease, block_key
from podnet.store.memory import MemoryStore

SEGMENT = {"segment": "10.244.0.0/16", "gateway": "10.244.0.1"}


def lease(name: str, block: str, ip: str, fabric: str = "macvlan", backend: dict | None = None) -> NodeLease:
    return NodeLease(name, block, ip, "eth0", fabric, SEGMENT if backend is None else backend, 0.0)


def fabric() -> MacvlanFabric:
    made = MacvlanFabric()
    made.configure("10.244.0.0/16", None)
    return made


def ctx() -> FabricContext:
    own = lease("a", "10.244.1.0/24", "172.31.0.10")
    return FabricContext(own, ipaddress.IPv4Interface("172.31.0.10/24"), 1500,
                         ipaddress.IPv4Network("10.244.0.0/16"), 24)


def test_one_route_to_the_segment_through_the_shim_and_a_verdict_per_peer() -> None:
    peers = [lease("b", "10.244.2.0/24", "172.31.0.11"),
             lease("c", "10.244.3.0/24", "172.31.1.12"),  # another rack: not on this L2
             lease("d", "10.244.4.0/24", "172.31.0.13", fabric="vxlan"),
             lease("e", "10.244.5.0/24", "172.31.0.14", backend={"segment": "10.99.0.0/16"})]
    want = fabric().desired(ctx(), peers, {p.block: p.name for p in peers})
    assert want.routes == {RouteSpec("10.244.0.0/16", "", "pnmv0")}
    assert want.peers["b"] == "ok"
    assert "not on this node's L2 segment" in want.peers["c"]
    assert "runs fabric 'vxlan'" in want.peers["d"]
    assert "pod segment '10.99.0.0/16'" in want.peers["e"]
    assert not want.neighbours and not want.fdb


def test_the_segment_defaults_its_router_to_the_first_address_and_refuses_one_outside() -> None:
    assert fabric().backend_data("a") == SEGMENT
    assert MacvlanFabric().mtu(9000) == 9000  # no encapsulation
    with pytest.raises(ValueError, match="outside the segment"):
        MacvlanFabric().configure("10.244.0.0/16", "10.245.0.1")


def test_the_shim_takes_the_blocks_first_address_and_services_are_masqueraded_from_it() -> None:
    assert str(shim_address("10.244.7.0/24")) == "10.244.7.1"
    script = nat_script()
    assert 'iifname "pnmv0" ct status dnat masquerade' in script
    assert script.startswith("table inet podnet-macvlan\ndelete table inet podnet-macvlan\n")


def test_the_macvlan_conflist_parses_as_a_macvlan_pod_on_the_segment() -> None:
    doc = render_conflist("10.244.1.0/24", "10.244.0.0/16", 1500, "/run/podnet/a.sock", "/var/lib/pn/c.db")
    doc = to_macvlan(doc, "eth0", [("10.244.0.0/16", "10.244.0.1")], {4: "10.244.1.1"}, ["10.96.0.0/12"])
    plugin = doc["plugins"][0]
    conf = parse_conf({"cniVersion": "1.0.0", "name": "cluster", **plugin})
    assert (conf.mode, conf.master, conf.macvlan_mode) == ("macvlan", "eth0", "bridge")
    assert conf.segments == (("10.244.0.0/16", "10.244.0.1"),)
    assert not conf.ip_masq and "bridge" not in plugin and plugin["capabilities"] == {"ips": True}
    assert plugin["ipam"]["routes"] == [{"dst": "10.96.0.0/12", "gw": "10.244.1.1"}]


def test_a_dual_stack_macvlan_conflist_has_a_segment_and_a_service_route_per_family() -> None:
    doc = render_conflist("10.244.1.0/24", "10.244.0.0/16", 1500, "/run/podnet/a.sock", "/var/lib/pn/c.db",
                          block6="fd00:10:244:1::/64", cluster_cidr6="fd00:10:244::/56")
    doc = to_macvlan(doc, "eth0", [("10.244.0.0/16", "10.244.0.1"), ("fd00:10:244::/56", "fd00:10:244::1")],
                     {4: "10.244.1.1", 6: "fd00:10:244:1::1"}, ["10.96.0.0/12", "fd00:10:96::/112"])
    plugin = doc["plugins"][0]
    conf = parse_conf({"cniVersion": "1.0.0", "name": "cluster", **plugin})
    assert conf.segments == (("10.244.0.0/16", "10.244.0.1"), ("fd00:10:244::/56", "fd00:10:244::1"))
    assert "ipMasqIPv6" not in plugin and [r["subnet"] for [r] in plugin["ipam"]["ranges"]] == [
        "10.244.1.0/24", "fd00:10:244:1::/64"]
    assert plugin["ipam"]["routes"] == [{"dst": "10.96.0.0/12", "gw": "10.244.1.1"},
                                        {"dst": "fd00:10:96::/112", "gw": "fd00:10:244:1::1"}]


def test_the_ipv6_segment_router_sits_where_the_ipv4_one_does_in_the_kept_blocks_twin() -> None:
    fabric = MacvlanFabric()
    pools = Pools(ipaddress.IPv4Network("10.244.0.0/16"), 24, ipaddress.IPv6Network("fd00:10:244::/56"))
    fabric.configure("10.244.0.0/16", "10.244.3.9", pools)
    assert (str(fabric.segment6), str(fabric.gateway6)) == ("fd00:10:244::/56", "fd00:10:244:3::9")
    assert fabric.segments()[1] == ("fd00:10:244::/56", "fd00:10:244:3::9")
    assert fabric.backend_data("n")["gateway6"] == "fd00:10:244:3::9"


@pytest.mark.parametrize(("raw", "message"), [
    ({"mode": "bridge", "segment": {"subnet": "10.0.0.0/8", "gateway": "10.0.0.1"}}, "macvlan networks only"),
    ({"mode": "macvlan", "segment": "10.0.0.0/8"}, "must be an object"),
    ({"mode": "macvlan", "segment": {"subnet": "10.0.0.1/8", "gateway": "10.0.0.1"}}, "'segment.subnet'"),
    ({"mode": "macvlan", "segment": {"subnet": "10.0.0.0/8", "gateway": "x"}}, "'segment.gateway'"),
    ({"mode": "macvlan", "segment": {"subnet": "10.0.0.0/8", "gateway": "11.0.0.1"}}, "outside 'segment.subnet'"),
])
def test_a_bad_segment_is_refused_naming_the_field(raw: dict, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        parse_conf({"cniVersion": "1.0.0", "name": "n", **raw})


def test_an_address_from_a_block_is_put_on_the_segment_with_its_router() -> None:
    block = ipaddress.ip_network("10.244.1.0/24")
    other = IpamAddress(ipaddress.ip_address("192.168.0.5"), ipaddress.ip_network("192.168.0.0/24"), None, 1)
    got = on_segment(IpamResult(ips=(IpamAddress(ipaddress.ip_address("10.244.1.5"), block, block[1], 0), other)),
                     "10.244.0.0/16", "10.244.0.1")
    assert str(got.ips[0].ip_interface) == "10.244.1.5/16" and str(got.ips[0].gateway) == "10.244.0.1"
    assert got.ips[1] == other  # outside the segment: untouched


def test_the_hosts_block_is_kept_once_and_never_leased() -> None:
    store = MemoryStore()
    assert leases.keep_for_hosts(store, "10.244.0.0/24") == leases.HOSTS_OWNER
    assert leases.keep_for_hosts(store, ipaddress.IPv4Network("10.244.0.0/24")) == leases.HOSTS_OWNER
    claim = leases.acquire(store, "a", "10.244.0.0/16", 24, 10,
                           lambda block: NodeLease("a", block, "172.31.0.10", "eth0", "macvlan"))
    assert claim.lease.block == "10.244.1.0/24"
    assert leases.hosts_blocks(leases.list_claims(store)) == [ipaddress.IPv4Network("10.244.0.0/24")]
    store.put(block_key("10.244.2.0/24"), '{"node": "b", "block": "10.244.2.0/24"}')
    assert leases.keep_for_hosts(store, "10.244.2.0/24") == "b"  # a node's block is not taken from it
