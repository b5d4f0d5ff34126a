"""watch(): one shared tail per store and process, and the watchers filtering its ring.

Every watch() of this process shares one tail thread per store (`_loop`): it alone
polls the database (`PRAGMA data_version`) and reads each new event once, into a ring
of TAIL_EVENTS; a watcher only filters the ring for its prefix. An agent runs five or
so watchers (networks, DNS, nodes, policy...), and fifty agents polling separately
spent more than a CPU during a lab's pod attach. A watcher older than the ring, or of
a prefix the tail has not taken up yet, reads the database directly (the ring holds
the recent past only).
"""

from __future__ import annotations

import collections
import random
import sqlite3
import threading
import time
from collections.abc import Callable

from podnet.errors import StoreError
from podnet.store.base import Event, RevisionCompacted, prefix_end
from podnet.store.sqlite.operations import Operations
from podnet.store.sqlite.pool import Pool
from podnet.store.sqlite.transactions import Transactions
from podnet.store.sqlite.wake import FileWake

SWEEP_RETRY = 0.1  # a tail whose sweep found the write lock taken looks again within 0.1-0.2 s
FULL_SCAN_SECONDS = 1.0  # watch(): a full scan at least this often, changed or not
TAIL_EVENTS = 8192  # watch(): how many recent events the shared tail keeps in memory
IDLE_POLL = 0.02  # watch(): how often the tail looks while nothing changes (no inotify)
# ... and with inotify, which wakes it for every other process's write (wake.py) and
# every writer of this process: the poll is then only a safety net. 50 polls a second
# were a third of an idle agent's CPU (bench/README.md, agent overhead).
IDLE_POLL_WOKEN = 0.5
RECHECKS, RECHECK_SECONDS = 10, 0.002  # after an inotify wake-up that found no commit (see _loop)
# watch(): the events' head revision, the next expiry and the compaction mark, in one read
_WATCH_HEAD = (
    "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'events'),"
    " (SELECT MIN(expires_at) FROM kv WHERE expires_at IS NOT NULL),"
    " (SELECT value FROM meta WHERE name = 'compacted')"
)


