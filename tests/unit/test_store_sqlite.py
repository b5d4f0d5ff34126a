"""SQLite-specific behaviour beyond the shared store contract."""

from __future__ import annotations

import time

import pytest


def test_sqlite_second_handle_keeps_other_processes_writes_visible(tmp_path):
    """Opening the same store twice in one process must not drop SQLite's POSIX locks
    (closing any fd of the file would): another process closing its handle would then
    delete the WAL under us, and we would stop seeing writes made by others."""
    import subprocess
    import sys

    from podnet.store.sqlite import SqliteStore

    path = str(tmp_path / "shared.db")
    first = SqliteStore(path)
    first.put("k/0", '"before"')
    second = SqliteStore(path)  # e.g. another service of the same agent
    writer = (
        "import sys; from podnet.store.sqlite import SqliteStore;"
        "s = SqliteStore(sys.argv[1]); s.put(sys.argv[2], '\"x\"'); s.close()"
    )
    for i in range(1, 4):
        subprocess.run([sys.executable, "-c", writer, path, f"k/{i}"], check=True)
    assert [e.key for e in first.list("k/")] == ["k/0", "k/1", "k/2", "k/3"]
    first.put("k/4", '"mine"')
    check = subprocess.run(
        [sys.executable, "-c", "import sys; from podnet.store.sqlite import SqliteStore;"
         "print(len(SqliteStore(sys.argv[1]).list('k/')))", path],
        capture_output=True, text=True, check=True,
    )
    assert check.stdout.strip() == "5"
    second.close()
    first.close()


def test_a_missing_store_is_an_error_unless_the_caller_creates_it(tmp_path):
    """A mistyped path must not become a new, empty store (issue 10, item 4): opening
    one that does not exist names the path; `create=True` makes it."""
    import pytest

    from podnet.errors import StoreError
    from podnet.store import open_store

    missing = tmp_path / "typo" / "store.db"
    for location in (str(missing), f"sqlite://{missing}"):
        with pytest.raises(StoreError, match=str(missing)):
            open_store(location, create=False)
    assert not missing.parent.exists()  # nothing made on the way
    with open_store(str(missing), create=True) as store:
        store.put("k", '"v"')
    with open_store(str(missing), create=False) as store:
        assert store.get_json("k") == "v"
    with open_store("memory://", create=False) as store:  # nothing to find: fine
        assert store.get("k") is None


def test_another_process_write_wakes_a_quiet_watch_at_once(tmp_path, monkeypatch):
    """The tail's polls are made 30 s apart here: only the inotify wake-up (wake.py)
    can deliver another process's write within the 10 s the watch waits."""
    import subprocess
    import sys
    import time

    from podnet.store.sqlite import SqliteStore
    from podnet.store.sqlite import watch as watch_module

    monkeypatch.setattr(watch_module, "IDLE_POLL", 30.0)
    monkeypatch.setattr(watch_module, "IDLE_POLL_WOKEN", 30.0)
    monkeypatch.setattr(watch_module, "FULL_SCAN_SECONDS", 60.0)
    path = str(tmp_path / "store.db")
    with SqliteStore(path, poll_interval=30.0) as store:
        store.put("a/0", "{}")
        revision = store.revision()
        assert store.watch("a/", revision, timeout=0.3) == []  # the tail runs, and is quiet
        time.sleep(0.3)
        writer = ("import sys; from podnet.store import open_store\n"
                  "with open_store(sys.argv[1]) as s: s.put('a/1', '{}')")
        subprocess.run([sys.executable, "-c", writer, path], check=True, timeout=60)
        events = store.watch("a/", revision, timeout=10.0)
        assert [e.key for e in events] == ["a/1"]


def test_file_wake_reports_the_database_and_its_wal_only(tmp_path):
    import threading

    from podnet.store.sqlite.wake import FileWake

    woken = threading.Event()
    wake = FileWake(str(tmp_path / "store.db"), woken.set)
    assert wake.start()
    try:
        (tmp_path / "other.log").write_text("x")
        assert not woken.wait(0.3)
        (tmp_path / "store.db-wal").write_bytes(b"x")
        assert woken.wait(5.0)
    finally:
        wake.close()


