"""The node service's block decisions (agent/node_blocks.py): which store events change
what a bgp node announces, and what a departed peer's blocks and borrowed addresses
leave behind."""

from __future__ import annotations

import ipaddress
import json

from podnet.agent.node_blocks import borrowing_event, reclaim
from podnet.cluster.leases import list_claims
from podnet.fabric.base import FabricContext
from podnet.identity import NodeIdentity
from podnet.ipam.service import IpamService
from podnet.model.cluster import BlockClaim, NodeLease
from podnet.store.base import DELETE, PUT, Event
from podnet.store.memory import MemoryStore

KEY = "ipam/cluster/ip/10.244.0.70"


def reservation(node: str) -> str:
    return json.dumps({"id": "c1", "ifname": "eth0", "state": "ready", "owner": f"{node}:boot:1:1", "ts": 0})


def test_a_put_counts_only_for_this_nodes_pod_outside_its_blocks():
    mine = ("10.244.0.0/26",)
    assert borrowing_event(Event(PUT, KEY, reservation("n1"), 5), "n1", mine, ())
    assert not borrowing_event(Event(PUT, KEY, reservation("n2"), 5), "n1", mine, ())  # another node's pod
    inside = "ipam/cluster/ip/10.244.0.7"
    assert not borrowing_event(Event(PUT, inside, reservation("n1"), 5), "n1", mine, ())  # in its own block
    assert not borrowing_event(Event(PUT, "nodes/n1", "{}", 5), "n1", mine, ())


def test_a_delete_counts_when_the_address_is_announced():
    assert borrowing_event(Event(DELETE, KEY, None, 6), "n1", ("10.244.0.0/26",), {"10.244.0.70"})
    assert not borrowing_event(Event(DELETE, KEY, None, 6), "n1", ("10.244.0.0/26",), set())


def test_a_departed_peer_leaves_no_block_and_no_borrowed_address():
    store = MemoryStore()
    for block, node in (("10.244.0.0/26", "n1"), ("10.244.0.64/26", "n2"), ("10.244.0.128/26", "n2")):
        claim = BlockClaim(node, block)
        store.put(claim.key, claim.encode())
    n2 = IpamService(store, identity=NodeIdentity("m", "b", node_name="n2"))
    ranges = {"type": "podnet-ipam", "subnet": "10.244.0.0/26"}
    n2.allocate("cluster", "lent", "eth0", ranges)  # n2's pod in n1's block (borrowed)
    n2.allocate("cluster", "own", "eth0", {"type": "podnet-ipam", "subnet": "10.244.0.128/26"})
    kept = IpamService(store, identity=NodeIdentity("m", "b", node_name="n1")).allocate("cluster", "n1pod", "eth0",
                                                                                         ranges)
    gone = NodeLease("n2", "10.244.0.64/26", "172.31.0.12", "eth0", "bgp")
    own = NodeLease("n1", "10.244.0.0/26", "172.31.0.11", "eth0", "bgp")
    ctx = FabricContext(own, ipaddress.IPv4Interface("172.31.0.11/24"), 1500,
                        ipaddress.IPv4Network("10.244.0.0/16"), 26)
    claims = list_claims(store)
    for block in ("10.244.0.64/26", "10.244.0.128/26"):
        store.delete(BlockClaim("n2", block).key)  # expired with the lease
    reclaim(store, ctx, gone, claims)
    left = {r.container_id for r in IpamService(store).reservations("cluster")}
    assert left == {"n1pod"} and str(kept.ips[0].address).startswith("10.244.0.")
