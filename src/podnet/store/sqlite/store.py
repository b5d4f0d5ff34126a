"""SqliteStore: the Store API, composed of the package's parts (see __init__.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from podnet.store.base import WATCH_BATCH, Entry, Event, Store
from podnet.store.sqlite.operations import Operations
from podnet.store.sqlite.pool import Pool
from podnet.store.sqlite.schema import ensure_schema, prepare_path, require_file
from podnet.store.sqlite.transactions import SqliteTx, Transactions
from podnet.store.sqlite.watch import Tail


class SqliteStore(Store):
    """Store in one SQLite file (WAL). Safe for many threads and processes at once.

    busy_timeout: seconds one attempt waits for the write lock; attempts: how many
    such waits before TryAgainLater. history: events kept for watch(). create: make
    the file (and its directory) when missing; without it a missing file is a
    StoreError naming the path (a mistyped path never becomes an empty store).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        attempts: int = 3,
        history: int = 10_000,
        clock: Callable[[], float] = time.time,
        poll_interval: float = WATCH_BATCH,
        create: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        if not create:
            require_file(self.path)
        # (no part holds the store: dropped without close(), it is freed at once, and
        # the pool's idle connections closed with it)
        self._pool = Pool(self.path, busy_timeout, max(1, attempts))
        self._txs = Transactions(self._pool, max(1, history))
        self._ops = Operations(self._pool, self._txs, clock)
        self._tail = Tail(self._pool, self._txs, self._ops, clock, poll_interval)
        prepare_path(self.path)
        conn = self._pool.checkout()
        try:
            ensure_schema(self._pool, conn)
        finally:
            self._pool.checkin(conn)

    def transaction(self) -> SqliteTx[SqliteStore]:
        return self._txs.begin(self)

    def get(self, key: str) -> Entry | None:
        return self._ops.get(key)

    def list(self, prefix: str) -> list[Entry]:
        return self._ops.list(prefix)

    def revision(self) -> int:
        return self._ops.revision()

    def snapshot(self, prefix: str) -> tuple[list[Entry], int]:
        return self._ops.snapshot(prefix)

    def put(self, key: str, value: str, ttl: float | None = None) -> int:
        return self._ops.put(key, value, ttl)

    def compare_and_put(
        self, key: str, value: str, expected_revision: int, ttl: float | None = None
    ) -> int | None:
        return self._ops.compare_and_put(key, value, expected_revision, ttl)

    def delete(self, key: str, expected_revision: int | None = None) -> bool:
        return self._ops.delete(key, expected_revision)

    def delete_prefix(self, prefix: str) -> int:
        return self._ops.delete_prefix(prefix)

    def refresh(self, key: str, ttl: float) -> bool:
        return self._ops.refresh(key, ttl)

    def watch(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        return self._tail.watch(prefix, from_revision, timeout)

    def close(self) -> None:
        self._pool.close()
        self._txs.wake()
        self._tail.wake()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"
