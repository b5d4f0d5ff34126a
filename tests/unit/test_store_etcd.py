"""EtcdStore beyond the shared contract (test_store_contract.py runs that too):
URLs and prefixes, leases on the server's clock, optimistic transactions between
clients, kept watch streams, and failover between the members of a real cluster."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("aetcd", reason="the etcd client is not installed (pip install aetcd)")
pytest_plugins = ["etcd_fixture"]  # the etcd_server and etcd_cluster3 fixtures

from test_store_contract import FakeClock  # noqa: E402

from podnet.errors import InvalidConfig, StoreError, TryAgainLater  # noqa: E402
from podnet.store import open_store  # noqa: E402
from podnet.store.base import DELETE, PUT  # noqa: E402
from podnet.store.etcd import EtcdStore, parse_endpoints  # noqa: E402

if TYPE_CHECKING:
    from etcd_fixture import EtcdCluster


@pytest.fixture
def prefix() -> str:
    return f"/pn-t-{secrets.token_hex(4)}/"


@pytest.fixture
def store(etcd_server: EtcdCluster, prefix: str) -> Iterator[EtcdStore]:
    with EtcdStore(etcd_server.endpoints, prefix) as made:
        yield made


@pytest.fixture
def other(etcd_server: EtcdCluster, prefix: str) -> Iterator[EtcdStore]:
    """A second client on the same keys: another agent, as far as etcd can tell."""
    with EtcdStore(etcd_server.endpoints, prefix) as made:
        yield made


# -- URLs and endpoints ---------------------------------------------------------------


def test_open_store_etcd_url() -> None:
    store = open_store("etcd://127.0.0.1:1,[::1]:2/a/b")
    assert isinstance(store, EtcdStore)
    assert (store.endpoints, store.prefix) == (["127.0.0.1:1", "[::1]:2"], "/a/b/")
    store.close()
    store = open_store("etcd://localhost", timeout=1.0)
    assert (store.endpoints, store.prefix) == (["localhost:2379"], "/podnet/")
    store.close()


def test_parse_endpoints() -> None:
    assert parse_endpoints("http://10.0.0.1:2380, h:1") == ["10.0.0.1:2380", "h:1"]
    assert parse_endpoints(["::1", "[fe80::1]:7"]) == ["[::1]:2379", "[fe80::1]:7"]
    for bad in ["https://h:2379", "h:99999", "h:x", "", "h:1/path"]:
        with pytest.raises(InvalidConfig):
            parse_endpoints(bad)


# -- keys, prefixes, leases ---------------------------------------------------------------


def test_prefixes_do_not_see_each_other(etcd_server: EtcdCluster) -> None:
    with (
        EtcdStore(etcd_server.endpoints, "/pn-t-a/") as a,
        EtcdStore(etcd_server.endpoints, "/pn-t-ab/") as ab,
    ):
        start = a.revision()
        a.put("k", "a")
        ab.put("k", "ab")
        assert [(e.key, e.value) for e in a.list("")] == [("k", "a")]
        assert ab.delete_prefix("") == 1
        assert a.get("k").value == "a"  # type: ignore[union-attr]
        assert [(e.kind, e.key) for e in a.watch("", start, 0)] == [(PUT, "k")]
        a.delete_prefix("")


def test_holder_expires_its_lease_promptly(store: EtcdStore) -> None:
    """The holder judges its own lease by its clock: the delete comes at the TTL,
    not when the server's lease loop gets to it."""
    rev = store.put("lease", "1", ttl=1)
    start = time.monotonic()
    events = store.watch("", rev, 5)
    elapsed = time.monotonic() - start
    assert [(e.kind, e.key) for e in events] == [(DELETE, "lease")]
    assert 0.9 < elapsed < 1.4, elapsed  # the server alone: 1.0 + up to 0.5 s


def test_server_expires_the_lease_of_a_dead_holder(
    etcd_server: EtcdCluster, prefix: str, other: EtcdStore
) -> None:
    holder = EtcdStore(etcd_server.endpoints, prefix)
    rev = holder.put("lease", "1", ttl=1)
    holder.close()  # gone without revoking: only the server can expire it now
    seen = other.get("lease")
    assert seen is not None and seen.expires_at is not None
    assert seen.expires_at <= time.time() + 1.01
    start = time.monotonic()
    events = other.watch("", rev, 5)
    assert [(e.kind, e.key) for e in events] == [(DELETE, "lease")]
    assert time.monotonic() - start < 3
    assert other.get("lease") is None


