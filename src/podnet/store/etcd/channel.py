"""Talking to the etcd members: endpoints, one gRPC channel per member, failover.

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
is re-opened on another member from the last revision it delivered (watch.py): no
event is lost or repeated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from podnet.errors import InvalidConfig, StoreError, TryAgainLater

_T = TypeVar("_T")

DEFAULT_PORT = 2379
# Every request asks the member to refuse at once when it has no leader (etcd's
# clientv3.WithRequireLeader), instead of hanging until its own timeout.
METADATA = (("hasleader", "true"),)
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


class Conn:
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


def store_error(exc: grpc.aio.AioRpcError, what: str) -> StoreError:
    return StoreError(f"etcd refused {what}: {exc.details()}", f"gRPC status {exc.code().name}")


class Channel:
    """The members of one store and which of them it talks to now (loop thread only,
    but for `current`, which any thread may read).

    timeout: how long one request may take, failover included; connect_timeout: how
    long to wait for one member to accept a connection.
    """

    def __init__(self, endpoints: list[str], timeout: float, connect_timeout: float) -> None:
        self.conns = [Conn(target) for target in endpoints]
        self.current = 0
        self.newest = 0  # the newest revision any KV answer carried (a block's provisional one)
        self.timeout = timeout
        self.connect_timeout = connect_timeout

    def advance(self, conn: Conn) -> None:
        """Use the next member from now on (unless another call already moved on)."""
        if self.conns[self.current] is conn:
            self.current = (self.current + 1) % len(self.conns)

    async def ready(self, conn: Conn, timeout: float) -> bool:
        """Whether conn's member accepts a connection within timeout. A refused
        connection fails at once; a dead channel is dropped (see Conn)."""
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

    async def call(
        self, request: Callable[[Conn, float], Awaitable[_T]], what: str, *, resend: bool = True
    ) -> _T:
        """One request with failover. resend=False: a request whose outcome became
        unknown is not sent again (raises TryAgainLater), for conditional writes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        attempt = max(self.timeout / 2, 0.05)
        failures: list[str] = []
        while True:
            reachable = False
            for _ in range(len(self.conns)):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                conn = self.conns[self.current]
                if not await self.ready(conn, min(remaining, self.connect_timeout)):
                    failures.append(f"{conn.target}: unreachable")
                    self.advance(conn)
                    continue
                reachable = True
                try:
                    return await request(conn, min(remaining, attempt))
                except grpc.aio.AioRpcError as exc:
                    if not _transient(exc):
                        raise
                    failures.append(f"{conn.target}: {exc.details()}")
                    self.advance(conn)
                    if not resend and not _not_applied(exc):
                        raise _Unsure(f"{what}: {exc.details()}") from exc
            if not reachable or loop.time() >= deadline:
                detail = "; ".join(failures[-len(self.conns) :])
                raise TryAgainLater(f"etcd unavailable: {what} failed on every member", detail)
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))

    async def kv(self, method: str, request: Any, what: str, *, resend: bool = True) -> Any:
        """A unary KV request (Range, Put, DeleteRange, Txn, Compact) with failover."""

        async def send(conn: Conn, timeout: float) -> Any:
            return await getattr(conn.kv, method)(request, timeout=timeout, metadata=METADATA)

        try:
            resp = await self.call(send, what, resend=resend)
        except _Unsure as exc:
            raise TryAgainLater(
                f"etcd did not confirm {what}; its outcome is unknown", str(exc)
            ) from exc
        except grpc.aio.AioRpcError as exc:
            raise store_error(exc, what) from exc
        self.newest = max(self.newest, int(resp.header.revision))
        return resp

    async def lease(self, method: str, request: Any, what: str) -> Any:
        """A unary Lease request with failover; gRPC errors are the caller's to map."""

        async def send(conn: Conn, timeout: float) -> Any:
            return await getattr(conn.lease, method)(request, timeout=timeout, metadata=METADATA)

        return await self.call(send, what)

    async def close(self) -> None:
        for conn in self.conns:
            await conn.drop()
