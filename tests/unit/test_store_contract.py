"""The Store contract: one suite, every backend (docs/architecture.md, "Store").

Each backend contributes a `Kit` factory to KITS; the tests only speak to the Store
interface plus the kit's helpers (`advance` for TTL time, `url` for other processes,
`make_compacting` for a small history). etcd joins by adding its factory.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podnet.errors import InvalidConfig, StoreError, TryAgainLater
from podnet.store import RevisionCompacted, Store, open_store
from podnet.store.base import DELETE, PUT, Event, prefix_end
from podnet.store.memory import MemoryStore
from podnet.store.sqlite import SqliteStore


class FakeClock:
    """Wall-clock stand-in: TTL tests move time instead of sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class Kit:
    store: Store
    advance: Callable[[float], None]  # let `seconds` pass, as TTLs see time
    url: str | None  # how another process opens the same data (None: it cannot)
    make_compacting: Callable[[int], Store] | None  # same backend, small history
    cleanup: Callable[[], None] | None = None  # after the store is closed (servers)


def memory_kit(tmp_path: Path) -> Kit:
    clock = FakeClock()
    return Kit(
        store=MemoryStore(clock=clock, poll_interval=0.01),
        advance=clock.advance,
        url=None,
        make_compacting=lambda n: MemoryStore(clock=clock, history=n),
    )


def sqlite_kit(tmp_path: Path) -> Kit:
    clock = FakeClock()
    path = tmp_path / "state" / "store.db"
    return Kit(
        store=SqliteStore(path, clock=clock, poll_interval=0.01),
        advance=clock.advance,
        url=f"sqlite://{path}",
        make_compacting=lambda n: SqliteStore(tmp_path / "small.db", clock=clock, history=n),
    )


def etcd_kit(tmp_path: Path) -> Kit:
    """A fresh one-member etcd per test (~0.1 s): revisions start at 0 as the contract
    says. TTLs are judged by the store's clock (etcd.py), so the fake clock works."""
    from etcd_fixture import EtcdCluster, needs_etcd

    needs_etcd()
    from podnet.store.etcd import EtcdStore

    clock = FakeClock()
    cluster = EtcdCluster(tmp_path / "etcd").start()
    return Kit(
        store=EtcdStore(cluster.endpoints, clock=clock, poll_interval=0.01),
        advance=clock.advance,
        url=cluster.url(),
        make_compacting=lambda n: EtcdStore(cluster.endpoints, clock=clock, history=n),
        cleanup=cluster.stop,
    )


KITS: dict[str, Callable[[Path], Kit]] = {
    "memory": memory_kit,
    "sqlite": sqlite_kit,
    "etcd": etcd_kit,
}


@pytest.fixture(params=sorted(KITS))
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    made = KITS[request.param](tmp_path)
    yield made
    made.store.close()
    if made.cleanup is not None:
        made.cleanup()


@pytest.fixture
def store(kit: Kit) -> Store:
    return kit.store


# -- get / put / list -------------------------------------------------------------


def test_get_missing_is_none(store: Store) -> None:
    assert store.get("nope") is None
    assert store.revision() == 0


def test_put_then_get(store: Store) -> None:
    rev = store.put("a/b", '{"x": 1}')
    entry = store.get("a/b")
    assert entry is not None
    assert (entry.key, entry.value, entry.revision, entry.create_revision) == (
        "a/b",
        '{"x": 1}',
        rev,
        rev,
    )
    assert entry.expires_at is None
    assert entry.json() == {"x": 1}
    assert store.revision() == rev


def test_put_overwrites_and_bumps_revision(store: Store) -> None:
    first = store.put("k", '"1"')
    second = store.put("k", '"2"')
    assert second > first
    entry = store.get("k")
    assert entry is not None
    assert entry.value == '"2"'
    assert (entry.revision, entry.create_revision) == (second, first)


