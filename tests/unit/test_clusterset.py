"""The clusterset's pure parts: records validated, joins refused on overlap, a node's
plan (member or gateway), the no-masquerade table, and the TTL election on a memory
store with a fake clock."""

from __future__ import annotations

import pytest

from podnet import keys
from podnet.clusterset.exports import (
    MCS_API,
    SERVICE_NAME_LABEL,
    SOURCE_LABEL,
    Exported,
    plan_imports,
)
from podnet.clusterset.model import (
    ActiveGateway,
    ClusterInfo,
    ClusterPeer,
    ClustersetError,
    GatewayCandidate,
    check_joinable,
)
from podnet.clusterset.plan import DEVICE, cluster_mac, next_hop, nft_script, plan_node
from podnet.clusterset.records import elect, read_local, write_candidate, write_peer, write_self
from podnet.dns.cluster import clusterset_fragment
from podnet.errors import ObjectError
from podnet.fabric.base import FdbSpec, NeighSpec, RouteSpec
from podnet.services.objects import Service, ServicePortSpec, SliceEndpoint, SlicePort
from podnet.store.memory import MemoryStore

WEST = ClusterInfo("west", "10.244.0.0/16", "10.96.0.0/16")
EAST = ClusterInfo("east", "10.245.0.0/16", "10.97.0.0/16")


def test_records_are_validated_with_the_field_named() -> None:
    assert ClusterInfo.from_json(WEST.to_json()) == WEST
    with pytest.raises(ClustersetError, match="clusterset/self: clusterCIDR: '10.244.0.1/16' is not an IPv4 network"):
        ClusterInfo.from_json({**WEST.to_json(), "clusterCIDR": "10.244.0.1/16"})
    with pytest.raises(ClustersetError, match="name: 'West' is not a cluster name"):
        ClusterInfo.from_json({**WEST.to_json(), "name": "West"})
    with pytest.raises(ClustersetError, match="x: store: '' is not a store URL"):
        ClusterPeer.from_json({**EAST.to_json(), "store": ""}, "x")
    with pytest.raises(ClustersetError, match="address: 127.0.0.1 cannot be a gateway's address"):
        GatewayCandidate.from_json({"node": "n0", "address": "127.0.0.1"})
    with pytest.raises(ClustersetError, match="since: 'soon' is not a time"):
        ActiveGateway.from_json({"node": "n0", "address": "100.64.0.10", "underlay": "172.31.0.10", "since": "soon"})


def test_a_join_is_refused_for_overlapping_ranges_or_a_taken_name() -> None:
    check_joinable(WEST, EAST, [])
    clash = ClusterInfo("east", "10.244.128.0/17", "10.98.0.0/16")
    with pytest.raises(ClustersetError, match="east clusterCIDR 10.244.128.0/17 overlaps west clusterCIDR") as err:
        check_joinable(WEST, clash, [])
    assert "--global-cidr" in err.value.details and "--cluster-cidr" in err.value.details
    third = ClusterInfo("north", "10.246.0.0/16", "10.97.128.0/17")  # clashes with a peer, not with us
    with pytest.raises(ClustersetError, match="north serviceCIDR 10.97.128.0/17 overlaps east serviceCIDR"):
        check_joinable(WEST, third, [EAST])
    with pytest.raises(ClustersetError, match="already has a cluster of that name"):
        check_joinable(WEST, ClusterInfo("west", "10.250.0.0/16", "10.99.0.0/16"), [])


def _active(node: str) -> ActiveGateway:
    return ActiveGateway(node, "100.64.0.10", "172.31.0.10", 1.0)


def test_a_member_routes_the_peers_ranges_to_its_gateway() -> None:
    peers = [ClusterPeer(EAST, "/s/east.db")]
    plan = plan_node("node1", "eth0", WEST, peers, _active("node0"), {})
    assert plan.tunnel is None and plan.fabric.neighbours == set() and plan.fabric.fdb == set()
    assert plan.fabric.routes == {RouteSpec("10.245.0.0/16", "172.31.0.10", "eth0", onlink=True),
                                  RouteSpec("10.97.0.0/16", "172.31.0.10", "eth0", onlink=True)}
    assert plan.remote_cidrs == ("10.245.0.0/16", "10.97.0.0/16") and plan.peers == {"east": "ok (via node0)"}
    nobody = plan_node("node1", "eth0", WEST, peers, None, {})
    assert nobody.fabric.routes == set() and "no gateway of west in charge" in nobody.peers["east"]


