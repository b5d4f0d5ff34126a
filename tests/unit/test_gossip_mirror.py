"""agent/gossip_mirror.py: a node's MemoryStore kept in step with real (not started)
GossipPeers' documents: replicated keys only, no echo, tombstones, the newer stamp
wins, the first sync, and two mirrors converging when documents are carried by hand."""

from __future__ import annotations

import json

import pytest

from podnet import keys
from podnet.agent.gossip_mirror import DOC_PREFIX, StoreMirror, replicated
from podnet.cluster.leases import CLUSTER_NETWORK
from podnet.errors import StoreError
from podnet.gossip.peers import GossipPeer
from podnet.store.base import dumps
from podnet.store.memory import MemoryStore

LEASE = keys.node("n2")
LEASE_VALUE = {"block": "10.244.2.0/24", "underlay_ip": "172.31.0.2"}
POLICY = keys.POLICY + "default/deny"


def peer(name: str) -> GossipPeer:
    return GossipPeer(name, listen=("127.0.0.1", 0))  # never started: no socket, no thread


@pytest.fixture
def node():
    store = MemoryStore()
    mirror = StoreMirror(store, peer("n1"))
    yield store, mirror.docs, mirror
    store.close()


def test_the_unstarted_peer_keeps_documents():
    docs = peer("n1")
    assert docs.put("store/x", {"a": 1}).writer == "n1"
    assert docs.document("store/x").value == {"a": 1} and docs.documents("store/") == {"store/x": {"a": 1}}
    assert docs.delete("store/x").deleted and docs.documents("store/") == {}
    assert docs.delete("store/x") is None


def test_replicated_prefixes():
    assert replicated(LEASE) and replicated(POLICY)
    assert replicated(keys.ipam_address(CLUSTER_NETWORK, "10.244.2.5"))
    assert not replicated(keys.block("10.244.2.0", 24))
    assert replicated(keys.endpoint(CLUSTER_NETWORK, "c1", "eth0"))  # a pod's attachment: cluster-wide
    assert not replicated(keys.endpoint("other", "c1", "eth0"))  # a local network's: the node's own
    assert not replicated(keys.ipam_address("other", "10.9.0.5"))


def test_publish_writes_a_replicated_key_once(node):
    store, docs, mirror = node
    store.put_json(LEASE, LEASE_VALUE)
    assert mirror.publish(LEASE)
    doc = docs.document(DOC_PREFIX + LEASE)
    assert doc.value == LEASE_VALUE and doc.writer == "n1"
    assert not mirror.publish(LEASE)  # unchanged: nothing new
    assert docs.document(DOC_PREFIX + LEASE) == doc and mirror.published == 1


def test_publish_of_a_deleted_key_writes_a_tombstone_once(node):
    store, docs, mirror = node
    assert not mirror.publish(LEASE)  # no key, no document: nothing
    store.put_json(LEASE, LEASE_VALUE)
    mirror.publish(LEASE)
    store.delete(LEASE)
    assert mirror.publish(LEASE)
    assert docs.document(DOC_PREFIX + LEASE).deleted
    assert not mirror.publish(LEASE) and mirror.published == 2


def test_publish_skips_a_value_that_is_no_json(node):
    store, docs, mirror = node
    store.put(LEASE, "not json {")
    assert not mirror.publish(LEASE)
    assert docs.document(DOC_PREFIX + LEASE) is None and mirror.published == 0


@pytest.mark.parametrize("key", [keys.block("10.244.2.0", 24), keys.endpoint("other", "c1", "eth0"),
                                 keys.ipam_address("other", "10.9.0.5")])
def test_a_key_that_is_not_replicated_goes_neither_way(node, key):
    store, docs, mirror = node
    store.put_json(key, {"node": "n1"})
    assert not mirror.publish(key)
    assert docs.documents() == {}
    docs.put(DOC_PREFIX + key, {"node": "evil"})
    assert not mirror.apply(DOC_PREFIX + key)
    assert store.get_json(key) == {"node": "n1"}
    other = key + "x"  # a document for a key the store does not hold stays out too
    docs.put(DOC_PREFIX + other, {"node": "evil"})
    assert not mirror.apply(DOC_PREFIX + other) and store.get(other) is None
    assert mirror.published == mirror.applied == 0


def test_apply_ignores_documents_outside_the_store_prefix_and_unknown_keys(node):
    store, docs, mirror = node
    docs.put("dns/web/10.244.2.5", {"ttl": 30})
    assert not mirror.apply("dns/web/10.244.2.5")
    assert not mirror.apply(DOC_PREFIX + LEASE)  # no such document
    assert store.list("") == [] and mirror.applied == 0


def test_apply_then_publish_does_not_echo(node):
    store, docs, mirror = node
    docs.put(DOC_PREFIX + LEASE, LEASE_VALUE)  # as if merged from a peer
    before = docs.document(DOC_PREFIX + LEASE)
    assert mirror.apply(DOC_PREFIX + LEASE)
    assert store.get_json(LEASE) == LEASE_VALUE
    assert not mirror.publish(LEASE)  # the store's watch reports the write: nothing new
    assert not mirror.apply(DOC_PREFIX + LEASE)  # the same document again: no store write
    assert docs.document(DOC_PREFIX + LEASE) == before
    assert (mirror.applied, mirror.published) == (1, 0)


def test_a_tombstone_deletes_the_store_key(node):
    store, docs, mirror = node
    store.put_json(LEASE, LEASE_VALUE)
    mirror.publish(LEASE)
    docs.delete(DOC_PREFIX + LEASE)
    assert mirror.apply(DOC_PREFIX + LEASE)
    assert store.get(LEASE) is None
    assert not mirror.apply(DOC_PREFIX + LEASE) and not mirror.publish(LEASE)
    assert (mirror.applied, mirror.published) == (1, 1)