def test_every_write_gets_a_new_revision(store: Store) -> None:
    revs = [store.put(f"k/{i}", "1") for i in range(5)]
    assert revs == sorted(set(revs))
    assert store.revision() == revs[-1]


def test_list_is_sorted_and_prefix_bounded(store: Store) -> None:
    for key in ["a/c", "a/a", "a/b", "ab", "b/a", "a/\u00e9", "a"]:
        store.put(key, "0")
    assert [e.key for e in store.list("a/")] == ["a/a", "a/b", "a/c", "a/\u00e9"]
    assert [e.key for e in store.list("a")] == ["a", "a/a", "a/b", "a/c", "a/\u00e9", "ab"]
    assert [e.key for e in store.list("")] == sorted(
        ["a/c", "a/a", "a/b", "ab", "b/a", "a/\u00e9", "a"]
    )
    assert store.list("zzz") == []


def test_json_helpers(store: Store) -> None:
    store.put_json("j", {"b": [1, 2], "a": None})
    assert store.get_json("j") == {"a": None, "b": [1, 2]}
    assert store.get_json("missing", default={}) == {}


@pytest.mark.parametrize("bad", ["", "a\0b"])
def test_invalid_key_rejected(store: Store, bad: str) -> None:
    with pytest.raises(StoreError):
        store.put(bad, "1")


@pytest.mark.parametrize("ttl", [0, -1.0])
def test_invalid_ttl_rejected(store: Store, ttl: float) -> None:
    with pytest.raises(StoreError):
        store.put("k", "1", ttl=ttl)


# -- compare_and_put / delete -------------------------------------------------------


def test_cas_only_if_absent(store: Store) -> None:
    rev = store.compare_and_put("k", "1", 0)
    assert rev is not None
    assert store.compare_and_put("k", "2", 0) is None
    assert store.get("k").value == "1"  # type: ignore[union-attr]


def test_cas_on_revision(store: Store) -> None:
    rev = store.put("k", "1")
    assert store.compare_and_put("k", "2", rev + 100) is None
    new = store.compare_and_put("k", "2", rev)
    assert new is not None and new > rev
    assert store.compare_and_put("k", "3", rev) is None  # stale now
    assert store.get("k").value == "2"  # type: ignore[union-attr]


def test_cas_on_missing_key_with_revision_fails(store: Store) -> None:
    assert store.compare_and_put("k", "1", 5) is None
    assert store.get("k") is None


def test_failed_cas_does_not_bump_revision(store: Store) -> None:
    store.put("k", "1")
    before = store.revision()
    assert store.compare_and_put("k", "2", 0) is None
    assert store.revision() == before


def test_delete(store: Store) -> None:
    assert store.delete("k") is False
    rev = store.put("k", "1")
    assert store.delete("k", expected_revision=rev + 1) is False
    assert store.get("k") is not None
    assert store.delete("k", expected_revision=rev) is True
    assert store.get("k") is None
    assert store.delete("k") is False


def test_recreate_after_delete_resets_create_revision(store: Store) -> None:
    first = store.put("k", "1")
    store.delete("k")
    again = store.compare_and_put("k", "2", 0)
    entry = store.get("k")
    assert entry is not None and again is not None
    assert entry.create_revision == again > first


def test_delete_prefix(store: Store) -> None:
    for key in ["p/1", "p/2", "p/3/x", "q/1", "p"]:
        store.put(key, "0")
    start = store.revision()
    assert store.delete_prefix("p/") == 3
    assert [e.key for e in store.list("")] == ["p", "q/1"]
    events = store.watch("", start, 0)
    assert [(e.kind, e.key) for e in events] == [
        (DELETE, "p/1"),
        (DELETE, "p/2"),
        (DELETE, "p/3/x"),
    ]
    assert store.delete_prefix("nothing/") == 0


# -- TTL --------------------------------------------------------------------------