def test_file_wake_sleeps_between_wake_ups_until_its_listener_listens_again(tmp_path):
    import threading

    from cniharness import wait_until
    from podnet.store.sqlite.wake import FileWake

    calls: list[float] = []
    woken, listening = threading.Event(), threading.Event()
    listening.set()
    wake = FileWake(str(tmp_path / "store.db"), lambda: (calls.append(1), woken.set()), listening)
    assert wake.start()
    try:
        (tmp_path / "store.db-wal").write_bytes(b"x")
        assert woken.wait(5.0) and wait_until(lambda: not listening.is_set(), "the wake-up thread to stop listening", 5)
        woken.clear()
        for i in range(20):  # a busy listener: every write waits in the kernel's queue
            (tmp_path / "store.db-wal").write_bytes(b"y" * i)
        assert not woken.wait(0.3) and len(calls) == 1
        listening.set()  # quiet again: the writes meanwhile are one wake-up
        assert woken.wait(5.0)
        assert wait_until(lambda: not listening.is_set(), "the wake-up thread to stop listening", 5) and len(calls) == 2
    finally:
        wake.close()



def _hold_write_lock(path):
    """Another process's writer, as SQLite sees it: a connection in BEGIN IMMEDIATE."""
    import sqlite3

    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_a_snapshot_reads_while_another_writer_holds_the_lock(tmp_path):
    """snapshot() is a WAL read transaction: every agent's loops list with it, and it
    must not queue for the write lock (it did: a hundred agents' renewals starved)."""
    from podnet.errors import TryAgainLater
    from podnet.store.sqlite import SqliteStore

    path = tmp_path / "s.db"
    store = SqliteStore(path, busy_timeout=0.2, attempts=1)
    store.put("a/1", "one")
    store.put("b/1", "other")
    revision = store.revision()
    writer = _hold_write_lock(path)
    try:
        writer.execute("INSERT INTO meta(name, value) VALUES ('dbg', 1)")  # uncommitted: unseen
        assert store.snapshot("a/")[1] == revision
        entries, _ = store.snapshot("a/")
        assert [(e.key, e.value) for e in entries] == [("a/1", "one")]
        with pytest.raises(TryAgainLater):  # a write still waits for the lock, and gives up
            store.put("a/2", "two")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    with store.transaction():  # inside a write transaction: its own view
        store.put("a/2", "two")
        assert [e.key for e in store.snapshot("a/")[0]] == ["a/1", "a/2"]
    store.close()


def test_the_expiry_sweep_never_waits_for_the_write_lock(tmp_path):
    """A hundred watch tails all due at one expiry must not queue for the lock: the
    sweep is skipped while another writer holds it (whose commit sweeps first) and
    done once it is free."""
    from podnet.store.sqlite import SqliteStore

    now = [1000.0]
    path = tmp_path / "s.db"
    store = SqliteStore(path, busy_timeout=2.0, attempts=1, clock=lambda: now[0])
    store.put("lease/a", "x", ttl=5)
    now[0] += 10
    ops = store._ops
    writer = _hold_write_lock(path)
    try:
        started = time.monotonic()
        assert ops.sweep_if_due() is False
        assert time.monotonic() - started < 1.0  # not the 2 s busy timeout
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert store.get("lease/a") is None  # hidden from reads all along
    before = store.revision()
    assert ops.sweep_if_due() is True
    assert [(e.kind, e.key) for e in store.watch("lease/", before, 0.1)] == [("delete", "lease/a")]
    store.close()


def test_a_watch_waits_for_a_writer_whose_sweep_is_not_committed_yet(tmp_path):
    """A watch that finds the write lock taken while a key has expired waits for the
    holder's commit (whose sweep made the delete event), instead of reading before it
    and answering nothing: the store contract's TTL test failed so, 1 run in 40, when
    the watch's first look met the tail's own sweep."""
    import threading

    from podnet.store.sqlite import SqliteStore

    now = [1000.0]
    path = tmp_path / "s.db"
    store = SqliteStore(path, clock=lambda: now[0])
    rev = store.put("lease/a", "x", ttl=1)
    now[0] += 2
    writer = SqliteStore(path, clock=lambda: now[0])  # another handle: its own lock
    in_tx, release = threading.Event(), threading.Event()

    def write_slowly() -> None:
        with writer.transaction():
            writer.put("other", "1")  # sweeps lease/a first, in this transaction
            in_tx.set()
            release.wait(5)

    thread = threading.Thread(target=write_slowly)
    thread.start()
    try:
        assert in_tx.wait(5)
        threading.Timer(0.2, release.set).start()
        events = store.watch("lease/", rev, 0)
    finally:
        release.set()
        thread.join(5)
    assert [(e.kind, e.key) for e in events] == [("delete", "lease/a")]
    writer.close()
    store.close()


