"""`podnet host join` without a kernel: the planner (hostjoin/plan.py), the address
and record in a store (hostjoin/reserve.py), the nodes' routes back (routes.py), the
host record's encoding, `get hosts`, and policy's view of a joined host."""

from __future__ import annotations

import ipaddress
import threading

import pytest

from podnet import keys
from podnet.cluster import leases
from podnet.cluster.leases import HOSTS_OWNER, keep_for_hosts
from podnet.fabric.base import FabricContext, RouteSpec
from podnet.hostjoin import reserve
from podnet.hostjoin.plan import (
    HostNet,
    HostRoute,
    JoinError,
    block_for_hosts,
    free_addresses,
    plan,
)
from podnet.hostjoin.routes import node_routes
from podnet.model.base import CorruptRecord
from podnet.model.cluster import BlockClaim, HostRecord, NodeLease
from podnet.model.ipam import Reservation
from podnet.model.policy import PodRecord
from podnet.objects import store as repository
from podnet.objects.registry import lookup
from podnet.policy.evaluate import Endpoint, decide
from podnet.policy.world import load_world
from podnet.store.memory import MemoryStore

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
HOST = HostNet("eth0", ipaddress.IPv4Interface("172.31.0.190/24"), "172.31.0.1")


def lease(name: str, block: str, ip: str, fabric: str = "vxlan", backend: dict | None = None) -> NodeLease:
    return NodeLease(name, block, ip, "eth0", fabric, backend or {}, 0.0)


def publish(store: MemoryStore, *nodes: NodeLease) -> None:
    for node in nodes:
        store.put(node.key, node.encode())
        claim = BlockClaim(node.name, node.block)
        store.put(claim.key, claim.encode())


# -- the planner ----------------------------------------------------------------------


def test_on_link_nodes_get_a_route_per_block_with_the_podnet_source():
    nodes = [lease("n0", "10.244.0.0/24", "172.31.0.10"), lease("n1", "10.244.1.0/24", "172.31.0.11")]
    claims = {"10.244.0.0/24": "n0", "10.244.1.0/24": "n1", "10.244.5.0/24": "n1", "10.244.2.0/24": HOSTS_OWNER}
    got = plan("vm1", ipaddress.IPv4Address("10.244.2.2"), HOST, nodes, claims, CLUSTER)
    assert got.address == ipaddress.IPv4Interface("10.244.2.2/32") and got.device == "eth0"
    assert set(got.routes) == {HostRoute("10.244.0.0/24", "172.31.0.10", "eth0", "10.244.2.2"),
                               HostRoute("10.244.1.0/24", "172.31.0.11", "eth0", "10.244.2.2"),
                               HostRoute("10.244.5.0/24", "172.31.0.11", "eth0", "10.244.2.2")}  # n1 grew
    assert got.notes == ()
    assert "ip address replace 10.244.2.2/32 dev eth0" in got.commands()
    assert "ip route replace 10.244.5.0/24 via 172.31.0.11 dev eth0 src 10.244.2.2 proto 79" in got.commands()


def test_off_link_nodes_go_through_the_gateway_and_forged_leases_get_nothing():
    nodes = [lease("n0", "10.244.0.0/24", "172.31.0.10", "bgp"), lease("far", "10.244.1.0/24", "172.31.1.10", "bgp"),
             lease("forged", "10.244.7.0/24", "172.31.0.66", "bgp")]
    claims = {"10.244.0.0/24": "n0", "10.244.1.0/24": "far", "10.244.7.0/24": "n0"}
    got = plan("vm1", ipaddress.IPv4Address("10.244.2.2"), HOST, nodes, claims, CLUSTER)
    assert {(r.dst, r.via) for r in got.routes} == {("10.244.0.0/24", "172.31.0.10"), ("10.244.7.0/24", "172.31.0.10"),
                                                   ("10.244.0.0/16", "172.31.0.1")}
    assert any("forged" in n and "not claimed by it" in n for n in got.notes)
    assert any("far" in n and "default gateway 172.31.0.1" in n for n in got.notes)
    no_gateway = plan("vm1", ipaddress.IPv4Address("10.244.2.2"), HostNet("eth0", HOST.address), nodes, claims, CLUSTER)
    assert all(r.via != "172.31.0.1" for r in no_gateway.routes)
    assert any("no default gateway" in n for n in no_gateway.notes)