class Tail:
    """The shared tail of one store in this process, and watch() on it.

    poll: how often the tail looks while changes keep coming (`poll_interval`).
    """

    def __init__(
        self,
        pool: Pool,
        txs: Transactions,
        ops: Operations,
        clock: Callable[[], float],
        poll: float,
    ) -> None:
        self._pool = pool
        self._txs = txs
        self._ops = ops
        self._clock = clock
        self._poll = poll
        self.reset()
        pool.on_fork(self.reset)

    def reset(self) -> None:
        """This process's tail (see pool.py): its ring, how far it has read, and from
        which revision on the ring is complete."""
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # watchers waiting in the ring for their prefix, each on a condition of its own:
        # a pass wakes only those its new events concern (_notify_news)
        self._waiting: dict[threading.Condition, str] = {}
        self._thread: threading.Thread | None = None
        self._events: collections.deque[Event] = collections.deque(maxlen=TAIL_EVENTS)
        self._head: int | None = None
        self._floor = 0
        self._compacted = 0
        self._error: StoreError | None = None
        # the prefixes watched in this process: the tail reads only their events; each
        # prefix's ring is complete after the revision recorded here (None: not yet)
        self._since: dict[str, int | None] = {}

    def wake(self) -> None:
        """Wake every waiting watcher (the store is closing)."""
        with self._cond:
            self._notify_all()

    def watch(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        """Events under `prefix` after `from_revision`, waiting up to `timeout`: from the
        ring when it covers them, else from the database (module docstring)."""
        if self._txs.conn() is not None:
            raise StoreError("watch() inside a transaction would block every writer")
        deadline = time.monotonic() + max(0.0, timeout)
        checked = from_revision  # the ring's events up to here held nothing under prefix
        with self._cond:
            self._since.setdefault(prefix, None)
        while True:
            self._start()  # (again, after a failed tail thread ended)
            with self._cond:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                head, floor, compacted = self._head, self._floor, self._compacted
                since = self._since.get(prefix)
                if head is not None and from_revision < compacted:
                    raise RevisionCompacted(from_revision, compacted)
                if head is not None and since is not None and from_revision >= max(floor, since):
                    found = []
                    for event in reversed(self._events):  # only what is newer: O(new)
                        if event.revision <= checked:
                            break
                        if event.key.startswith(prefix):
                            found.append(event)
                    found.reverse()
                    if found:
                        return found
                    # woken again, look only at what came since: a prefix few events are under
                    # (networks/; policy/ while a lab's pods attach) rescanned the ring each time
                    checked = max(checked, self._events[-1].revision if self._events else checked)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._pool.closed:
                        return []
                    self._wait_in_ring(prefix, remaining)
                    continue
            # before the ring (or before the tail's first pass): ask the database, after
            # turning what has expired into delete events; when another writer holds the
            # lock (the tail's own sweep, often), wait for it: it sweeps too, but a read
            # before its commit would miss those deletes, and a watch with no time to
            # wait would answer nothing (the store contract's TTL test failed 1 in 40)
            self._ops.sweep_if_due(wait=True)
            upto = self._ops.revision()  # everything up to here is in the read below
            found = self._events_after(prefix, from_revision)
            compacted = self._txs.read("SELECT value FROM meta WHERE name = 'compacted'", ())[0][0]
            if from_revision < compacted:
                raise RevisionCompacted(from_revision, compacted)
            if found:
                return found
            with self._cond:
                since = self._since.get(prefix)
                if self._head is not None and since is not None:
                    # on to the ring, but never past what the read above covered: the tail
                    # may have committed a sweep and taken the prefix up after it (the
                    # rest is read from the database on the next turn)
                    from_revision = checked = max(from_revision, min(upto, max(self._floor, since)))
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._pool.closed:
                    return []
                self._cond.wait(min(remaining, self._poll))

    def _start(self) -> None:
        with self._cond:
            if self._thread is None and not self._pool.closed:
                self._thread = threading.Thread(
                    target=self._loop, name=f"store-tail {self._pool.path}", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        """Poll the database for every watcher of this process (see watch): one cheap
        `PRAGMA data_version` per interval on a connection that never writes (it changes
        whenever any other connection commits); on a change, the head, next expiry and
        compaction mark in one statement and the new events in one more. Expiry becomes
        delete events here too (the sweep), and a full scan runs at least every
        FULL_SCAN_SECONDS."""
        try:
            probe = self._pool.checkout()
        except StoreError as exc:
            with self._cond:
                self._error, self._thread = exc, None
                self._notify_all()
            return
        # inotify wakes only a quiet tail (a burst stays batched); a write seen while
        # the tail was busy is remembered, so the next quiet wait does not sleep on it
        quiet, pending, recheck = False, False, 0

        def wake() -> None:
            nonlocal pending
            with self._txs.committed:
                pending = True
                if quiet:
                    self._txs.committed.notify_all()

        listening = threading.Event()  # set while the tail is quiet: only then is a wake-up useful
        file_wake = FileWake(self._pool.path, wake, listening)
        # another process's write wakes the tail at once (wake.py)
        idle_poll = IDLE_POLL_WOKEN if file_wake.start() else min(self._poll, IDLE_POLL)
        try:
            version: int | None = None
            idle_version: int | None = None  # the version seen by the previous pass
            next_expiry: float | None = None
            next_full = 0.0
            while not self._pool.closed:
                current = self._pool.execute(probe, "PRAGMA data_version", ()).fetchone()[0]
                mono = time.monotonic()
                if (current != version or mono >= next_full
                        or (next_expiry is not None and self._clock() >= next_expiry)):
                    version, next_full = current, mono + FULL_SCAN_SECONDS
                    next_expiry = self._read_new()
                # Writers in this process wake us at once. Another process's change is
                # seen at once when things are quiet (a lone endpoint change: inotify,
                # wake.py; else within IDLE_POLL), and batched per `poll_interval` while
                # changes keep coming (a lab's pods attaching: each pass then reads the
                # head and the new events, and fifty agents do not wake per write).
                with self._txs.committed:
                    if idle_version is not None and current != idle_version:
                        quiet = pending = False
                        recheck = 0
                        self._txs.committed.wait(self._poll)
                    elif pending:
                        pending = False  # written since this pass looked: look again now
                    elif recheck:  # a write announced but not visible yet (below): look again soon
                        recheck -= 1
                        self._txs.committed.wait(RECHECK_SECONDS)
                    else:
                        quiet = True
                        listening.set()
                        self._txs.committed.wait(self._idle_wait(idle_poll, next_expiry))
                        # inotify reports a commit's WAL frames before its wal-index (-shm,
                        # mapped memory: no event) makes them visible: a wake-up that finds
                        # nothing looks again every RECHECK_SECONDS a few times before it
                        # sleeps the idle poll (a policy change waited ~0.5 s a third of
                        # the time: bench/policy_scale.py)
                        recheck = RECHECKS if pending else 0
                        quiet = pending = False
                idle_version = current
        except (StoreError, sqlite3.Error) as exc:
            with self._cond:
                self._error = exc if isinstance(exc, StoreError) else StoreError(f"store watch failed: {exc}")
                self._notify_all()
        finally:
            file_wake.close()
            self._pool.checkin(probe)
            with self._cond:
                self._thread = None
                self._notify_all()

    def _wait_in_ring(self, prefix: str, timeout: float) -> None:
        """Wait (the lock held) until a pass brings an event under `prefix`, something
        every watcher must see happens, or `timeout` passes."""
        waiter = threading.Condition(self._lock)
        self._waiting[waiter] = prefix
        try:
            waiter.wait(timeout)
        finally:
            del self._waiting[waiter]

    def _notify_all(self) -> None:
        """Wake every watcher, in the ring or not (the lock held): an error, the end of
        the tail, a closing store, a prefix taken up, a compaction."""
        self._cond.notify_all()
        for waiter in self._waiting:
            waiter.notify()

    def _notify_news(self, new: list[Event]) -> None:
        """Wake the watchers in the ring whose prefix some of `new` is under (the lock
        held): while a lab's pods attach, the IPAM and endpoint events wake only the
        watchers of everything, not the policy, networks or services watchers."""
        for waiter, prefix in self._waiting.items():
            if not prefix or any(event.key.startswith(prefix) for event in new):
                waiter.notify()
        self._cond.notify_all()  # (waiters before the ring: they look at the database)

    def _idle_wait(self, idle_poll: float, next_expiry: float | None) -> float:
        """How long a quiet tail sleeps: the idle poll, cut short by the next expiry
        (its delete events are due then)."""
        wait = idle_poll
        if next_expiry is not None:
            wait = min(wait, max(0.0, next_expiry - self._clock()))
        return wait

    def _read_new(self) -> float | None:
        """One pass of the tail after a change: the head, the new events of the watched
        prefixes into the ring, the compaction mark; the next expiry is returned."""
        head, next_expiry, compacted = self._txs.read(_WATCH_HEAD, ())[0]
        if next_expiry is not None and next_expiry <= self._clock():
            if self._ops.sweep_if_due():
                head, next_expiry, compacted = self._txs.read(_WATCH_HEAD, ())[0]
            else:  # a writer holds the lock and sweeps first; else look again soon, unherded
                next_expiry = self._clock() + SWEEP_RETRY * (1 + random.random())
        head = head or 0
        with self._cond:
            scanned = self._head
            prefixes = sorted(self._since)
            taken_up = [prefix for prefix in prefixes if self._since[prefix] is None]
            for prefix in taken_up:  # from here on the ring holds their events
                self._since[prefix] = head if scanned is None else scanned
        new = (self._events_under(prefixes, scanned)
               if scanned is not None and head > scanned and prefixes else [])
        with self._cond:
            if scanned is None:
                self._floor = head  # the ring starts here
            for event in new:
                if len(self._events) == self._events.maxlen:
                    self._floor = self._events[0].revision
                self._events.append(event)
            self._head = max(head, new[-1].revision if new else 0)
            # A pass with nothing new wakes nobody (each watcher keeps its own deadline: a
            # notify per pass woke ten threads of every agent 20 times a second), and one
            # with new events only the watchers they are for.
            if taken_up or scanned is None or self._compacted != (compacted or 0):
                self._notify_all()
            elif new:
                self._notify_news(new)
            self._compacted = compacted or 0
        return next_expiry

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
        return [Event(*row) for row in self._txs.read(sql + " ORDER BY revision", tuple(params))]

    def _events_after(self, prefix: str, revision: int) -> list[Event]:
        end = prefix_end(prefix)
        sql = "SELECT kind, key, value, revision FROM events WHERE revision > ?"
        params: tuple = (revision,)
        if end is not None:
            sql += " AND key >= ? AND key < ?"
            params = (revision, prefix, end)
        return [Event(*row) for row in self._txs.read(sql + " ORDER BY revision", params)]