def test_the_gateway_tunnels_to_each_peers_gateway_by_cluster_mac() -> None:
    north = ClusterInfo("north", "10.246.0.0/16", "10.98.0.0/16")
    peers = [ClusterPeer(north, "/s/n.db"), ClusterPeer(EAST, "/s/e.db")]
    theirs = {"east": ActiveGateway("e1", "100.64.0.11", "172.31.0.11", 2.0), "north": None}
    plan = plan_node("node0", "eth0", WEST, peers, _active("node0"), theirs)
    assert plan.tunnel is not None and plan.tunnel.local == "100.64.0.10" and plan.tunnel.mac == cluster_mac("west")
    hop = next_hop(0)  # east sorts first
    assert hop == "169.254.1.1" and next_hop(1) == "169.254.2.1"
    assert plan.fabric.routes == {RouteSpec("10.245.0.0/16", hop, DEVICE, onlink=True),
                                  RouteSpec("10.97.0.0/16", hop, DEVICE, onlink=True)}
    assert plan.fabric.neighbours == {NeighSpec(hop, cluster_mac("east"), DEVICE)}
    assert plan.fabric.fdb == {FdbSpec(cluster_mac("east"), "100.64.0.11", DEVICE)}
    assert plan.peers["north"].startswith("no gateway of north in charge")
    assert cluster_mac("east") != cluster_mac("west") and int(cluster_mac("east")[:2], 16) & 0b11 == 0b10


def test_the_no_masquerade_table_is_one_transaction_and_goes_with_the_last_peer() -> None:
    script = nft_script(WEST, ("10.245.0.0/16", "10.97.0.0/16"))
    assert script.startswith("add table ip podnet-clusterset\ndelete table ip podnet-clusterset\n")
    assert "elements = { 10.245.0.0/16, 10.97.0.0/16 }" in script
    assert "priority srcnat - 5" in script and "ip saddr 10.244.0.0/16 ip daddr @peers snat to ip saddr" in script
    assert nft_script(WEST, ()) == "add table ip podnet-clusterset\ndelete table ip podnet-clusterset\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_election_takes_refreshes_fails_over_and_steps_down() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    write_self(store, WEST)
    write_peer(store, ClusterPeer(EAST, "/s/e.db"))
    for node, address in (("node0", "100.64.0.10"), ("node1", "100.64.0.11")):
        write_candidate(store, GatewayCandidate(node, address))
    first = elect(store, read_local(store), "node0", "172.31.0.10", now=clock.now, ttl=3)
    assert first is not None and first.node == "node0" and first.underlay == "172.31.0.10"
    assert elect(store, read_local(store), "node1", "172.31.0.11", now=clock.now, ttl=3).node == "node0"
    assert elect(store, read_local(store), "node2", "172.31.0.12", now=clock.now, ttl=3).node == "node0"
    clock.now += 2
    assert elect(store, read_local(store), "node0", "172.31.0.10", now=clock.now, ttl=3).node == "node0"  # refreshed
    clock.now += 2.5  # 4.5 s after taking it, 2.5 s after the refresh: still node0's
    assert elect(store, read_local(store), "node1", "172.31.0.11", now=clock.now, ttl=3).node == "node0"
    clock.now += 1  # node0 stopped refreshing: expired
    taken = elect(store, read_local(store), "node1", "172.31.0.11", now=clock.now, ttl=3)
    assert taken is not None and taken.node == "node1" and taken.address == "100.64.0.11"
    store.delete(keys.clusterset_gateway("node1"))  # no longer a candidate: it gives the key up at once
    assert elect(store, read_local(store), "node1", "172.31.0.11", now=clock.now, ttl=3) is None
    assert store.get(keys.CLUSTERSET_ACTIVE_GATEWAY) is None


