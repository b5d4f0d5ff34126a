"""agent/gossip_ring.py: a node's ring duties over a MemoryStore, a real (not started)
GossipPeer's documents and a RingSync: the initial claim, the `blocks/` claims,
space requests and their answers, and burying a peer whose space was reclaimed.
Rings and documents travel between nodes by hand (`carry`)."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from podnet import keys
from podnet.agent.gossip_ring import RETRY_REQUEST, RingDuties, ring_from_file
from podnet.cluster.leases import CLUSTER_NETWORK
from podnet.gossip.blocks import REQUESTS, BlockSpace
from podnet.gossip.peers import GossipPeer
from podnet.gossip.ring_parts import RingError
from podnet.gossip.ring_sync import RingSync
from podnet.model.cluster import BlockClaim
from podnet.model.ipam import READY, Reservation
from podnet.store.memory import MemoryStore

SPACE = BlockSpace.of("10.244.0.0/21", 24)  # 8 blocks: 10.244.0.0/24 .. 10.244.7.0/24
T0 = 1000.0  # a monotonic time far from 0


class Node:
    """One gossip node's duties, with its own store, documents and ring copy."""

    def __init__(self, name: str, genesis: tuple[str, ...] = (), has_seeds: bool = False,
                 space: BlockSpace = SPACE) -> None:
        self.store = MemoryStore()
        self.docs = GossipPeer(name, listen=("127.0.0.1", 0))  # never started
        self.sync = RingSync(name, space.empty_ring(), grace=60.0, clock=lambda: T0)
        self.duties = RingDuties(name, space, self.sync, self.store, self.docs, genesis, has_seeds)

    @property
    def ring(self):
        return self.sync.ring()

    def owned(self) -> list[str]:
        return [str(b) for b in self.duties.space.owned(self.ring, self.duties.name)]


def carry(src: Node, dst: Node) -> None:
    """Gossip by hand: `dst` merges `src`'s ring and documents."""
    dst.sync.merge_ring(src.sync.get_ring())
    dst.docs.restore(src.docs.snapshot())


def cluster(*names: str, genesis: tuple[str, ...]) -> dict[str, Node]:
    nodes = {n: Node(n, genesis, has_seeds=True) for n in names}
    for node in nodes.values():
        node.duties.claim_initial()
    return nodes


def reserve(store: MemoryStore, address: str, node: str, container: str = "c1") -> str:
    reservation = Reservation(CLUSTER_NETWORK, address, container, "eth0", READY, f"{node}:boot-{node}:42:777", 1.0)
    store.put(reservation.key, reservation.encode())
    return reservation.key


def fill(store: MemoryStore, block: str, count: int, node: str) -> None:
    for host in list(IPv4Network(block).hosts())[1:count + 1]:
        reserve(store, str(host), node, f"c{host.packed[-1]}")


# -- the initial split


def test_a_node_of_the_genesis_list_claims_its_share():
    node = Node("b", genesis=("a", "b"), has_seeds=True)
    assert node.duties.claim_initial()
    assert node.ring.genesis == ("a", "b")
    assert node.owned() == [f"10.244.{i}.0/24" for i in range(4, 8)]
    assert not node.duties.claim_initial()  # claimed already


def test_every_node_of_the_list_computes_the_same_ring():
    a, b = Node("a", genesis=("a", "b")), Node("b", genesis=("b", "a"))
    assert a.duties.claim_initial() and b.duties.claim_initial()
    assert a.ring == b.ring
    carry(a, b)
    assert b.ring.tokens == a.ring.tokens


def test_a_node_outside_the_genesis_list_waits_for_the_ring():
    node = Node("c", genesis=("a", "b"), has_seeds=True)
    assert not node.duties.claim_initial()
    assert node.ring.tokens == ()
    carry(cluster("a", "b", genesis=("a", "b"))["a"], node)
    assert node.owned() == [] and len(node.ring.tokens) == 2


