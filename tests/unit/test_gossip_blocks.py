"""gossip/blocks.py: the ring over block indexes (BlockSpace), free blocks, space
requests read from the gossip (every bad field named), the donor's choice and its
answer (whole blocks, never one in `keep` or holding an address)."""

from __future__ import annotations

import random
from ipaddress import IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.gossip.blocks import (
    MAX_REQUEST_BLOCKS,
    REQUESTS,
    BlockRequest,
    BlockSpace,
    answer,
    choose_donor,
)
from podnet.gossip.ring import Ring
from podnet.gossip.ring_parts import RingError

SPACE = BlockSpace.of("10.244.0.0/16", 24)  # 256 blocks


def claimed(space: BlockSpace, peers: tuple[str, ...]) -> Ring:
    return space.empty_ring().claim_initial(peers)


# -- BlockSpace --------------------------------------------------------------------------


def test_of_counts_blocks_and_builds_a_stand_in_range_of_that_size():
    assert SPACE.count == 256
    assert SPACE.index_network == IPv4Network("0.0.0.0/24")
    assert SPACE.empty_ring().cidr.num_addresses == SPACE.count
    small = BlockSpace.of("10.1.0.0/22", 24)
    assert small.count == 4 and small.index_network.num_addresses == 4


@pytest.mark.parametrize(("cidr", "prefix", "named"), [
    ("10.244.0.0/16", 17, "/17"),  # two blocks: the ring needs four
    ("10.244.0.0/16", 31, "/31"),  # blocks of two addresses
    ("10.244.0.0/16", 15, "/15"),  # blocks bigger than the CIDR
    ("10.244.1.0/16", 24, "cluster CIDR"),  # host bits set
    ("not-a-cidr", 24, "cluster CIDR"),
])
def test_of_refuses_a_space_the_ring_cannot_hold(cidr, prefix, named):
    with pytest.raises(RingError, match=named):
        BlockSpace.of(cidr, prefix)


def test_block_and_index_translate_both_ways_at_the_edges():
    assert SPACE.block(0) == IPv4Network("10.244.0.0/24")
    assert SPACE.block(255) == IPv4Network("10.244.255.0/24")
    assert SPACE.index("10.244.17.0/24") == 17
    assert SPACE.index(IPv4Network("10.244.255.0/24")) == 255


@pytest.mark.parametrize("index", [-1, 256, 10**6])
def test_block_refuses_an_index_outside_the_space(index):
    with pytest.raises(RingError, match=f"block index {index}"):
        SPACE.block(index)


@pytest.mark.parametrize("block", ["10.245.0.0/24", "10.244.0.0/25", "10.244.0.0/23", "10.0.0.0/8"])
def test_index_refuses_what_is_no_block_of_the_space(block):
    with pytest.raises(RingError, match="is no /24 block of 10.244.0.0/16"):
        SPACE.index(block)


def test_indexes_skips_what_is_not_a_block_of_the_space():
    assert SPACE.indexes(["10.244.3.0/24", "10.9.0.0/24", "garbage", "10.244.3.7/24", "10.244.0.0/24"]) == [3, 0]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), cidr_prefix=st.integers(8, 28), extra=st.integers(2, 12))
def test_index_of_block_is_the_identity(data, cidr_prefix, extra):
    prefix = min(30, cidr_prefix + extra)
    base = data.draw(st.integers(0, 2**32 - 1)) >> (32 - cidr_prefix) << (32 - cidr_prefix)
    space = BlockSpace.of(f"{IPv4Network((base, cidr_prefix)).network_address}/{cidr_prefix}", prefix)
    i = data.draw(st.integers(0, space.count - 1))
    block = space.block(i)
    assert block.prefixlen == prefix and block.subnet_of(space.cidr)
    assert space.index(block) == i and space.index(str(block)) == i


def test_check_ring_refuses_a_ring_of_another_size():
    SPACE.check_ring(SPACE.empty_ring())
    with pytest.raises(RingError, match="--block-prefix"):
        SPACE.check_ring(BlockSpace.of("10.244.0.0/16", 25).empty_ring())