def test_macvlan_puts_the_address_on_the_segment_and_routes_nothing():
    nodes = [lease("n0", "10.244.1.0/24", "172.31.0.10", "macvlan",
                   {"segment": "10.244.0.0/16", "gateway": "10.244.0.1"})]
    got = plan("vm1", ipaddress.IPv4Address("10.244.0.2"), HOST, nodes, {"10.244.1.0/24": "n0"}, CLUSTER)
    assert got.address == ipaddress.IPv4Interface("10.244.0.2/16") and got.routes == ()
    with pytest.raises(JoinError, match="outside the macvlan segment"):
        plan("vm1", ipaddress.IPv4Address("10.9.0.2"), HOST, nodes, {}, CLUSTER)
    bad = [lease("n0", "10.244.1.0/24", "172.31.0.10", "macvlan", {"gateway": "10.244.0.1"})]
    with pytest.raises(JoinError, match="backend.segment"):
        plan("vm1", ipaddress.IPv4Address("10.244.0.2"), HOST, bad, {}, CLUSTER)


def test_hosts_block_and_free_addresses_keep_the_router_address():
    assert block_for_hosts({"10.244.0.0/24": "n0", "10.244.9.0/24": HOSTS_OWNER}, CLUSTER, 24) == (
        ipaddress.IPv4Network("10.244.9.0/24"), False)
    assert block_for_hosts({"10.244.0.0/24": "n0", "10.244.1.0/24": "n1"}, CLUSTER, 24) == (
        ipaddress.IPv4Network("10.244.2.0/24"), True)
    block = ipaddress.IPv4Network("10.244.2.0/29")
    assert [str(a) for a in free_addresses(block, ["10.244.2.3"])] == ["10.244.2.2", "10.244.2.4", "10.244.2.5",
                                                                        "10.244.2.6"]
    full = {str(net): "n" for net in CLUSTER.subnets(new_prefix=18)}
    with pytest.raises(JoinError, match="no free /18 block"):
        block_for_hosts(full, CLUSTER, 18)


# -- the store ------------------------------------------------------------------------


def test_join_claims_a_hosts_block_reserves_by_cas_and_a_rejoin_keeps_the_address():
    store = MemoryStore()
    publish(store, lease("n0", "10.244.0.0/24", "172.31.0.10"), lease("n1", "10.244.1.0/24", "172.31.0.11"))
    first = reserve.join(store, "vm1", HOST, CLUSTER, 24)
    assert first.block == "10.244.2.0/24" and leases.list_claims(store)["10.244.2.0/24"] == HOSTS_OWNER
    assert store.get(keys.block("10.244.2.0", 24)).expires_at is None  # kept without TTL: no node renews it
    assert first.plan.pod_ip == "10.244.2.2" and not first.reused
    held = Reservation.from_entry(store.get(keys.ipam_address("cluster", "10.244.2.2")))
    assert (held.container_id, held.state, held.node) == ("@host:vm1", "ready", "")
    other = reserve.join(store, "vm2", HostNet("eth0", ipaddress.IPv4Interface("172.31.0.191/24")), CLUSTER, 24)
    assert other.plan.pod_ip == "10.244.2.3"
    again = reserve.join(store, "vm1", HOST, CLUSTER, 24)
    assert again.plan.pod_ip == "10.244.2.2" and again.reused
    assert reserve.list_hosts(store) == {"vm1": HostRecord("172.31.0.190", 0, "10.244.2.2"),
                                         "vm2": HostRecord("172.31.0.191", 0, "10.244.2.3")}
    record, freed = reserve.leave(store, "vm1")
    assert record == HostRecord("172.31.0.190", 0, "10.244.2.2") and freed == ["10.244.2.2"]
    assert store.get(keys.host("vm1")) is None and store.get(keys.ipam_address("cluster", "10.244.2.2")) is None
    assert reserve.leave(store, "vm1") == (None, [])