def test_without_genesis_and_seeds_a_node_claims_everything_alone():
    node = Node("solo")
    assert node.duties.claim_initial()
    assert node.ring.genesis == ("solo",) and len(node.owned()) == SPACE.count


def test_without_genesis_a_node_with_seeds_waits():
    node = Node("late", has_seeds=True)
    assert not node.duties.claim_initial()
    assert node.ring.tokens == ()


# -- ring -> blocks/ claims


def claims_in(store: MemoryStore) -> dict[str, str]:
    return {e.key: BlockClaim.from_json(e.json()).node for e in store.list(keys.BLOCKS)}


def test_write_claims_writes_every_ring_block_with_its_owner():
    node = cluster("a", "b", genesis=("a", "b"))["a"]
    assert node.duties.write_claims() == 8
    claims = claims_in(node.store)
    assert claims == {keys.block(f"10.244.{i}.0", 24): "a" if i < 4 else "b" for i in range(8)}
    entry = node.store.get(keys.block("10.244.5.0", 24))
    assert BlockClaim.from_json(entry.json()) == BlockClaim("b", "10.244.5.0/24")
    assert entry.expires_at is None  # no TTL: the ring, not a lease, says who owns it
    assert node.duties.write_claims() == 0  # in step: no write


def test_write_claims_follows_a_donation_and_drops_only_claims_of_the_cluster_cidr():
    nodes = cluster("a", "b", genesis=("a", "b"))
    a = nodes["a"]
    outside = keys.block("10.9.0.0", 24)
    for key, owner in ((outside, "z"), (keys.block("10.244.3.0", 25), "z"), (keys.BLOCKS + "junk", "z"),
                       (keys.block("10.244.2.0", 24), "z")):
        a.store.put(key, BlockClaim(owner, "10.9.0.0/24").encode())
    x = Node("x", has_seeds=True)
    x.docs.put(REQUESTS + "x", {"donor": "a", "blocks": 1, "seq": 1})
    carry(x, a)
    assert a.duties.answer_requests({"b", "x"}, []) == ["x"]
    # 8 claims, of which 10.244.2.0/24 rewritten, plus the stale /25 inside the CIDR removed
    assert a.duties.write_claims() == 9
    claims = claims_in(a.store)
    given = a.duties.space.owned(a.ring, "x")
    assert [claims[keys.block(str(b.network_address), 24)] for b in given] == ["x"]
    assert sum(owner == "a" for owner in claims.values()) == 3
    assert keys.block("10.244.3.0", 25) not in claims
    assert outside in claims and keys.BLOCKS + "junk" in claims  # never one outside the cluster CIDR


def test_write_claims_of_an_empty_ring_leaves_claims_outside_the_cidr():
    node = Node("late", has_seeds=True)
    node.store.put(keys.block("10.9.0.0", 24), BlockClaim("z", "10.9.0.0/24").encode())
    assert node.duties.write_claims() == 0
    assert list(claims_in(node.store)) == [keys.block("10.9.0.0", 24)]


# -- space requests


def test_a_node_owning_nothing_asks_the_biggest_live_owner():
    nodes = cluster("a", "b", "c", genesis=("a", "b", "c"))  # a 2 blocks, b 3, c 3
    x = Node("x", has_seeds=True)
    carry(nodes["a"], x)
    request = x.duties.ask_for_space({"a", "b", "c"}, now=T0)
    assert (request.donor, request.blocks) == ("b", 1)  # b and c tie: the lower name
    assert request.seq >= 1
    assert x.docs.document(REQUESTS + "x").value == {"donor": "b", "blocks": 1, "seq": request.seq}
    x.duties.asked_at = 0.0
    assert x.duties.ask_for_space({"a", "c"}, now=T0).donor == "c"  # b unreachable
    assert x.duties.ask_for_space({"a", "c"}, now=T0) is None  # asked just now


