"""gossip/lww.py: last-writer-wins documents, tombstones, deltas."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.gossip.lww import Document, DocumentError, LwwMap, merge_maps

NOW = 1_700_000_000_000


def test_a_later_write_wins_and_a_delete_wins_over_what_it_saw():
    a, b = LwwMap("a"), LwwMap("b")
    a.put("dns/web/10.0.0.2", {"ttl": 30}, NOW)
    b.merge(a.delta(0)[0], NOW)
    b.put("dns/web/10.0.0.2", {"ttl": 60}, NOW - 5)  # b's clock is behind: it still wins, it saw a's write
    a.merge(b.delta(0)[0], NOW)
    assert a.get("dns/web/10.0.0.2") == b.get("dns/web/10.0.0.2") == {"ttl": 60}
    assert a.delete("dns/web/10.0.0.2", NOW) is not None
    b.merge(a.delta(0)[0], NOW)
    assert b.get("dns/web/10.0.0.2") is None and b.items() == {}
    assert b.documents()["dns/web/10.0.0.2"].deleted


def test_concurrent_writes_are_ordered_by_stamp_then_writer():
    a, b = LwwMap("a"), LwwMap("b")
    a.put("k", 1, NOW)
    b.put("k", 2, NOW)
    a.merge(b.delta(0)[0], NOW)
    b.merge(a.delta(0)[0], NOW)
    assert a.get("k") == b.get("k") == 2


def test_delta_sends_only_what_changed_since():
    m = LwwMap("a")
    m.put("x", 1, NOW)
    docs, seq = m.delta(0)
    assert [d.key for d in docs] == ["x"]
    assert m.delta(seq) == ([], seq)
    m.put("y", 2, NOW)
    other = LwwMap("b")
    other.merge([Document("z", 3, NOW + 1, "b")], NOW)
    m.merge(other.delta(0)[0], NOW)
    assert sorted(d.key for d in m.delta(seq)[0]) == ["y", "z"]


def test_tombstones_expire_and_documents_from_the_far_future_are_refused():
    m = LwwMap("a", tombstone_ttl_ms=1000, max_drift_ms=1000)
    m.put("x", 1, NOW)
    m.delete("x", NOW)
    assert m.purge(NOW + 500) == [] and m.purge(NOW + 5000) == ["x"]
    assert m.documents() == {} and m.delete("x", NOW) is None
    assert m.merge([Document("y", 1, NOW + 10_000, "b")], NOW) == []
    assert m.merge([Document("y", None, NOW - 10_000, "b", deleted=True)], NOW) == []  # an expired tombstone


def test_prefix_listing_and_the_key_scheme():
    m = LwwMap("a")
    m.put("dns/web/10.0.0.2", {"ttl": 30}, NOW)
    m.put("objects/networkpolicies/default/deny", {"kind": "NetworkPolicy"}, NOW)
    assert list(m.items("dns/")) == ["dns/web/10.0.0.2"]


@pytest.mark.parametrize("raw", [
    None, {"key": "", "stamp": 1, "writer": "a", "value": 1}, {"key": "k\n", "stamp": 1, "writer": "a", "value": 1},
    {"key": "k", "stamp": -1, "writer": "a", "value": 1}, {"key": "k", "stamp": 1.5, "writer": "a", "value": 1},
    {"key": "k", "stamp": 1, "writer": "a b", "value": 1}, {"key": "k", "stamp": 1, "writer": "a"},
    {"key": "k", "stamp": 1, "writer": "a", "value": 1, "deleted": True},
    {"key": "k", "stamp": 1, "writer": "a", "value": "x" * 70_000},
    {"key": "k", "stamp": 1, "writer": "a", "deleted": "yes"},
])
def test_documents_from_the_wire_are_checked(raw):
    with pytest.raises(DocumentError):
        Document.from_json(raw)


def test_a_document_round_trips():
    for doc in (Document("k", {"a": [1]}, 5, "w"), Document("k", None, 6, "w", deleted=True)):
        assert Document.from_json(doc.to_json()) == doc


documents = st.builds(
    Document,
    st.sampled_from(["a", "b", "c"]),
    st.one_of(st.integers(0, 3), st.text(max_size=2)),
    st.integers(0, 4),
    st.sampled_from(["p", "q"]),
    st.booleans(),
).map(lambda d: Document(d.key, None, d.stamp, d.writer, True) if d.deleted else d)
replicas = st.dictionaries(st.sampled_from(["a", "b", "c"]), documents).map(
    lambda m: {d.key: d for d in m.values()})


@given(replicas, replicas, replicas)
def test_merge_is_commutative_associative_idempotent(x, y, z):
    assert merge_maps(x, y) == merge_maps(y, x)
    assert merge_maps(merge_maps(x, y), z) == merge_maps(x, merge_maps(y, z))
    assert merge_maps(x, x) == x


@given(st.lists(documents, max_size=12), st.randoms(use_true_random=False))
def test_replicas_fed_the_same_documents_in_any_order_agree(docs, rnd):
    one, two = LwwMap("r"), LwwMap("s")
    one.merge(docs, 10)
    shuffled = list(docs)
    rnd.shuffle(shuffled)
    for doc in shuffled:
        two.merge([doc], 10)
    assert one.documents() == two.documents()
