"""SqliteStore: the default Store, one SQLite file shared by every podnet process.

Why SQLite: it is in the standard library (the thin plugin can open it in ~1 ms), it
gives real ACID transactions across processes, and in WAL mode readers never wait
for writers. The plugin, the agent and (in the lab) several nodes' agents open the
same file at once.

Layout:
- `kv(key, value, revision, create_revision, expires_at)`: the live keys;
- `events(revision, kind, key, value)`: the history watch() replays. Its
  AUTOINCREMENT rowid *is* the global revision, so a write costs one insert more;
- `meta(name, value)`: `compacted` = the newest revision dropped from history.

Concurrency: every write runs inside `BEGIN IMMEDIATE`, so writers serialise on
SQLite's file lock and a transaction never has to be retried half way. Threads of one
process first queue on a process-local lock (waking at once instead of sleeping in
SQLite's busy handler). Connections are pooled, not per thread, so an agent that
starts a thread per request does not leak one connection per thread.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from podnet.errors import StoreError, TryAgainLater
from podnet.store.base import (
    DELETE,
    PUT,
    Entry,
    Event,
    RevisionCompacted,
    Store,
    check_key,
    check_ttl,
    prefix_end,
)

SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        revision INTEGER NOT NULL,
        create_revision INTEGER NOT NULL,
        expires_at REAL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS kv_expiry ON kv(expires_at) WHERE expires_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS events (
        revision INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT
    )""",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta(name, value) VALUES ('compacted', 0)",
)

_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_ENTRY_COLS = "key, value, revision, create_revision, expires_at"
_MAX_IDLE = 8  # pooled connections kept open beyond that are closed on return

# Connections inherited through fork() must never be used or closed by the child
# (closing could checkpoint or unlink the parent's WAL); keeping a reference here stops
# the garbage collector from closing them.
_FORK_ORPHANS: list[sqlite3.Connection] = []