def test_no_request_with_room_or_without_a_ring():
    nodes = cluster("a", "b", genesis=("a", "b"))
    assert nodes["a"].duties.ask_for_space({"b"}, now=T0) is None
    assert nodes["a"].docs.document(REQUESTS + "a") is None
    late = Node("late", has_seeds=True)
    assert late.duties.ask_for_space({"a"}, now=T0) is None and late.docs.documents() == {}


def test_a_node_with_a_nearly_full_block_asks_and_none_when_nobody_can_give():
    space = BlockSpace.of("10.244.0.0/22", 24)  # one block each
    nodes = {n: Node(n, ("a", "b", "c", "d"), True, space) for n in "abcd"}
    for node in nodes.values():
        node.duties.claim_initial()
    a = nodes["a"]
    fill(a.store, "10.244.0.0/24", 180, "a")  # 253 - 180 = 73 free: more than a quarter
    assert a.duties.free_addresses() == 73
    assert a.duties.ask_for_space({"b", "c", "d"}, now=T0) is None
    fill(a.store, "10.244.0.0/24", 200, "a")  # 53 free: short, but every peer has only its last block
    assert a.duties.ask_for_space({"b", "c", "d"}, now=T0) is None
    assert a.docs.document(REQUESTS + "a") is None


def test_reservations_outside_the_nodes_blocks_do_not_count():
    nodes = cluster("a", "b", genesis=("a", "b"))
    a = nodes["a"]
    fill(a.store, "10.244.5.0/24", 100, "b")
    assert a.duties.free_addresses() == 4 * 253


def test_the_request_is_withdrawn_once_room_comes():
    nodes = cluster("a", "b", genesis=("a", "b"))
    x = Node("x", has_seeds=True)
    carry(nodes["a"], x)
    request = x.duties.ask_for_space({"a", "b"}, now=T0)
    carry(x, nodes[request.donor])
    assert nodes[request.donor].duties.answer_requests({"a", "b", "x"}, []) == ["x"]
    carry(nodes[request.donor], x)
    assert len(x.owned()) == 1
    assert x.duties.ask_for_space({"a", "b"}, now=T0 + 1) is None
    assert x.docs.document(REQUESTS + "x").deleted
    assert x.docs.documents(REQUESTS) == {}


def test_an_unanswered_request_is_sent_again_only_after_retry_request():
    nodes = cluster("a", "b", genesis=("a", "b"))
    x = Node("x", has_seeds=True)
    carry(nodes["a"], x)
    first = x.duties.ask_for_space({"a", "b"}, now=T0).seq
    assert x.duties.ask_for_space({"a", "b"}, now=T0 + RETRY_REQUEST - 0.01) is None
    assert x.docs.document(REQUESTS + "x").value["seq"] == first
    again = x.duties.ask_for_space({"b"}, now=T0 + RETRY_REQUEST)
    assert again.seq > first and again.donor == "b"
    assert x.docs.document(REQUESTS + "x").value == {"donor": "b", "blocks": 1, "seq": again.seq}


# -- answering


def asked(nodes: dict[str, Node], asker: str, donor: str, seq: int) -> Node:
    """`asker` (a new node) files a request to `donor`, which reads it."""
    x = nodes.get(asker) or Node(asker, has_seeds=True)
    x.docs.put(REQUESTS + asker, {"donor": donor, "blocks": 1, "seq": seq})
    carry(x, nodes[donor])
    return x


def test_a_donor_answers_each_request_once_per_seq():
    nodes = cluster("a", "b", genesis=("a", "b"))
    b = nodes["b"]
    asked(nodes, "x", "b", 1)
    assert b.duties.answer_requests({"a", "x"}, []) == ["x"]
    assert len(b.duties.space.owned(b.ring, "x")) == 1
    assert b.duties.answer_requests({"a", "x"}, []) == []  # the same seq again
    nodes["x"] = asked(nodes, "x", "b", 2)
    assert b.duties.answer_requests({"a", "x"}, []) == ["x"]
    assert len(b.duties.space.owned(b.ring, "x")) == 2
    assert len(b.owned()) == 2


