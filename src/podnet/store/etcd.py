"""EtcdStore: the Store port on an etcd v3 cluster (etcd 3.4+), for real multi-node clusters.

Why etcd: several machines must share IPAM blocks, node leases and endpoints, and
etcd gives exactly the primitives the Store port was modelled on (one global revision,
compare-and-swap transactions, leases, watch from a revision), replicated with Raft.

Mapping (the contract is store/base.py; differences are stated here, once):
- Keys live under `prefix` (default "/podnet/"); values are the UTF-8 JSON text.
- Revisions are etcd's: Entry.revision is the key's mod revision, Event.revision the
  revision of the change. They are cluster-wide, so writes by anyone else in the same
  etcd (other prefixes too) also advance revision(). etcd starts at revision 1 with
  nothing written; revision() reports that as 0, as the other backends do. All writes
  of one transaction (and of one delete_prefix) share one revision, as etcd commits
  them in one Txn.
- TTL: every put with a ttl gets its own lease of ceil(ttl) seconds (etcd raises it to
  its minimum, 1.5 election timeouts). The server expires leases by its own clock: that
  is what removes a dead agent's keys. On top of that, this store judges the leases it
  granted or refreshed itself by its `clock`: such a key is invisible at once when its
  TTL has passed, and the store revokes the lease on its next call that meets it (or
  on its next write or watch), so the expiry is a delete event right away instead of
  up to ~1.5 s later. (Before revoking,
  it asks the server whether someone else kept the lease alive meanwhile; if so, the
  lease is left to them.) Entry.expires_at of a key leased by another client is read
  from the server (LeaseTimeToLive, whole seconds).
- refresh() is a lease keepalive when the key's lease has the requested TTL: the
  revision does not change. etcd cannot change a lease's TTL nor attach a lease
  without a write, so refresh() of a key with a different TTL, or with no TTL, re-puts
  the same value on a new lease (guarded by the key's revision): the revision changes.
- compare_and_put: one Txn comparing the mod revision (expected 0: create revision 0).
- watch: an etcd watch from from_revision + 1. The stream is kept open between calls
  on the same prefix, so a watch loop pays no set-up per call. etcd 3.4 delivers
  history (a watch starting in the past) from a background loop every 100 ms, and its
  progress notifications are unreliable for such watchers, so a watch that starts in
  the past and finds nothing waits up to _CATCHUP seconds, even with timeout 0, before
  it concludes so. A compacted from_revision raises RevisionCompacted.
- history: etcd compacts only when told (or with --auto-compaction-*). With
  history=N this store compacts revisions older than head - N after its writes, as
  SqliteStore keeps N events; by default it leaves compaction to the server.

Transactions (etcd has no interactive ones): optimistic, validated, all-or-nothing.
- Reads inside transaction() see one snapshot: the cluster at the revision of the
  block's first read (later reads are pinned to it), overlaid with the block's own
  staged writes. Writes are staged, not sent; nested blocks are savepoints of the
  stage.
- At the end of the outermost block, every staged write is sent in ONE etcd Txn, whose
  compares require that (1) every key read with get() or by a conditional write, and
  every key returned by list(), still has the mod revision it had in the snapshot
  (0: still absent), and (2) no key was created or modified after the snapshot in any
  prefix the block listed. So the block commits only if everything it saw is still
  true: serializable for what it read. If the compares fail nothing is written and
  TryAgainLater is raised; the block cannot be re-run for the caller, who simply
  retries the operation (CNI error 11 makes the runtime do so).
- Within one process, transactions and writes are serialised by a lock (as in
  SqliteStore), so threads of one agent never conflict with each other; only other
  processes' writes can make a commit fail.
- Limits: etcd allows max_txn_ops (default 128, etcd's --max-txn-ops) compares and
  writes per Txn. Point reads and ranges always get compares; keys seen only through
  list() get theirs while they fit, beyond that only (2) guards those prefixes (a key
  deleted from a large listed prefix meanwhile goes unnoticed). More than max_txn_ops
  staged writes is a StoreError.
- Inside a block, write methods return a provisional revision (snapshot + 1): the real
  one exists only at commit. refresh() of an existing lease inside a block is sent
  after the commit (a keepalive is not transactional).

Failover: no Python client fails over between etcd members, so this store does. It
keeps one gRPC channel per endpoint and uses the last one that worked. A call that
finds its member unreachable (refused: at once; accepting no connection: after
connect_timeout), or leaderless (every request carries etcd's "require leader" flag,
so a member cut off from the majority answers at once instead of hanging), moves to
the next member. A request that gets no answer within half of `timeout` (a follower
still forwarding to a leader that just died) moves on too. A write whose outcome is
then unknown is re-sent only when that is harmless (put, unconditional delete, lease
calls); a conditional write or a transaction commit raises TryAgainLater instead of
guessing. When no member answers, TryAgainLater comes promptly: within milliseconds
when every endpoint refuses, connect_timeout per silent endpoint, at most `timeout`
when members are up but without a quorum. A failed endpoint's channel is dropped, so
a member that comes back is used again on the next call. A watch stream that breaks
is re-opened on another member from the last revision it delivered: no event is
lost or repeated.

Threads: all gRPC work runs on one private asyncio loop thread, shared by the
process's EtcdStores (aetcd's generated etcd v3 stubs on grpc.aio); the Store API is
synchronous and thread-safe. A store
cannot be used by a forked child: open a new one there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from podnet.errors import InvalidConfig, StoreConflict, StoreError, TryAgainLater
from podnet.store.base import (
    DELETE,
    PUT,
    Entry,
    Event,
    RevisionCompacted,
    Store,
    check_key,
    check_ttl,
)

_T = TypeVar("_T")

DEFAULT_PREFIX = "/podnet/"
DEFAULT_PORT = 2379
_CATCHUP = 0.3  # etcd 3.4 syncs watchers that start in the past every 100 ms
_MAX_FEEDS = 16  # watch streams kept open between calls (one per prefix)
_MAX_BUFFERED = 10_000  # events a kept stream may hold for a caller that went away
_SLACK = 0.5  # server TTL beyond what ours would have left: another client renewed it
# Every request asks the member to refuse at once when it has no leader (etcd's
# clientv3.WithRequireLeader), instead of hanging until its own timeout.
_METADATA = (("hasleader", "true"),)
# Reconnect soon after a failure (gRPC's defaults back off to 2 minutes). Not
# min_reconnect_backoff_ms: gRPC also takes it as the minimum connect timeout.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
)
_READY = grpc.ChannelConnectivity.READY
_DOWN = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
_MOD, _CREATE = rpc.Compare.MOD, rpc.Compare.CREATE
_EQUAL, _LESS = rpc.Compare.EQUAL, rpc.Compare.LESS
_PUT_EVENT = rpc.Event.PUT


# -- endpoints --------------------------------------------------------------------


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """gRPC targets ("host:port") from "host[:port]", "http://host:port" or a comma
    separated string of them; TLS endpoints are refused (not supported yet)."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    targets: list[str] = []
    for item in items:
        text = str(item).strip()
        if text.startswith("https://"):
            raise InvalidConfig(f"etcd endpoint {text!r}: TLS is not supported", "use http://")
        text = text.removeprefix("http://").rstrip("/")
        if not text or "/" in text:
            raise InvalidConfig(f"invalid etcd endpoint {item!r}", "expected host:port")
        host, sep, port = text.rpartition(":")
        if not sep or host.endswith(":") or (host.startswith("[") != host.endswith("]")):
            host, port = text, str(DEFAULT_PORT)  # no port given (or a bare IPv6 address)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidConfig(f"invalid etcd endpoint {item!r}", f"bad port {port!r}")
        targets.append(f"{host}:{int(port)}")
    if not targets:
        raise InvalidConfig("no etcd endpoint given")
    return targets


