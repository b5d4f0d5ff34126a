"""watch(): etcd watch streams, kept open between calls, re-opened elsewhere on failure.

A watch is an etcd watch from from_revision + 1. The stream is kept open between calls
on the same prefix, so a watch loop pays no set-up per call. etcd 3.4 delivers history
(a watch starting in the past) from a background loop every 100 ms, and its progress
notifications are unreliable for such watchers, so a watch that starts in the past and
finds nothing waits up to _CATCHUP seconds, even with timeout 0, before it concludes
so. A compacted from_revision raises RevisionCompacted. A stream that breaks is
re-opened on another member from the last revision it delivered: no event is lost or
repeated. Threads watching one prefix at once each get a stream of their own.

An empty answer: with timeout 0, the feed had every event up to the cluster's head
(a linearizable read) and none was after from_revision. With a timeout, the feed's
member answered a progress request made after the timeout: every event up to its
revision was delivered. A write the leader acknowledged and that member had not
applied yet then comes with the next call, not this one (a member that far behind is
rare; a watch loop loses nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
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
_MAX_FEEDS = 24  # watch streams kept open between calls
_MAX_PER_PREFIX = 4  # of them on one prefix: one per thread that watches it
_MAX_BUFFERED = 10_000  # events a kept stream may hold for a caller that went away
_PUT_EVENT = rpc.Event.PUT


class _Feed:
    """A watch stream on one prefix, kept open between watch() calls. A reader task
    buffers its events; `synced` is the revision up to which every event has arrived."""

    def __init__(self, prefix: str, start: int) -> None:
        self.prefix = prefix
        self.start = start
        self.discarded = start - 1  # events up to here were handed out or skipped
        self.events: list[Event] = []
        self.synced = 0
        self.created_at = 0.0
        self.error: BaseException | None = None
        self.changed = asyncio.Event()
        self.busy = False
        self.call: Any = None
        self.task: asyncio.Task[None] | None = None
        self.progress_asked = 0.0
        self.progress_answered = 0.0  # when a sound progress answer last came (loop time)

    def usable_from(self, from_revision: int) -> bool:
        return not self.busy and self.error is None and self.discarded <= from_revision

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
    of our leases is then polled for."""

    def __init__(
        self,
        runner: Runner,
        channel: Channel,
        keys: Keyspace,
        leases: Leases,
        ops: Operations,
        poll: float,
        steady: bool = True,
    ) -> None:
        self._runner = runner
        self._channel = channel
        self._keys = keys
        self._leases = leases
        self._ops = ops
        self._poll = poll
        self._steady = steady
        self._feeds: OrderedDict[int, _Feed] = OrderedDict()  # idle ones, by id, oldest first
        self._waiting: set[_Feed] = set()  # feeds a watch() is using now: woken on close

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
                    feed.events.extend(
                        Event(
                            PUT if ev.type == _PUT_EVENT else DELETE,
                            self._keys.name(ev.kv.key),
                            ev.kv.value.decode() if ev.type == _PUT_EVENT else None,
                            int(ev.kv.mod_revision),
                        )
                        for ev in resp.events
                        if ev.kv.mod_revision > feed.discarded
                    )
                    feed.synced = max(feed.synced, int(resp.header.revision))
                elif feed.progress_asked and loop.time() >= feed.created_at + _CATCHUP:
                    # etcd 3.4 answers progress requests even for a watcher still
                    # catching up; one asked for after the catch-up window is sound.
                    feed.synced = max(feed.synced, int(resp.header.revision))
                    feed.progress_answered = loop.time()
                if len(feed.events) > _MAX_BUFFERED:
                    feed.error = ConnectionError("watch buffer full: nobody read it")
                    return
                feed.changed.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # any stream failure means: re-open it elsewhere
            feed.error = exc
        finally:
            feed.changed.set()

    def _take_feed(self, prefix: str, from_revision: int) -> _Feed | None:
        """An idle kept feed on prefix that has handed out nothing past from_revision:
        the one closest to it (the caller's own from its last call, when several
        threads watch one prefix, as the agent's node, mesh and DNS loops do)."""
        usable = [f for f in self._feeds.values() if f.prefix == prefix and f.usable_from(from_revision)]
        if not usable:
            return None
        feed = max(usable, key=lambda f: f.discarded)
        del self._feeds[id(feed)]
        return feed

    async def _keep_feed(self, feed: _Feed) -> None:
        """Keep the feed for a next watch() on its prefix, evicting the oldest beyond
        _MAX_PER_PREFIX on the prefix or _MAX_FEEDS in all. Kept feeds are idle:
        threads watching one prefix at once each have a stream of their own (sharing
        one closed and re-opened a stream per call, with its catch-up wait)."""
        feed.busy = False
        if feed.error is not None or self._runner.closed:
            await feed.close()
            return
        self._feeds[id(feed)] = feed
        same = [f for f in self._feeds.values() if f.prefix == feed.prefix]
        for oldest in same[: max(0, len(same) - _MAX_PER_PREFIX)]:
            del self._feeds[id(oldest)]
            await oldest.close()
        while len(self._feeds) > _MAX_FEEDS:
            _, oldest = self._feeds.popitem(last=False)
            await oldest.close()

    async def watch(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        limit = deadline + _CATCHUP + self._channel.timeout
        await self._leases.sweep()
        # Done when nothing came: with no timeout, once the feed has every event up to
        # the cluster's head (a linearizable read); with one, once the feed's member,
        # asked after the timeout, answers that it sent everything it has (no read per
        # call: an agent's ten watch loops made a 50-node lab's etcd serve 600 a second).
        head = await self._ops.head() if timeout <= 0 else None
        asked = 0.0  # when this call asked its member for progress
        feed = self._take_feed(prefix, from_revision)
        try:
            while not self._runner.closed:
                if feed is None or feed.error is not None:
                    if feed is not None:
                        await self._drop_feed(feed, from_revision)
                    feed = await self._open_feed(prefix, from_revision + 1, limit)
                feed.busy = True
                found = [e for e in feed.events if e.revision > from_revision]
                if found:
                    feed.events.clear()
                    feed.discarded = found[-1].revision
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
                    asked = asked or now  # any answer after the first ask will do
                    await feed.call.write(
                        rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
                    )
                feed.changed.clear()
                self._waiting.add(feed)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(feed.changed.wait(), self._wake_in(feed, now, deadline, limit, asking))
                await self._leases.sweep()  # our expired leases show up as deletes while we wait
            return []
        finally:
            if feed is not None:
                self._waiting.discard(feed)
                await self._keep_feed(feed)

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

    async def _drop_feed(self, feed: _Feed, from_revision: int) -> None:
        error = feed.error
        await feed.close()
        if isinstance(error, RevisionCompacted):
            raise RevisionCompacted(from_revision, error.compacted)

    def wake_all(self) -> None:
        """Wake every waiting watch: the store is closing, and each returns."""
        for feed in self._waiting:
            feed.changed.set()

    async def close(self) -> None:
        feeds, self._feeds = list(self._feeds.values()), OrderedDict()
        for feed in feeds:
            await feed.close()