def test_a_request_for_another_donor_or_a_bad_one_is_left_alone():
    nodes = cluster("a", "b", genesis=("a", "b"))
    b = nodes["b"]
    asked(nodes, "x", "a", 1)
    bad = Node("y")
    bad.docs.put(REQUESTS + "y", {"donor": "b", "blocks": 0, "seq": 1})
    carry(bad, b)
    asked(nodes, "z", "b", 1)
    before = b.ring
    assert b.duties.answer_requests({"a", "x", "y", "z"}, []) == ["z"]
    assert b.duties.space.owned(b.ring, "x") == [] and b.duties.space.owned(b.ring, "y") == []
    assert b.ring != before


def test_a_donor_never_gives_a_block_in_keep_or_holding_an_address():
    nodes = cluster("a", "b", "c", genesis=("a", "b", "c"))  # b: 10.244.2.0 .. 10.244.4.0
    b = nodes["b"]
    reserve(b.store, "10.244.4.9", "b")
    asked(nodes, "x", "b", 1)
    assert b.duties.answer_requests({"a", "c", "x"}, ["10.244.3.0/24"]) == ["x"]
    assert [str(n) for n in b.duties.space.owned(b.ring, "x")] == ["10.244.2.0/24"]
    nodes["x"] = asked(nodes, "x", "b", 2)  # nothing left to give but the kept and the occupied
    assert b.duties.answer_requests({"a", "c", "x"}, ["10.244.3.0/24"]) == []
    assert b.duties.answered["x"] == 1  # not answered: asked again, it is tried again
    assert b.owned() == ["10.244.3.0/24", "10.244.4.0/24"]


def test_a_donor_cut_off_from_most_members_gives_nothing():
    nodes = cluster("a", "b", "c", genesis=("a", "b", "c"))
    asked(nodes, "x", "b", 1)
    before = nodes["b"].ring
    assert nodes["b"].duties.answer_requests({"x"}, []) == []
    assert nodes["b"].ring == before


def test_a_restarted_askers_first_request_is_answered():
    nodes = cluster("a", "b", genesis=("a", "b"))
    x = Node("x", has_seeds=True)
    carry(nodes["a"], x)
    request = x.duties.ask_for_space({"a", "b"}, now=T0)
    donor = nodes[request.donor]
    carry(x, donor)
    assert donor.duties.answer_requests({"a", "b", "x"}, []) == ["x"]
    carry(donor, x)
    assert x.duties.ask_for_space({"a", "b"}, now=T0 + 1) is None  # room: withdrawn
    fill(x.store, x.owned()[0], 250, "x")  # later its block fills up
    restarted = RingDuties("x", SPACE, x.sync, x.store, x.docs, (), True)  # the agent restarted
    again = restarted.ask_for_space({"a", "b"}, now=T0 + 100)
    assert again.seq > request.seq  # grows across restarts
    donor = nodes[again.donor]
    carry(x, donor)
    assert donor.duties.answer_requests({"a", "b", "x"}, []) == ["x"], f"request {again.seq} ignored"


# -- dead peers


def buried_cluster() -> dict[str, Node]:
    nodes = cluster("a", "b", "c", genesis=("a", "b", "c"))
    for node in nodes.values():
        node.store.put_json(keys.node("c"), {"block": "10.244.5.0/24"})
        node.store.put_json(keys.node("a"), {"block": "10.244.0.0/24"})
        reserve(node.store, "10.244.5.7", "c", "pod-c")
        reserve(node.store, "10.244.0.8", "c", "pod-c2")  # borrowed in a's block
        reserve(node.store, "10.244.0.9", "a", "pod-a")
        node.store.put_json(keys.endpoint(CLUSTER_NETWORK, "pod-c", "eth0"), {"ip": "10.244.5.7"})
        node.sync.change(lambda r: r.remove("c", "a"))  # `peers rm c` on a, the same ring everywhere
    return nodes


