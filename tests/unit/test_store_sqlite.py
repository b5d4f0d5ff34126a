"""SQLite-specific behaviour beyond the shared store contract."""

from __future__ import annotations


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

