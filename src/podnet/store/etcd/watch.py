"""watch(): etcd watch streams, kept open between calls, re-opened elsewhere on failure.

A watch is an etcd watch from from_revision + 1. The stream is kept open between calls
on the same prefix, so a watch loop pays no set-up per call. etcd 3.4 delivers history
(a watch starting in the past) from a background loop every 100 ms, and its progress
notifications are unreliable for such watchers, so a watch that starts in the past and
finds nothing waits up to _CATCHUP seconds, even with timeout 0, before it concludes
so. A compacted from_revision raises RevisionCompacted. A stream that breaks is
re-opened on another member from the last revision it delivered: no event is lost or
repeated. Threads watching one prefix share its stream: each event is read once per
store, whoever waits for it.

An empty answer: with timeout 0, the feed had every event up to the cluster's head
(a linearizable read) and none was after from_revision. With a timeout, the feed's
member answered a progress request made after the timeout: every event up to its
revision was delivered. A write the leader acknowledged and that member had not
applied yet then comes with the next call, not this one (a member that far behind is
rare; a watch loop loses nothing). `watch_hint` (Store.watch_hint: the agents' loops)
asks nothing: a kept stream that stayed quiet until the timeout is the answer. An idle
50-node lab's agents made about 300 progress requests a second with watch(); with
watch_hint none (docs/architecture.md, etcd: what the agents' idle CPU did).

A call whose prefix already has a kept stream is served on the caller's own thread
(`Watches.wait_here`): the events the stream holds after from_revision at once, or the
first that arrive before its timeout, waited for on a threading.Condition the reader
task notifies. Only a call that finds no usable stream, or nothing before its timeout
(the progress request), or is due to sweep one of our leases, goes through the loop.
Why: with every call going through the loop, each of an agent's ten watch loops paid
an asyncio task and two thread hand-offs per call, and a 50-node lab's bystander
agents spent most of their CPU there while one node attached pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict, deque
from typing import Any

import grpc
from aetcd import rpc

from podnet.errors import TryAgainLater
from podnet.store.base import DELETE, PUT, Event, RevisionCompacted
from podnet.store.etcd.channel import METADATA, Channel
from podnet.store.etcd.keys import Keyspace
from podnet.store.etcd.leases import Leases
from podnet.store.etcd.loop import Runner
from podnet.store.etcd.operations import Operations

_CATCHUP = 0.3  # etcd 3.4 syncs watchers that start in the past every 100 ms
_MAX_FEEDS = 16  # watch streams kept open between calls (one per prefix)
_KEPT = 10_000  # events a stream keeps for its watchers; older ones are let go
_PUT_EVENT = rpc.Event.PUT


class _Feed:
    """A watch stream on one prefix, kept open between watch() calls and shared by
    the calls on that prefix. A reader task keeps its last _KEPT events and wakes the
    calls waiting on it; `synced` is the revision up to which every event has arrived."""

    def __init__(self, prefix: str, start: int) -> None:
        self.prefix = prefix
        self.start = start
        self.discarded = start - 1  # events up to here are not held (before the start, or let go)
        self.events: deque[Event] = deque()
        self.synced = 0
        self.created_at = 0.0
        self.error: BaseException | None = None
        self.waiters: set[asyncio.Event] = set()  # one per watch() call using this feed
        self.call: Any = None
        self.task: asyncio.Task[None] | None = None
        self.progress_asked = 0.0
        self.progress_answered = 0.0  # when a sound progress answer last came (loop time)
        # held while the reader changes `events` and `discarded`; notified after each
        # response and when the stream ends (callers waiting on their own thread: wait_here)
        self.arrived = threading.Condition(threading.Lock())

    def usable_from(self, from_revision: int) -> bool:
        return self.error is None and self.discarded <= from_revision

    def after(self, revision: int) -> list[Event]:
        """The events held with a revision past `revision`, oldest first."""
        found = []
        for event in reversed(self.events):  # only what is newer: O(new)
            if event.revision <= revision:
                break
            found.append(event)
        found.reverse()
        return found

    def wake(self) -> None:
        for waiter in self.waiters:
            waiter.set()
        with self.arrived:
            self.arrived.notify_all()

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Watches:
    """One store's watch streams, one per prefix (loop thread only). poll: how often a
    watch waiting for a progress answer asks again. A waiting watch otherwise sleeps
    until an event, its deadline or the expiry of one of our leases: an idle agent has
    ten watchers, and waking each every poll cost a 50-node lab a core. steady: the
    store's clock is the wall clock; a clock given by a test may jump, so the expiry
    of our leases is then polled for. batch: how long a watch answered on its caller's
    thread keeps gathering after its first event (the agent's --watch-batch): in a
    50-node lab on 2 CPUs every bystander's loops woke once per commit of every pod ADD
    (store.set_watch_batch)."""

    def __init__(
        self,
        runner: Runner,
        channel: Channel,
        keys: Keyspace,
        leases: Leases,
        ops: Operations,
        poll: float,
        steady: bool = True,
        batch: float = 0.0,
    ) -> None:
        self._runner = runner
        self._channel = channel
        self._keys = keys
        self._leases = leases
        self._ops = ops
        self._poll = poll
        self._steady = steady
        self._batch = batch
        self._feeds: OrderedDict[str, _Feed] = OrderedDict()  # by prefix, least recently used first
        self._waiting: set[asyncio.Event] = set()  # of every watch() call now: woken on close
        self._opening: dict[str, asyncio.Lock] = {}  # by prefix
        self._closing = threading.Event()  # set when the store closes: ends every gathering wait

    async def _open_feed(self, prefix: str, start: int, deadline: float) -> _Feed:
        """A new watch stream from revision start, on the first member that takes it."""
        loop = asyncio.get_running_loop()
        channel = self._channel
        begin, end = self._keys.range(prefix)
        create = rpc.WatchCreateRequest(key=begin, range_end=end, start_revision=max(1, start))
        failures: list[str] = []
        while True:
            reachable = False
            for _ in range(len(channel.conns)):
                conn = channel.conns[channel.current]
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                if not await channel.ready(conn, min(remaining, channel.connect_timeout)):
                    failures.append(f"{conn.target}: unreachable")
                    channel.advance(conn)
                    continue
                reachable = True
                feed = _Feed(prefix, start)
                feed.call = conn.watch.Watch(metadata=METADATA)
                try:
                    await feed.call.write(rpc.WatchRequest(create_request=create))
                    first = await asyncio.wait_for(
                        feed.call.read(), min(remaining, channel.timeout)
                    )
                except (TimeoutError, grpc.aio.AioRpcError) as exc:
                    feed.call.cancel()
                    failures.append(
                        f"{conn.target}: {getattr(exc, 'details', lambda: 'timeout')()}"
                    )
                    channel.advance(conn)
                    continue
                if first is grpc.aio.EOF or not first.created or first.canceled:
                    feed.call.cancel()
                    reason = "closed" if first is grpc.aio.EOF else first.cancel_reason
                    failures.append(f"{conn.target}: watch refused ({reason})")
                    channel.advance(conn)
                    continue
                feed.created_at = loop.time()
                if start > first.header.revision:
                    feed.synced = int(first.header.revision)  # nothing to catch up
                feed.task = loop.create_task(self._pump(feed))
                return feed
            if not reachable or loop.time() >= deadline:
                detail = "; ".join(failures[-len(channel.conns) :])
                raise TryAgainLater("etcd unavailable: no member would take a watch", detail)
            await asyncio.sleep(0.05)

    async def _pump(self, feed: _Feed) -> None:
        """The feed's reader: buffers events, notes how far it is synced."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                resp = await feed.call.read()
                if resp is grpc.aio.EOF:
                    feed.error = ConnectionError("watch stream closed by the member")
                    return
                if resp.canceled:
                    if resp.compact_revision:
                        compacted = int(resp.compact_revision) - 1
                        feed.error = RevisionCompacted(feed.start - 1, compacted)
                        self._ops.compacted = max(self._ops.compacted, compacted)
                    else:
                        feed.error = ConnectionError(f"watch cancelled: {resp.cancel_reason}")
                    return
                if resp.events:
                    new = [
                        Event(
                            PUT if ev.type == _PUT_EVENT else DELETE,
                            self._keys.name(ev.kv.key),
                            ev.kv.value.decode() if ev.type == _PUT_EVENT else None,
                            int(ev.kv.mod_revision),
                        )
                        for ev in resp.events
                        if ev.kv.mod_revision > feed.discarded
                    ]
                    with feed.arrived:  # (callers on their own threads read them: wait_here)
                        feed.events.extend(new)
                        while len(feed.events) > _KEPT:
                            feed.discarded = feed.events.popleft().revision
                    feed.synced = max(feed.synced, int(resp.header.revision))
                elif feed.progress_asked and loop.time() >= feed.created_at + _CATCHUP:
                    # etcd 3.4 answers progress requests even for a watcher still
                    # catching up; one asked for after the catch-up window is sound.
                    feed.synced = max(feed.synced, int(resp.header.revision))
                    feed.progress_answered = loop.time()
                feed.wake()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # any stream failure means: re-open it elsewhere
            feed.error = exc
        finally:  # (every waiter looks at the error)
            feed.wake()

    async def _feed_for(
        self, prefix: str, from_revision: int, old: _Feed | None, limit: float, woken: asyncio.Event
    ) -> _Feed:
        """The stream a watch() from from_revision uses (`woken` joins its waiters): the
        prefix's kept one if it holds everything after from_revision, else a new one
        from there, which is kept from then on (it serves the callers of the old one
        too; that one closes when its last caller is done)."""
        if old is not None:
            error = old.error
            await self._release(old, woken)
            if isinstance(error, RevisionCompacted):
                raise RevisionCompacted(from_revision, error.compacted)
        async with self._opening.setdefault(prefix, asyncio.Lock()):  # callers at once: one opens
            kept = self._feeds.get(prefix)
            if kept is not None and kept.usable_from(from_revision):
                self._feeds.move_to_end(prefix)
            else:
                kept = await self._open_feed(prefix, from_revision + 1, limit)
                replaced = self._feeds.get(prefix)
                self._feeds[prefix] = kept
                if replaced is not None and not replaced.waiters:
                    await replaced.close()
                await self._evict()
            kept.waiters.add(woken)
            return kept

    async def _release(self, feed: _Feed, woken: asyncio.Event) -> None:
        """A watch() is done with the feed: closed if it failed or is no longer kept,
        once nobody uses it."""
        feed.waiters.discard(woken)
        kept = self._feeds.get(feed.prefix) is feed
        if kept and (feed.error is not None or self._runner.closed):
            del self._feeds[feed.prefix]
            kept = False
        if not kept and not feed.waiters:
            await feed.close()

    async def _evict(self) -> None:
        """Close the least recently used streams nobody uses beyond _MAX_FEEDS."""
        idle = [p for p, f in self._feeds.items() if not f.waiters]
        for prefix in idle[: max(0, len(self._feeds) - _MAX_FEEDS)]:
            await self._feeds.pop(prefix).close()

    async def watch(self, prefix: str, from_revision: int, timeout: float,
                    deadline: float | None = None) -> list[Event]:
        """`deadline` (the loop's clock, time.monotonic()): a call wait_here began,
        which keeps the end it was given (a progress request another call made after
        it answers it too)."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + max(0.0, timeout)
        limit = deadline + _CATCHUP + self._channel.timeout
        await self._leases.sweep()
        # Done when nothing came: with no timeout, once the feed has every event up to
        # the cluster's head (a linearizable read); with one, once the feed's member,
        # asked after the timeout, answers that it sent everything it has (no read per
        # call: an agent's ten watch loops made a 50-node lab's etcd serve 600 a second).
        head = await self._ops.head() if timeout <= 0 else None
        asked = 0.0  # when this call asked its member for progress
        woken = asyncio.Event()
        self._waiting.add(woken)
        feed: _Feed | None = None
        try:
            while not self._runner.closed:
                woken.clear()  # before looking: an event from here on ends the wait below
                if feed is None or feed.error is not None:
                    old, feed = feed, None  # released by _feed_for, even if it raises
                    feed = await self._feed_for(prefix, from_revision, old, limit, woken)
                found = feed.after(from_revision)
                if found:
                    return found
                now = loop.time()
                if head is not None:
                    caught_up = feed.synced >= head
                else:
                    caught_up = 0 < asked <= feed.progress_answered
                if (now >= deadline and caught_up) or now >= limit:
                    return []
                asking = now >= max(deadline, feed.created_at + _CATCHUP)
                if asking and now - feed.progress_asked > self._poll:
                    feed.progress_asked = now
                    await feed.call.write(
                        rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
                    )
                if asking and not asked and feed.progress_asked >= deadline:
                    asked = feed.progress_asked  # asked after our timeout, by us or another call
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(woken.wait(), self._wake_in(feed, now, deadline, limit, asking))
                await self._leases.sweep()  # our expired leases show up as deletes while we wait
            return []
        finally:
            self._waiting.discard(woken)
            if feed is not None:
                await self._release(feed, woken)

    def wait_here(self, prefix: str, from_revision: int, deadline: float,
                  settle: bool = False) -> list[Event] | None:
        """watch() on the caller's thread (module docstring), until `deadline`
        (time.monotonic(), the loop's clock): the kept stream's events after
        from_revision, at once or as they arrive. None: the loop must answer (no usable
        stream, nothing before the deadline, one of our leases due to be swept, a test
        clock, a closed store); the caller then asks it with the time left. `settle`
        (watch_hint): nothing before the deadline is the answer, [] (no progress
        request: the stream's silence is enough for a loop that watches again)."""
        feed = self._feeds.get(prefix)
        if feed is None or not self._steady:
            return None
        with feed.arrived:
            found = self._first_arrivals(feed, from_revision, deadline, settle)
        if found and self._batch > 0:
            return self._gathered(feed, from_revision, found, deadline)
        return found

    def _first_arrivals(self, feed: _Feed, from_revision: int, deadline: float, settle: bool) -> list[Event] | None:
        """wait_here's wait for the first events after from_revision (the caller holds
        feed.arrived)."""
        while not self._runner.closed and feed.usable_from(from_revision):
            expiry = self._leases.expiry_from_any_thread()
            if expiry is not None and expiry <= 0:
                return None  # the loop sweeps it first (its keys' deletes come with this call)
            found = feed.after(from_revision)
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0 and settle:
                return []
            if expiry is not None:
                left = min(left, expiry)
            if left <= 0:
                return None
            feed.arrived.wait(left)
        return None

    def _gathered(self, feed: _Feed, from_revision: int, found: list[Event], deadline: float) -> list[Event]:
        """`found` and whatever else arrives within the batch, never past the call's
        deadline. The caller sleeps through the batch: what arrives meanwhile does not
        wake it, only the store's closing does (woken by every arrival, each of a 50-node
        lab's bystanders woke every gathering loop once per commit of a pod ADD, only to
        wait again). A stream that fails meanwhile: what was found (the next call
        resumes after it)."""
        left = min(self._batch, deadline - time.monotonic())
        if left > 0 and not self._runner.closed:
            self._closing.wait(left)
        with feed.arrived:
            return (feed.after(from_revision) or found) if feed.usable_from(from_revision) else found

    def _wake_in(self, feed: _Feed, now: float, deadline: float, limit: float, asking: bool) -> float:
        """How long a waiting watch may sleep if no event comes: until its deadline;
        past it, until the catch-up window closes, or a poll while it waits for a
        progress answer; never past the expiry of one of our leases."""
        if now < deadline:
            until = deadline
        elif asking:
            until = min(limit, now + self._poll)
        else:
            until = min(limit, feed.created_at + _CATCHUP)
        expiry = self._leases.until_next_expiry() if self._steady else self._poll
        if expiry is not None:
            until = min(until, now + max(0.0, expiry))
        return max(0.001, until - now)

    def wake_all(self) -> None:
        """Wake every waiting watch: the store is closing, and each returns."""
        self._closing.set()
        for waiter in self._waiting:
            waiter.set()
        for feed in list(self._feeds.values()):  # and the callers waiting on their own threads
            feed.wake()

    async def close(self) -> None:
        feeds, self._feeds = list(self._feeds.values()), OrderedDict()
        for feed in feeds:
            await feed.close()