def test_a_prefix_watcher_sleeps_through_other_prefixes_writes(tmp_path, monkeypatch):
    """With a watcher of everything in the process (as every agent has), the tail reads
    every event; a watcher of `a/` is woken only by a pass that brought one under `a/`
    (every wake-up is one more turn of its loop, which starts with `_start`)."""
    import collections
    import threading

    from podnet.store.sqlite import SqliteStore
    from podnet.store.sqlite.watch import Tail

    turns: collections.Counter[str] = collections.Counter()
    start = Tail._start

    def counted(self: Tail) -> None:
        turns[threading.current_thread().name] += 1
        start(self)

    monkeypatch.setattr(Tail, "_start", counted)
    with SqliteStore(str(tmp_path / "store.db")) as store:
        revision = store.revision()
        seen: dict[str, list[str]] = {}

        def watch(prefix: str) -> None:
            seen[prefix] = [e.key for e in store.watch(prefix, revision, timeout=10.0)
                            if e.key.startswith("a/")]

        store.watch("", revision, 0.0)  # the tail now reads every prefix ...
        store.watch("a/", revision, 0.0)
        store.put("c/0", "{}")  # ... and its pass after this write takes a/ up:
        store.watch("c/", revision, 5.0)  # a/ watchers now wait in the ring, no more polls
        time.sleep(0.1)
        watcher = threading.Thread(target=watch, args=("a/",), name="a-watcher")
        watcher.start()
        time.sleep(0.2)
        before = turns["a-watcher"]
        for i in range(20):  # twenty passes of the tail (its busy poll is 0.05 s)
            store.put(f"b/{i}", "{}")
            time.sleep(0.06)
        store.put("a/1", "{}")
        watcher.join(10)
        assert seen["a/"] == ["a/1"]
        assert turns["a-watcher"] - before <= 2, turns  # the one that found a/1, and slack


def test_no_inotify_instance_is_said_once_with_the_limit_to_raise(tmp_path, monkeypatch, caplog):
    """At the per-user limit of inotify instances (EMFILE) the tail falls back to
    polling; that must show in the log, once per process, naming the sysctl."""
    import ctypes
    import errno
    import logging
    from types import SimpleNamespace

    from podnet.store.sqlite import wake

    def refuse(_flags: int) -> int:
        ctypes.set_errno(errno.EMFILE)
        return -1

    monkeypatch.setattr(wake, "_inotify", lambda: SimpleNamespace(inotify_init1=refuse))
    monkeypatch.setattr(wake, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="podnet.store"):
        assert wake.FileWake(str(tmp_path / "a.db"), lambda: None).start() is False
        assert wake.FileWake(str(tmp_path / "b.db"), lambda: None).start() is False
    said = [r.getMessage() for r in caplog.records if "inotify" in r.getMessage()]
    assert len(said) == 1 and "fs.inotify.max_user_instances" in said[0], said


def test_a_sweep_the_tail_commits_while_a_watcher_reads_the_database_is_not_skipped(tmp_path, monkeypatch):
    """The race of 9f97e80, made to happen: a watcher reads the database (its prefix
    not in the ring yet); meanwhile the tail's first pass sweeps an expired key and
    takes the prefix up at its new head. The watcher must still get the delete event,
    which came after its read and before the ring starts."""
    from test_store_contract import FakeClock

    from podnet.store.base import DELETE
    from podnet.store.sqlite import SqliteStore

    clock = FakeClock()
    with SqliteStore(tmp_path / "store.db", clock=clock, poll_interval=0.01) as store:
        tail = store._tail
        monkeypatch.setattr(tail, "_start", lambda: None)  # no tail thread: its pass runs below
        rev = store.put("lease/a", "1", ttl=1)
        real = tail._events_after
        raced: list[int] = []

        def read_then_race(prefix: str, revision: int):
            found = real(prefix, revision)
            if not raced:
                raced.append(store.revision())
                clock.advance(2)  # the key expires after the watcher's read
                tail._read_new()  # the tail's first pass: sweeps it, takes "lease/" up
                assert store.revision() > raced[0] and tail._since["lease/"] == store.revision()
            return found

        monkeypatch.setattr(tail, "_events_after", read_then_race)
        events = store.watch("lease/", rev, 0)
        assert raced, "the race did not run"
        assert [(e.kind, e.key) for e in events] == [(DELETE, "lease/a")]