def test_ttl_expiry_hides_key(kit: Kit) -> None:
    store = kit.store
    store.put("lease/a", "1", ttl=10)
    store.put("lease/b", "1")
    entry = store.get("lease/a")
    assert entry is not None and entry.expires_at is not None
    kit.advance(5)
    assert store.get("lease/a") is not None
    kit.advance(6)
    assert store.get("lease/a") is None
    assert [e.key for e in store.list("lease/")] == ["lease/b"]
    assert store.compare_and_put("lease/a", "2", 0) is not None  # absent again


def test_a_hint_listing_lists_the_same_keys(kit: Kit) -> None:
    store = kit.store
    store.put("lease/a", "1", ttl=10)
    store.put("lease/b", "2")
    assert [(e.key, e.value) for e in store.list_hint("lease/")] == [("lease/a", "1"), ("lease/b", "2")]
    assert store.snapshot_hint("lease/") == (store.list("lease/"), store.revision())
    kit.advance(11)
    assert [e.key for e in store.list_hint("lease/")] == ["lease/b"]  # its own lease: gone at once


def test_reads_together_give_what_each_read_gives(kit: Kit) -> None:
    """An ADD's survey reads its hints in one call (etcd: at once)."""
    store = kit.store
    store.put("ipam/a", "1")
    store.put("ipam/b", "2", ttl=10)
    store.put("last/0", "x")
    reads = [("list", "ipam/"), ("get", "last/0"), ("get", "last/1"), ("list_hint", "ipam/"), ("list", "none/")]
    expected = [store.list("ipam/"), store.get("last/0"), None, store.list_hint("ipam/"), []]
    assert store.read_together(reads) == expected
    with store.transaction():
        assert store.read_together(reads) == expected
    with pytest.raises(ValueError, match="unknown read 'put'"):
        store.read_together([("put", "k")])


def test_ttl_expiry_is_a_delete_event(kit: Kit) -> None:
    store = kit.store
    rev = store.put("lease/a", "1", ttl=1)
    kit.advance(2)
    events = store.watch("lease/", rev, 0)
    assert [(e.kind, e.key, e.value) for e in events] == [(DELETE, "lease/a", None)]
    assert events[0].revision > rev
    assert store.revision() == events[0].revision


def test_put_without_ttl_clears_ttl(kit: Kit) -> None:
    kit.store.put("k", "1", ttl=1)
    kit.store.put("k", "2")
    kit.advance(5)
    assert kit.store.get("k") is not None


def test_refresh_extends_lease(kit: Kit) -> None:
    store = kit.store
    rev = store.put("lease", "1", ttl=10)
    kit.advance(8)
    assert store.refresh("lease", 10) is True
    kit.advance(8)
    entry = store.get("lease")
    assert entry is not None
    assert entry.revision == rev  # a keepalive is not a write
    kit.advance(3)
    assert store.get("lease") is None
    assert store.refresh("lease", 10) is False
    assert store.refresh("never", 10) is False


# -- watch ------------------------------------------------------------------------


def test_watch_from_revision(store: Store) -> None:
    r1 = store.put("w/a", "1")
    r2 = store.put("other/x", "1")
    r3 = store.put("w/b", "2")
    store.delete("w/a")
    events = store.watch("w/", r1 - 1, 0)
    assert [(e.kind, e.key, e.value) for e in events] == [
        (PUT, "w/a", "1"),
        (PUT, "w/b", "2"),
        (DELETE, "w/a", None),
    ]
    assert [e.revision for e in events][:2] == [r1, r3]
    assert all(e.key.startswith("w/") for e in store.watch("w/", r2, 0))
    assert store.watch("w/", store.revision(), 0) == []


def test_watch_times_out_empty(store: Store) -> None:
    rev = store.put("x", "1")
    start = time.monotonic()
    assert store.watch("x", rev, 0.3) == []
    assert time.monotonic() - start >= 0.25