def test_records_that_do_not_validate_are_named_not_used() -> None:
    store = MemoryStore()
    store.put(keys.clusterset_peer("east"), '{"name": "east", "clusterCIDR": "nonsense", "serviceCIDR": "10.97.0.0/16", "store": "/s"}')
    store.put(keys.clusterset_gateway("node0"), '{"node": "node9", "address": "100.64.0.10"}')
    view = read_local(store)
    assert view.peers == [] and view.candidates == {}
    assert any("clusterCIDR" in p for p in view.problems) and any("names node 'node9'" in p for p in view.problems)


def test_the_local_view_is_one_listing_of_the_clusterset_records() -> None:
    """Every agent reads it each second: one read, not one per kind of record."""
    store = MemoryStore()
    write_self(store, WEST)
    write_peer(store, ClusterPeer(EAST, "/s/e.db"))
    write_candidate(store, GatewayCandidate("node0", "100.64.0.10"))
    elect(store, read_local(store), "node0", "172.31.0.10")
    reads: list[str] = []
    for name in ("get", "list"):
        real = getattr(store, name)
        setattr(store, name, lambda key, real=real, name=name: reads.append(f"{name} {key}") or real(key))
    view = read_local(store)
    assert reads == [f"list {keys.CLUSTERSET}"]
    assert view.me == WEST and [p.info for p in view.peers] == [EAST]
    assert list(view.candidates) == ["node0"] and view.active is not None and view.active.node == "node0"
    assert view.active_revision == store.get(keys.CLUSTERSET_ACTIVE_GATEWAY).revision and view.problems == []


def _exported(cluster: str, ready: bool = True, port: int = 80, target: int = 8080) -> Exported:
    return Exported(cluster, "default", "web", (ServicePortSpec(port, "TCP", "http", target),), (target,),
                    (SliceEndpoint(f"10.{245 if cluster == 'east' else 244}.1.5", ready),))


def test_imports_serve_local_endpoints_first_and_remote_ones_when_ours_are_gone() -> None:
    plans = plan_imports("west", [_exported("east"), _exported("west")])
    plan = plans[("default", "web")]
    assert plan.clusters == ["west", "east"] and plan.serving == ["west"]
    assert [s.name for s in plan.slices] == ["derived-web-west"]
    assert plan.slices[0].labels[SOURCE_LABEL] == "west" and plan.slices[0].service == "derived-web"
    assert plan.slices[0].ports == (SlicePort(8080, "TCP", "http"),)
    svc = plan.service()
    assert svc.name == "derived-web" and svc.selector is None and svc.labels == {SERVICE_NAME_LABEL: "web"}
    assert svc.ports == (ServicePortSpec(80, "TCP", "http", 80),)
    failed_over = plan_imports("west", [_exported("east"), _exported("west", ready=False)])[("default", "web")]
    assert failed_over.serving == ["east"] and [s.name for s in failed_over.slices] == ["derived-web-east"]
    clash = plan_imports("west", [_exported("west", ready=False), _exported("east", port=81)])[("default", "web")]
    assert clash.serving == [] and clash.clusters == ["west", "east"]  # ports differ: listed, not served
    doc = plan.import_manifest("10.96.0.77")
    assert doc["spec"]["ips"] == ["10.96.0.77"] and doc["spec"]["type"] == "ClusterSetIP"
    assert doc["status"] == {"clusters": [{"cluster": "west"}, {"cluster": "east"}], "serving": ["west"]}


def test_a_service_export_has_no_spec_and_the_clusterset_name_follows_the_derived_service() -> None:
    from podnet.objects.registry import parse_documents

    [export] = parse_documents([{"apiVersion": MCS_API, "kind": "ServiceExport",
                                 "metadata": {"name": "web", "namespace": "shop"}}])
    assert export.key == "serviceexports/shop/web"
    with pytest.raises(ObjectError, match="spec: a ServiceExport has no spec"):
        parse_documents([{"apiVersion": MCS_API, "kind": "ServiceExport", "metadata": {"name": "web"},
                          "spec": {"x": 1}}])
    derived = Service("derived-web", "shop", ports=(ServicePortSpec(80),), cluster_ip="10.96.0.77",
                      labels={SERVICE_NAME_LABEL: "web"})
    assert clusterset_fragment(derived) == (("web.shop.svc.clusterset.local", "A", "10.96.0.77"),)
    assert clusterset_fragment(Service("web", "shop", cluster_ip="10.96.0.5")) == ()