def test_join_uses_the_block_already_kept_and_keeps_the_labs_rack():
    store = MemoryStore()
    keep_for_hosts(store, "10.244.200.0/24")
    store.put(keys.host("vm1"), HostRecord("172.31.1.190", 1).encode())
    joined = reserve.join(store, "vm1", HostNet("eth0", ipaddress.IPv4Interface("172.31.1.190/24")), CLUSTER, 24)
    assert joined.plan.pod_ip == "10.244.200.2" and joined.record.rack == 1
    assert joined.plan.routes == () and "no node is up" in joined.plan.notes[0]  # nothing to route yet


def test_two_joins_racing_never_share_an_address():
    store = MemoryStore()
    keep_for_hosts(store, "10.244.2.0/24")
    got: dict[str, str] = {}

    def one(name: str) -> None:
        got[name] = reserve.join(store, name, HOST, CLUSTER, 24).plan.pod_ip

    threads = [threading.Thread(target=one, args=(f"vm{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got.values())) == 8, got


def test_the_hosts_block_full_is_a_clear_error():
    store = MemoryStore()
    keep_for_hosts(store, "10.244.2.0/30")  # .1 is the router's, .2 the only host address
    reserve.join(store, "vm1", HOST, CLUSTER, 30)
    with pytest.raises(JoinError, match="10.244.2.0/30 has no free address left for host vm2"):
        reserve.join(store, "vm2", HOST, CLUSTER, 30)


def test_a_gossip_cluster_refuses_a_join_and_says_what_to_do_instead():
    store = MemoryStore()
    publish(store, lease("n0", "10.244.0.0/17", "172.31.0.10", fabric="gossip"))
    with pytest.raises(JoinError, match="ring hands the whole cluster CIDR") as caught:
        reserve.join(store, "vm1", HOST, CLUSTER, 24)
    assert "podnet agent --fabric gossip" in caught.value.details
    assert store.get(keys.host("vm1")) is None and not leases.hosts_blocks(leases.list_claims(store))


# -- the record, get hosts, policy ----------------------------------------------------


def test_a_record_without_pod_ip_encodes_as_before_and_pod_ip_round_trips():
    assert HostRecord("172.31.0.190", 2).encode() == '{"rack":2,"underlay_ip":"172.31.0.190"}'
    joined = HostRecord("172.31.0.190", 2, "10.244.2.2")
    assert HostRecord.from_json(joined.to_json()) == joined and joined.joined
    assert HostRecord.from_json({"underlay_ip": "172.31.0.190"}).pod_ip == ""
    with pytest.raises(CorruptRecord, match="pod_ip"):
        HostRecord.from_json({"underlay_ip": "172.31.0.190", "pod_ip": "not-an-ip"})


def test_get_hosts_names_each_record_by_its_key():
    store = MemoryStore()
    store.put(keys.host("vm1"), HostRecord("172.31.0.190", 0, "10.244.2.2").encode())
    store.put(keys.host("plain"), HostRecord("172.31.0.191", 1).encode())
    docs = {d["metadata"]["name"]: d["spec"] for d in repository.get(store, lookup("hosts"))}
    assert docs == {"vm1": {"underlayIP": "172.31.0.190", "podIP": "10.244.2.2", "rack": 0, "joined": True},
                    "plain": {"underlayIP": "172.31.0.191", "podIP": "", "rack": 1, "joined": False}}
    assert repository.get_one(store, lookup("host"), "vm1")["metadata"]["name"] == "vm1"


HEP = """{"apiVersion": "podnet.io/v1", "kind": "HostEndpoint", "metadata": {"name": "vm1", "labels": {"role": "vm"}},
          "spec": {"host": "vm1"}}"""


def test_a_joined_hosts_host_endpoint_covers_both_addresses():
    store = MemoryStore()
    store.put(keys.object_key(keys.HOST_ENDPOINTS, "vm1"), HEP)
    store.put(keys.host("vm1"), HostRecord("172.31.0.190").encode())
    world, _ = load_world(store)
    assert _host(world.endpoints).ips == ("172.31.0.190",)
    store.put(keys.host("vm1"), HostRecord("172.31.0.190", 0, "10.244.2.2").encode())
    world, _ = load_world(store)
    assert _host(world.endpoints).ips == ("172.31.0.190", "10.244.2.2")


def _host(endpoints: tuple[Endpoint, ...] | list[Endpoint]) -> Endpoint:
    return next(ep for ep in endpoints if ep.kind == "host")


# -- the nodes' routes back -----------------------------------------------------------


def ctx(fabric: str = "vxlan", underlay: str = "172.31.0.10/24") -> FabricContext:
    own = lease("n0", "10.244.0.0/24", underlay.split("/")[0], fabric)
    return FabricContext(own, ipaddress.IPv4Interface(underlay), 1500, CLUSTER, 24)


def test_node_routes_reach_each_joined_on_link_host():
    hosts = {"vm1": HostRecord("172.31.0.190", 0, "10.244.2.2"), "vm2": HostRecord("172.31.0.191", 0, "10.244.2.3"),
             "plain": HostRecord("172.31.0.192"), "far": HostRecord("172.31.1.190", 1, "10.244.2.4")}
    assert node_routes(hosts, ctx()) == {RouteSpec("10.244.2.2/32", "172.31.0.190", "eth0"),
                                         RouteSpec("10.244.2.3/32", "172.31.0.191", "eth0")}
    assert node_routes(hosts, ctx("host-gw", "172.31.1.10/24")) == {RouteSpec("10.244.2.4/32", "172.31.1.190", "eth0")}
    assert node_routes(hosts, ctx("macvlan")) == set()


def test_node_routes_refuse_records_that_would_steal_pod_addresses():
    hosts = {"own": HostRecord("172.31.0.190", 0, "10.244.0.7"),  # this node's own block
             "outside": HostRecord("172.31.0.191", 0, "192.168.0.1"),  # not the pod network
             "peer": HostRecord("172.31.0.192", 0, "10.244.1.9"),  # a peer's block, not the hosts block
             "vm1": HostRecord("172.31.0.193", 0, "10.244.2.2")}
    claims = {"10.244.1.0/24": "n1", "10.244.2.0/24": HOSTS_OWNER}
    assert node_routes(hosts, ctx(), claims) == {RouteSpec("10.244.2.2/32", "172.31.0.193", "eth0")}
    assert RouteSpec("10.244.1.9/32", "172.31.0.192", "eth0") in node_routes(hosts, ctx())  # without claims: trusted


ALLOW_VM = """{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "from-vm", "namespace": "default"},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                        "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.2.2/32"}}]}]}}"""


def test_a_pods_ip_block_matches_the_joined_hosts_podnet_address():
    store = MemoryStore()
    store.put(keys.object_key(keys.HOST_ENDPOINTS, "vm1"), HEP)
    store.put(keys.host("vm1"), HostRecord("172.31.0.190", 0, "10.244.2.2").encode())
    store.put(keys.object_key(keys.NETWORK_POLICIES, "from-vm", "default"), ALLOW_VM)
    store.put(keys.pod("default", "web"), PodRecord("default", "web", "n0", ("10.244.0.5",), {"app": "web"}).encode())
    world, _ = load_world(store)
    web = world.endpoint("default/web")
    assert decide(world, "10.244.2.2", web, 80, "TCP").allowed
    assert not decide(world, "172.31.0.190", web, 80, "TCP").allowed  # the same host, by its underlay address
