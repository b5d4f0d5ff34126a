"""MemoryStore: the in-process fake of the Store port.

It exists so pure logic (IPAM, the agent's reconcilers) can be tested without files,
and so the contract suite has a reference to hold the real backends to. It keeps the
same semantics as SqliteStore, including revisions, TTL expiry as delete events,
bounded history and savepoint-style nested transactions. The clock is injectable so
TTL tests need not sleep.
"""

from __future__ import annotations

import heapq
import threading
import time
from bisect import bisect_right
from collections.abc import Callable

from podnet.errors import StoreError
from podnet.store.base import (
    DELETE,
    PUT,
    Entry,
    Event,
    RevisionCompacted,
    Store,
    check_key,
    check_ttl,
)


def _revision_of(event: Event) -> int:
    return event.revision


class _MemoryTx:
    """Holds the store's lock for the block: that is what makes it isolated."""

    __slots__ = ("_store",)

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def __enter__(self) -> MemoryStore:
        self._store._lock.acquire()
        self._store._begin()
        return self._store

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._store._commit()
            else:
                self._store._rollback()
        finally:
            self._store._lock.release()


class MemoryStore(Store):
    """Thread-safe in-memory Store. `clock` returns wall-clock seconds (time.time);
    `history` bounds how many events watch() can replay."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        history: int = 10_000,
        poll_interval: float = 0.05,
    ) -> None:
        self._clock = clock
        self._history = max(1, history)
        self._poll = poll_interval
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._data: dict[str, Entry] = {}
        self._events: list[Event] = []
        self._rev = 0
        self._compacted = 0
        self._expiry: list[tuple[float, str, int]] = []  # (expires_at, key, revision)
        # Transaction bookkeeping; only the thread holding the lock touches it.
        self._tx_thread: int | None = None
        self._undo: list[tuple[str, Entry | None]] = []
        self._marks: list[tuple[int, int, int]] = []  # (undo len, events len, revision)
        self._closed = False

    # -- transactions -------------------------------------------------------------

    def transaction(self) -> _MemoryTx:
        return _MemoryTx(self)

    def _begin(self) -> None:
        self._check_open()
        if not self._marks:
            self._tx_thread = threading.get_ident()
        self._marks.append((len(self._undo), len(self._events), self._rev))

    def _commit(self) -> None:
        self._marks.pop()
        if not self._marks:
            self._undo.clear()
            self._tx_thread = None
            self._compact()
            self._cond.notify_all()

    def _rollback(self) -> None:
        undo_len, events_len, rev = self._marks.pop()
        while len(self._undo) > undo_len:
            key, old = self._undo.pop()
            if old is None:
                self._data.pop(key, None)
            else:
                self._data[key] = old
                self._track_expiry(old)
        del self._events[events_len:]
        self._rev = rev
        if not self._marks:
            self._undo.clear()
            self._tx_thread = None

    def _in_tx(self) -> bool:
        return bool(self._marks)

    # -- internals ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def _live(self, key: str, now: float) -> Entry | None:
        entry = self._data.get(key)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= now):
            return None
        return entry

    def _track_expiry(self, entry: Entry) -> None:
        if entry.expires_at is not None:
            heapq.heappush(self._expiry, (entry.expires_at, entry.key, entry.revision))

    def _set(self, key: str, old: Entry | None, new: Entry | None, event: Event) -> None:
        """The one mutation path: records undo, applies, logs the event."""
        if self._in_tx():
            self._undo.append((key, old))
        if new is None:
            self._data.pop(key, None)
        else:
            self._data[key] = new
            self._track_expiry(new)
        self._events.append(event)
        if not self._in_tx():
            self._compact()
            self._cond.notify_all()

    def _write(self, key: str, value: str, ttl: float | None, old: Entry | None) -> int:
        self._rev += 1
        now = self._clock()
        entry = Entry(
            key=key,
            value=value,
            revision=self._rev,
            create_revision=old.create_revision if old else self._rev,
            expires_at=None if ttl is None else now + ttl,
        )
        self._set(key, old, entry, Event(PUT, key, value, self._rev))
        return self._rev

    def _remove(self, entry: Entry) -> None:
        self._rev += 1
        self._set(entry.key, entry, None, Event(DELETE, entry.key, None, self._rev))

    def _sweep(self) -> None:
        """Turn expired keys into delete events (called before writes and watches)."""
        now = self._clock()
        heap = self._expiry
        while heap and heap[0][0] <= now:
            expires_at, key, rev = heapq.heappop(heap)
            entry = self._data.get(key)
            if entry is not None and entry.revision == rev and entry.expires_at == expires_at:
                self._remove(entry)

    def _compact(self) -> None:
        excess = len(self._events) - self._history
        if excess > self._history // 10:  # amortise: drop in batches
            self._compacted = self._events[excess - 1].revision
            del self._events[:excess]

    def _prepare_write(self, key: str, ttl: float | None) -> float:
        check_key(key)
        check_ttl(ttl)
        self._check_open()
        self._sweep()
        return self._clock()

    # -- reads --------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        with self._lock:
            self._check_open()
            return self._live(key, self._clock())

    def list(self, prefix: str) -> list[Entry]:
        with self._lock:
            self._check_open()
            now = self._clock()
            found = [
                e
                for k, e in self._data.items()
                if k.startswith(prefix) and (e.expires_at is None or e.expires_at > now)
            ]
        found.sort(key=lambda e: e.key)
        return found

    def revision(self) -> int:
        with self._lock:
            return self._rev

    # -- writes -------------------------------------------------------------------

    def put(self, key: str, value: str, ttl: float | None = None) -> int:
        with self._lock:
            now = self._prepare_write(key, ttl)
            return self._write(key, value, ttl, self._live(key, now))

    def compare_and_put(
        self, key: str, value: str, expected_revision: int, ttl: float | None = None
    ) -> int | None:
        with self._lock:
            now = self._prepare_write(key, ttl)
            old = self._live(key, now)
            current = old.revision if old else 0
            if current != expected_revision:
                return None
            return self._write(key, value, ttl, old)

    def delete(self, key: str, expected_revision: int | None = None) -> bool:
        with self._lock:
            now = self._prepare_write(key, None)
            old = self._live(key, now)
            if old is None or (expected_revision is not None and old.revision != expected_revision):
                return False
            self._remove(old)
            return True

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            self._check_open()
            self._sweep()
            victims = self.list(prefix)
            for entry in victims:
                self._remove(entry)
            return len(victims)

    def refresh(self, key: str, ttl: float) -> bool:
        with self._lock:
            now = self._prepare_write(key, ttl)
            old = self._live(key, now)
            if old is None:
                return False
            new = Entry(old.key, old.value, old.revision, old.create_revision, now + ttl)
            if self._in_tx():
                self._undo.append((key, old))
            self._data[key] = new
            self._track_expiry(new)
            return True

    # -- watch --------------------------------------------------------------------

    def watch(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._check_open()
            if self._in_tx():
                raise StoreError("watch() inside a transaction would block every writer")
            scanned = from_revision
            while True:
                self._sweep()
                if scanned < self._compacted:
                    raise RevisionCompacted(from_revision, self._compacted)
                start = bisect_right(self._events, scanned, key=_revision_of)
                tail = self._events[start:]
                found = [e for e in tail if e.key.startswith(prefix)]
                if found:
                    return found
                if tail:
                    scanned = tail[-1].revision
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return []
                # Wake on writes, and periodically so TTL expiry is noticed.
                self._cond.wait(min(remaining, self._poll))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