def test_peer_pods_are_mirrored_for_policy_and_kept_through_an_outage() -> None:
    from podnet.agent.clusterset_imports import CLUSTER_LABEL, mirror_pods
    from podnet.model.policy import PodRecord
    from podnet.policy.world import load_world

    ours, east = MemoryStore(), MemoryStore()
    pod = PodRecord("default", "web-1", "node1", ("10.245.1.5",), {"app": "web"})
    east.put(pod.key, pod.encode())
    local = PodRecord("default", "web-1", "node0", ("10.244.0.5",), {"app": "web"})  # the same name, ours
    ours.put(local.key, local.encode())
    assert mirror_pods(ours, ["east"], [(EAST, east)], []) == ["+policy/remotepods/east/default/web-1"]
    world, _ = load_world(ours, problems=[])
    remote = [ep for ep in world.endpoints if ep.name == "web-1@east"]
    assert remote and remote[0].ips == ("10.245.1.5",) and remote[0].node is None
    assert remote[0].labels == {"app": "web", CLUSTER_LABEL: "east"}
    assert [ep.name for ep in world.endpoints if ep.name == "web-1"]  # ours stays itself
    assert mirror_pods(ours, ["east"], [], []) == []  # east does not answer: its pods stay
    east.delete(pod.key)
    assert mirror_pods(ours, ["east"], [(EAST, east)], []) == ["-policy/remotepods/east/default/web-1"]
    east.put(pod.key, pod.encode())
    mirror_pods(ours, ["east"], [(EAST, east)], [])
    assert mirror_pods(ours, [], [], []) == ["-policy/remotepods/east/default/web-1"]  # no peer any more


def test_the_clusterset_checks_plan_gateways_imports_and_pods_of_peer_labs(tmp_path) -> None:
    from podnet.observe import clusterset_checks
    from podnet.store import open_store

    peer_url = str(tmp_path / "east.db")
    with open_store(peer_url) as east:
        write_self(east, EAST)  # no gateway in charge there yet
    ours = MemoryStore()
    write_self(ours, WEST)
    write_peer(ours, ClusterPeer(EAST, peer_url))
    write_candidate(ours, GatewayCandidate("node0", "100.64.0.10"))
    elect(ours, read_local(ours), "node0", "172.31.0.10")
    ours.put(keys.object_key(keys.SERVICE_IMPORTS, "web", "default"),
             '{"metadata": {"name": "web", "namespace": "default"}, "spec": {"ips": ["10.96.0.77"], '
             '"ports": [{"port": 80, "protocol": "TCP"}]}}')
    ours.put(keys.object_key(keys.ENDPOINT_SLICES, "derived-web-east", "default"),
             '{"metadata": {"name": "derived-web-east", "namespace": "default", "labels": '
             '{"multicluster.kubernetes.io/service-name": "web"}}, "endpoints": [{"addresses": ["10.245.1.9"]}]}')
    lab = {"pods": {"default/wa": {"node": "node0", "netns": "pn-lab-w-wa", "ips": ["10.244.0.5/24"]}},
           "cluster_dns": {"ip": "10.96.0.10"}}
    planned, judged = clusterset_checks.plan(lab, ours)
    assert judged == [("multicluster/gateway", "west", "node0", True, "node0 tunnels from 100.64.0.10"),
                      ("multicluster/gateway", "east", "-", False, "no gateway in charge")]
    checks = {p[0]: p for p in planned}
    assert set(checks) == {"multicluster/import-dns", "multicluster/import"}  # east is no lab here: no pod to pod
    assert checks["multicluster/import-dns"][4]["expect"] == "answer 10.96.0.77"
    assert checks["multicluster/import"][4] == {"kind": "tcp", "dst": "10.96.0.77", "port": 80,
                                              "expect_any": ["10.245.1.9"]}  # no lab names that address