def _range_end(start: bytes) -> bytes:
    """etcd's range end for "every key starting with start" (b"\\0": to the end)."""
    stripped = start.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _within(key: bytes, start: bytes, end: bytes) -> bool:
    return start <= key and (end == b"\0" or key < end)


def _user_revision(revision: int) -> int:
    """etcd's revision 1 is a new cluster with nothing written: the contract says 0."""
    return 0 if revision <= 1 else revision


# -- the shared loop thread -------------------------------------------------------------


class _LoopThread:
    """The asyncio loop every EtcdStore of this process runs its gRPC calls on; started
    by the first store, stopped when the last one closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._users = 0
        self._pid = 0

    def acquire(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="podnet-etcd", daemon=True)
                thread.start()
                self._loop, self._thread, self._users, self._pid = loop, thread, 0, os.getpid()
            self._users += 1
            return self._loop

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if loop is not self._loop:
                return
            self._users -= 1
            if self._users > 0:
                return
            thread, self._loop, self._thread = self._thread, None, None
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5)
        if not loop.is_running():
            loop.close()


_LOOP = _LoopThread()


# -- connections --------------------------------------------------------------------------


class _Conn:
    """One endpoint's gRPC channel, opened lazily and dropped after a failure, so a
    restarted member is dialled at once instead of after gRPC's reconnect backoff."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel: grpc.aio.Channel | None = None

    def open(self) -> grpc.aio.Channel:
        if self.channel is None:
            self.channel = rpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
            self.kv = rpc.KVStub(self.channel)
            self.lease = rpc.LeaseStub(self.channel)
            self.watch = rpc.WatchStub(self.channel)
        return self.channel

    async def drop(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close(None)


class _Unsure(Exception):
    """A request may or may not have been applied (the member failed after it)."""


def _not_applied(exc: grpc.aio.AioRpcError) -> bool:
    """Failures that prove the member did not apply the request: safe to resend."""
    details = exc.details() or ""
    return any(sign in details for sign in ("no leader", "failed to connect", "too many requests"))


def _transient(exc: grpc.aio.AioRpcError) -> bool:
    """Errors worth another member: the member is gone, slow, leaderless or busy."""
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return True
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "too many requests" in (exc.details() or "")
    return code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN) and (
        "timed out" in (exc.details() or "") or "leader" in (exc.details() or "")
    )


def _store_error(exc: grpc.aio.AioRpcError, what: str) -> StoreError:
    return StoreError(f"etcd refused {what}: {exc.details()}", f"gRPC status {exc.code().name}")


# -- leases, staged writes, transactions, watch feeds ------------------------------------------


@dataclass(slots=True)
class _Lease:
    """A lease this store granted or refreshed: when it expires by our clock."""

    id: int
    requested: int  # the whole seconds we asked for
    granted: int  # what the server granted (it may raise short TTLs)
    expires_at: float  # by the store's clock
    renewed: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Staged:
    """A write a transaction will send at commit; value None is a delete; keep != 0
    is a refresh of that existing lease (a keepalive after commit, not a write)."""

    value: str | None
    ttl: float | None
    expires_at: float | None
    base: Entry | None  # the key in the snapshot
    keep: int = 0