def test_watch_blocks_until_a_write(store: Store) -> None:
    rev = store.revision()
    timer = threading.Timer(0.2, lambda: store.put("w/late", "1"))
    timer.start()
    try:
        start = time.monotonic()
        events = store.watch("w/", rev, 10)
        elapsed = time.monotonic() - start
    finally:
        timer.join()
    assert [e.key for e in events] == ["w/late"]
    assert 0.1 < elapsed < 5


def test_watch_hint_sees_what_watch_sees(store: Store) -> None:
    """watch_hint may end quiet without its server's word (etcd): never with less
    than what had arrived, and a write made while it waits is returned."""
    rev = store.put("h/a", "1")
    assert [e.key for e in store.watch_hint("h/", rev - 1, 1)] == ["h/a"]
    start = time.monotonic()
    assert store.watch_hint("h/", rev, 0.3) == []
    assert time.monotonic() - start >= 0.25
    timer = threading.Timer(0.2, lambda: store.put("h/late", "1"))
    timer.start()
    try:
        events = store.watch_hint("h/", rev, 10)
    finally:
        timer.join()
    assert [e.key for e in events] == ["h/late"]


def test_prefetch_changes_no_answer(store: Store) -> None:
    """Store.prefetch only moves a block's reads earlier (etcd: together): what the
    block then reads stays the same, present or absent, and its write commits.
    (A concurrent change to a prefetched key failing the commit: test_store_etcd's
    test_reads_together_in_a_transaction_are_one_hand_off_and_checked_at_commit.)"""
    store.put("p/a", "1")
    store.prefetch(["p/a", "p/b"])  # outside a transaction: nothing to keep
    with store.transaction():
        store.prefetch(["p/a", "p/b"])
        assert store.get("p/a").value == "1"  # type: ignore[union-attr]
        assert store.get("p/b") is None
        store.put("p/b", "2")
    assert store.get("p/b").value == "2"  # type: ignore[union-attr]


def _watch_while(store: Store, rev: int, writes: Callable[[], None]) -> list[Event]:
    """`watch("w/", rev)` blocking while another thread runs `writes`."""
    thread = threading.Thread(target=writes)
    thread.start()
    events = store.watch("w/", rev, 10)
    thread.join()
    return events


def test_watch_ignores_other_prefixes_while_blocking(store: Store) -> None:
    rev = store.revision()

    def writes() -> None:
        store.put("elsewhere", "1")
        time.sleep(0.1)
        store.put("w/mine", "1")

    events = _watch_while(store, rev, writes)
    assert [e.key for e in events] == ["w/mine"]


def test_a_prefix_watch_woken_by_many_other_writes_still_returns_its_own(store: Store) -> None:
    rev = store.revision()

    def writes() -> None:
        for i in range(40):  # each may wake the watcher, which then finds nothing under w/
            store.put(f"elsewhere/{i}", "1")
            time.sleep(0.002)
        store.put("w/mine", "1")
        store.put("elsewhere/last", "1")

    events = _watch_while(store, rev, writes)
    assert [e.key for e in events] == ["w/mine"]
    assert [e.key for e in store.watch("w/", rev, 0)] == ["w/mine"]  # the same from the same revision
    assert store.watch("w/", events[-1].revision, 0) == []


def test_watch_sees_expiry_while_blocking(kit: Kit) -> None:
    store = kit.store
    rev = store.put("lease/a", "1", ttl=5)
    timer = threading.Timer(0.1, lambda: kit.advance(10))
    timer.start()
    try:
        events = store.watch("lease/", rev, 10)
    finally:
        timer.join()
    assert [(e.kind, e.key) for e in events] == [(DELETE, "lease/a")]


