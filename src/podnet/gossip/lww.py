"""Replicated documents, last writer wins: how DNS entries and cluster objects reach
every node of a `--store none` cluster (issue 14), as Weave replicates its DNS.

Design notes:
- A document is a key, a JSON value and a version `(stamp, writer)`. The stamp is a
  hybrid logical clock collapsed into one integer of milliseconds: a write takes
  `max(wall clock, highest stamp seen + 1)`, so a write made after seeing another one
  always wins over it, and concurrent writes are ordered by time, then by writer name.
- A delete is a document too (a tombstone: `deleted`, no value), so it wins over the
  writes it saw and travels like them. Tombstones are purged `tombstone_ttl_ms` after
  their stamp; a peer partitioned for longer than that may bring a deleted document
  back (Cassandra's gc_grace rule): keep the TTL above the longest partition you expect.
- `Document.order` is a total order (ties beyond the version: tombstone first, then the
  value's canonical text), so merge is the per-key maximum: commutative, associative,
  idempotent, whatever order deltas arrive in.
- Every change (a write here or a merge that took a newer document) gets the next local
  sequence number; `delta(since)` returns the documents changed after `since`, so each
  connection sends only what it has not sent yet (a new connection starts at 0: all).
- A document stamped further in the future than `max_drift_ms` is refused: one peer
  with a wrong clock must not win every write for ever.

Key scheme (used by the callers, not enforced here; segments are names that may not
hold "/"):
- `dns/<hostname>/<ip>` -> {"ttl": seconds, "container": id}: one record per name and
  address, as Weave's DNS entries (a name with several addresses has several keys).
- `objects/<kind plural>/<namespace or "-">/<name>` -> the manifest as `podnet apply`
  read it: cluster-wide objects (policies, services) without a store.

Pure: the caller passes the clock (`now_ms`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from podnet.gossip.topology import check_peer_name

MAX_KEY = 512
MAX_VALUE = 64 * 1024  # bytes of canonical JSON per document
MAX_STAMP = 2**62
DEFAULT_TOMBSTONE_TTL_MS = 3600_000
DEFAULT_MAX_DRIFT_MS = 300_000


class DocumentError(ValueError):
    """A document that does not hold (its message names the field)."""


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def check_key(key: object) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY or not key.isprintable():
        raise DocumentError(f"document key: not a printable text of 1 to {MAX_KEY} characters: {str(key)[:80]!r}")
    return key


@dataclass(frozen=True)
class Document:
    key: str
    value: object  # JSON; None when deleted
    stamp: int
    writer: str
    deleted: bool = False

    @property
    def order(self) -> tuple:
        """The total order merge keeps the maximum of."""
        return self.stamp, self.writer, self.deleted, "" if self.deleted else canonical(self.value)

    def expired(self, now_ms: int, tombstone_ttl_ms: int) -> bool:
        return self.deleted and now_ms - self.stamp > tombstone_ttl_ms

    def to_json(self) -> dict:
        doc = {"key": self.key, "stamp": self.stamp, "writer": self.writer}
        return doc | ({"deleted": True} if self.deleted else {"value": self.value})

    @classmethod
    def from_json(cls, raw: object) -> Document:
        if not isinstance(raw, dict):
            raise DocumentError("document: not an object")
        key = check_key(raw.get("key"))
        stamp = raw.get("stamp")
        if type(stamp) is not int or not 0 <= stamp <= MAX_STAMP:
            raise DocumentError(f"document {key!r}: stamp: not an integer in range")
        try:
            writer = check_peer_name(raw.get("writer"), f"document {key!r}: writer")
        except ValueError as exc:
            raise DocumentError(str(exc)) from None
        deleted = raw.get("deleted", False)
        if not isinstance(deleted, bool) or deleted == ("value" in raw):
            raise DocumentError(f"document {key!r}: needs either a value or deleted: true")
        value = raw.get("value")
        if not deleted:
            try:
                size = len(canonical(value).encode())
            except (TypeError, ValueError):
                raise DocumentError(f"document {key!r}: value: not JSON") from None
            if size > MAX_VALUE:
                raise DocumentError(f"document {key!r}: value: {size} bytes, more than {MAX_VALUE}")
        return cls(key, value, stamp, writer, deleted)


def newer(mine: Document | None, theirs: Document) -> bool:
    return mine is None or theirs.order > mine.order


def merge_maps(a: Mapping[str, Document], b: Mapping[str, Document]) -> dict[str, Document]:
    """The per-key maximum of two replicas (what `LwwMap.merge` converges to)."""
    merged = dict(a)
    for key, doc in b.items():
        if newer(merged.get(key), doc):
            merged[key] = doc
    return merged


class LwwMap:
    """One peer's replica. Not thread-safe: the edge holds its lock around every call."""

    def __init__(self, writer: str, tombstone_ttl_ms: int = DEFAULT_TOMBSTONE_TTL_MS,
                 max_drift_ms: int = DEFAULT_MAX_DRIFT_MS) -> None:
        self.writer = check_peer_name(writer, "writer")
        self.tombstone_ttl_ms = tombstone_ttl_ms
        self.max_drift_ms = max_drift_ms
        self.clock = 0  # the highest stamp written or seen
        self.seq = 0  # the last local change's sequence number
        self._docs: dict[str, Document] = {}
        self._changed_at: dict[str, int] = {}

    def _stamp(self, now_ms: int) -> int:
        self.clock = max(now_ms, self.clock + 1)
        return self.clock

    def _take(self, doc: Document) -> None:
        self.seq += 1
        self._docs[doc.key] = doc
        self._changed_at[doc.key] = self.seq

    def put(self, key: str, value: object, now_ms: int) -> Document:
        doc = Document.from_json({"key": key, "value": value, "stamp": self._stamp(now_ms), "writer": self.writer})
        self._take(doc)
        return doc

    def delete(self, key: str, now_ms: int) -> Document | None:
        """A tombstone for a live document; None when there is nothing to delete."""
        current = self._docs.get(check_key(key))
        if current is None or current.deleted:
            return None
        doc = Document(key, None, self._stamp(now_ms), self.writer, deleted=True)
        self._take(doc)
        return doc

    def merge(self, docs: Iterable[Document], now_ms: int) -> list[str]:
        """Take every document newer than ours; returns the keys that changed."""
        changed = []
        for doc in docs:
            if doc.stamp > now_ms + self.max_drift_ms or doc.expired(now_ms, self.tombstone_ttl_ms):
                continue
            self.clock = max(self.clock, doc.stamp)
            if newer(self._docs.get(doc.key), doc):
                self._take(doc)
                changed.append(doc.key)
        return changed

    def delta(self, since: int) -> tuple[list[Document], int]:
        """Documents changed after local sequence `since`, and the sequence to ask from next."""
        if since >= self.seq:
            return [], self.seq
        docs = [self._docs[key] for key, seq in self._changed_at.items() if seq > since]
        return docs, self.seq

    def purge(self, now_ms: int) -> list[str]:
        """Forget tombstones past their TTL."""
        gone = [key for key, doc in self._docs.items() if doc.expired(now_ms, self.tombstone_ttl_ms)]
        for key in gone:
            del self._docs[key]
            del self._changed_at[key]
        return gone

    def get(self, key: str) -> object | None:
        doc = self._docs.get(key)
        return None if doc is None or doc.deleted else doc.value

    def document(self, key: str) -> Document | None:
        """The document of `key`, a tombstone included."""
        return self._docs.get(key)

    def items(self, prefix: str = "") -> dict[str, object]:
        """Live documents under `prefix`: key -> value."""
        return {key: doc.value for key, doc in sorted(self._docs.items())
                if key.startswith(prefix) and not doc.deleted}

    def documents(self) -> dict[str, Document]:
        """Every document, tombstones included."""
        return dict(self._docs)
