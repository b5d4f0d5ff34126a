"""The key-value statements: get, list, put, compare_and_put, delete, refresh, TTL expiry.

Expired keys stay in `kv` until a write transaction (or a watch, through
`sweep_if_due`) sweeps them: reads only hide them (`_LIVE`), the sweep turns them into
delete events, so watchers see an expiry like any other delete.
"""

from __future__ import annotations

from collections.abc import Callable

from podnet.store.base import DELETE, PUT, Entry, check_key, check_ttl, prefix_end
from podnet.store.sqlite.pool import Pool
from podnet.store.sqlite.transactions import Transactions

_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_ENTRY_COLS = "key, value, revision, create_revision, expires_at"
_REVISION = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"


class Operations:
    """The Store API's reads and writes on one store; clock judges TTLs."""

    def __init__(self, pool: Pool, txs: Transactions, clock: Callable[[], float]) -> None:
        self._pool = pool
        self._txs = txs
        self._clock = clock

    # -- reads --------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        rows = self._txs.read(
            f"SELECT {_ENTRY_COLS} FROM kv WHERE key = ? AND {_LIVE}", (key, self._clock())
        )
        return Entry(*rows[0]) if rows else None

    def list(self, prefix: str) -> list[Entry]:
        return [Entry(*row) for row in self._txs.read(*self._list_query(prefix))]

    def _list_query(self, prefix: str) -> tuple[str, tuple]:
        end = prefix_end(prefix)
        now = self._clock()
        if end is None:
            return f"SELECT {_ENTRY_COLS} FROM kv WHERE {_LIVE} ORDER BY key", (now,)
        return (f"SELECT {_ENTRY_COLS} FROM kv WHERE key >= ? AND key < ? AND {_LIVE} ORDER BY key",
                (prefix, end, now))

    def snapshot(self, prefix: str) -> tuple[list[Entry], int]:
        """list() and revision() of one moment, in a read transaction: WAL gives it a
        snapshot without the write lock, which every agent's loops would otherwise take
        for each listing (a hundred agents: renewals queued behind them past the TTL)."""
        if self._txs.conn() is not None:  # inside a write transaction: its view
            return self.list(prefix), self.revision()
        pool = self._pool
        conn = pool.checkout()
        try:
            pool.execute(conn, "BEGIN")  # deferred: the first SELECT fixes the snapshot
            try:
                rows = pool.execute(conn, *self._list_query(prefix)).fetchall()
                head = pool.execute(conn, _REVISION, ()).fetchone()
            finally:
                pool.execute(conn, "COMMIT")
        finally:
            pool.checkin(conn)
        return [Entry(*row) for row in rows], head[0] if head else 0

    def revision(self) -> int:
        rows = self._txs.read(_REVISION, ())
        return rows[0][0] if rows else 0

    # -- writes -------------------------------------------------------------------

    def put(self, key: str, value: str, ttl: float | None = None) -> int:
        check_key(key)
        check_ttl(ttl)
        with self._txs.begin(None):
            now = self._clock()
            self._sweep(now)
            return self._upsert(key, value, ttl, now)

    def compare_and_put(
        self, key: str, value: str, expected_revision: int, ttl: float | None = None
    ) -> int | None:
        check_key(key)
        check_ttl(ttl)
        with self._txs.begin(None):
            now = self._clock()
            self._sweep(now)
            current = self._current(key)
            if (current[0] if current else 0) != expected_revision:
                return None
            return self._upsert(key, value, ttl, now)

    def delete(self, key: str, expected_revision: int | None = None) -> bool:
        check_key(key)
        with self._txs.begin(None):
            self._sweep(self._clock())
            current = self._current(key)
            if current is None or (
                expected_revision is not None and current[0] != expected_revision
            ):
                return False
            self._event(DELETE, key, None)
            self._txs.write("DELETE FROM kv WHERE key = ?", (key,))
            return True

    def delete_prefix(self, prefix: str) -> int:
        end = prefix_end(prefix)
        where, params = ("key >= ? AND key < ?", (prefix, end)) if end else ("1", ())
        with self._txs.begin(None):
            self._sweep(self._clock())
            self._txs.write(
                f"INSERT INTO events(kind, key, value) SELECT '{DELETE}', key, NULL FROM kv "
                f"WHERE {where} ORDER BY key",
                params,
            )
            return self._txs.write(f"DELETE FROM kv WHERE {where}", params).rowcount

    def refresh(self, key: str, ttl: float) -> bool:
        check_key(key)
        check_ttl(ttl)
        with self._txs.begin(None):
            now = self._clock()
            self._sweep(now)
            cur = self._txs.write("UPDATE kv SET expires_at = ? WHERE key = ?", (now + ttl, key))
            return cur.rowcount == 1

    def sweep_if_due(self, wait: bool = False) -> bool:
        """Sweep when some key has really expired and the write lock is free now; False
        when it was not (whoever holds it sweeps in its own transaction, or the caller
        looks again soon). `wait`: wait for the lock instead, for a reader that must see
        what has expired by now as delete events (the holder sweeps too, but may commit
        after the reader has read)."""
        now = self._clock()
        if not self._txs.read(
            "SELECT 1 FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT 1", (now,)
        ):
            return True
        if wait:
            with self._txs.begin(None):
                self._sweep(self._clock())
            return True
        with self._txs.unless_busy() as locked:
            if locked:
                self._sweep(self._clock())
            return locked

    # -- write helpers (inside a transaction) ---------------------------------------

    def _sweep(self, now: float) -> None:
        """Expired keys -> delete events, then gone."""
        conn = self._txs.conn()
        assert conn is not None
        where = "expires_at IS NOT NULL AND expires_at <= ?"
        if self._pool.execute(conn, f"SELECT 1 FROM kv WHERE {where} LIMIT 1", (now,)).fetchone():
            self._txs.write(
                f"INSERT INTO events(kind, key, value) SELECT '{DELETE}', key, NULL FROM kv "
                f"WHERE {where} ORDER BY expires_at, key",
                (now,),
            )
            self._txs.write(f"DELETE FROM kv WHERE {where}", (now,))

    def _event(self, kind: str, key: str, value: str | None) -> int:
        cur = self._txs.write(
            "INSERT INTO events(kind, key, value) VALUES (?, ?, ?)", (kind, key, value)
        )
        rev = cur.lastrowid
        assert rev is not None
        return rev

    def _current(self, key: str) -> tuple[int, int] | None:
        """(revision, create_revision) of a key, after a sweep (so: live)."""
        rows = self._txs.read("SELECT revision, create_revision FROM kv WHERE key = ?", (key,))
        return rows[0] if rows else None

    def _upsert(self, key: str, value: str, ttl: float | None, now: float) -> int:
        rev = self._event(PUT, key, value)
        expires = None if ttl is None else now + ttl
        self._txs.write(
            "INSERT INTO kv(key, value, revision, create_revision, expires_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "value = excluded.value, revision = excluded.revision, "
            "expires_at = excluded.expires_at",
            (key, value, rev, rev, expires),
        )
        return rev
