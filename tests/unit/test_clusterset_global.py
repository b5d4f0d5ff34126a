"""Global addressing in a clusterset (clusterset/globalnet.py), its pure parts: the one
to one layout, joins of overlapping clusters allowed only on global CIDRs, routes to a
peer's global CIDR only, the gateway's prefix NAT, imports on global IPs, the
global-<name> Services, and a global peer's pods mirrored at their global IPs."""

from __future__ import annotations

import pytest

from podnet import keys
from podnet.agent.clusterset_imports import mirror_pods, sync_global_services
from podnet.clusterset.exports import (
    GLOBAL_FOR_LABEL,
    Exported,
    global_service,
    globalized,
    plan_imports,
)
from podnet.clusterset.globalnet import layout
from podnet.clusterset.model import (
    ActiveGateway,
    ClusterInfo,
    ClusterPeer,
    ClustersetError,
    check_joinable,
)
from podnet.clusterset.plan import nft_script, plan_node
from podnet.model.policy import PodRecord
from podnet.objects import store as objects
from podnet.services.objects import Service, ServicePortSpec, SliceEndpoint
from podnet.store import open_store
from podnet.store.memory import MemoryStore

# the lab's defaults, twice: only global CIDRs tell them apart
WEST = ClusterInfo("west", "10.244.0.0/16", "10.96.0.0/16", "242.0.0.0/15")
EAST = ClusterInfo("east", "10.244.0.0/16", "10.96.0.0/16", "242.2.0.0/15")
NORTH = ClusterInfo("north", "10.250.0.0/16", "10.98.0.0/16")  # no global CIDR: reached on its own ranges


def test_the_global_cidr_maps_pods_and_services_one_to_one_each_in_a_half() -> None:
    mapped = WEST.layout()
    assert str(mapped.pods) == "242.0.0.0/16" and str(mapped.services) == "242.1.0.0/16"
    assert mapped.pod_ip("10.244.3.7") == "242.0.3.7" and mapped.service_ip("10.96.0.10") == "242.1.0.10"
    with pytest.raises(ValueError, match="not in 10.244.0.0/16"):
        mapped.pod_ip("10.245.0.1")
    assert [str(n) for n in layout("242.0.0.0/20", "10.244.0.0/24", "10.96.0.0/24").pod_map] == [
        "10.244.0.0/24", "242.0.0.0/24"]  # the pods' half is bigger than the range: its start
    with pytest.raises(ValueError, match="must hold twice the larger range .*a /15 or wider"):
        layout("242.0.0.0/16", "10.244.0.0/16", "10.96.0.0/16")
    with pytest.raises(ValueError, match="overlaps this cluster's own cluster CIDR"):
        layout("10.0.0.0/8", "10.244.0.0/16", "10.96.0.0/16")


def test_a_global_cidr_is_validated_with_the_field_named() -> None:
    assert ClusterInfo.from_json(WEST.to_json()) == WEST and WEST.to_json()["globalCIDR"] == "242.0.0.0/15"
    assert "globalCIDR" not in NORTH.to_json() and ClusterInfo.from_json(NORTH.to_json()) == NORTH
    with pytest.raises(ClustersetError, match="x: globalCIDR: half of 242.0.0.0/16 .* cannot map the cluster CIDR"):
        ClusterInfo.from_json({**WEST.to_json(), "globalCIDR": "242.0.0.0/16"}, "x")
    with pytest.raises(ClustersetError, match="x: globalCIDR: 'nope' is not an IPv4 network"):
        ClusterInfo.from_json({**WEST.to_json(), "globalCIDR": "nope"}, "x")


def test_overlapping_clusters_join_on_global_cidrs_only() -> None:
    check_joinable(WEST, EAST, [])  # the same ranges, told apart by their global CIDRs
    check_joinable(WEST, NORTH, [EAST])  # mixed: north is reached on its own ranges
    bare = ClusterInfo("east", "10.244.0.0/16", "10.96.0.0/16")
    with pytest.raises(ClustersetError, match="east clusterCIDR 10.244.0.0/16 overlaps west clusterCIDR") as err:
        check_joinable(WEST, bare, [])
    assert "--global-cidr" in err.value.details
    same_global = ClusterInfo("east", "10.244.0.0/16", "10.96.0.0/16", "242.0.0.0/15")
    with pytest.raises(ClustersetError, match="east globalCIDR 242.0.0.0/15 overlaps west globalCIDR"):
        check_joinable(WEST, same_global, [])
    into_theirs = ClusterInfo("south", "10.251.0.0/16", "10.99.0.0/16", "10.250.0.0/15")
    with pytest.raises(ClustersetError, match="south globalCIDR 10.250.0.0/15 overlaps north clusterCIDR"):
        check_joinable(WEST, into_theirs, [NORTH])


def _active(node: str) -> ActiveGateway:
    return ActiveGateway(node, "100.64.0.10", "172.31.0.10", 1.0)