def test_foreign_leases_are_looked_up_once_per_ttl_not_per_listing(
    etcd_server: EtcdCluster, prefix: str, other: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing keys that other clients lease (every node's block claim) asks the server
    for each lease's TTL once, not on every listing; the expiry it reports is never
    later than the server's, and a lease nearly run out is looked up again."""
    clock = FakeClock()
    with EtcdStore(etcd_server.endpoints, prefix, clock=clock) as reader:
        for i in range(5):
            other.put(f"claims/{i}", "n", ttl=30)
        asked: list[int] = []
        real = reader._txs._leases.time_to_live  # the reader's Leases (one per store)

        async def counted(lease_id: int) -> int:
            asked.append(lease_id)
            return await real(lease_id)

        monkeypatch.setattr(reader._txs._leases, "time_to_live", counted)
        first = reader.list("claims/")
        assert len(first) == 5 and len(asked) == 5
        second = reader.list("claims/")
        with reader.transaction():
            reader.list("claims/")
        assert len(asked) == 5  # reused
        assert [e.expires_at for e in second] == [e.expires_at for e in first]
        assert all(e.expires_at is not None and e.expires_at <= clock() + 30 for e in second)
        clock.advance(29.5)  # nearly run out by the reader's clock: asked again
        assert len(reader.list("claims/")) == 5
        assert len(asked) == 10


def test_a_hint_listing_asks_nothing_about_other_clients_leases(
    etcd_server: EtcdCluster, prefix: str, other: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """list_hint (an ADD's survey of the block claims, the node loop's claims) lists
    the same keys without a LeaseTimeToLive per foreign lease: their expiry is the
    one known already, else None; the reader's own leases keep theirs."""
    with EtcdStore(etcd_server.endpoints, prefix) as reader:
        for i in range(3):
            other.put(f"claims/{i}", "n", ttl=30)
        reader.put("claims/mine", "m", ttl=30)
        other.put("claims/plain", "p")
        asked = _count(monkeypatch, reader._txs._leases, "time_to_live")
        hinted = reader.list_hint("claims/")
        assert [e.key for e in hinted] == [f"claims/{i}" for i in range(3)] + ["claims/mine", "claims/plain"]
        listed, revision = reader.snapshot_hint("claims/")
        assert [e.key for e in listed] == [e.key for e in hinted] and revision == reader.revision()
        assert asked == []
        assert [e.expires_at for e in hinted if e.key[-1].isdigit()] == [None] * 3
        assert hinted[3].expires_at is not None and hinted[4].expires_at is None
        full = reader.list("claims/")
        assert len(asked) == 3 and [e.key for e in full] == [e.key for e in hinted]
        assert [e.expires_at for e in reader.list_hint("claims/")] == [e.expires_at for e in full]  # known now
        with reader.transaction():
            assert [e.key for e in reader.list_hint("claims/")] == [e.key for e in full]
        other.delete("claims/0")
        assert "claims/0" not in {e.key for e in reader.list_hint("claims/")}


def test_lease_renewed_by_another_client_is_left_alone(
    etcd_server: EtcdCluster, prefix: str, other: EtcdStore
) -> None:
    """The holder's clock says expired, but someone kept the lease alive on the
    server since: the holder must not revoke it under them."""
    clock = FakeClock()
    with EtcdStore(etcd_server.endpoints, prefix, clock=clock) as holder:
        rev = holder.put("lease", "1", ttl=10)
        time.sleep(1.6)  # the server reports whole seconds: renew visibly later
        assert other.refresh("lease", 10) is True
        clock.advance(11)
        entry = holder.get("lease")
        assert entry is not None and entry.revision == rev
        assert entry.expires_at is not None and entry.expires_at > clock()


def test_refresh_with_another_ttl_or_none_rewrites_the_key(prefix: str, etcd_server) -> None:
    """etcd cannot change a lease's TTL nor attach one without a write."""
    clock = FakeClock()
    with EtcdStore(etcd_server.endpoints, prefix, clock=clock) as store:
        rev = store.put("k", "v", ttl=10)
        assert store.refresh("k", 30) is True
        entry = store.get("k")
        assert entry is not None and entry.value == "v" and entry.revision > rev
        assert entry.expires_at == clock() + 30
        clock.advance(20)
        assert store.get("k") is not None
        store.put("plain", "v")
        assert store.refresh("plain", 5) is True
        clock.advance(6)
        assert store.get("plain") is None


# -- transactions ----------------------------------------------------------------------


def test_transaction_conflict_raises_and_writes_nothing(store: EtcdStore, other: EtcdStore) -> None:
    store.put("x", "1")
    with pytest.raises(TryAgainLater, match="conflict"), store.transaction():
        seen = store.get("x")
        other.put("x", "2")
        store.put("copy", seen.value)  # type: ignore[union-attr]
    assert store.get("copy") is None
    assert store.get("x").value == "2"  # type: ignore[union-attr]


def test_transaction_reads_one_snapshot(store: EtcdStore, other: EtcdStore) -> None:
    store.put("x", "1")
    with store.transaction():
        before = store.revision()
        assert store.get("x").value == "1"  # type: ignore[union-attr]
        other.put("x", "2")
        other.put("y", "2")
        assert store.get("x").value == "1"  # type: ignore[union-attr]
        assert [e.key for e in store.list("")] == ["x"]
        assert store.revision() == before
    # Nothing was written, so nothing had to be validated: no conflict.
    assert store.get("x").value == "2"  # type: ignore[union-attr]


@pytest.mark.parametrize("change", ["create", "delete"])
def test_transaction_listing_is_validated(store: EtcdStore, other: EtcdStore, change: str) -> None:
    store.put("ip/1", "a")
    with pytest.raises(TryAgainLater), store.transaction():
        taken = {e.key for e in store.list("ip/")}
        if change == "create":
            other.put("ip/2", "b")
        else:
            other.delete("ip/1")
        store.put("ip/3", str(sorted(taken)))
    assert store.get("ip/3") is None


def test_transaction_commits_at_one_revision(store: EtcdStore) -> None:
    store.put("gone", "0")
    start = store.revision()
    with store.transaction():
        provisional = store.put("a", "1")
        store.put("b", "2", ttl=30)
        store.delete("gone")
    events = store.watch("", start, 0)
    assert [(e.kind, e.key) for e in events] == [(PUT, "a"), (PUT, "b"), (DELETE, "gone")]
    assert {e.revision for e in events} == {provisional}
    assert store.get("b").expires_at is not None  # type: ignore[union-attr]


def test_transaction_over_the_op_limit_is_refused(etcd_server: EtcdCluster, prefix: str) -> None:
    with EtcdStore(etcd_server.endpoints, prefix, max_txn_ops=3) as store:
        with pytest.raises(StoreError, match="max-txn-ops"), store.transaction():
            for i in range(4):
                store.put(f"k/{i}", "1")
        assert store.list("") == []


def test_a_big_labs_pods_register_within_etcds_transaction_limit(store: EtcdStore) -> None:
    """`lab up --store etcd` of 50 x 20 pods failed: it registered 1,052 records in one
    transaction, and etcd takes 128 operations."""
    from podnet import keys
    from podnet.model.policy import PodRecord
    from podnet.objects.store import register_pods

    pods = [PodRecord(f"ns{i % 4}", f"p{i}", labels={"app": "x"}) for i in range(300)]
    register_pods(store, pods, {f"ns{i}": {"team": str(i)} for i in range(4)})
    register_pods(store, pods[:50], {})  # again: nothing to write, nothing refused
    assert len(store.list(keys.PODS)) == 300 and len(store.list(keys.NAMESPACES)) == 4


# -- watch -----------------------------------------------------------------------------


def test_watch_loop_keeps_its_stream(store: EtcdStore) -> None:
    """A loop watching from where it left off reuses one stream: no set-up and no
    history catch-up (~100 ms in etcd 3.4) per call."""
    seen = store.revision()
    start = time.monotonic()
    for i in range(20):
        rev = store.put(f"w/{i}", str(i))
        events = store.watch("w/", seen, 2)
        assert events[-1].revision == rev
        seen = rev
    assert time.monotonic() - start < 1.0


def _count(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    """Count the calls of an async method of one of the store's parts."""
    calls: list[int] = []
    real = getattr(owner, name)

    async def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_threads_watching_one_prefix_share_its_stream(
    store: EtcdStore, other: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent's node, mesh and DNS loops all watch "": they share one stream across
    their calls (each event is read once), instead of closing each other's and
    opening one per call."""
    opened = _count(monkeypatch, store._watches, "_open_feed")
    start = store.revision()
    got: dict[int, list[str]] = {0: [], 1: [], 2: []}
    barrier = threading.Barrier(4)

    def loop(me: int) -> None:
        seen = start
        barrier.wait()
        while len(got[me]) < 12:
            events = store.watch("", seen, 2)
            got[me] += [e.key for e in events]
            seen = max([seen, *(e.revision for e in events)])

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for i in range(12):
        other.put(f"k/{i:02d}", "v")
        time.sleep(0.02)
    for thread in threads:
        thread.join(20)
    assert all(v == [f"k/{i:02d}" for i in range(12)] for v in got.values()), got
    assert len(opened) == 1  # one stream, kept for every call of the three


def test_a_waiting_watch_sleeps_until_an_event_or_its_timeout(
    store: EtcdStore, other: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No poll while nothing happens (each of 50 agents' ten loops woke 20 times a
    second), and no read of the cluster's head per timed watch: the member's progress
    answer after the timeout ends it. A watch with no timeout still reads the head."""
    rev = store.put("x", "1")
    store.watch("", rev, 0.1)  # the stream is open and caught up
    wakes = _count(monkeypatch, store._watches._leases, "sweep")
    heads = _count(monkeypatch, store._watches._ops, "head")
    start = time.monotonic()
    assert store.watch("", rev, 1.0) == []
    assert 1.0 <= time.monotonic() - start < 1.6
    assert len(wakes) <= 4, len(wakes)  # at the start, the timeout, the progress answer
    assert heads == []
    timer = threading.Timer(0.3, lambda: other.put("y", "2"))
    timer.start()
    events = store.watch("", rev, 5)
    timer.join()
    assert [e.key for e in events] == ["y"]
    assert store.watch("", events[-1].revision, 0) == []
    assert len(heads) == 1


def test_calls_that_time_out_together_share_a_progress_answer(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three loops on one prefix's stream, nothing happening: at their common timeout
    one progress request answers them all (each used to wait its turn to ask)."""
    from podnet.store.etcd import watch as watch_module

    asked: list[int] = []
    real = watch_module.rpc.WatchProgressRequest
    monkeypatch.setattr(watch_module.rpc, "WatchProgressRequest", lambda: asked.append(1) or real())
    rev = store.put("x", "1")
    store.watch("", rev, 0.1)  # the stream is open and caught up
    asked.clear()
    barrier = threading.Barrier(3)
    took: list[float] = []

    def loop() -> None:
        barrier.wait()
        for _ in range(4):
            start = time.monotonic()
            assert store.watch("", rev, 0.3) == []
            took.append(time.monotonic() - start)

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(took) == 12 and max(took) < 1.0, took
    assert len(asked) <= 8, len(asked)  # about one per round of the three


def test_a_waiting_watch_wakes_when_our_lease_runs_out(store: EtcdStore) -> None:
    """The holder's own lease ends at its TTL by the store's clock: the waiting watch
    wakes for it, although nothing else happens."""
    rev = store.put("held", "1", ttl=2)
    start = time.monotonic()
    events = store.watch("", rev, 10)
    assert [(e.kind, e.key) for e in events] == [(DELETE, "held")]
    assert 1.9 < time.monotonic() - start < 2.5


def test_close_releases_a_blocked_watch(etcd_server: EtcdCluster, prefix: str) -> None:
    """An agent shutting down closes the store while its watcher thread waits."""
    store = EtcdStore(etcd_server.endpoints, prefix)
    rev = store.revision()
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(store.watch("", rev, 30)))
    thread.start()
    time.sleep(0.2)
    start = time.monotonic()
    store.close()
    thread.join(5)
    assert not thread.is_alive() and result == [[]]
    assert time.monotonic() - start < 1.0
    with pytest.raises(StoreError):
        store.get("k")


# -- failover --------------------------------------------------------------------------


def _follower_first(cluster: EtcdCluster) -> list[str]:
    leader = cluster.leader()
    order = [i for i in range(3) if i != leader] + [leader]
    return [cluster.members[i].endpoint for i in order]


def _retrying(action: callable, budget: float = 5.0) -> tuple[object, int]:  # type: ignore[valid-type]
    """What a caller does with TryAgainLater: try again. Returns (result, retries)."""
    deadline = time.monotonic() + budget
    retries = 0
    while True:
        try:
            return action(), retries
        except TryAgainLater:
            retries += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_losing_a_follower_loses_nothing(etcd_cluster3: EtcdCluster, prefix: str) -> None:
    cluster = etcd_cluster3
    endpoints = _follower_first(cluster)
    with EtcdStore(endpoints, prefix) as store:
        acked = {f"k/{i}": store.put(f"k/{i}", str(i)) for i in range(10)}
        assert store.endpoint == endpoints[0]
        cluster.stop_member([m.endpoint for m in cluster.members].index(endpoints[0]))
        start = time.monotonic()
        acked["k/10"] = store.put("k/10", "10")  # no TryAgainLater: the member is just gone
        first = time.monotonic() - start
        for i in range(11, 20):
            acked[f"k/{i}"] = store.put(f"k/{i}", str(i))
        assert store.compare_and_put("cas", "1", 0) is not None
        assert store.endpoint != endpoints[0]
    assert first < 0.5, first
    with EtcdStore(endpoints[1:], prefix) as check:
        assert {e.key: e.revision for e in check.list("k/")} == acked


def test_losing_the_leader_loses_no_acknowledged_write(
    etcd_cluster3: EtcdCluster, prefix: str
) -> None:
    cluster = etcd_cluster3
    endpoints = list(reversed(_follower_first(cluster)))  # the leader first
    watcher = EtcdStore(endpoints, prefix)  # its watch stream dies with the leader too
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        rev = 0
        while not stop.is_set():
            try:
                events = watcher.watch("k/", rev, 0.2)
            except TryAgainLater:
                continue
            seen.extend(e.key for e in events)
            rev = events[-1].revision if events else rev

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        with EtcdStore(endpoints, prefix) as store:
            acked = {f"k/{i}": store.put(f"k/{i}", str(i)) for i in range(5)}
            cluster.stop_member([m.endpoint for m in cluster.members].index(endpoints[0]))
            start = time.monotonic()
            rev, retries = _retrying(lambda: store.put("k/5", "5"))
            recovered = time.monotonic() - start
            acked["k/5"] = rev  # type: ignore[assignment]
            for i in range(6, 12):
                acked[f"k/{i}"] = _retrying(lambda i=i: store.put(f"k/{i}", str(i)))[0]  # type: ignore[assignment]
            cas, _ = _retrying(lambda: store.compare_and_put("k/cas", "1", 0))
            assert cas is not None
            acked["k/cas"] = cas  # type: ignore[assignment]
        assert recovered < 3.0, (recovered, retries)
        with EtcdStore(endpoints[1:], prefix) as check:
            assert {e.key: e.revision for e in check.list("k/")} == acked
        deadline = time.monotonic() + 5
        while len(seen) < len(acked) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == sorted(acked, key=acked.__getitem__)  # each once, in order
        assert watcher.endpoint != endpoints[0]
    finally:
        stop.set()
        thread.join()
        watcher.close()


def test_all_members_down_then_back(etcd_cluster3: EtcdCluster, prefix: str) -> None:
    cluster = etcd_cluster3
    with EtcdStore(cluster.endpoints, prefix) as store:
        store.put("before", "1")
        cluster.stop()
        for action in (
            lambda: store.put("k", "1"),
            lambda: store.get("before"),
            lambda: store.watch("", 0, 1),
        ):
            start = time.monotonic()
            with pytest.raises(TryAgainLater, match="unavailable"):
                action()
            assert time.monotonic() - start < 0.5  # every member refuses: no waiting
        for index in range(3):
            cluster.start_member(index, wait=False)
        cluster.wait_healthy(range(3))
        start = time.monotonic()
        _, retries = _retrying(lambda: store.put("after", "1"))
        assert time.monotonic() - start < 2.0
        assert store.get("before").value == "1"  # type: ignore[union-attr]
        assert retries <= 2


def test_silent_endpoints_cost_connect_timeout(etcd_server: EtcdCluster, prefix: str) -> None:
    """A member that accepts TCP but never answers (hung, or a black hole) is given
    connect_timeout, then skipped; with nothing else, TryAgainLater within timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mute = f"127.0.0.1:{silent.getsockname()[1]}"
        with EtcdStore([mute, *etcd_server.endpoints], prefix, connect_timeout=0.3) as store:
            start = time.monotonic()
            store.put("k", "1")
            assert 0.25 < time.monotonic() - start < 1.0
            start = time.monotonic()
            store.put("k", "2")  # it stays with the member that answered
            assert time.monotonic() - start < 0.25
        with EtcdStore([mute], prefix, timeout=1.0, connect_timeout=0.3) as alone:
            start = time.monotonic()
            with pytest.raises(TryAgainLater):
                alone.get("k")
            assert time.monotonic() - start < 1.5


def test_a_watch_on_an_open_stream_is_answered_on_the_callers_thread(
    store: EtcdStore, other: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a prefix's stream is open, a watch gets what it holds, or waits for what
    comes, without a hop to the loop thread (each call cost an asyncio task and two
    thread hand-offs: a 50-node etcd lab's bystander agents spent most of their CPU
    there). What it returns is what the loop's way returns; a timeout with nothing
    still goes to the loop (the progress request), and timeout 0 too (the head)."""
    rev = store.put("x", "1")
    store.watch("", rev, 0.1)  # the stream is open and caught up
    via_loop = _count(monkeypatch, store._watches, "watch")
    for i in range(5):
        other.put(f"k/{i}", "v")
    seen: list[str] = []
    at = rev
    while len(seen) < 5:
        events = store.watch("", at, 5)
        seen += [e.key for e in events]
        at = events[-1].revision
    assert seen == [f"k/{i}" for i in range(5)]
    timer = threading.Timer(0.3, lambda: other.put("y", "2"))
    timer.start()
    events = store.watch("", at, 5)  # waits on this thread, woken by the stream's reader
    timer.join()
    assert [e.key for e in events] == ["y"]
    assert via_loop == []
    assert store.watch("", events[-1].revision, 0.2) == []
    assert store.watch("", events[-1].revision, 0) == []
    assert len(via_loop) == 2


def test_closing_the_store_wakes_a_watch_waiting_on_its_own_thread(store: EtcdStore) -> None:
    rev = store.put("x", "1")
    store.watch("", rev, 0.1)
    done: list[float] = []

    def wait() -> None:
        start = time.monotonic()
        with contextlib.suppress(StoreError):
            store.watch("", rev, 30)
        done.append(time.monotonic() - start)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    store.close()
    thread.join(10)
    assert done and done[0] < 5, done


def test_reads_together_are_one_hand_off_to_the_loop(store: EtcdStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ADD's survey (the network's addresses, its round-robin mark, the block
    claims) was three round trips one after another; now its requests go at once."""
    store.put("ipam/a", "1")
    store.put("blocks/b", "2")
    runs: list[object] = []
    real = store._runner.run
    monkeypatch.setattr(store._runner, "run", lambda fn, *a, **k: runs.append(fn) or real(fn, *a, **k))
    found = store.read_together([("list", "ipam/"), ("get", "last/0"), ("list_hint", "blocks/")])
    assert [[e.key for e in found[0]], found[1], [e.key for e in found[2]]] == [["ipam/a"], None, ["blocks/b"]]
    assert len(runs) == 1


def _count_hand_offs(store: EtcdStore, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    runs: list[object] = []
    real = store._runner.run
    monkeypatch.setattr(store._runner, "run", lambda fn, *a, **k: runs.append(fn) or real(fn, *a, **k))
    return runs


def test_a_write_only_transaction_is_one_hand_off(store: EtcdStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block sweeps our leases only when one is due, and takes its snapshot with its
    first read, not before a write: a block that only writes was three round trips
    (sweep, snapshot, commit), each waiting for a thread switch on a crowded node."""
    store.put("held", "x", ttl=30)  # a lease of ours, not due
    start = store.revision()
    runs = _count_hand_offs(store, monkeypatch)
    with store.transaction():
        first = store.put("a", "1")
        store.put("b", "2")
    assert len(runs) == 1
    events = store.watch("", start, 0)
    assert [(e.kind, e.key) for e in events] == [(PUT, "a"), (PUT, "b")]
    assert {e.revision for e in events} == {first}  # the provisional revision, nobody else writing


def test_a_due_lease_is_still_swept_by_a_transaction(prefix: str, etcd_server: EtcdCluster) -> None:
    clock = FakeClock()
    with EtcdStore(etcd_server.endpoints, prefix, clock=clock) as store:
        store.put("short", "x", ttl=5)
        start = store.revision()
        clock.advance(6)
        with store.transaction():
            store.put("a", "1")
        assert [(e.kind, e.key) for e in store.watch("", start, 0)] == [(DELETE, "short"), (PUT, "a")]


def test_reads_together_in_a_transaction_are_one_hand_off_and_checked_at_commit(
    store: EtcdStore, other: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("ip/1", "a")
    store.put("claim", "n0")
    runs = _count_hand_offs(store, monkeypatch)
    with store.transaction():
        store.put("mine", "x")
        found = store.read_together([("get", "ip/2"), ("get", "claim"), ("list", "ip/"), ("get", "mine")])
        assert found[0] is None and found[1].value == "n0" and found[3].value == "x"  # type: ignore[union-attr]
        assert [e.key for e in found[2]] == ["ip/1"]
        assert store.get("claim").value == "n0"  # type: ignore[union-attr]  # read already: no round trip
        store.put("ip/2", "b")
    assert len(runs) == 2  # the reads, the commit
    for change in (lambda: other.put("claim", "n1"), lambda: other.put("ip/3", "c")):
        with pytest.raises(TryAgainLater), store.transaction():
            store.read_together([("get", "claim"), ("list", "ip/")])
            change()
            store.put("out", "y")
        assert store.get("out") is None


def test_a_hint_watch_ends_quiet_on_its_own_thread(store: EtcdStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """watch_hint: a loop that watches again anyway takes the kept stream's silence as
    the answer, with no progress request through the loop (an idle 50-node lab's
    agents asked 300 a second); what arrives meanwhile is still returned."""
    start = store.revision()
    assert store.watch("", start, 0.05) == []  # opens the kept stream
    runs = _count_hand_offs(store, monkeypatch)
    began = time.monotonic()
    assert store.watch_hint("", start, 0.2) == []
    assert time.monotonic() - began >= 0.19
    assert runs == []
    threading.Timer(0.1, lambda: store.put("k", "v")).start()
    found = store.watch_hint("", start, 5.0)
    assert [(e.kind, e.key) for e in found] == [(PUT, "k")]


def test_the_services_cache_lists_node_leases_as_hints(
    etcd_server: EtcdCluster, prefix: str, other: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every agent's services loop relists the node leases every resync: asking the
    server about each other node's lease was 49 LeaseTimeToLive calls per agent per
    resync in a 50-node lab. A lease's end reaches the cache as a delete event."""
    from podnet import keys
    from podnet.services.watched import WatchedObjects

    with EtcdStore(etcd_server.endpoints, prefix) as reader:
        for name in ("n1", "n2", "n3"):
            other.put(keys.node(name), "{}", ttl=30)
        asked = _count(monkeypatch, reader._txs._leases, "time_to_live")
        cache = WatchedObjects(track_nodes=True)
        revision = cache.relist(reader)
        assert cache.live_nodes == {"n1", "n2", "n3"} and asked == []
        other.delete(keys.node("n2"))
        cache.feed(reader.watch("", revision, 5))
        assert cache.live_nodes == {"n1", "n3"}


@pytest.mark.parametrize(("batch", "expected"), [(0.0, ["a"]), (1.5, ["a", "b"])])
def test_a_batched_watch_gathers_what_arrives_within_its_batch(
    etcd_server: EtcdCluster, prefix: str, other: EtcdStore, batch: float, expected: list[str]
) -> None:
    """With a batch (the agent's --watch-batch), a watch answered on its own thread keeps
    gathering after its first event: in a 50-node lab on 2 CPUs every bystander's loops
    woke once per commit of every pod ADD. Without one it answers at the first event."""
    with EtcdStore(etcd_server.endpoints, prefix, watch_batch=batch) as store:
        rev = store.put("x", "1")
        store.watch("", rev, 0.1)  # the stream is open and caught up
        events = _watch_while_putting(store, rev, other, [(0.1, "a"), (0.8, "b")])
        assert [e.key for e in events] == expected


def _watch_while_putting(store: EtcdStore, rev: int, other: EtcdStore, puts: list[tuple[float, str]]) -> list:
    """store.watch("", rev, 10) while `other` puts each key after its delay (seconds)."""
    timers = [threading.Timer(delay, lambda k=key: other.put(k, "1")) for delay, key in puts]
    for timer in timers:
        timer.start()
    try:
        return store.watch("", rev, 10)
    finally:
        for timer in timers:
            timer.join()


def test_a_batched_watch_still_returns_by_its_deadline(etcd_server: EtcdCluster, prefix: str, other: EtcdStore) -> None:
    with EtcdStore(etcd_server.endpoints, prefix, watch_batch=5.0) as store:
        rev = store.put("x", "1")
        store.watch("", rev, 0.1)
        timer = threading.Timer(0.1, lambda: other.put("a", "1"))
        timer.start()
        start = time.monotonic()
        events = store.watch("", rev, 0.6)
        took = time.monotonic() - start
        timer.join()
        assert [e.key for e in events] == ["a"]
        assert took < 3.0, took  # the deadline (0.6 s), not the batch (5 s)


def test_a_gathering_watch_sleeps_through_the_arrivals_of_its_batch(
    etcd_server: EtcdCluster, prefix: str, other: EtcdStore
) -> None:
    """Once a batched watch has its first event it sleeps until the batch ends: what
    arrives meanwhile is gathered without waking it (woken by each arrival, every
    gathering loop of a 50-node lab's bystanders woke once per commit of a pod ADD)."""
    with EtcdStore(etcd_server.endpoints, prefix, watch_batch=1.5) as store:
        rev = store.put("x", "1")
        store.watch("", rev, 0.1)  # the stream is open and caught up
        feed = store._watches._feeds[""]
        plain_wait, woken_holding_events = feed.arrived.wait, []

        def counting_wait(timeout: float | None = None) -> bool:
            if feed.after(rev):  # (the caller holds the lock)
                woken_holding_events.append(timeout)
            return plain_wait(timeout)

        feed.arrived.wait = counting_wait  # type: ignore[method-assign]
        events = _watch_while_putting(store, rev, other, [(0.1, "a"), (0.4, "b"), (0.7, "c"), (1.0, "d")])
        assert [e.key for e in events] == ["a", "b", "c", "d"]
        assert woken_holding_events == []


def test_closing_the_store_ends_a_gathering_watch(etcd_server: EtcdCluster, prefix: str, other: EtcdStore) -> None:
    store = EtcdStore(etcd_server.endpoints, prefix, watch_batch=30.0)
    try:
        rev = store.put("x", "1")
        store.watch("", rev, 0.1)
        answer: list[list[str]] = []
        watcher = threading.Thread(target=lambda: answer.append([e.key for e in store.watch("", rev, 60)]))
        watcher.start()
        other.put("a", "1")
        time.sleep(0.3)  # the watch has its event and gathers
        store.close()
        watcher.join(timeout=10)
        assert not watcher.is_alive()  # the closing, not the batch (30 s) or the deadline (60 s)
        assert answer == [["a"]]
    finally:
        store.close()


def test_stores_opened_after_set_watch_batch_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from podnet import store as store_module

    monkeypatch.setattr(store_module, "_watch_batch", None)
    with open_store("etcd://127.0.0.1:1/a") as before:
        assert before._watches._batch == 0.0
    store_module.set_watch_batch(0.3)
    with open_store("etcd://127.0.0.1:1/a") as after, open_store("etcd://127.0.0.1:1/a", watch_batch=0.1) as explicit:
        assert (after._watches._batch, explicit._watches._batch) == (0.3, 0.1)
