"""Dual-stack clusters (issue 18), pure parts: the IPv6 pool and each block's twin, the
lease's IPv6 fields, what every fabric wants for IPv6, BIRD's IPv6 sessions, the
conflist's second range set and IPv6 masquerade, block IPAM's IPv6 addresses, and the
connectivity plan's IPv6 checks. The lab tests (tests/ns/test_dual_stack_lab.py) run
the same through the kernel."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from podnet.agent.gossip_sleeve import plan as sleeve_plan
from podnet.agent.node_conflist import render_conflist
from podnet.cluster.dualstack import (
    Pools,
    check_pools,
    gateway6_of,
    paired_block,
    parse_cluster_cidrs,
)
from podnet.cluster.leases import list_claims
from podnet.cni.config import parse_conf
from podnet.errors import InvalidConfig
from podnet.fabric.base import FabricContext, FdbSpec, NeighSpec, RouteSpec, valid_peers
from podnet.fabric.bgp import bird_spec
from podnet.fabric.gossip import GossipFabric, Routing
from podnet.fabric.hostgw import HostGwFabric
from podnet.fabric.vxlan import VxlanFabric, vtep_mac
from podnet.identity import NodeIdentity
from podnet.ipam.service import IpamService
from podnet.kernel.nat.render import plan_rules
from podnet.model.base import CorruptRecord
from podnet.model.cluster import BlockClaim, NodeLease
from podnet.observe.connectivity import plan as connectivity_plan
from podnet.store.memory import MemoryStore

V4, V6 = ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv6Network("fd00:10:244::/56")
POOLS = Pools(V4, 24, V6)


def test_cluster_cidrs_are_ipv4_then_an_optional_ipv6() -> None:
    assert parse_cluster_cidrs("10.244.0.0/16") == (V4, None)
    assert parse_cluster_cidrs(" 10.244.0.0/16 , fd00:10:244::/56") == (V4, V6)
    for bad, message in (("fd00:10:244::/56", "first prefix must be IPv4"),
                         ("10.244.0.0/16,10.245.0.0/16", "second prefix must be IPv6"),
                         ("10.244.0.1/16", "not a network"), ("10.244.0.0/16,", "comma"),
                         ("10.0.0.0/8,fd00::/56,fd01::/56", "comma")):
        with pytest.raises(InvalidConfig, match=message):
            parse_cluster_cidrs(bad)


def test_the_ipv6_pool_must_pair_every_block_with_one_as_large() -> None:
    check_pools(V4, 24, V6)  # 256 /24s -> 256 /64s
    check_pools(V4, 26, ipaddress.IPv6Network("fd00::/112"))  # 1024 /26s -> /122s of 64 addresses: enough
    with pytest.raises(InvalidConfig, match=r"too small .* would give /121") as err:
        check_pools(V4, 24, ipaddress.IPv6Network("fd00::/113"))
    assert "/112 or shorter" in (err.value.details or "")


def test_block_i_of_each_pool_are_twins_both_ways() -> None:
    assert POOLS.block_prefix6 == 64
    assert POOLS.twin("10.244.0.0/24") == ipaddress.IPv6Network("fd00:10:244::/64")
    assert POOLS.twin("10.244.171.0/24") == ipaddress.IPv6Network("fd00:10:244:ab::/64")
    for block in list(V4.subnets(new_prefix=24))[::17]:
        twin = POOLS.twin(block)
        assert twin is not None and twin.subnet_of(V6) and POOLS.block_of_twin(twin) == block
    bgp = Pools(V4, 26, V6)  # Calico-sized blocks: /66 twins
    assert bgp.twin("10.244.0.64/26") == ipaddress.IPv6Network("fd00:10:244:0:4000::/66")
    assert POOLS.block_of_twin(ipaddress.IPv6Network("fd00:10:244:1::/80")) is None  # not a block of the pool
    assert Pools(V4, 24).twin("10.244.1.0/24") is None  # single stack
    assert str(gateway6_of(POOLS.twin("10.244.3.0/24"))) == "fd00:10:244:3::1"
    with pytest.raises(InvalidConfig, match="not a /24 block"):
        paired_block(ipaddress.IPv4Network("10.245.0.0/24"), V4, 24, V6)


def test_the_lease_carries_the_twin_and_the_ipv6_underlay_and_reads_back_checked() -> None:
    lease = NodeLease("n1", "10.244.1.0/24", "172.31.0.11", "eth0", "vxlan", block6="fd00:10:244:1::/64",
                      underlay_ip6="fd00:172:31::11")
    assert NodeLease.from_json(lease.to_json()) == lease
    old = NodeLease("n1", "10.244.1.0/24", "172.31.0.11", "eth0", "vxlan")
    assert "block6" not in old.to_json() and NodeLease.from_json(old.to_json()).block6 is None
    for field, value in (("block6", "10.244.1.0/24"), ("block6", "fd00::1/64"), ("underlay_ip6", "172.31.0.11")):
        with pytest.raises(CorruptRecord, match=field):
            NodeLease.from_json({**lease.to_json(), field: value})


def lease(name: str, index: int, underlay6: bool = True, fabric: str = "vxlan", twin: str | None = "auto") -> NodeLease:
    block = f"10.244.{index}.0/24"
    block6 = str(POOLS.twin(block)) if twin == "auto" else twin
    return NodeLease(name, block, f"172.31.0.{10 + index}", "eth0", fabric, {"vtep_mac": vtep_mac(name)}, 0.0,
                     block6=block6, underlay_ip6=f"fd00:172:31::{10 + index}" if underlay6 else None)


def ctx(fabric: str = "vxlan", underlay6: bool = True) -> FabricContext:
    return FabricContext(lease("a", 0, fabric=fabric), ipaddress.IPv4Interface("172.31.0.10/24"), 1500, V4, 24, (),
                         V6, ipaddress.IPv6Interface("fd00:172:31::10/64") if underlay6 else None)


def claims(*peers: NodeLease) -> dict[str, str]:
    return {p.block: p.name for p in peers}


def test_a_lease_whose_ipv6_block_is_not_its_twin_is_refused() -> None:
    forged = lease("b", 1, twin="fd00:10:244:7::/64")  # another node's twin
    good, refused = valid_peers(ctx(), [forged, lease("c", 2)], claims(forged, lease("c", 2)))
    assert [p.name for p in good] == ["c"]
    assert "IPv6 block fd00:10:244:7::/64 is not the twin of 10.244.1.0/24" in refused["b"]


def test_vxlan_carries_ipv6_in_the_same_tunnel_via_the_twins_vtep() -> None:
    b, single = lease("b", 1), lease("c", 2, twin=None)  # c: a single-stack node of the cluster
    want = VxlanFabric().desired(ctx(), [b, single], claims(b, single))
    assert RouteSpec("fd00:10:244:1::/64", "fd00:10:244:1::", "pnvx0", onlink=True) in want.routes
    assert NeighSpec("fd00:10:244:1::", vtep_mac("b"), "pnvx0") in want.neighbours
    assert not any(":" in r.dst for r in want.routes if r.gateway.startswith("10.244.2")) and want.peers["c"] == "ok"
    assert len([r for r in want.routes if ":" in r.dst]) == 1 and len(want.fdb) == 2  # one FDB entry per peer


def test_vxlan_with_an_ipv6_underlay_carries_ipv6_on_pnvx6_to_peers_that_have_one() -> None:
    fabric = VxlanFabric()
    fabric.outer6 = True  # what setup() decides for a dual-stack node with an IPv6 underlay
    b, c = lease("b", 1), lease("c", 2, underlay6=False)
    want = fabric.desired(ctx(), [b, c], claims(b, c))
    assert RouteSpec("fd00:10:244:1::/64", "fd00:10:244:1::", "pnvx6", onlink=True) in want.routes
    assert FdbSpec(vtep_mac("b"), "fd00:172:31::11", "pnvx6") in want.fdb
    assert RouteSpec("fd00:10:244:2::/64", "fd00:10:244:2::", "pnvx0", onlink=True) in want.routes  # c: over IPv4
    assert fabric.devices == ("pnvx0", "pnvx6") and fabric.mtu(1500) == 1430
    assert GossipFabric.ipv6_outer is False and VxlanFabric().mtu(1500) == 1450


def test_host_gw_routes_ipv6_via_the_peers_ipv6_underlay_or_says_why_not() -> None:
    b, c = lease("b", 1, fabric="host-gw"), lease("c", 2, underlay6=False, fabric="host-gw")
    want = HostGwFabric().desired(ctx("host-gw"), [b, c], claims(b, c))
    assert RouteSpec("fd00:10:244:1::/64", "fd00:172:31::11", "eth0") in want.routes
    assert want.peers == {"b": "ok", "c": "ok"}  # IPv4 still routed to c
    assert "peer c's underlay has no IPv6 address" in want.partial["c"]
    mine = HostGwFabric().desired(ctx("host-gw", underlay6=False), [b], claims(b))
    assert "this node's underlay has no IPv6 address" in mine.partial["b"]


def test_gossip_routes_twins_on_the_blocks_path_and_the_sleeve_carries_them() -> None:
    b, c = lease("b", 1, fabric="gossip"), lease("c", 2, fabric="gossip")
    fabric = GossipFabric()
    fabric.routing = Routing({"b": "b", "c": "b"}, frozenset())
    want = fabric.desired(ctx("gossip"), [b, c], claims(b, c))
    assert RouteSpec("fd00:10:244:2::/64", "fd00:10:244:1::", "pnvx0", onlink=True) in want.routes  # c via b
    fabric.routing = Routing({"b": "b", "c": "b"}, frozenset({"b", "c"}))
    sleeve = fabric.desired(ctx("gossip"), [b, c], claims(b, c))
    assert RouteSpec("fd00:10:244:1::/64", "", "pnsl0") in sleeve.routes
    _peers, routes, carried = sleeve_plan("a", 6784, {"b": "b", "c": "b"}, None, {"b": b, "c": c}, claims(b, c),
                                          frozenset({"b"}), POOLS)
    assert routes["fd00:10:244:2::/64"] == "b" and routes["10.244.2.0/24"] == "b" and carried == {"b", "c"}


def test_bird_gets_an_ipv6_twin_of_each_session_and_announces_the_twins(tmp_path: Path) -> None:
    from podnet.bgp.render import render

    b = lease("b", 1, fabric="bgp")
    spec = bird_spec(ctx("bgp"), [b], blocks=("10.244.0.0/24",), borrowed=("10.244.9.7", "fd00:10:244:9::7"))
    sessions = {(n.address, n.direct) for n in spec.neighbors}
    assert sessions == {("172.31.0.11", True), ("fd00:172:31::11", True)}
    assert spec.local_address6 == "fd00:172:31::10"
    assert {"fd00:10:244::/64", "fd00:10:244:9::7/128", "10.244.9.7/32"} <= set(spec.originate)
    assert "fd00:10:244::/64" in spec.kernel_blackholes and "fd00:10:244::/56" in spec.accept
    conf = render(spec)
    assert "protocol kernel podnet_kernel6 {" in conf and "  ipv6 { import none; export filter" in conf
    assert "net.type = NET_IP6 && net ~ [ fd00:10:244::/56+ ]" in conf
    v6_session = conf[conf.index("neighbor fd00:172:31::11"):]
    assert "local fd00:172:31::10 port 179" in conf and v6_session.split("}", 1)[0].count("ipv6 {") == 1
    single = bird_spec(ctx("bgp", underlay6=False), [b])
    assert all(":" not in n.address for n in single.neighbors) and single.local_address6 is None


def test_the_conflist_numbers_both_families_and_masquerades_ipv4_only_by_default() -> None:
    doc = render_conflist("10.244.1.0/24", "10.244.0.0/16", 1450, "/s", "/db", block6="fd00:10:244:1::/64",
                          cluster_cidr6="fd00:10:244::/56")
    plugin = doc["plugins"][0]
    assert plugin["ipam"]["ranges"][1] == [{"subnet": "fd00:10:244:1::/64", "gateway": "fd00:10:244:1::1"}]
    assert plugin["ipMasqExclude"] == ["10.244.0.0/16", "fd00:10:244::/56"] and plugin["ipMasqIPv6"] is False
    conf = parse_conf({"cniVersion": "1.0.0", "name": "cluster", **plugin})
    assert conf.masq_families == ("ip",)
    assert conf.gso_max_size_ipv6 == 65536  # no IPv6 BIG TCP from pods (attach/base.py pod_end_gso)
    with pytest.raises(InvalidConfig, match="'gsoMaxSizeIPv6' must be an integer"):
        parse_conf({"cniVersion": "1.0.0", "name": "c", "type": "podnet", "gsoMaxSizeIPv6": 100})
    ips = [ipaddress.ip_interface("10.244.1.5/24"), ipaddress.ip_interface("fd00:10:244:1::5/64")]
    masq = [r for r in plan_rules(ips, [], conf.masq_families, conf.ip_masq_exclude) if "masquerade" in r.body]
    assert [r.family for r in masq] == ["ip"]
    asked = render_conflist("10.244.1.0/24", "10.244.0.0/16", 1450, "/s", "/db", block6="fd00:10:244:1::/64",
                            cluster_cidr6="fd00:10:244::/56", ipv6_masquerade=True)["plugins"][0]
    assert parse_conf({"cniVersion": "1.0.0", "name": "c", **asked}).masq_families == ("ip", "ip6")
    plain = parse_conf({"cniVersion": "1.0.0", "name": "c", "type": "podnet", "ipMasq": True})
    assert plain.masq_families == ("ip", "ip6")  # a one-host bridge network masquerades both, as before


def test_block_ipam_takes_the_ipv6_address_from_the_twin_of_the_block_it_takes_ipv4_from() -> None:
    store = MemoryStore()
    pool, size = ipaddress.IPv4Network("10.244.0.0/27"), 29  # four /29 blocks, five addresses each
    pools = Pools(pool, size, ipaddress.IPv6Network("fd00:10:244::/120"))
    for block, node in (("10.244.0.0/29", "n1"), ("10.244.0.16/29", "n2")):
        record = BlockClaim(node, block)
        store.put(record.key, record.encode(), 30)
    config = {"type": "podnet-ipam", "ranges": [[{"subnet": "10.244.0.0/29"}], [{"subnet": "fd00:10:244::/125"}]],
              "blockAffinity": {"node": "n1", "pool": str(pool), "pool6": str(pools.v6), "blockSize": size, "ttl": 30}}
    service = IpamService(store, identity=NodeIdentity("machine", "boot", node_name="n1"))
    got = [service.allocate("cluster", f"c{i}", "eth0", config).ips for i in range(6)]
    mine = {ipaddress.IPv4Network(b) for b, owner in list_claims(store).items() if owner == "n1"}
    assert len(mine) == 2  # the sixth pod grew n1 into a second block, and into its twin with it
    for ips in got:
        v4, v6 = (ip.address for ip in ips)
        assert v4.version == 4 and v6.version == 6
        assert ipaddress.IPv4Network(f"{v4}/{size}", strict=False) in mine
        assert pools.block_of_twin(ipaddress.IPv6Network(f"{v6}/{pools.block_prefix6}", strict=False)) in mine
    bad = {**config, "blockAffinity": {**config["blockAffinity"], "pool6": "fd00::/126"}}
    with pytest.raises(InvalidConfig, match="too small"):
        service.allocate("cluster", "c9", "eth0", bad)


def dual_lab(masquerade: bool = False) -> dict:
    data: dict = {"name": "t", "phase": "up", "nodes": {}, "pods": {}, "ipv6": {"masquerade": masquerade},
                  "outside": {"ip": "198.51.100.1", "ip6": "2001:db8::1", "netns": "out"}}
    for i in range(2):
        data["nodes"][f"node{i}"] = {"netns": f"n{i}", "rack": 0, "underlay": f"172.31.0.{10 + i}",
                                     "underlay6": f"fd00:172:31::{10 + i}", "block": f"10.244.{i}.0/24",
                                     "block6": str(ipaddress.ip_network(f"fd00:10:244:{i}::/64"))}
        data["pods"][f"default/p{i}"] = {"node": f"node{i}", "netns": f"p{i}", "ports": ["80/UDP"],
                                         "ips": [f"10.244.{i}.2/24", str(ipaddress.ip_interface(f"fd00:10:244:{i}::2/64"))]}
    return data


def test_the_connectivity_plan_checks_each_family_and_ipv6_to_the_world_only_when_masqueraded() -> None:
    probes = connectivity_plan(dual_lab())
    v6 = [p for p in probes if p.check.endswith("/ipv6")]
    assert {p.check for p in v6} >= {"pod-to-pod/cross-node/ipv6", "pmtu/cross-node/ipv6", "served-port/ipv6",
                                     "pod-to-node/gateway/ipv6", "node-to-pod/remote/ipv6"}
    assert all(":" in p.spec["dst"] for p in v6) and not any(":" in p.spec["dst"] for p in probes if p not in v6)
    gateway = next(p for p in v6 if p.check == "pod-to-node/gateway/ipv6" and p.source == "default/p1")
    assert gateway.spec["dst"] == "fd00:10:244:1::1"
    assert not any("outside" in p.check for p in v6)  # IPv6 is not NATed: the world has no route back
    masq = [p for p in connectivity_plan(dual_lab(masquerade=True), only=6) if p.check == "pod-to-outside/http/ipv6"]
    assert [p.spec["expect"] for p in masq] == ["fd00:172:31::10", "fd00:172:31::11"]
    assert all(p.check.endswith("/ipv6") for p in connectivity_plan(dual_lab(), only=6))
    assert not any(p.check.endswith("/ipv6") for p in connectivity_plan(dual_lab(), only=4))
    missing = dual_lab()
    missing["pods"]["default/p1"]["ips"] = ["10.244.1.2/24"]
    assert [p.source for p in connectivity_plan(missing, only=6) if p.check == "pod-address/ipv6"] == ["default/p1"]


def test_the_agent_takes_both_pools_in_cluster_cidr_and_refuses_bad_ones(monkeypatch, tmp_path, capsys) -> None:
    from podnet.cli import main

    calls: list[tuple] = []
    monkeypatch.setattr("podnet.agent.daemon.run_agent", lambda *args: calls.append(args) or 0)
    monkeypatch.delenv("PODNET_STATE_DIR", raising=False)
    monkeypatch.setenv("PODNET_AGENT_SOCKET", str(tmp_path / "a.sock"))
    store = str(tmp_path / "store.db")
    base = ["agent", "--node", "n1", "--store", store, "--init"]
    assert main([*base, "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--ipv6-masquerade"]) == 0
    node = calls[0][4]
    assert (node.cluster_cidr, node.cluster_cidr6, node.ipv6_masquerade) == ("10.244.0.0/16", "fd00:10:244::/56", True)
    assert node.pools.twin("10.244.3.0/24") == ipaddress.IPv6Network("fd00:10:244:3::/64")
    for bad, message in (("fd00:10:244::/56", "the first prefix must be IPv4"),
                         ("10.244.0.0/16,fd00::/120", "too small")):
        assert main([*base, "--cluster-cidr", bad]) == 2
        assert message in capsys.readouterr().err
    assert len(calls) == 1


def test_probe_family_6_plans_the_ipv6_addresses_or_says_there_are_none() -> None:
    from podnet.observe import matrix

    lab = dual_lab()
    plan = matrix.plan(lab, matrix.Request(family=6))
    assert {p.address for probes in plan.probes.values() for p in probes} == {"fd00:10:244::2", "fd00:10:244:1::2"}
    assert {p.address for probes in matrix.plan(lab).probes.values() for p in probes} == {"10.244.0.2", "10.244.1.2"}
    for pod in lab["pods"].values():
        pod["ips"] = pod["ips"][:1]
    with pytest.raises(matrix.MatrixError, match="no selected target has an IPv6 address"):
        matrix.plan(lab, matrix.Request(family=6))


def test_service_checks_probe_each_clusterip_of_a_dual_stack_service() -> None:
    from podnet.observe.service_checks import ServiceTarget, probes

    lab = dual_lab()
    lab["cluster_dns"] = {"ip": "10.96.0.10", "ip6": "fd00:10:96::a", "domain": "cluster.local"}
    first = {"node0": "default/p0", "node1": "default/p1"}
    targets = [ServiceTarget("default/web:http", ip, 80, "tcp", 30080, (("p0", "node0"),))
               for ip in ("10.96.1.1", "fd00:10:96::1")]
    planned = probes(lab, targets, first)
    checks = {(check, spec["dst"]) for check, _src, _ns, _dst, spec in planned}
    assert ("service/cluster-ip/ipv6", "fd00:10:96::1") in checks and ("service/cluster-ip", "10.96.1.1") in checks
    assert ("service/node-port/ipv6", "fd00:172:31::11") in checks and ("dns/cluster-ip/ipv6", "fd00:10:96::a") in checks
    aaaa = next(spec for check, *_rest, spec in planned if check == "dns/cluster-ip/ipv6")
    assert (aaaa["qtype"], aaaa["expect"]) == ("AAAA", "answer fd00:10:96::a")
    assert all(check.endswith("/ipv6") for check, *_rest in probes(lab, targets, first, only=6))