@dataclass(slots=True)
class _Tx:
    """One thread's open transaction: its snapshot, what it read, what it will write."""

    depth: int = 1
    rev: int | None = None  # snapshot revision (the first read's)
    staged: dict[str, _Staged] = field(default_factory=dict)
    undo: list[tuple[str, _Staged | None]] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)
    reads: dict[str, int] = field(default_factory=dict)  # key -> mod revision (0: absent)
    listed: dict[str, int] = field(default_factory=dict)  # keys seen only through list()
    ranges: set[tuple[bytes, bytes]] = field(default_factory=set)
    seen: dict[str, tuple[Entry | None, int]] = field(default_factory=dict)  # entry, lease

    def provisional(self) -> int:
        assert self.rev is not None
        return self.rev + 1

    def stage(self, key: str, staged: _Staged) -> None:
        self.undo.append((key, self.staged.get(key)))
        self.staged[key] = staged

    def rollback_to(self, mark: int) -> None:
        while len(self.undo) > mark:
            key, old = self.undo.pop()
            if old is None:
                self.staged.pop(key, None)
            else:
                self.staged[key] = old


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

    def usable_from(self, from_revision: int) -> bool:
        return not self.busy and self.error is None and self.discarded <= from_revision

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


# -- the store ----------------------------------------------------------------------------------