def test_claims_owners_and_owned_agree_after_the_initial_claim():
    ring = claimed(SPACE, ("b", "a", "c", "d"))  # name order: a gets the first quarter
    claims = SPACE.claims(ring)
    assert len(claims) == 256
    assert claims["10.244.0.0/24"] == "a" and claims["10.244.63.0/24"] == "a"
    assert claims["10.244.64.0/24"] == "b" and claims["10.244.255.0/24"] == "d"
    owners = SPACE.owners(ring)
    assert list(owners) == ["a", "b", "c", "d"]
    assert owners["c"][0] == "10.244.128.0/24" and len(owners["c"]) == 64
    assert [str(b) for b in SPACE.owned(ring, "c")] == owners["c"]
    assert SPACE.owned(ring, "nobody") == []
    assert SPACE.claims(SPACE.empty_ring()) == {}


def test_owners_sorts_blocks_as_networks_not_as_text():
    ring = claimed(BlockSpace.of("10.0.0.0/20", 24), ("a",))
    blocks = BlockSpace.of("10.0.0.0/20", 24).owners(ring)["a"]
    assert blocks[:3] == ["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"] and blocks[-1] == "10.0.15.0/24"


@settings(max_examples=150, deadline=None)
@given(peers=st.sets(st.sampled_from("abcdefgh"), min_size=1, max_size=5), seed=st.integers(0, 2**32),
       steps=st.integers(0, 30), prefix=st.sampled_from([20, 22, 24]))
def test_claims_cover_every_block_once_after_random_donations(peers, seed, steps, prefix):
    space = BlockSpace.of("10.244.0.0/16", prefix)
    ring = claimed(space, tuple(peers))
    rng = random.Random(seed)
    everyone = sorted(peers | {"x", "y", "z"})
    for _ in range(steps):
        donor, taker = rng.choice(everyone), rng.choice(everyone)
        occupied = [str(space.block(rng.randrange(space.count))) for _ in range(rng.randrange(4))]
        request = BlockRequest(taker, donor, rng.randint(1, 3), 0)
        try:
            ring = answer(ring, space, request, donor, occupied, (), everyone)
        except RingError:
            continue
    claims = space.claims(ring)
    assert sorted(claims, key=IPv4Network) == [str(space.block(i)) for i in range(space.count)]
    owned = [b for p in everyone for b in space.owned(ring, p)]
    assert len(owned) == len(set(owned)) == space.count
    assert all(claims[str(b)] == p for p in everyone for b in space.owned(ring, p))
    assert claims[str(space.block(0))] in peers and claims[str(space.block(space.count - 1))] in peers


# -- free blocks -------------------------------------------------------------------------


def test_a_request_round_trips_through_its_document():
    request = BlockRequest("b", "a", 2, 7)
    assert request.key == REQUESTS + "b"
    assert BlockRequest.from_doc(request.key, request.to_json()) == request


GOOD = {"donor": "a", "blocks": 1, "seq": 0}


@pytest.mark.parametrize(("key", "value", "named"), [
    ("ring/other/b", GOOD, "not a space request"),
    (REQUESTS + "", GOOD, "asker"),
    (REQUESTS + "b/c", GOOD, "asker"),
    (REQUESTS + "b", ["a", 1, 0], "must be an object"),
    (REQUESTS + "b", None, "must be an object"),
    (REQUESTS + "b", {**GOOD, "donor": None}, r"\.donor"),
    (REQUESTS + "b", {**GOOD, "donor": "a b"}, r"\.donor"),
    (REQUESTS + "b", {"blocks": 1, "seq": 0}, r"\.donor"),
    (REQUESTS + "b", {**GOOD, "blocks": 0}, r"\.blocks"),
    (REQUESTS + "b", {**GOOD, "blocks": MAX_REQUEST_BLOCKS + 1}, r"\.blocks"),
    (REQUESTS + "b", {**GOOD, "blocks": True}, r"\.blocks"),
    (REQUESTS + "b", {**GOOD, "blocks": 1.0}, r"\.blocks"),
    (REQUESTS + "b", {**GOOD, "blocks": "1"}, r"\.blocks"),
    (REQUESTS + "b", {"donor": "a", "seq": 0}, r"\.blocks"),
    (REQUESTS + "b", {**GOOD, "seq": -1}, r"\.seq"),
    (REQUESTS + "b", {**GOOD, "seq": False}, r"\.seq"),
    (REQUESTS + "b", {**GOOD, "seq": 1.5}, r"\.seq"),
    (REQUESTS + "b", {"donor": "a", "blocks": 1}, r"\.seq"),
    (REQUESTS + "a", GOOD, "asks itself"),
])
def test_from_doc_names_the_bad_field(key, value, named):
    with pytest.raises(RingError, match=named):
        BlockRequest.from_doc(key, value)