def test_apply_writes_the_current_document_so_a_later_local_write_wins(node):
    store, docs, mirror = node
    remote = peer("n2")
    remote_doc = remote.put(DOC_PREFIX + LEASE, {"block": "old"})
    docs.restore([remote_doc.to_json()])  # the remote write arrives
    store.put_json(LEASE, {"block": "mine"})  # a local write, after it
    assert mirror.publish(LEASE)
    mine = docs.document(DOC_PREFIX + LEASE)
    assert mine.order > remote_doc.order and mine.value == {"block": "mine"}
    assert not mirror.apply(DOC_PREFIX + LEASE)  # the change report of the remote doc: the store keeps mine
    assert store.get_json(LEASE) == {"block": "mine"}
    assert docs.restore([remote_doc.to_json()]) == []  # the older stamp loses a merge too


def test_first_sync_brings_documents_in_and_store_keys_out(node):
    store, docs, mirror = node
    docs.put(DOC_PREFIX + LEASE, LEASE_VALUE)
    docs.put(DOC_PREFIX + POLICY, {"spec": {}})
    docs.put(DOC_PREFIX + keys.block("10.244.9.0", 24), {"node": "evil"})
    own = keys.node("n1")
    store.put_json(own, {"block": "10.244.1.0/24"})
    store.put_json(keys.block("10.244.1.0", 24), {"node": "n1"})  # local only
    assert mirror.first_sync() == (2, 1)
    assert store.get_json(LEASE) == LEASE_VALUE and store.get_json(POLICY) == {"spec": {}}
    assert store.get(keys.block("10.244.9.0", 24)) is None
    assert docs.document(DOC_PREFIX + own).value == {"block": "10.244.1.0/24"}
    assert docs.document(DOC_PREFIX + keys.block("10.244.1.0", 24)) is None
    assert mirror.first_sync() == (0, 0)  # a second time: all in step


def test_first_sync_applies_a_tombstone_of_a_key_the_store_still_has(node):
    store, docs, mirror = node
    docs.put(DOC_PREFIX + LEASE, LEASE_VALUE)
    docs.delete(DOC_PREFIX + LEASE)  # deleted in the cluster while this node was down
    store.put_json(LEASE, LEASE_VALUE)
    assert mirror.first_sync() == (1, 0)
    assert store.get(LEASE) is None


def test_first_sync_takes_the_document_over_a_differing_store_value(node):
    store, docs, mirror = node
    docs.put(DOC_PREFIX + LEASE, {"block": "cluster"})
    store.put_json(LEASE, {"block": "stale"})
    assert mirror.first_sync() == (1, 0)  # the document is the newer word
    assert store.get_json(LEASE) == {"block": "cluster"}


def carry(src: GossipPeer, dst: GossipPeer, mirror: StoreMirror) -> int:
    """Gossip by hand: `dst` merges `src`'s documents, its mirror applies the changed keys."""
    return mirror.apply_all(dst.restore(src.snapshot()))


def test_two_mirrors_converge_when_documents_are_carried_by_hand():
    stores = MemoryStore(), MemoryStore()
    peers = peer("n1"), peer("n2")
    a, b = (StoreMirror(s, p) for s, p in zip(stores, peers, strict=True))
    stores[0].put_json(LEASE, LEASE_VALUE)
    stores[0].put_json(POLICY, {"v": 1})
    stores[1].put_json(keys.node("n3"), {"block": "10.244.3.0/24"})
    stores[1].put_json(keys.block("10.244.3.0", 24), {"node": "n3"})  # local only
    for mirror, store in ((a, stores[0]), (b, stores[1])):
        for entry in store.list(""):
            mirror.publish(entry.key)
    assert carry(peers[0], peers[1], b) == 2
    assert carry(peers[1], peers[0], a) == 1
    stores[1].put_json(POLICY, {"v": 2})  # b changes a's policy, then deletes a's lease
    stores[1].delete(LEASE)
    assert b.publish(POLICY) and b.publish(LEASE)
    assert carry(peers[1], peers[0], a) == 2
    assert carry(peers[0], peers[1], b) == 0  # nothing new comes back: no echo
    replicated_entries = [{e.key: json.loads(e.value) for e in s.list("") if replicated(e.key)} for s in stores]
    assert replicated_entries[0] == replicated_entries[1] == {
        POLICY: {"v": 2}, keys.node("n3"): {"block": "10.244.3.0/24"}}
    assert stores[0].get(keys.block("10.244.3.0", 24)) is None
    assert not any(a.publish(e.key) for e in stores[0].list(""))


def test_apply_of_a_value_the_store_refuses_is_skipped(node, monkeypatch):
    store, docs, mirror = node
    docs.put(DOC_PREFIX + LEASE, LEASE_VALUE)
    def refuse(*_args, **_kw):
        raise StoreError("store closed")

    monkeypatch.setattr(store, "put", refuse)
    assert not mirror.apply(DOC_PREFIX + LEASE) and mirror.applied == 0


def test_a_value_differing_only_as_true_and_1_is_still_applied(node):
    store, docs, mirror = node
    store.put(LEASE, dumps({"ready": 1}))
    docs.put(DOC_PREFIX + LEASE, {"ready": True})
    assert mirror.apply(DOC_PREFIX + LEASE)
    assert store.get_json(LEASE) == {"ready": True} and store.get(LEASE).value == dumps({"ready": True})