def test_peers_with_a_global_cidr_are_routed_on_it_only() -> None:
    peers = [ClusterPeer(EAST, "/s/e.db"), ClusterPeer(NORTH, "/s/n.db")]
    member = plan_node("node1", "eth0", WEST, peers, _active("node0"), {})
    assert sorted(r.dst for r in member.fabric.routes) == ["10.250.0.0/16", "10.98.0.0/16", "242.2.0.0/15"]
    assert member.remote_cidrs == ("10.250.0.0/16", "10.98.0.0/16", "242.2.0.0/15")
    theirs = {"east": _active("e0"), "north": _active("n0")}
    gateway = plan_node("node0", "eth0", WEST, peers, _active("node0"), theirs)
    assert {r.dst for r in gateway.fabric.routes} == {"10.250.0.0/16", "10.98.0.0/16", "242.2.0.0/15"}


def test_only_the_gateway_of_a_global_cluster_maps_its_pods_by_prefix() -> None:
    gateway = nft_script(WEST, ("242.2.0.0/15",), gateway=True)
    tunnels = '{ "pncs0", "pnslcs0" }'  # the VXLAN tunnel and the encrypted one
    assert (f"oifname {tunnels} ip saddr 10.244.0.0/16 snat ip prefix to ip saddr map "
            "{ 10.244.0.0/16 : 242.0.0.0/16 }") in gateway
    assert (f"iifname {tunnels} ip daddr 242.0.0.0/16 dnat ip prefix to ip daddr map "
            "{ 242.0.0.0/16 : 10.244.0.0/16 }") in gateway
    # the mapping decides before the identity rule keeps a pod's own address
    assert gateway.index("snat ip prefix") < gateway.index("ip daddr @peers snat to ip saddr")
    member = nft_script(WEST, ("242.2.0.0/15",), gateway=False)
    assert "prefix" not in member and "ip saddr 10.244.0.0/16 ip daddr @peers snat to ip saddr" in member
    assert "prefix" not in nft_script(NORTH, ("242.2.0.0/15",), gateway=True)
    for script in (gateway, member):  # callers from the clusterset keep their address (no external-IP masquerade)
        assert "ip saddr @peers snat to ip saddr" in script


def _exported(cluster: str, cluster_ip: str = "10.96.0.20", ready: bool = True) -> Exported:
    return Exported(cluster, "default", "web", (ServicePortSpec(80, "TCP", "http", 8080),), (8080,),
                    (SliceEndpoint("10.244.1.5", ready),), cluster_ip, (("app", "web"),))


def test_a_global_clusters_export_is_imported_on_its_global_ip_and_service_ports() -> None:
    seen = globalized(_exported("east"), EAST.layout())
    assert seen.endpoints == (SliceEndpoint("242.3.0.20", True),) and seen.target_ports == (80,)
    assert globalized(_exported("east", ready=False), EAST.layout()).endpoints == (SliceEndpoint("242.3.0.20", False),)
    assert globalized(_exported("east", cluster_ip=""), EAST.layout()).endpoints == ()
    plan = plan_imports("west", [seen, _exported("west", ready=False)])[("default", "web")]
    assert plan.serving == ["east"] and plan.slices[0].endpoints == (SliceEndpoint("242.3.0.20", True),)
    assert plan.slices[0].ports[0].port == 80
    svc = global_service(_exported("east"), EAST.layout())
    assert svc is not None and svc.name == "global-web" and svc.external_ips == ("242.3.0.20",)
    assert dict(svc.selector or {}) == {"app": "web"} and svc.ports[0].target_port == 8080
    assert svc.labels == {GLOBAL_FOR_LABEL: "web"}
    by_hand = Exported("east", "default", "web", (), (), (), "10.96.0.20", None)
    assert global_service(by_hand, EAST.layout()) is None  # no selector: nothing to balance


def test_global_services_follow_the_exports_and_leave_a_users_own_alone() -> None:
    with open_store("memory://") as store:
        problems: list[str] = []
        assert sync_global_services(store, EAST, [_exported("east")], problems) == [
            "service/default/global-web created"]
        doc = store.get(keys.object_key(keys.SERVICES, "global-web", "default")).json()
        assert doc["spec"]["externalIPs"] == ["242.3.0.20"] and problems == []
        assert sync_global_services(store, EAST, [_exported("east")], problems) == []  # unchanged
        assert sync_global_services(store, EAST, [_exported("west")], problems) == [  # another cluster's
            "service/default/global-web deleted"]
        assert store.get(keys.object_key(keys.SERVICES, "global-web", "default")) is None
        objects.apply(store, [Service("global-web", "default", selector={"x": "y"}, ports=(ServicePortSpec(80),))])
        sync_global_services(store, EAST, [_exported("east")], problems)
        assert problems and "is not podnet's" in problems[0]
        assert store.get(keys.object_key(keys.SERVICES, "global-web", "default")).json()["spec"]["selector"] == \
            {"x": "y"}
        problems.clear()
        assert sync_global_services(store, NORTH, [_exported("north")], problems) == [] and problems == []


def test_a_global_peers_pods_are_mirrored_at_their_global_ips() -> None:
    ours, east = MemoryStore(), MemoryStore()
    pod = PodRecord("default", "web-1", "node1", ("10.244.1.5",), {"app": "web"})
    east.put(pod.key, pod.encode())
    assert mirror_pods(ours, ["east"], [(EAST, east)], []) == ["+policy/remotepods/east/default/web-1"]
    mirrored = PodRecord.from_json(ours.get(keys.remote_pod("east", "default", "web-1")).json())
    assert mirrored.ips == ("242.2.1.5",)