def test_watch_from_compacted_revision_raises(kit: Kit) -> None:
    if kit.make_compacting is None:
        pytest.skip("backend compacts on its own schedule")
    store = kit.make_compacting(10)
    try:
        for i in range(50):
            store.put(f"c/{i}", str(i))
        with pytest.raises(RevisionCompacted) as info:
            store.watch("c/", 1, 0)
        assert "compacted" in str(info.value)
        recent = store.watch("c/", store.revision() - 5, 0)
        assert len(recent) == 5
    finally:
        store.close()


def test_snapshot_then_watch_misses_nothing(store: Store) -> None:
    store.put("s/1", "1")
    entries, rev = store.snapshot("s/")
    assert [e.key for e in entries] == ["s/1"]
    assert rev == store.revision()
    store.put("s/2", "2")
    assert [e.key for e in store.watch("s/", rev, 0)] == ["s/2"]


# -- transactions -----------------------------------------------------------------


def test_transaction_commits_together(store: Store) -> None:
    with store.transaction():
        store.put("t/a", "1")
        store.put("t/b", "2")
    assert [e.key for e in store.list("t/")] == ["t/a", "t/b"]


def test_transaction_exception_rolls_back(store: Store) -> None:
    base = store.put("t/keep", "1")
    with pytest.raises(RuntimeError), store.transaction():
        store.put("t/a", "1")
        store.delete("t/keep")
        store.compare_and_put("t/keep2", "1", 0)
        assert store.get("t/a") is not None  # own writes are visible inside
        raise RuntimeError("boom")
    assert [e.key for e in store.list("t/")] == ["t/keep"]
    assert store.revision() == base
    assert store.watch("t/", base, 0) == []


def test_nested_transaction_is_a_savepoint(store: Store) -> None:
    with store.transaction():
        store.put("n/outer", "1")
        try:
            with store.transaction():
                store.put("n/inner", "1")
                raise ValueError("inner fails")
        except ValueError:
            pass
        with store.transaction():
            store.put("n/inner2", "1")
    assert [e.key for e in store.list("n/")] == ["n/inner2", "n/outer"]


def test_nested_exception_propagating_rolls_back_everything(store: Store) -> None:
    with pytest.raises(KeyError), store.transaction():
        store.put("n/outer", "1")
        with store.transaction():
            store.put("n/inner", "1")
            raise KeyError("x")
    assert store.list("n/") == []


def test_transaction_ttl_rollback_keeps_lease(kit: Kit) -> None:
    store = kit.store
    store.put("l/a", "1", ttl=10)
    with pytest.raises(RuntimeError), store.transaction():
        store.put("l/a", "2")  # clears the TTL, then rolled back
        raise RuntimeError
    kit.advance(11)
    assert store.get("l/a") is None


def test_watch_inside_transaction_refused(store: Store) -> None:
    with pytest.raises(StoreError), store.transaction():
        store.watch("", 0, 1)


