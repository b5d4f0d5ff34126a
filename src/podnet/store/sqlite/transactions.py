"""transaction(): BEGIN IMMEDIATE at depth 0, a SAVEPOINT inside another transaction.

Every write runs inside `BEGIN IMMEDIATE`, so writers serialise on SQLite's file lock
and a transaction never has to be retried half way. Threads of one process first queue
on a process-local lock (waking at once instead of sleeping in SQLite's busy handler).
An open transaction pins its connection to its thread: every statement of that thread
runs there until the outermost transaction ends; a read outside one borrows a pooled
connection. A commit that wrote also drops the history beyond `history` revisions
(compaction) and wakes this process's watch tail at once.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

from podnet.errors import TryAgainLater
from podnet.store.sqlite.pool import Pool, map_error, transient

T = TypeVar("T")


class SqliteTx(Generic[T]):
    """The context of one transaction() call; `with` gives `result` (the store)."""

    __slots__ = ("_txs", "_result")

    def __init__(self, txs: Transactions, result: T) -> None:
        self._txs = txs
        self._result = result

    def __enter__(self) -> T:
        self._txs.enter()
        return self._result

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._txs.exit(exc_type is None)


class Transactions:
    """The transactions of this process's threads on one store (module docstring).

    history: events kept for watch(); older ones are dropped on commit.
    """

    def __init__(self, pool: Pool, history: int) -> None:
        self._pool = pool
        self._history = history
        self.reset()
        pool.on_fork(self.reset)

    def reset(self) -> None:
        """This process's write lock, commit signal and thread state (see pool.py)."""
        self._write_lock = threading.Lock()
        # notified after every commit that wrote: the watch tail waits on it
        self.committed = threading.Condition()
        self._local = threading.local()

    def begin(self, result: T) -> SqliteTx[T]:
        return SqliteTx(self, result)

    def conn(self) -> sqlite3.Connection | None:
        """The connection pinned to this thread's open transaction, if any."""
        return getattr(self._local, "conn", None)

    def wake(self) -> None:
        """Wake whoever waits for this process's commits (the watch tail)."""
        with self.committed:
            self.committed.notify_all()

    def enter(self) -> None:
        conn = self.conn()
        if conn is not None:
            depth = self._local.depth
            self._pool.execute(conn, f"SAVEPOINT sp{depth}")
            self._local.depth = depth + 1
            return
        pool = self._pool
        conn = pool.checkout()
        wait = pool.busy_timeout * pool.attempts
        if not self._write_lock.acquire(timeout=wait):
            pool.checkin(conn)
            raise TryAgainLater(f"store {pool.path} is busy: no write lock after {wait:.0f}s")
        try:
            pool.retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as exc:
            self._write_lock.release()
            pool.checkin(conn)
            raise map_error(exc, pool.path) from exc
        self._local.conn = conn
        self._local.depth = 1
        self._local.wrote = False

    @contextlib.contextmanager
    def unless_busy(self) -> Iterator[bool]:
        """A write transaction only if nobody holds the write lock now: yields False
        (nothing opened) when another thread or process does. For chores any writer
        does anyway, such as the expiry sweep (every write sweeps first): a hundred
        agents' watch tails, all due at one expiry, must not queue for the lock."""
        if self.conn() is not None:  # inside a transaction already: it holds the lock
            with self.begin(None):
                yield True
            return
        conn = self._lock_now()
        if conn is None:
            yield False
            return
        self._local.conn, self._local.depth, self._local.wrote = conn, 1, False
        ok = False
        try:
            yield True
            ok = True
        finally:
            self.exit(ok)

    def _lock_now(self) -> sqlite3.Connection | None:
        """BEGIN IMMEDIATE without waiting (busy_timeout 0 for that one statement), on a
        pooled connection; None, with nothing held, when the lock is taken."""
        if not self._write_lock.acquire(blocking=False):
            return None
        pool = self._pool
        conn = pool.checkout()
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
                return conn
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(pool.busy_timeout * 1000)}")
        except sqlite3.OperationalError as exc:
            busy = transient(exc)
            error: Exception | None = None if busy else map_error(exc, pool.path)
        except BaseException:
            self._write_lock.release()
            pool.checkin(conn)
            raise
        self._write_lock.release()
        pool.checkin(conn)
        if error is not None:
            raise error
        return None

    def exit(self, ok: bool) -> None:
        conn = self.conn()
        assert conn is not None, "transaction exit without enter"
        depth = self._local.depth - 1
        self._local.depth = depth
        if depth > 0:
            if not ok:
                self._pool.execute(conn, f"ROLLBACK TO sp{depth}")
            self._pool.execute(conn, f"RELEASE sp{depth}")
            return
        wrote = self._local.wrote
        self._local.conn = None
        try:
            self._finish(conn, ok and wrote)
        finally:
            self._write_lock.release()
            self._pool.checkin(conn)
        if ok and wrote:
            self.wake()

    def _finish(self, conn: sqlite3.Connection, commit: bool) -> None:
        try:
            if commit:
                self._compact(conn)
                conn.execute("COMMIT")
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one worth reporting
            raise map_error(exc, self._pool.path) from exc

    def _compact(self, conn: sqlite3.Connection) -> None:
        """Drop history older than `history` revisions, in batches of a tenth."""
        head = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        compacted = conn.execute("SELECT value FROM meta WHERE name = 'compacted'").fetchone()[0]
        if head is None or head[0] - compacted <= self._history + self._history // 10:
            return
        upto = head[0] - self._history
        conn.execute("DELETE FROM events WHERE revision <= ?", (upto,))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (upto,))

    def read(self, sql: str, params: tuple) -> list[tuple]:
        """One query: on the transaction's connection if inside one, else pooled."""
        conn = self.conn()
        if conn is not None:
            return self._pool.execute(conn, sql, params).fetchall()
        conn = self._pool.checkout()
        try:
            return self._pool.execute(conn, sql, params).fetchall()
        finally:
            self._pool.checkin(conn)

    def write(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        """A statement inside the current write transaction."""
        conn = self.conn()
        assert conn is not None
        self._local.wrote = True
        return self._pool.execute(conn, sql, params)