class EtcdStore(Store):
    """Store on an etcd cluster, failing over between its members (module docstring).

    endpoints: "host:port" of some or all members; prefix: where podnet's keys live;
    timeout: how long one request may take, failover included, before TryAgainLater;
    connect_timeout: how long to wait for one member to accept a connection; clock: by
    which this store judges the leases it holds (time.time); history: compact all but
    the last N revisions after writes (None: leave it to the server); max_txn_ops: the
    server's --max-txn-ops.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 2.0,
        *,
        connect_timeout: float = 0.5,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.05,
        history: int | None = None,
        max_txn_ops: int = 128,
    ) -> None:
        if "\0" in prefix:
            raise InvalidConfig(f"invalid etcd prefix {prefix!r}: contains NUL")
        self.endpoints = parse_endpoints(endpoints)
        self.prefix = prefix
        self._prefix = prefix.encode()
        self._timeout = max(0.05, timeout)
        self._connect_timeout = max(0.01, min(connect_timeout, self._timeout))
        self._clock = clock
        self._poll = max(0.001, poll_interval)
        self._history = None if history is None else max(1, history)
        self._max_ops = max(1, max_txn_ops)
        self._conns = [_Conn(target) for target in self.endpoints]
        self._current = 0
        self._own: dict[int, _Lease] = {}  # loop thread only
        self._feeds: OrderedDict[str, _Feed] = OrderedDict()  # loop thread only
        self._compacted = 0
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._calls: set[concurrent.futures.Future[Any]] = set()  # in flight, for close()
        self._calls_lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._loop = _LOOP.acquire()

    def __repr__(self) -> str:
        return f"EtcdStore({self.endpoints!r}, prefix={self.prefix!r})"

    @property
    def endpoint(self) -> str:
        """The member this store currently talks to (the last one that answered)."""
        return self.endpoints[self._current]

    # -- running coroutines on the loop thread ------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        if os.getpid() != self._pid:
            raise StoreError(f"{self!r} was opened by another process: open a new store here")

    def _run(self, fn: Callable[..., Awaitable[_T]], *args: Any, wait: float = 0.0) -> _T:
        """Run fn(*args) on the loop and wait for it. Every coroutine bounds itself;
        the guard here only catches a bug that would otherwise hang the caller."""
        with self._calls_lock:
            self._check_usable()
            future = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)  # type: ignore[arg-type]
            self._calls.add(future)
        try:
            return future.result(timeout=wait + self._timeout * 8 + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TryAgainLater(f"{self!r}: no answer in time") from None
        except concurrent.futures.CancelledError:
            raise StoreError(f"{self!r} was closed during the call") from None
        finally:
            with self._calls_lock:
                self._calls.discard(future)

    def _tx(self) -> _Tx | None:
        return getattr(self._local, "tx", None)

    def _lock_writes(self) -> None:
        wait = self._timeout * 10
        if not self._write_lock.acquire(timeout=wait):
            raise TryAgainLater(f"{self!r} is busy: no write lock after {wait:.0f}s")

    # -- failover ---------------------------------------------------------------------------

    def _advance(self, conn: _Conn) -> None:
        """Use the next member from now on (unless another call already moved on)."""
        if self._conns[self._current] is conn:
            self._current = (self._current + 1) % len(self._conns)

    async def _ready(self, conn: _Conn, timeout: float) -> bool:
        """Whether conn's member accepts a connection within timeout. A refused
        connection fails at once; a dead channel is dropped (see _Conn)."""
        channel = conn.open()
        state = channel.get_state(try_to_connect=True)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while state is not _READY:
                if state in _DOWN:
                    break
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
                state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            pass
        if state is _READY:
            return True
        await conn.drop()
        return False

    async def _call(
        self, request: Callable[[_Conn, float], Awaitable[_T]], what: str, *, resend: bool = True
    ) -> _T:
        """One request with failover. resend=False: a request whose outcome became
        unknown is not sent again (raises TryAgainLater), for conditional writes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        attempt = max(self._timeout / 2, 0.05)
        failures: list[str] = []
        while True:
            reachable = False
            for _ in range(len(self._conns)):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                conn = self._conns[self._current]
                if not await self._ready(conn, min(remaining, self._connect_timeout)):
                    failures.append(f"{conn.target}: unreachable")
                    self._advance(conn)
                    continue
                reachable = True
                try:
                    return await request(conn, min(remaining, attempt))
                except grpc.aio.AioRpcError as exc:
                    if not _transient(exc):
                        raise
                    failures.append(f"{conn.target}: {exc.details()}")
                    self._advance(conn)
                    if not resend and not _not_applied(exc):
                        raise _Unsure(f"{what}: {exc.details()}") from exc
            if not reachable or loop.time() >= deadline:
                detail = "; ".join(failures[-len(self._conns) :])
                raise TryAgainLater(f"etcd unavailable: {what} failed on every member", detail)
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))

    async def _kv(self, method: str, request: Any, what: str, *, resend: bool = True) -> Any:
        """A unary KV request (Range, Put, DeleteRange, Txn, Compact) with failover."""

        async def send(conn: _Conn, timeout: float) -> Any:
            return await getattr(conn.kv, method)(request, timeout=timeout, metadata=_METADATA)

        try:
            return await self._call(send, what, resend=resend)
        except _Unsure as exc:
            raise TryAgainLater(
                f"etcd did not confirm {what}; its outcome is unknown", str(exc)
            ) from exc
        except grpc.aio.AioRpcError as exc:
            raise _store_error(exc, what) from exc

    async def _lease_call(self, method: str, request: Any, what: str) -> Any:
        async def send(conn: _Conn, timeout: float) -> Any:
            return await getattr(conn.lease, method)(request, timeout=timeout, metadata=_METADATA)

        return await self._call(send, what)

    # -- keys and entries -------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        return self._prefix + check_key(key).encode()

    def _range(self, prefix: str) -> tuple[bytes, bytes]:
        start = self._prefix + prefix.encode()
        return (start or b"\0"), _range_end(start)

    def _name(self, raw: bytes) -> str:
        return raw[len(self._prefix) :].decode()

    async def _entries(self, kvs: Iterable[Any]) -> list[tuple[Entry, int]]:
        """Live entries (and their lease) from etcd KeyValues: a key whose lease has
        expired, by our clock (our leases) or on the server (anyone's), is left out."""
        kvs = list(kvs)
        now = self._clock()
        gone: set[int] = set()
        if any(kv.lease in self._own and self._own[kv.lease].expires_at <= now for kv in kvs):
            gone = await self._sweep()  # revoked, or renewed by someone else: settle it first
        foreign = sorted({kv.lease for kv in kvs if kv.lease and kv.lease not in self._own} - gone)
        ttls = await asyncio.gather(*(self._lease_ttl(i) for i in foreign))
        left = dict(zip(foreign, ttls, strict=True))
        out: list[tuple[Entry, int]] = []
        for kv in kvs:
            expires_at: float | None = None
            if kv.lease:
                own = self._own.get(kv.lease)
                if own is not None:
                    expires_at = own.expires_at
                elif left.get(kv.lease, -1) >= 0:
                    expires_at = now + left[kv.lease]
                if expires_at is None or (own is not None and expires_at <= now):
                    continue
            entry = Entry(
                self._name(kv.key),
                kv.value.decode(),
                kv.mod_revision,
                kv.create_revision,
                expires_at,
            )
            out.append((entry, kv.lease))
        return out

    # -- leases ---------------------------------------------------------------------------

    async def _lease_ttl(self, lease_id: int) -> int:
        """Seconds the server still gives the lease; -1 if it is gone."""
        try:
            resp = await self._lease_call(
                "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=lease_id), "a lease lookup"
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return -1
            raise _store_error(exc, "a lease lookup") from exc
        return int(resp.TTL)

    async def _grant(self, ttl: float) -> _Lease:
        want = max(1, math.ceil(ttl))
        try:
            resp = await self._lease_call("LeaseGrant", rpc.LeaseGrantRequest(TTL=want), "a lease")
        except grpc.aio.AioRpcError as exc:
            raise _store_error(exc, "a lease") from exc
        if resp.error:
            raise StoreError(f"etcd refused a lease: {resp.error}")
        return _Lease(resp.ID, want, int(resp.TTL), self._clock() + ttl)

    async def _revoke(self, lease_id: int) -> None:
        try:
            await self._lease_call("LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id), "a revoke")
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                raise _store_error(exc, "a lease revoke") from exc

    async def _forget(self, leases: Iterable[_Lease]) -> None:
        """Revoke leases granted for a write that did not happen (best effort: they
        would expire anyway)."""
        for lease in leases:
            with contextlib.suppress(TryAgainLater, StoreError):
                await self._revoke(lease.id)

    async def _keepalive(self, lease_id: int) -> int:
        """One keepalive: the lease's new TTL, 0 if it had already expired."""

        async def send(conn: _Conn, timeout: float) -> int:
            call = conn.lease.LeaseKeepAlive(timeout=timeout, metadata=_METADATA)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                resp = await call.read()
                await call.done_writing()
            finally:
                call.cancel()
            if resp is grpc.aio.EOF:
                raise StoreError("etcd closed a lease keepalive without answering")
            return int(resp.TTL)

        try:
            return await self._call(send, "a lease keepalive")
        except grpc.aio.AioRpcError as exc:
            raise _store_error(exc, "a lease keepalive") from exc

    def _adopt(self, lease: _Lease | None, replaced: Any = None) -> None:
        """After a write: track the new lease; forget the one the key had before (it
        holds nothing now and will simply expire on the server)."""
        if (
            replaced is not None
            and replaced.lease
            and (lease is None or replaced.lease != lease.id)
        ):
            self._own.pop(replaced.lease, None)
        if lease is not None:
            self._own[lease.id] = lease

    async def _sweep(self) -> set[int]:
        """Revoke our leases whose TTL has passed by our clock: their keys become
        delete events now. A lease someone else renewed since is left to them (as a
        lease of theirs). Returns the leases that are gone."""
        now = self._clock()
        due = [lease for lease in self._own.values() if lease.expires_at <= now]
        gone: set[int] = set()
        for lease in due:
            if self._own.pop(lease.id, None) is None:
                continue  # another call is sweeping it
            left = await self._lease_ttl(lease.id)
            if left >= 0 and left > lease.granted - (time.monotonic() - lease.renewed) + _SLACK:
                continue
            if left >= 0:
                await self._revoke(lease.id)
            gone.add(lease.id)
        return gone

    async def _compact(self, revision: int) -> None:
        """Keep `history` revisions, compacting in batches of a tenth (as SqliteStore)."""
        if self._history is None or revision - self._compacted <= self._history * 11 // 10:
            return
        target = revision - self._history
        with contextlib.suppress(StoreError):  # another client compacted further already
            await self._kv("Compact", rpc.CompactionRequest(revision=target), "a compaction")
        self._compacted = max(self._compacted, target)

    # -- plain (non-transactional) operations, on the loop ----------------------------------

    async def _head(self) -> int:
        resp = await self._kv(
            "Range", rpc.RangeRequest(key=self._prefix or b"\0", count_only=True), "a read"
        )
        return int(resp.header.revision)

    async def _a_get(self, key: str) -> Entry | None:
        resp = await self._kv("Range", rpc.RangeRequest(key=self._key(key)), "a read")
        found = await self._entries(resp.kvs)
        return found[0][0] if found else None

    async def _a_list(self, prefix: str) -> tuple[list[Entry], int]:
        start, end = self._range(prefix)
        resp = await self._kv("Range", rpc.RangeRequest(key=start, range_end=end), "a list")
        return [e for e, _ in await self._entries(resp.kvs)], int(resp.header.revision)

    async def _a_put(self, key: str, value: str, ttl: float | None) -> int:
        await self._sweep()
        lease = await self._grant(ttl) if ttl is not None else None
        request = rpc.PutRequest(
            key=self._key(key), value=value.encode(), lease=lease.id if lease else 0, prev_kv=True
        )
        try:
            resp = await self._kv("Put", request, "a put")
        except BaseException:
            await self._forget([lease] if lease else [])
            raise
        self._adopt(lease, resp.prev_kv if resp.HasField("prev_kv") else None)
        await self._compact(resp.header.revision)
        return int(resp.header.revision)

    async def _a_cas(self, key: str, value: str, expected: int, ttl: float | None) -> int | None:
        await self._sweep()
        raw = self._key(key)
        if expected == 0:
            compare = rpc.Compare(key=raw, target=_CREATE, result=_EQUAL, create_revision=0)
        else:
            compare = rpc.Compare(key=raw, target=_MOD, result=_EQUAL, mod_revision=expected)
        lease = await self._grant(ttl) if ttl is not None else None
        put = rpc.PutRequest(key=raw, value=value.encode(), lease=lease.id if lease else 0)
        put.prev_kv = True
        request = rpc.TxnRequest(compare=[compare], success=[rpc.RequestOp(request_put=put)])
        try:
            resp = await self._kv("Txn", request, "a compare-and-put", resend=False)
        except BaseException:
            await self._forget([lease] if lease else [])
            raise
        if not resp.succeeded:
            await self._forget([lease] if lease else [])
            return None
        put_resp = resp.responses[0].response_put
        self._adopt(lease, put_resp.prev_kv if put_resp.HasField("prev_kv") else None)
        await self._compact(resp.header.revision)
        return int(resp.header.revision)

    async def _a_delete(self, key: str, expected: int | None) -> bool:
        await self._sweep()
        raw = self._key(key)
        op = rpc.DeleteRangeRequest(key=raw, prev_kv=True)
        if expected is None:
            resp = await self._kv("DeleteRange", op, "a delete")
            deleted, prev = resp.deleted, list(resp.prev_kvs)
        else:
            compare = rpc.Compare(key=raw, target=_MOD, result=_EQUAL, mod_revision=expected)
            request = rpc.TxnRequest(
                compare=[compare], success=[rpc.RequestOp(request_delete_range=op)]
            )
            resp = await self._kv("Txn", request, "a conditional delete", resend=False)
            if not resp.succeeded:
                return False
            inner = resp.responses[0].response_delete_range
            deleted, prev = inner.deleted, list(inner.prev_kvs)
        for kv in prev:
            self._adopt(None, kv)
        if deleted:
            await self._compact(resp.header.revision)
        return deleted > 0

    async def _a_delete_prefix(self, prefix: str) -> int:
        await self._sweep()
        start, end = self._range(prefix)
        resp = await self._kv(
            "DeleteRange", rpc.DeleteRangeRequest(key=start, range_end=end), "a delete"
        )
        if resp.deleted:
            await self._compact(resp.header.revision)
        return int(resp.deleted)

    async def _same_lease_ttl(self, lease_id: int, ttl: float) -> bool | None:
        """Whether the key's lease has the TTL refresh asks for (None: lease gone)."""
        want = max(1, math.ceil(ttl))
        own = self._own.get(lease_id)
        if own is not None:
            return own.requested == want
        try:
            resp = await self._lease_call(
                "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=lease_id), "a lease lookup"
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise _store_error(exc, "a lease lookup") from exc
        return None if resp.TTL < 0 else int(resp.grantedTTL) == want

    async def _renew(self, lease_id: int, ttl: float) -> bool:
        """Keep a lease alive; track it as ours with ttl from now."""
        granted = await self._keepalive(lease_id)
        if granted <= 0:
            self._own.pop(lease_id, None)
            return False
        self._own[lease_id] = _Lease(lease_id, max(1, math.ceil(ttl)), granted, self._clock() + ttl)
        return True

    async def _a_refresh(self, key: str, ttl: float) -> bool:
        await self._sweep()
        raw = self._key(key)
        for _ in range(3):
            resp = await self._kv("Range", rpc.RangeRequest(key=raw), "a read")
            found = await self._entries(resp.kvs)
            if not found:
                return False
            entry, lease_id = found[0]
            if lease_id:
                same = await self._same_lease_ttl(lease_id, ttl)
                if same is None:
                    return False
                if same:
                    return await self._renew(lease_id, ttl)
            # No lease, or one of another TTL: a new lease needs a (guarded) write.
            if await self._a_cas(key, entry.value, entry.revision, ttl) is not None:
                return True
        raise TryAgainLater(f"key {key!r} kept changing while being refreshed")

    # -- transactions, on the loop --------------------------------------------------------

    async def _tx_range(self, tx: _Tx, start: bytes, end: bytes | None) -> list[tuple[Entry, int]]:
        """A read inside a transaction: at the snapshot revision (the first read sets it)."""
        request = rpc.RangeRequest(key=start, revision=tx.rev or 0)
        if end is not None:
            request.range_end = end
        try:
            resp = await self._kv("Range", request, "a read")
        except StoreError as exc:
            if "compacted" in str(exc):
                raise TryAgainLater(
                    "the transaction's snapshot was compacted away", "retry the operation"
                ) from exc
            raise
        if tx.rev is None:
            tx.rev = int(resp.header.revision)
        found = await self._entries(resp.kvs)
        # What the block saw, to compare at commit; an expired key counts as absent.
        visible = {entry.key: entry.revision for entry, _ in found}
        if end is None:
            tx.reads.setdefault(self._name(start), visible.get(self._name(start), 0))
        else:
            tx.ranges.add((start, end))
            for kv in resp.kvs:
                tx.listed.setdefault(self._name(kv.key), visible.get(self._name(kv.key), 0))
        for entry, lease_id in found:
            tx.seen.setdefault(entry.key, (entry, lease_id))
        if end is None and not found:
            tx.seen.setdefault(self._name(start), (None, 0))
        return found

    async def _tx_snapshot(self, tx: _Tx) -> None:
        if tx.rev is None:
            tx.rev = await self._head()

    async def _tx_commit(self, tx: _Tx) -> None:
        writes = sorted((k, s) for k, s in tx.staged.items() if not s.keep)
        keeps = [(k, s) for k, s in tx.staged.items() if s.keep]
        if writes:
            await self._tx_send(tx, writes)
        for _key, staged in keeps:
            assert staged.ttl is not None
            await self._renew(staged.keep, staged.ttl)

    def _tx_compares(self, tx: _Tx) -> list[Any]:
        """What must still hold at commit for the block's reads to be true."""
        compares = [
            rpc.Compare(key=self._key(k), target=_MOD, result=_EQUAL, mod_revision=rev)
            for k, rev in sorted(tx.reads.items())
        ]
        assert tx.rev is not None
        compares += [
            rpc.Compare(key=s, range_end=e, target=_MOD, result=_LESS, mod_revision=tx.rev + 1)
            for s, e in sorted(tx.ranges)
        ]
        if len(compares) > self._max_ops:
            raise StoreError(
                f"transaction read {len(compares)} keys and prefixes; etcd allows "
                f"{self._max_ops} compares per transaction (--max-txn-ops)"
            )
        listed = [(k, r) for k, r in sorted(tx.listed.items()) if k not in tx.reads]
        if len(compares) + len(listed) <= self._max_ops:
            compares += [
                rpc.Compare(key=self._key(k), target=_MOD, result=_EQUAL, mod_revision=rev)
                for k, rev in listed
            ]
        return compares

    async def _tx_send(self, tx: _Tx, writes: list[tuple[str, _Staged]]) -> None:
        if len(writes) > self._max_ops:
            raise StoreError(
                f"transaction writes {len(writes)} keys; etcd allows {self._max_ops} "
                "per transaction (--max-txn-ops)"
            )
        compares = self._tx_compares(tx)
        leased = [(k, s.ttl) for k, s in writes if s.value is not None and s.ttl is not None]
        granted = await asyncio.gather(*(self._grant(ttl) for _, ttl in leased))
        leases = {k: lease for (k, _), lease in zip(leased, granted, strict=True)}
        ops = []
        for key, staged in writes:
            if staged.value is None:
                delete = rpc.DeleteRangeRequest(key=self._key(key), prev_kv=True)
                ops.append(rpc.RequestOp(request_delete_range=delete))
            else:
                lease = leases.get(key)
                put = rpc.PutRequest(key=self._key(key), value=staged.value.encode(), prev_kv=True)
                put.lease = lease.id if lease else 0
                ops.append(rpc.RequestOp(request_put=put))
        request = rpc.TxnRequest(compare=compares, success=ops)
        try:
            resp = await self._kv("Txn", request, "a transaction", resend=False)
        except BaseException:
            await self._forget(leases.values())
            raise
        if not resp.succeeded:
            await self._forget(leases.values())
            raise StoreConflict(
                "transaction conflict: a key it read was changed by another client",
                "nothing was written; retry the operation",
            )
        for (key, _), result in zip(writes, resp.responses, strict=True):
            if result.HasField("response_put"):
                prev = result.response_put.prev_kv
                self._adopt(
                    leases.get(key), prev if result.response_put.HasField("prev_kv") else None
                )
            else:
                for kv in result.response_delete_range.prev_kvs:
                    self._adopt(None, kv)
        await self._compact(resp.header.revision)

    # -- watch, on the loop -------------------------------------------------------------

    async def _open_feed(self, prefix: str, start: int, deadline: float) -> _Feed:
        """A new watch stream from revision start, on the first member that takes it."""
        loop = asyncio.get_running_loop()
        begin, end = self._range(prefix)
        create = rpc.WatchCreateRequest(key=begin, range_end=end, start_revision=max(1, start))
        failures: list[str] = []
        while True:
            reachable = False
            for _ in range(len(self._conns)):
                conn = self._conns[self._current]
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                if not await self._ready(conn, min(remaining, self._connect_timeout)):
                    failures.append(f"{conn.target}: unreachable")
                    self._advance(conn)
                    continue
                reachable = True
                feed = _Feed(prefix, start)
                feed.call = conn.watch.Watch(metadata=_METADATA)
                try:
                    await feed.call.write(rpc.WatchRequest(create_request=create))
                    first = await asyncio.wait_for(feed.call.read(), min(remaining, self._timeout))
                except (TimeoutError, grpc.aio.AioRpcError) as exc:
                    feed.call.cancel()
                    failures.append(
                        f"{conn.target}: {getattr(exc, 'details', lambda: 'timeout')()}"
                    )
                    self._advance(conn)
                    continue
                if first is grpc.aio.EOF or not first.created or first.canceled:
                    feed.call.cancel()
                    reason = "closed" if first is grpc.aio.EOF else first.cancel_reason
                    failures.append(f"{conn.target}: watch refused ({reason})")
                    self._advance(conn)
                    continue
                feed.created_at = loop.time()
                if start > first.header.revision:
                    feed.synced = int(first.header.revision)  # nothing to catch up
                feed.task = loop.create_task(self._pump(feed))
                return feed
            if not reachable or loop.time() >= deadline:
                detail = "; ".join(failures[-len(self._conns) :])
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
                        self._compacted = max(self._compacted, compacted)
                    else:
                        feed.error = ConnectionError(f"watch cancelled: {resp.cancel_reason}")
                    return
                if resp.events:
                    feed.events.extend(
                        Event(
                            PUT if ev.type == _PUT_EVENT else DELETE,
                            self._name(ev.kv.key),
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
        feed = self._feeds.get(prefix)
        if feed is None or not feed.usable_from(from_revision):
            return None
        self._feeds.move_to_end(prefix)
        return feed

    async def _keep_feed(self, feed: _Feed) -> None:
        """Cache the feed for the next watch() on its prefix (evicting the oldest)."""
        feed.busy = False
        if feed.error is not None or self._closed:
            await feed.close()
            if self._feeds.get(feed.prefix) is feed:
                del self._feeds[feed.prefix]
            return
        old = self._feeds.get(feed.prefix)
        if old is not None and old is not feed and not old.busy:
            await old.close()
        self._feeds[feed.prefix] = feed
        self._feeds.move_to_end(feed.prefix)
        while len(self._feeds) > _MAX_FEEDS:
            _, oldest = self._feeds.popitem(last=False)
            await oldest.close()

    async def _a_watch(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        limit = deadline + _CATCHUP + self._timeout
        await self._sweep()
        head = await self._head()
        feed = self._take_feed(prefix, from_revision)
        try:
            while not self._closed:
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
                caught_up = feed.synced >= head
                if (now >= deadline and caught_up) or now >= limit:
                    return []
                asking = now >= max(deadline, feed.created_at + _CATCHUP)
                if asking and now - feed.progress_asked > self._poll:
                    feed.progress_asked = now
                    await feed.call.write(
                        rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
                    )
                feed.changed.clear()
                wake = max(0.001, min(self._poll, (deadline if now < deadline else limit) - now))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(feed.changed.wait(), wake)
                await self._sweep()  # our expired leases show up as deletes while we wait
            return []
        finally:
            if feed is not None:
                await self._keep_feed(feed)

    async def _drop_feed(self, feed: _Feed, from_revision: int) -> None:
        error = feed.error
        await feed.close()
        if self._feeds.get(feed.prefix) is feed:
            del self._feeds[feed.prefix]
        if isinstance(error, RevisionCompacted):
            raise RevisionCompacted(from_revision, error.compacted)

    async def _a_close(self) -> None:
        feeds, self._feeds = list(self._feeds.values()), OrderedDict()
        for feed in feeds:
            await feed.close()
        for conn in self._conns:
            await conn.drop()

    # -- the Store API ----------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        check_key(key)
        tx = self._tx()
        if tx is None:
            return self._run(self._a_get, key)
        return self._tx_current(tx, key)

    def list(self, prefix: str) -> list[Entry]:
        tx = self._tx()
        if tx is None:
            return self._run(self._a_list, prefix)[0]
        start, end = self._range(prefix)
        found = {e.key: e for e, _ in self._run(self._tx_range, tx, start, end)}
        for key, staged in tx.staged.items():
            if key.startswith(prefix):
                entry = self._staged_entry(tx, key, staged)
                if entry is None:
                    found.pop(key, None)
                else:
                    found[key] = entry
        return [found[k] for k in sorted(found)]

    def revision(self) -> int:
        tx = self._tx()
        if tx is None:
            return _user_revision(self._run(self._head))
        self._run(self._tx_snapshot, tx)
        writes = any(not s.keep for s in tx.staged.values())
        return _user_revision(tx.provisional() if writes else tx.rev or 0)

    def snapshot(self, prefix: str) -> tuple[list[Entry], int]:
        """One Range: the listing and the revision it was read at."""
        if self._tx() is not None:
            return super().snapshot(prefix)
        entries, revision = self._run(self._a_list, prefix)
        return entries, _user_revision(revision)

    def put(self, key: str, value: str, ttl: float | None = None) -> int:
        check_key(key)
        check_ttl(ttl)
        tx = self._tx()
        if tx is not None:
            self._run(self._tx_snapshot, tx)
            self._stage(tx, key, value, ttl)
            return tx.provisional()
        self._lock_writes()
        try:
            return self._run(self._a_put, key, value, ttl)
        finally:
            self._write_lock.release()

    def compare_and_put(
        self, key: str, value: str, expected_revision: int, ttl: float | None = None
    ) -> int | None:
        check_key(key)
        check_ttl(ttl)
        tx = self._tx()
        if tx is not None:
            current = self._tx_current(tx, key)
            if (current.revision if current else 0) != expected_revision:
                return None
            self._stage(tx, key, value, ttl)
            return tx.provisional()
        self._lock_writes()
        try:
            return self._run(self._a_cas, key, value, expected_revision, ttl)
        finally:
            self._write_lock.release()

    def delete(self, key: str, expected_revision: int | None = None) -> bool:
        check_key(key)
        tx = self._tx()
        if tx is not None:
            current = self._tx_current(tx, key)
            if current is None or (
                expected_revision is not None and current.revision != expected_revision
            ):
                return False
            self._stage(tx, key, None, None)
            return True
        self._lock_writes()
        try:
            return self._run(self._a_delete, key, expected_revision)
        finally:
            self._write_lock.release()

    def delete_prefix(self, prefix: str) -> int:
        tx = self._tx()
        if tx is not None:
            victims = self.list(prefix)
            for entry in victims:
                self._stage(tx, entry.key, None, None)
            return len(victims)
        self._lock_writes()
        try:
            return self._run(self._a_delete_prefix, prefix)
        finally:
            self._write_lock.release()

    def refresh(self, key: str, ttl: float) -> bool:
        check_key(key)
        check_ttl(ttl)
        tx = self._tx()
        if tx is None:
            self._lock_writes()
            try:
                return self._run(self._a_refresh, key, ttl)
            finally:
                self._write_lock.release()
        current = self._tx_current(tx, key)
        if current is None:
            return False
        staged = tx.staged.get(key)
        if staged is not None and not staged.keep:
            tx.stage(key, _Staged(staged.value, ttl, self._clock() + ttl, staged.base))
            return True
        lease_id = tx.seen.get(key, (None, 0))[1]
        same = self._run(self._same_lease_ttl, lease_id, ttl) if lease_id else False
        if same:
            tx.stage(key, _Staged(current.value, ttl, self._clock() + ttl, current, keep=lease_id))
        else:
            self._stage(tx, key, current.value, ttl)
        return True

    def watch(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        if self._tx() is not None:
            raise StoreError("watch() inside a transaction cannot see anything it would wait for")
        return self._run(self._a_watch, prefix, from_revision, timeout, wait=max(0.0, timeout))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[EtcdStore]:
        self._begin()
        ok = False
        try:
            yield self
            ok = True
        finally:
            self._end(ok)  # commits (and may raise TryAgainLater) only if ok

    def close(self) -> None:
        """Close streams and channels. Calls in flight (a blocked watch) return within
        a poll interval; whatever is still running after a second is cancelled."""
        with self._calls_lock:
            if self._closed:
                return
            self._closed = True
            calls = set(self._calls)
        if os.getpid() != self._pid:
            return  # the loop thread is the parent's
        _, stuck = concurrent.futures.wait(calls, timeout=1.0)
        for future in stuck:
            future.cancel()
        future = asyncio.run_coroutine_threadsafe(self._a_close(), self._loop)
        try:
            future.result(timeout=5)
        except (concurrent.futures.TimeoutError, grpc.aio.AioRpcError):
            future.cancel()
        _LOOP.release(self._loop)

    # -- transaction internals (caller's thread) -----------------------------------------------

    def _begin(self) -> None:
        tx = self._tx()
        if tx is not None:
            tx.depth += 1
            tx.marks.append(len(tx.undo))
            return
        self._check_usable()
        self._lock_writes()
        try:
            self._run(self._sweep)
        except BaseException:
            self._write_lock.release()
            raise
        self._local.tx = _Tx()

    def _end(self, ok: bool) -> None:
        tx = self._tx()
        assert tx is not None, "transaction exit without enter"
        tx.depth -= 1
        if tx.depth > 0:
            mark = tx.marks.pop()
            if not ok:
                tx.rollback_to(mark)
            return
        self._local.tx = None
        try:
            if ok and tx.staged:
                self._run(self._tx_commit, tx)
        finally:
            self._write_lock.release()

    def _tx_current(self, tx: _Tx, key: str) -> Entry | None:
        """The key as the transaction sees it: its own staged write, else the snapshot."""
        staged = tx.staged.get(key)
        if staged is not None:
            return self._staged_entry(tx, key, staged)
        raw = self._key(key)
        if key in tx.seen or key in tx.listed or any(_within(raw, s, e) for s, e in tx.ranges):
            # Known from a listing: no second read, but its condition becomes a
            # compare of its own (a listing's keys may lose theirs to the op limit).
            tx.reads.setdefault(key, tx.listed.get(key, 0))
            return tx.seen.get(key, (None, 0))[0]
        found = self._run(self._tx_range, tx, raw, None)
        return found[0][0] if found else None

    def _staged_entry(self, tx: _Tx, key: str, staged: _Staged) -> Entry | None:
        if staged.value is None:
            return None
        base = staged.base
        if staged.keep and base is not None:
            return Entry(key, base.value, base.revision, base.create_revision, staged.expires_at)
        rev = tx.provisional()
        created = base.create_revision if base is not None else rev
        return Entry(key, staged.value, rev, created, staged.expires_at)

    def _stage(self, tx: _Tx, key: str, value: str | None, ttl: float | None) -> None:
        previous = tx.staged.get(key)
        if previous is not None:
            base = previous.base
        else:
            base = tx.seen[key][0] if key in tx.seen else None
        expires_at = None if ttl is None else self._clock() + ttl
        tx.stage(key, _Staged(value, ttl, expires_at, base))