def _transient(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _map_error(exc: sqlite3.Error, path: str) -> Exception:
    """sqlite3 errors -> podnet's tree: busy is worth retrying, the rest is not."""
    if isinstance(exc, sqlite3.OperationalError) and _transient(exc):
        return TryAgainLater(f"store {path} is busy: {exc}", "another writer holds the lock")
    return StoreError(f"store {path}: {exc}")


class _SqliteTx:
    """BEGIN IMMEDIATE at depth 0, a SAVEPOINT inside another transaction."""

    __slots__ = ("_store",)

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __enter__(self) -> SqliteStore:
        self._store._enter_tx()
        return self._store

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._store._exit_tx(exc_type is None)


FULL_SCAN_SECONDS = 1.0  # watch(): a full scan at least this often, changed or not
TAIL_EVENTS = 8192  # watch(): how many recent events the shared tail keeps in memory
IDLE_POLL = 0.02  # watch(): how often the tail looks while nothing changes
# watch(): the events' head revision, the next expiry and the compaction mark, in one read
_WATCH_HEAD = (
    "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'events'),"
    " (SELECT MIN(expires_at) FROM kv WHERE expires_at IS NOT NULL),"
    " (SELECT value FROM meta WHERE name = 'compacted')"
)


class SqliteStore(Store):
    """Store in one SQLite file (WAL). Safe for many threads and processes at once.

    busy_timeout: seconds one attempt waits for the write lock; attempts: how many
    such waits before TryAgainLater. history: events kept for watch().
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        attempts: int = 3,
        history: int = 10_000,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.05,
    ) -> None:
        self.path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._attempts = max(1, attempts)
        self._history = max(1, history)
        self._clock = clock
        self._poll = poll_interval
        self._closed = False
        self._reset_process_state()
        _prepare_path(self.path)
        conn = self._checkout()
        try:
            self._ensure_schema(conn)
        finally:
            self._checkin(conn)

    # -- connections --------------------------------------------------------------

    def _reset_process_state(self) -> None:
        """Locks, pool and thread state belong to one process: a forked child
        starts afresh instead of sharing the parent's connections."""
        self._pid = os.getpid()
        self._pool: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._changed = threading.Condition()
        self._local = threading.local()
        # the shared watch tail (see watch): its ring, how far it has read, and from
        # which revision on the ring is complete
        self._tail = threading.Condition()
        self._tail_thread: threading.Thread | None = None
        self._tail_events: collections.deque[Event] = collections.deque(maxlen=TAIL_EVENTS)
        self._tail_head: int | None = None
        self._tail_floor = 0
        self._tail_compacted = 0
        self._tail_error: StoreError | None = None
        # the prefixes watched in this process: the tail reads only their events; each
        # prefix's ring is complete after the revision recorded here (None: not yet)
        self._tail_since: dict[str, int | None] = {}

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            _FORK_ORPHANS.extend(self._pool)
            self._reset_process_state()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # pooled: one thread at a time, any thread
            )
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoint, atomic always
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path) from exc
        return conn

    def _checkout(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        self._check_process()
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        return self._connect()

    def _checkin(self, conn: sqlite3.Connection) -> None:
        if os.getpid() != self._pid:
            return
        with self._pool_lock:
            if not self._closed and len(self._pool) < _MAX_IDLE:
                self._pool.append(conn)
                return
        conn.close()

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        """Create tables once; later opens only read user_version (fast path)."""
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return
            self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path) from exc

    def _retry(self, fn: Callable[[], Any]) -> Any:
        """Run fn, retrying while SQLite reports the database busy (each attempt has
        already waited busy_timeout inside SQLite)."""
        for attempt in range(self._attempts):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _transient(exc) or attempt == self._attempts - 1:
                    raise
        raise AssertionError("unreachable")

    # -- transactions -------------------------------------------------------------

    def transaction(self) -> _SqliteTx:
        return _SqliteTx(self)

    def _tx_conn(self) -> sqlite3.Connection | None:
        """The connection pinned to this thread's open transaction, if any."""
        return getattr(self._local, "conn", None)

    def _enter_tx(self) -> None:
        conn = self._tx_conn()
        if conn is not None:
            depth = self._local.depth
            self._execute(conn, f"SAVEPOINT sp{depth}")
            self._local.depth = depth + 1
            return
        conn = self._checkout()
        wait = self._busy_timeout * self._attempts
        if not self._write_lock.acquire(timeout=wait):
            self._checkin(conn)
            raise TryAgainLater(f"store {self.path} is busy: no write lock after {wait:.0f}s")
        try:
            self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as exc:
            self._write_lock.release()
            self._checkin(conn)
            raise _map_error(exc, self.path) from exc
        self._local.conn = conn
        self._local.depth = 1
        self._local.wrote = False

    def _exit_tx(self, ok: bool) -> None:
        conn = self._tx_conn()
        assert conn is not None, "transaction exit without enter"
        depth = self._local.depth - 1
        self._local.depth = depth
        if depth > 0:
            if not ok:
                self._execute(conn, f"ROLLBACK TO sp{depth}")
            self._execute(conn, f"RELEASE sp{depth}")
            return
        wrote = self._local.wrote
        self._local.conn = None
        try:
            self._finish(conn, ok and wrote)
        finally:
            self._write_lock.release()
            self._checkin(conn)
        if ok and wrote:
            with self._changed:
                self._changed.notify_all()

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
            raise _map_error(exc, self.path) from exc

    def _execute(self, conn: sqlite3.Connection, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path) from exc

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        """One query: on the transaction's connection if inside one, else pooled."""
        conn = self._tx_conn()
        if conn is not None:
            return self._execute(conn, sql, params).fetchall()
        conn = self._checkout()
        try:
            return self._execute(conn, sql, params).fetchall()
        finally:
            self._checkin(conn)

    def _w(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        """A statement inside the current write transaction."""
        conn = self._tx_conn()
        assert conn is not None
        self._local.wrote = True
        return self._execute(conn, sql, params)

    # -- write helpers (inside a transaction) ---------------------------------------

    def _sweep(self, now: float) -> None:
        """Expired keys -> delete events, then gone."""
        conn = self._tx_conn()
        assert conn is not None
        where = "expires_at IS NOT NULL AND expires_at <= ?"
        if self._execute(conn, f"SELECT 1 FROM kv WHERE {where} LIMIT 1", (now,)).fetchone():
            self._w(
                f"INSERT INTO events(kind, key, value) SELECT '{DELETE}', key, NULL FROM kv "
                f"WHERE {where} ORDER BY expires_at, key",
                (now,),
            )
            self._w(f"DELETE FROM kv WHERE {where}", (now,))

    def _event(self, kind: str, key: str, value: str | None) -> int:
        cur = self._w("INSERT INTO events(kind, key, value) VALUES (?, ?, ?)", (kind, key, value))
        rev = cur.lastrowid
        assert rev is not None
        return rev

    def _current(self, key: str) -> tuple[int, int] | None:
        """(revision, create_revision) of a key, after a sweep (so: live)."""
        rows = self._read("SELECT revision, create_revision FROM kv WHERE key = ?", (key,))
        return rows[0] if rows else None

    def _upsert(self, key: str, value: str, ttl: float | None, now: float) -> int:
        rev = self._event(PUT, key, value)
        expires = None if ttl is None else now + ttl
        self._w(
            "INSERT INTO kv(key, value, revision, create_revision, expires_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "value = excluded.value, revision = excluded.revision, "
            "expires_at = excluded.expires_at",
            (key, value, rev, rev, expires),
        )
        return rev

    def _compact(self, conn: sqlite3.Connection) -> None:
        """Drop history older than `history` revisions, in batches of a tenth."""
        head = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        compacted = conn.execute("SELECT value FROM meta WHERE name = 'compacted'").fetchone()[0]
        if head is None or head[0] - compacted <= self._history + self._history // 10:
            return
        upto = head[0] - self._history
        conn.execute("DELETE FROM events WHERE revision <= ?", (upto,))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (upto,))

    # -- reads --------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        rows = self._read(
            f"SELECT {_ENTRY_COLS} FROM kv WHERE key = ? AND {_LIVE}", (key, self._clock())
        )
        return Entry(*rows[0]) if rows else None

    def list(self, prefix: str) -> list[Entry]:
        end = prefix_end(prefix)
        now = self._clock()
        if end is None:
            sql = f"SELECT {_ENTRY_COLS} FROM kv WHERE {_LIVE} ORDER BY key"
            params: tuple = (now,)
        else:
            sql = (
                f"SELECT {_ENTRY_COLS} FROM kv WHERE key >= ? AND key < ? AND {_LIVE} ORDER BY key"
            )
            params = (prefix, end, now)
        return [Entry(*row) for row in self._read(sql, params)]

    def revision(self) -> int:
        rows = self._read("SELECT seq FROM sqlite_sequence WHERE name = 'events'", ())
        return rows[0][0] if rows else 0

    # -- writes -------------------------------------------------------------------

    def put(self, key: str, value: str, ttl: float | None = None) -> int:
        check_key(key)
        check_ttl(ttl)
        with self.transaction():
            now = self._clock()
            self._sweep(now)
            return self._upsert(key, value, ttl, now)

    def compare_and_put(
        self, key: str, value: str, expected_revision: int, ttl: float | None = None
    ) -> int | None:
        check_key(key)
        check_ttl(ttl)
        with self.transaction():
            now = self._clock()
            self._sweep(now)
            current = self._current(key)
            if (current[0] if current else 0) != expected_revision:
                return None
            return self._upsert(key, value, ttl, now)

    def delete(self, key: str, expected_revision: int | None = None) -> bool:
        check_key(key)
        with self.transaction():
            self._sweep(self._clock())
            current = self._current(key)
            if current is None or (
                expected_revision is not None and current[0] != expected_revision
            ):
                return False
            self._event(DELETE, key, None)
            self._w("DELETE FROM kv WHERE key = ?", (key,))
            return True

    def delete_prefix(self, prefix: str) -> int:
        end = prefix_end(prefix)
        where, params = ("key >= ? AND key < ?", (prefix, end)) if end else ("1", ())
        with self.transaction():
            self._sweep(self._clock())
            self._w(
                f"INSERT INTO events(kind, key, value) SELECT '{DELETE}', key, NULL FROM kv "
                f"WHERE {where} ORDER BY key",
                params,
            )
            return self._w(f"DELETE FROM kv WHERE {where}", params).rowcount

    def refresh(self, key: str, ttl: float) -> bool:
        check_key(key)
        check_ttl(ttl)
        with self.transaction():
            now = self._clock()
            self._sweep(now)
            cur = self._w("UPDATE kv SET expires_at = ? WHERE key = ?", (now + ttl, key))
            return cur.rowcount == 1

    # -- watch --------------------------------------------------------------------

    def watch(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        """Events under `prefix` after `from_revision`, waiting up to `timeout`.

        Every watch() of this process shares one tail thread per store (`_tail_loop`):
        it alone polls the database and reads each new event once, into a ring; a
        watcher only filters the ring for its prefix. An agent runs five or so watchers
        (networks, DNS, nodes, policy...), and fifty agents polling separately spent
        more than a CPU during a lab's pod attach. A watcher older than the ring reads
        the database directly (the ring holds the recent past only)."""
        if self._tx_conn() is not None:
            raise StoreError("watch() inside a transaction would block every writer")
        deadline = time.monotonic() + max(0.0, timeout)
        with self._tail:
            self._tail_since.setdefault(prefix, None)
        while True:
            self._start_tail()  # (again, after a failed tail thread ended)
            with self._tail:
                if self._tail_error is not None:
                    error, self._tail_error = self._tail_error, None
                    raise error
                head, floor, compacted = self._tail_head, self._tail_floor, self._tail_compacted
                since = self._tail_since.get(prefix)
                if head is not None and from_revision < compacted:
                    raise RevisionCompacted(from_revision, compacted)
                if head is not None and since is not None and from_revision >= max(floor, since):
                    found = []
                    for event in reversed(self._tail_events):  # only what is newer: O(new)
                        if event.revision <= from_revision:
                            break
                        if event.key.startswith(prefix):
                            found.append(event)
                    found.reverse()
                    if found:
                        return found
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        return []
                    self._tail.wait(remaining)
                    continue
            # before the ring (or before the tail's first pass): ask the database, after
            # turning what has expired into delete events
            self._sweep_if_due()
            found = self._events_after(prefix, from_revision)
            compacted = self._read("SELECT value FROM meta WHERE name = 'compacted'", ())[0][0]
            if from_revision < compacted:
                raise RevisionCompacted(from_revision, compacted)
            if found:
                return found
            with self._tail:
                since = self._tail_since.get(prefix)
                if self._tail_head is not None and since is not None:
                    from_revision = max(from_revision, self._tail_floor, since)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return []
                self._tail.wait(min(remaining, self._poll))

    def _start_tail(self) -> None:
        with self._tail:
            if self._tail_thread is None and not self._closed:
                self._tail_thread = threading.Thread(target=self._tail_loop, name=f"store-tail {self.path}",
                                                     daemon=True)
                self._tail_thread.start()

    def _tail_loop(self) -> None:
        """Poll the database for every watcher of this process (see watch): one cheap
        `PRAGMA data_version` per interval on a connection that never writes (it changes
        whenever any other connection commits); on a change, the head, next expiry and
        compaction mark in one statement and the new events in one more. Expiry becomes
        delete events here too (the sweep), and a full scan runs at least every
        FULL_SCAN_SECONDS."""
        try:
            probe = self._checkout()
        except StoreError as exc:
            with self._tail:
                self._tail_error, self._tail_thread = exc, None
                self._tail.notify_all()
            return
        try:
            version: int | None = None
            idle_version: int | None = None  # the version seen by the previous pass
            next_expiry: float | None = None
            next_full = 0.0
            while not self._closed:
                current = self._execute(probe, "PRAGMA data_version", ()).fetchone()[0]
                mono = time.monotonic()
                if (current != version or mono >= next_full
                        or (next_expiry is not None and self._clock() >= next_expiry)):
                    version, next_full = current, mono + FULL_SCAN_SECONDS
                    head, next_expiry, compacted = self._read(_WATCH_HEAD, ())[0]
                    if next_expiry is not None and next_expiry <= self._clock():
                        self._sweep_if_due()
                        head, next_expiry, compacted = self._read(_WATCH_HEAD, ())[0]
                    head = head or 0
                    with self._tail:
                        scanned = self._tail_head
                        prefixes = sorted(self._tail_since)
                        for prefix in prefixes:  # from here on the ring holds their events
                            if self._tail_since[prefix] is None:
                                self._tail_since[prefix] = head if scanned is None else scanned
                    new = (self._events_under(prefixes, scanned)
                           if scanned is not None and head > scanned and prefixes else [])
                    with self._tail:
                        if scanned is None:
                            self._tail_floor = head  # the ring starts here
                        for event in new:
                            if len(self._tail_events) == self._tail_events.maxlen:
                                self._tail_floor = self._tail_events[0].revision
                            self._tail_events.append(event)
                        self._tail_head = max(head, new[-1].revision if new else 0)
                        self._tail_compacted = compacted or 0
                        self._tail.notify_all()
                # Writers in this process wake us at once. Another process's change is
                # seen within IDLE_POLL when things are quiet (a lone policy edit), and
                # batched per `poll_interval` while changes keep coming (a lab's pods
                # attaching: each pass then reads the head and the new events).
                with self._changed:
                    self._changed.wait(self._poll if current != idle_version else min(self._poll, IDLE_POLL))
                idle_version = current
        except (StoreError, sqlite3.Error) as exc:
            with self._tail:
                self._tail_error = exc if isinstance(exc, StoreError) else StoreError(f"store watch failed: {exc}")
                self._tail.notify_all()
        finally:
            self._checkin(probe)
            with self._tail:
                self._tail_thread = None
                self._tail.notify_all()

    def _events_under(self, prefixes: list[str], revision: int) -> list[Event]:
        """Events after `revision` under any of `prefixes`, in revision order: the
        tail reads only what this process watches (most writes, IPAM and endpoint
        records, interest no watcher)."""
        clauses, params = [], [revision]
        for prefix in prefixes:
            end = prefix_end(prefix)
            if end is None:  # the empty prefix: everything
                return self._events_after("", revision)
            clauses.append("(key >= ? AND key < ?)")
            params += [prefix, end]
        sql = f"SELECT kind, key, value, revision FROM events WHERE revision > ? AND ({' OR '.join(clauses)})"
        return [Event(*row) for row in self._read(sql + " ORDER BY revision", tuple(params))]

    def _events_after(self, prefix: str, revision: int) -> list[Event]:
        end = prefix_end(prefix)
        sql = "SELECT kind, key, value, revision FROM events WHERE revision > ?"
        params: tuple = (revision,)
        if end is not None:
            sql += " AND key >= ? AND key < ?"
            params = (revision, prefix, end)
        return [Event(*row) for row in self._read(sql + " ORDER BY revision", params)]

    def _sweep_if_due(self) -> None:
        """Take the write lock only when some key has really expired."""
        now = self._clock()
        if self._read(
            "SELECT 1 FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT 1", (now,)
        ):
            with self.transaction():
                self._sweep(self._clock())

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, []
        if os.getpid() == self._pid:
            for conn in pool:
                conn.close()
        with self._changed:
            self._changed.notify_all()
        with self._tail:
            self._tail.notify_all()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"


def _prepare_path(path: str) -> None:
    """Parent directory 0700 and the file 0600: reservations and leases are not
    every local user's business, and SQLite's -wal/-shm files copy the db's mode."""
    if path == ":memory:" or path.startswith("file:"):
        raise StoreError(f"unsupported store path {path!r}: use memory:// or a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {parent}: {exc}") from exc
    if os.path.exists(path):
        # Never open()+close() a live database: closing any fd of a file drops every
        # POSIX lock this process holds on it, SQLite's included, and another process
        # would then think it is the last user and delete the -wal/-shm files.
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    os.close(fd)