def test_the_taker_frees_the_dead_peers_reservations_and_deletes_its_lease():
    a = buried_cluster()["a"]
    assert a.duties.bury() == ["c"]
    assert a.store.get(keys.node("c")) is None and a.store.get(keys.node("a")) is not None
    left = [e.key for e in a.store.list(keys.ipam_addresses(CLUSTER_NETWORK))]
    assert left == [keys.ipam_address(CLUSTER_NETWORK, "10.244.0.9")]
    assert a.store.get(keys.endpoint(CLUSTER_NETWORK, "pod-c", "eth0")) is None
    assert a.duties.bury() == []  # once


def test_a_peer_that_is_not_the_taker_buries_without_deleting():
    b = buried_cluster()["b"]
    before = [(e.key, e.value) for e in b.store.list("")]
    assert b.duties.bury() == ["c"]
    assert [(e.key, e.value) for e in b.store.list("")] == before
    assert b.duties.bury() == []


def test_a_dead_peer_not_yet_reclaimed_is_not_buried():
    nodes = cluster("a", "b", "c", genesis=("a", "b", "c"))
    a = nodes["a"]
    a.store.put_json(keys.node("c"), {"block": "10.244.5.0/24"})
    a.sync.change(lambda r: r.vote("c", "a", True, T0, {"a", "b"}))
    assert a.duties.bury() == [] and a.store.get(keys.node("c")) is not None


# -- a saved ring


def test_ring_from_file_checks_the_ring_and_its_size():
    ring = cluster("a", genesis=("a",))["a"].ring
    assert ring_from_file(ring.to_json(), SPACE) == ring
    with pytest.raises(RingError, match="--block-prefix"):
        ring_from_file(ring.to_json(), BlockSpace.of("10.244.0.0/20", 24))
    with pytest.raises(RingError):
        ring_from_file({"cidr": "0.0.0.0/29", "tokens": "x"}, SPACE)


# -- the minority side of a partition


def test_a_node_cut_off_from_most_members_holds_its_ipam_before_they_may_reclaim():
    nodes = cluster("a", "b", "c", "d", "e", genesis=("a", "b", "c", "d", "e"))
    a = nodes["a"]
    hold_after = a.duties.hold_after
    assert hold_after == (60.0 - 5.0) / 2  # halfway between noticing (dead_after) and the others' grace
    key = keys.ipam_hold("a")
    assert not a.duties.hold({"b"}, now=T0)  # cut off from c, d, e: 3 of 5, but only just noticed
    assert not a.duties.hold({"b"}, now=T0 + hold_after - 0.1) and a.store.get(key) is None
    assert a.duties.hold({"b"}, now=T0 + hold_after)
    reason = a.store.get_json(key)["reason"]
    assert "c, d, e" in reason and "3 of the ring's 5" in reason
    assert not a.duties.hold({"b", "c", "d"}, now=T0 + hold_after + 1)  # back in contact with most
    assert a.store.get(key) is None


def test_an_even_split_holds_neither_side():
    nodes = cluster("a", "b", "c", "d", genesis=("a", "b", "c", "d"))
    for name, other in (("a", "b"), ("c", "d")):
        assert not nodes[name].duties.hold({other}, now=T0 + 1000)  # 2 of 4 away: no majority there either


def test_an_add_on_a_held_node_is_told_to_try_again_later():
    from podnet.errors import TryAgainLater
    from podnet.ipam import blocks
    from podnet.ipam.config import BlockAffinity

    store = MemoryStore()
    store.put_json(keys.ipam_hold("a"), {"reason": "cut off"})
    ring = BlockAffinity("a", IPv4Network("10.244.0.0/21"), 24, ring=True)
    with pytest.raises(TryAgainLater, match="cut off"):
        blocks.choose(store, ring, set(), [])
    blocks.choose(store, ring, set(), [], claim=False)  # STATUS
    # a node whose blocks are not the ring's never reads a hold (nor pays for it in its ADDs)
    blocks.choose(store, BlockAffinity("a", IPv4Network("10.244.0.0/21"), 24), set(), [])
