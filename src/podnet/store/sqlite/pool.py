"""The connections of one process to the store's file: the pool, fork safety, busy errors.

Connections are pooled, not per thread, so an agent that starts a thread per request
does not leak one connection per thread: at most _MAX_IDLE stay open between uses.

Locks, pool and thread state belong to one process: a forked child starts afresh
instead of sharing the parent's connections. The first checkout in the child notices
the new pid, parks the inherited connections in _FORK_ORPHANS and resets the pool and
every part registered with `on_fork` (the write lock, the thread-local transactions,
the watch tail), each in place.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import Any

from podnet.errors import StoreError, TryAgainLater

_MAX_IDLE = 8  # pooled connections kept open beyond that are closed on return

# Connections inherited through fork() must never be used or closed by the child
# (closing could checkpoint or unlink the parent's WAL); keeping a reference here stops
# the garbage collector from closing them.
_FORK_ORPHANS: list[sqlite3.Connection] = []


def transient(exc: sqlite3.Error) -> bool:
    """Whether SQLite reports the database busy (worth another attempt)."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def map_error(exc: sqlite3.Error, path: str) -> Exception:
    """sqlite3 errors -> podnet's tree: busy is worth retrying, the rest is not."""
    if isinstance(exc, sqlite3.OperationalError) and transient(exc):
        return TryAgainLater(f"store {path} is busy: {exc}", "another writer holds the lock")
    return StoreError(f"store {path}: {exc}")


class Pool:
    """Idle connections to `path` for any thread of this process, one thread at a time.

    busy_timeout: seconds one attempt waits for SQLite's lock; attempts: how many such
    waits before TryAgainLater. `closed` is the whole store's: the other parts stop too.
    """

    def __init__(self, path: str, busy_timeout: float, attempts: int) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.attempts = attempts
        self.closed = False
        # weak: the parts hold the pool, so a strong reference back would make a cycle
        # and the store's connections would wait for the garbage collector to close
        self._resets: list[weakref.WeakMethod[Callable[[], None]]] = []
        self.reset()

    def reset(self) -> None:
        """This process's own idle connections and lock (see the module docstring)."""
        self.pid = os.getpid()
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def on_fork(self, reset: Callable[[], None]) -> None:
        """Have `reset` (a bound method) run in a forked child, right after the pool's."""
        self._resets.append(weakref.WeakMethod(reset))

    def __len__(self) -> int:
        """How many connections wait idle (never more than _MAX_IDLE)."""
        return len(self._idle)

    def __bool__(self) -> bool:
        return True  # a pool with no idle connection is still a pool (despite __len__)

    def _check_process(self) -> None:
        if self.pid != os.getpid():
            _FORK_ORPHANS.extend(self._idle)
            self.reset()
            for ref in self._resets:
                reset = ref()
                if reset is not None:
                    reset()

    def connect(self) -> sqlite3.Connection:
        """A new connection: autocommit (BEGIN/COMMIT are ours), usable from any thread."""
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # pooled: one thread at a time, any thread
            )
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoint, atomic always
        except sqlite3.Error as exc:
            raise map_error(exc, self.path) from exc
        return conn

    def checkout(self) -> sqlite3.Connection:
        if self.closed:
            raise StoreError(f"store {self.path} is closed")
        self._check_process()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.connect()

    def checkin(self, conn: sqlite3.Connection) -> None:
        if os.getpid() != self.pid:
            return
        with self._lock:
            if not self.closed and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Mark the store closed and close the idle connections (this process's only)."""
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        if os.getpid() == self.pid:
            for conn in idle:
                conn.close()

    def execute(self, conn: sqlite3.Connection, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        """One statement, its errors in podnet's tree."""
        try:
            return conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise map_error(exc, self.path) from exc

    def retry(self, fn: Callable[[], Any]) -> Any:
        """Run fn, retrying while SQLite reports the database busy (each attempt has
        already waited busy_timeout inside SQLite)."""
        for attempt in range(self.attempts):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not transient(exc) or attempt == self.attempts - 1:
                    raise
        raise AssertionError("unreachable")
