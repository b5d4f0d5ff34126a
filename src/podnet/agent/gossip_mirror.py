"""A `--store none` node's local store, kept in step with its peers' by gossip.

Design notes:
- Every node of a gossip cluster has its own SQLite store (the agent's state dir), and
  everything in podnet reads and writes that store as it would a shared one: the CNI
  path, the node, policy and services loops, `podnet apply` run on the node. What must
  be the same on every node (leases, pods, namespaces, policies, services, their
  slices, readiness, the pods' address reservations and attachment records) is copied into last-writer-wins
  documents (gossip/lww.py) under `store/<key>`, and documents that peers wrote are
  copied back into the store. What is the node's own (its container records, networks,
  allocation cursors, attachments to other networks) stays local, and block claims are derived from the ring
  (agent/gossip_service.py), never copied: the ring alone says who owns a block.
- Both directions compare values, so a copy never echoes: a store write the mirror
  made from a document finds the document equal and publishes nothing. The store is
  written with the *current* document of a key, never the one a change report named,
  so a local write made meanwhile wins (it has the newer stamp).
- A key from a peer is taken only under the replicated prefixes and only when the
  store accepts it; values are JSON and are validated again by whoever reads them
  (leases by the fabric, policies by the compiler), as any store value.
- Consistency is eventual and per key: an object applied on two nodes at once keeps the
  later write; allocations the store makes by compare-and-swap (a service's ClusterIP,
  a NodePort) are checked only in the store of the node that makes them, so two
  services created at the same moment on two nodes can get one ClusterIP. Apply
  Services on one node, as `podnet apply` in the lab does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Protocol

from podnet import keys
from podnet.cluster.leases import CLUSTER_NETWORK
from podnet.errors import PodnetError
from podnet.gossip.lww import Document, canonical
from podnet.store.base import Store, dumps

log = logging.getLogger("podnet.gossip")

DOC_PREFIX = "store/"
REPLICATED = (keys.NODES, keys.POLICY, keys.SERVICES, keys.ENDPOINT_SLICES, keys.CLUSTER_IPS, keys.NODE_PORTS,
              keys.SERVICE_SETTINGS, keys.READINESS, keys.HOSTS, keys.ipam_addresses(CLUSTER_NETWORK),
              keys.endpoints(CLUSTER_NETWORK),  # the pods' attachments, as a shared store shows them
              keys.none_left("policy"))  # "the last policy was deleted", not "a wrong store"


def replicated(key: str) -> bool:
    return key.startswith(REPLICATED)


class Documents(Protocol):
    """What the mirror needs of a gossip peer (gossip/peers.py GossipPeer)."""

    def document(self, key: str) -> Document | None: ...

    def put(self, key: str, value: object) -> Document: ...

    def delete(self, key: str) -> Document | None: ...

    def documents(self, prefix: str = "") -> dict[str, object]: ...


class StoreMirror:
    def __init__(self, store: Store, docs: Documents) -> None:
        self.store = store
        self.docs = docs
        self.published = 0  # documents written from the store
        self.applied = 0  # store writes made from documents

    def publish(self, key: str) -> bool:
        """The store's `key` -> its document; True when a document was written."""
        if not replicated(key):
            return False
        entry = self.store.get(key)
        doc = self.docs.document(DOC_PREFIX + key)
        if entry is None:
            if doc is None or doc.deleted:
                return False
            self.docs.delete(DOC_PREFIX + key)
        else:
            try:
                value = json.loads(entry.value)
            except ValueError:
                log.warning("gossip: store key %s holds no JSON: not replicated", key)
                return False
            if doc is not None and not doc.deleted and canonical(doc.value) == canonical(value):
                return False
            self.docs.put(DOC_PREFIX + key, value)
        self.published += 1
        return True

    def apply(self, doc_key: str) -> bool:
        """A document -> the store (its current version); True when the store changed."""
        if not doc_key.startswith(DOC_PREFIX):
            return False
        key = doc_key[len(DOC_PREFIX):]
        if not replicated(key):
            log.warning("gossip: document %s names no replicated store key: ignored", doc_key)
            return False
        doc = self.docs.document(doc_key)
        if doc is None:
            return False
        try:
            entry = self.store.get(key)
            if doc.deleted:
                if entry is None:
                    return False
                self.store.delete(key)
            else:
                if entry is not None and _canonical(entry.value) == canonical(doc.value):
                    return False
                self.store.put(key, dumps(doc.value))
        except (PodnetError, ValueError) as exc:
            log.warning("gossip: document %s not stored: %s", doc_key, getattr(exc, "msg", exc))
            return False
        self.applied += 1
        return True

    def apply_all(self, doc_keys: Iterable[str]) -> int:
        return sum(self.apply(k) for k in doc_keys)

    def first_sync(self) -> tuple[int, int]:
        """At start: every document into the store, then every replicated store key that
        has no document out (a node's records from before gossip knew them).
        Returns (applied, published)."""
        doc_keys = [DOC_PREFIX + k for k in self._store_keys()] + list(self.docs.documents(DOC_PREFIX))
        applied = self.apply_all(dict.fromkeys(doc_keys))
        published = 0
        for key in self._store_keys():
            if self.docs.document(DOC_PREFIX + key) is None:
                published += self.publish(key)
        return applied, published

    def _store_keys(self) -> list[str]:
        out = []
        for prefix in REPLICATED:
            out.extend(entry.key for entry in self.store.list(prefix))
        return out


def _canonical(text: str) -> str | None:
    """JSON compared as text (canonical: `true` is not `1`, `1` is not `1.0`)."""
    try:
        return canonical(json.loads(text))
    except ValueError:
        return None