def test_from_doc_takes_the_largest_request():
    request = BlockRequest.from_doc(REQUESTS + "b", {**GOOD, "blocks": MAX_REQUEST_BLOCKS, "seq": 2**40})
    assert request.blocks == MAX_REQUEST_BLOCKS and request.seq == 2**40


# -- choose_donor ------------------------------------------------------------------------


def test_choose_donor_takes_the_live_peer_owning_most_blocks():
    ring = claimed(SPACE, ("a", "b", "c"))  # a 85, b 85, c 86
    assert choose_donor(ring, "x", {"a", "b", "c"}) == "c"
    assert choose_donor(ring, "x", {"a", "b"}) == "a"  # a tie: the lowest name
    assert choose_donor(ring, "x", {"b"}) == "b"
    assert choose_donor(ring, "x", set()) is None
    assert choose_donor(ring, "c", {"c"}) is None  # never the asker itself
    assert choose_donor(ring, "x", {"y", "z"}) is None  # live, but owning nothing


def test_choose_donor_skips_a_peer_with_its_last_block_and_a_dead_one():
    space = BlockSpace.of("10.1.0.0/22", 24)
    ring = claimed(space, ("a", "b", "c", "d"))  # one block each
    assert choose_donor(ring, "x", {"a", "b", "c", "d"}) is None
    ring = claimed(SPACE, ("a", "b")).remove("b", "a")  # b's space went to a: b is tombstoned
    assert choose_donor(ring, "x", {"b"}) is None
    assert choose_donor(ring, "x", {"a", "b"}) == "a"


# -- answer ------------------------------------------------------------------------------


def test_answer_hands_over_whole_free_blocks_to_the_asker():
    ring = claimed(SPACE, ("a", "b"))
    after = answer(ring, SPACE, BlockRequest("x", "a", 2, 1), "a", [], [], {"b"})
    given_to_x = SPACE.owned(after, "x")
    assert len(given_to_x) == 2
    assert len(SPACE.owned(after, "a")) == 126
    assert all(SPACE.claims(ring)[str(b)] == "a" for b in given_to_x)
    assert SPACE.owned(after, "b") == SPACE.owned(ring, "b")


def test_answer_never_gives_a_block_in_keep_or_holding_an_address():
    space = BlockSpace.of("10.1.0.0/21", 24)  # 8 blocks; a: 0-3, b: 4-7
    ring = claimed(space, ("a", "b"))
    # block 0 is the range's first (never donated); 1 holds an address, 2 is a's lease block
    after = answer(ring, space, BlockRequest("x", "a", 8, 1), "a", ["10.1.1.0/24"], ["10.1.2.0/24"], {"b"})
    assert [str(b) for b in space.owned(after, "x")] == ["10.1.3.0/24"]
    with pytest.raises(RingError, match="no free address"):
        answer(after, space, BlockRequest("y", "a", 1, 1), "a", ["10.1.1.0/24"], ["10.1.2.0/24"], {"b", "x"})


def test_answer_refuses_a_request_for_another_donor():
    ring = claimed(SPACE, ("a", "b"))
    with pytest.raises(RingError, match="is for b, not a"):
        answer(ring, SPACE, BlockRequest("x", "b", 1, 1), "a", [], [], {"b"})


def test_answer_refuses_when_cut_off_from_most_members():
    ring = claimed(SPACE, ("a", "b", "c"))
    with pytest.raises(RingError, match="cut off"):
        answer(ring, SPACE, BlockRequest("b", "a", 1, 1), "a", [], [], set())
    after = answer(ring, SPACE, BlockRequest("b", "a", 1, 1), "a", [], [], {"b"})
    assert len(SPACE.owned(after, "b")) == len(SPACE.owned(ring, "b")) + 1