def test_transaction_is_isolated_read_modify_write(store: Store) -> None:
    """get+put inside a transaction is atomic: no increment is lost."""
    store.put("counter", "0")

    def bump(times: int) -> None:
        for _ in range(times):
            with store.transaction():
                value = int(store.get("counter").value)  # type: ignore[union-attr]
                store.put("counter", str(value + 1))

    threads = [threading.Thread(target=bump, args=(25,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("counter").value == "200"  # type: ignore[union-attr]


# -- concurrency ------------------------------------------------------------------


def cas_increment(store: Store, key: str, times: int) -> list[int]:
    """Increment key's integer `times` times with optimistic retries; returns the
    values this caller won (so lost or duplicated updates show up)."""
    won: list[int] = []
    while len(won) < times:
        entry = store.get(key)
        current = int(entry.value) if entry else 0
        if store.compare_and_put(key, str(current + 1), entry.revision if entry else 0):
            won.append(current + 1)
    return won


def test_threads_cas_never_lose_an_update(store: Store) -> None:
    results: list[list[int]] = []
    lock = threading.Lock()

    def work() -> None:
        won = cas_increment(store, "cas", 40)
        with lock:
            results.append(won)

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = sorted(v for won in results for v in won)
    assert everything == list(range(1, 401))
    assert store.get("cas").value == "400"  # type: ignore[union-attr]


_WORKER = """
import json, sys
sys.path.insert(0, sys.argv[4])
from test_store_contract import cas_increment
from podnet.store import open_store
store = open_store(sys.argv[1])
print(json.dumps(cas_increment(store, sys.argv[2], int(sys.argv[3]))))
store.close()
"""


def test_processes_cas_never_lose_an_update(kit: Kit) -> None:
    if kit.url is None:
        pytest.skip("backend is private to one process")
    procs, times = 4, 50
    here = str(Path(__file__).parent)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, kit.url, "pcas", str(times), here],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    everything: list[int] = []
    for proc in workers:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        everything.extend(json.loads(out))
    assert sorted(everything) == list(range(1, procs * times + 1))
    assert kit.store.get("pcas").value == str(procs * times)  # type: ignore[union-attr]


def test_closed_store_refuses_work(kit: Kit) -> None:
    kit.store.put("k", "1")
    kit.store.close()
    with pytest.raises(StoreError):
        kit.store.put("k", "2")


# -- helpers, factory and SQLite-only behaviour -------------------------------------


def test_prefix_end() -> None:
    assert prefix_end("") is None
    assert prefix_end("a/") == "a0"
    assert prefix_end("a\U0010ffff") == "b"


def test_open_store_memory() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)


def test_open_store_sqlite_url_and_path(tmp_path: Path) -> None:
    by_url = open_store(f"sqlite://{tmp_path / 'a.db'}")
    by_path = open_store(str(tmp_path / "b.db"))
    assert isinstance(by_url, SqliteStore) and isinstance(by_path, SqliteStore)
    assert by_url.path == str(tmp_path / "a.db")
    by_url.close()
    by_path.close()


@pytest.mark.parametrize("bad", ["", "zk://host:2181", "sqlite://", "etcd://", "etcd:///prefix"])
def test_open_store_rejects(bad: str) -> None:
    with pytest.raises(InvalidConfig):
        open_store(bad)


def test_sqlite_creates_private_parent_dir(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "store.db"
    store = SqliteStore(path)
    store.put("k", "1")
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert (path.stat().st_mode & 0o777) == 0o600
    store.close()


def test_sqlite_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore(path) as store:
        rev = store.put("k", "v")
    with SqliteStore(path) as again:
        assert again.get("k").revision == rev  # type: ignore[union-attr]
        assert again.revision() == rev


def test_sqlite_locked_database_is_try_again_later(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path, busy_timeout=0.05, attempts=2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TryAgainLater):
            store.put("k", "1")
        assert store.get("k") is None  # readers are not blocked by a writer
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.put("k", "1")
    store.close()


def test_sqlite_thread_churn_does_not_leak_connections(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    for i in range(30):
        t = threading.Thread(target=store.put, args=(f"k/{i}", "1"))
        t.start()
        t.join()
    assert len(store._pool) <= 8
    assert len(os.listdir(f"/proc/{os.getpid()}/fd")) < 200
    store.close()


def test_sqlite_is_fast(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    store.put("warm", "1")
    n = 300
    start = time.perf_counter()
    for i in range(n):
        store.put(f"k/{i}", '{"id":"x"}')
    put_cost = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for i in range(n):
        store.get(f"k/{i}")
    get_cost = (time.perf_counter() - start) / n
    store.close()
    assert put_cost < 0.001 and get_cost < 0.001, (put_cost, get_cost)


def test_sqlite_store_survives_fork(tmp_path: Path) -> None:
    """A forked child must open its own connections, never reuse the parent's."""
    store = SqliteStore(tmp_path / "store.db")
    store.put("before", "1")
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            store.put("child", "1")
            code = 0 if store.get("before") is not None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get("child") is not None
    store.put("after", "1")
    store.close()