def test_an_encrypted_peer_is_routed_into_the_sleeve_with_keys_from_the_pairs_secret() -> None:
    import base64

    from podnet.clusterset.model import tunnel_secret_from_json
    from podnet.clusterset.plan import SLEEVE_DEVICE, SLEEVE_PORT, SleevePlan
    from podnet.clusterset.sleeve import sleeve_peers

    north = ClusterInfo("north", "10.250.0.0/16", "10.98.0.0/16")
    peers = [ClusterPeer(EAST, "/s/e.db"), ClusterPeer(north, "/s/n.db", "sleeve")]
    assert ClusterPeer.from_json(peers[1].to_json()) == peers[1]
    with pytest.raises(ClustersetError, match="x: tunnel: 'gre' is not one of vxlan, sleeve"):
        ClusterPeer.from_json({**peers[1].to_json(), "tunnel": "gre"}, "x")
    theirs = {"east": _active("e0"), "north": ActiveGateway("n0", "100.64.0.30", "172.31.0.10", 1.0)}
    plan = plan_node("node0", "eth0", WEST, peers, _active("node0"), theirs)
    assert plan.sleeve is not None and plan.sleeve.listen == "100.64.0.10"
    assert plan.sleeve.peers == {"north": "100.64.0.30"}
    assert plan.sleeve.routes == {"10.250.0.0/16": "north", "10.98.0.0/16": "north"}
    assert RouteSpec("10.250.0.0/16", "", SLEEVE_DEVICE) in plan.fabric.routes
    assert not any(n.mac == cluster_mac("north") for n in plan.fabric.neighbours)  # no VXLAN next hop for it
    assert RouteSpec("10.245.0.0/16", next_hop(0), DEVICE, onlink=True) in plan.fabric.routes  # east: VXLAN
    assert plan_node("node1", "eth0", WEST, peers, _active("node0"), {}).sleeve is None  # members route to the gateway
    problems: list[str] = []
    assert sleeve_peers("west", plan.sleeve, {}, problems) == {} and "never sent in clear" in problems[0]
    secret = bytes(range(32))
    mine = sleeve_peers("west", plan.sleeve, {"north": secret}, [])["north"]
    far = sleeve_peers("north", SleevePlan("100.64.0.30", {"west": "100.64.0.10"}), {"west": secret}, [])["west"]
    assert mine.port == SLEEVE_PORT and mine.tx_key != mine.rx_key
    assert (far.tx_key, far.rx_key) == (mine.rx_key, mine.tx_key)  # the far side derives the same pair
    assert tunnel_secret_from_json({"secret": base64.b64encode(secret).decode()}, "k") == secret
    with pytest.raises(ClustersetError, match="k: secret: not 32 or more bytes of base64"):
        tunnel_secret_from_json({"secret": "c2hvcnQ="}, "k")


def test_a_gossip_lab_cannot_join_a_clusterset(tmp_path, monkeypatch, capsys) -> None:
    """Its nodes keep a store each: the clusterset's records would reach one node only."""
    import json

    from podnet.cli import main
    from podnet.lab import state as lab_state
    from podnet.store import open_store

    monkeypatch.setattr(lab_state, "RUN_DIR", tmp_path)
    (tmp_path / "lab-g.json").write_text(json.dumps({"name": "g", "fabric": "gossip", "cluster_cidr": "10.246.0.0/16",
                                                     "service_cidr": "10.98.0.0/16",
                                                     "store_url": str(tmp_path / "g.db")}))
    ours = tmp_path / "ours.db"
    open_store(str(ours)).close()
    assert main(["cluster", "init", "west", "--cluster-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/16",
                 "--store", str(ours)]) == 0
    assert main(["cluster", "join", "g", "--peer-lab", "g", "--store", str(ours)]) != 0
    err = capsys.readouterr().err
    assert "lab g runs the gossip fabric: its nodes share no store" in err and "vxlan, host-gw, bgp" in err
    assert main(["cluster", "init", "--lab", "g", "--store", str(ours)]) != 0
