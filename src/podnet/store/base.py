"""The Store port: a small revisioned key-value store with TTL, CAS and watch.

Everything podnet must keep across restarts lives behind this interface, so the
agent, the thin plugin and the tests can swap SQLite, etcd or the in-memory fake
without noticing. Keys are "/"-separated strings; values are JSON text (the store
never parses them). Every write bumps one global revision, which makes "what changed
since revision N" (watch) and optimistic concurrency (compare_and_put) cheap.

Standard library only: the thin plugin imports this module.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from podnet.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractContextManager

PUT = "put"
DELETE = "delete"
WATCH_BATCH = 0.05  # seconds a busy SQLite store's changes are gathered for its watchers, by default
READS = ("get", "list", "list_hint")  # Store.read_together's kinds of read


@dataclass(frozen=True, slots=True)
class Entry:
    """One live key. `revision` is the revision of its last write, `create_revision`
    the revision that created it (reset when the key is deleted and made again)."""

    key: str
    value: str
    revision: int
    create_revision: int
    expires_at: float | None = None

    def json(self) -> Any:
        """The value decoded; JSON decoding is lazy so readers that only need keys
        never pay for it."""
        import json

        return json.loads(self.value)


@dataclass(frozen=True, slots=True)
class Event:
    """One change, as watch() reports it. TTL expiry is reported as a delete."""

    kind: str  # PUT or DELETE
    key: str
    value: str | None
    revision: int


class RevisionCompacted(StoreError):
    """watch() was asked for history the store no longer keeps: the caller must
    re-list (snapshot()) and watch from the revision the listing returned."""

    def __init__(self, from_revision: int, compacted: int) -> None:
        super().__init__(
            f"revision {from_revision} has been compacted (history starts after "
            f"revision {compacted}); re-list and watch from the current revision"
        )
        self.from_revision = from_revision
        self.compacted = compacted


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix`
    (None for the empty prefix): turns a prefix scan into an index range scan."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def check_key(key: str) -> str:
    """Reject keys that could not round-trip through every backend."""
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid store key {key!r}: must be a non-empty string")
    if "\0" in key:
        raise StoreError(f"invalid store key {key!r}: contains NUL")
    return key


def check_ttl(ttl: float | None) -> float | None:
    """A TTL must be positive: a zero or negative lease would be born expired."""
    if ttl is not None and not ttl > 0:
        raise StoreError(f"invalid ttl {ttl!r}: must be > 0 seconds")
    return ttl


class Store(abc.ABC):
    """The contract every backend implements (tests/unit/test_store_contract.py).

    Semantics shared by all backends:
    - every write (put, successful CAS, delete, TTL expiry) gets its own revision,
      strictly increasing; refresh() does not write, so it bumps nothing;
    - a key whose TTL has passed is invisible to get/list at once, and becomes a
      delete event when the store next sweeps (every write and every watch);
    - put() without ttl clears a previous TTL (like etcd: a put without a lease);
    - transaction() groups operations atomically and isolated from other threads
      and processes; nested transactions are savepoints (an exception inside an
      inner block undoes only that block if the caller catches it).
    """

    @abc.abstractmethod
    def get(self, key: str) -> Entry | None:
        """The live entry for key, or None."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[Entry]:
        """All live entries whose key starts with prefix, sorted by key."""

    @abc.abstractmethod
    def put(self, key: str, value: str, ttl: float | None = None) -> int:
        """Write unconditionally; returns the new revision."""

    @abc.abstractmethod
    def compare_and_put(
        self, key: str, value: str, expected_revision: int, ttl: float | None = None
    ) -> int | None:
        """Write only if the key's revision is expected_revision (0: only if absent).
        Returns the new revision, or None if the key had moved on."""

    @abc.abstractmethod
    def delete(self, key: str, expected_revision: int | None = None) -> bool:
        """Delete the key (only at expected_revision, if given); True if deleted."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under prefix; returns how many were deleted."""

    @abc.abstractmethod
    def refresh(self, key: str, ttl: float) -> bool:
        """Extend a lease: the key now expires ttl seconds from now. False if the key
        is absent (or already expired). Does not change the revision."""

    @abc.abstractmethod
    def watch(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        """Events under prefix with revision > from_revision, oldest first. Returns at
        once if there are some, else blocks up to timeout seconds for the first ones
        (an empty list means nothing happened). Raises RevisionCompacted if the
        history after from_revision is no longer complete."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The revision of the latest write (0 for an empty, new store)."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Store]:
        """A context in which this thread's operations commit (or roll back, if the
        block raises) as one unit, isolated from every other writer."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files; the store is unusable afterwards."""

    # Conveniences built on the primitives: the same for every backend.

    def get_json(self, key: str, default: Any = None) -> Any:
        """The decoded value of key, or default if absent."""
        entry = self.get(key)
        return default if entry is None else entry.json()

    def put_json(self, key: str, value: Any, ttl: float | None = None) -> int:
        """Encode value compactly and put it."""
        return self.put(key, dumps(value), ttl)

    def list_hint(self, prefix: str) -> list[Entry]:
        """`list` for a caller that needs no expiry of keys other clients lease (an
        ADD's survey of the block claims; a loop that learns expiries as delete
        events). A backend may leave such a key's `expires_at` None, and keep it
        listed for the moment between its lease running out and the server removing
        it. Here: list."""
        return self.list(prefix)

    def watch_hint(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        """`watch` for a loop that watches again anyway: an empty answer after the
        timeout may come without the backend's server confirming that nothing
        happened, and an event committed just before it then comes with the next
        call (etcd: no progress request when a kept stream stayed quiet; an idle
        50-node lab's agents asked 300 a second). Here: watch."""
        return self.watch(prefix, from_revision, timeout)

    def read_together(self, reads: Sequence[tuple[str, str]]) -> list[Any]:
        """Independent reads, their results in order: ("get", key) -> Entry or None,
        ("list", prefix) and ("list_hint", prefix) -> entries. For hints read outside a
        transaction (an ADD's survey), which a backend may make at once (etcd: the
        requests concurrently, one hand-off to its loop) instead of one after another.
        Each is a read of its own, not one snapshot. Here: one after the other."""
        check_reads(reads)
        return [getattr(self, kind)(arg) for kind, arg in reads]

    def prefetch(self, keys: Sequence[str]) -> None:
        """Inside a transaction: read `keys` now, together, for the block's next get()
        of each (etcd: one round trip instead of one per key; the reads count as the
        block's own). Here, where a read is local, nothing: the get()s read them."""
        return None

    def snapshot(self, prefix: str) -> tuple[list[Entry], int]:
        """A consistent listing and the revision it reflects: the start point of a
        list-then-watch loop (watch(prefix, rev, ...) misses nothing after it)."""
        with self.transaction():
            return self.list(prefix), self.revision()

    def snapshot_hint(self, prefix: str) -> tuple[list[Entry], int]:
        """`snapshot` with `list_hint`'s leave on other clients' lease expiry (a loop
        that learns of expiries as delete events). Here: snapshot."""
        return self.snapshot(prefix)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_reads(reads: Sequence[tuple[str, str]]) -> None:
    """ValueError for a read `Store.read_together` does not know."""
    for kind, _arg in reads:
        if kind not in READS:
            raise ValueError(f"read_together: unknown read {kind!r} (get, list or list_hint)")


def dumps(value: Any) -> str:
    """Compact, deterministic JSON: the same value always makes the same text."""
    import json

    return json.dumps(value, separators=(",", ":"), sort_keys=True)
