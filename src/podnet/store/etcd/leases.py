"""TTLs as etcd leases: grant, keepalive, revoke, and judging our own leases by our clock.

Every put with a ttl gets its own lease (see the package docstring). The server expires
leases by its own clock; the leases this store granted or refreshed itself are also
judged by the store's `clock`, so that a key whose TTL has passed is invisible at once
and its lease revoked on the store's next call that meets it (a prompt delete event).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aetcd import rpc

from podnet.errors import StoreError, TryAgainLater
from podnet.store.base import Entry
from podnet.store.etcd.channel import METADATA, Channel, Conn, store_error
from podnet.store.etcd.keys import Keyspace

_SLACK = 0.5  # server TTL beyond what ours would have left: another client renewed it
# A foreign lease's expiry, once looked up, is reused until this close to it: listing 50
# nodes' block claims cost 50 LeaseTimeToLive calls per listing (every ADD and every
# renewal of every node); a 50-node lab's ADD failed on one of them (Deadline Exceeded).
_FOREIGN_FRESH = 1.0
_FOREIGN_MAX = 4096  # cached foreign leases before the expired ones are dropped


@dataclass(slots=True)
class Lease:
    """A lease this store granted or refreshed: when it expires by our clock."""

    id: int
    requested: int  # the whole seconds we asked for
    granted: int  # what the server granted (it may raise short TTLs)
    expires_at: float  # by the store's clock
    renewed: float = field(default_factory=time.monotonic)


class Leases:
    """The leases of one store; `own` holds those it granted or refreshed (written on the loop thread only)."""

    def __init__(self, channel: Channel, keys: Keyspace, clock: Callable[[], float]) -> None:
        self._channel = channel
        self._keys = keys
        self._clock = clock
        self.own: dict[int, Lease] = {}
        self.foreign: dict[int, float] = {}  # another client's lease -> its expiry seen last, by our clock

    async def entries(self, kvs: Iterable[Any], ask: bool = True) -> list[tuple[Entry, int]]:
        """Live entries (and their lease) from etcd KeyValues: a key whose lease has
        expired, by our clock (our leases) or on the server (anyone's), is left out.
        ask=False: other clients' leases are not looked up; such a key is kept, with
        the expiry known already or None (the server removes it when it expires)."""
        kvs = list(kvs)
        now = self._clock()
        gone: set[int] = set()
        if any(kv.lease in self.own and self.own[kv.lease].expires_at <= now for kv in kvs):
            gone = await self.sweep()  # revoked, or renewed by someone else: settle it first
        foreign = {kv.lease for kv in kvs if kv.lease and kv.lease not in self.own} - gone
        known = await self._foreign_expiry(foreign, now) if ask else {}
        out: list[tuple[Entry, int]] = []
        for kv in kvs:
            expires_at: float | None = None
            if kv.lease:
                own = self.own.get(kv.lease)
                if own is not None:
                    if own.expires_at <= now:
                        continue
                    expires_at = own.expires_at
                elif kv.lease in gone:
                    continue  # ours, and revoked just now
                elif ask:
                    expires_at = known.get(kv.lease)
                    if expires_at is None:
                        continue  # gone on the server
                else:
                    seen = self.foreign.get(kv.lease)
                    expires_at = seen if seen is not None and seen > now else None
            entry = Entry(
                self._keys.name(kv.key),
                kv.value.decode(),
                kv.mod_revision,
                kv.create_revision,
                expires_at,
            )
            out.append((entry, kv.lease))
        return out

    async def _foreign_expiry(self, leases: set[int], now: float) -> dict[int, float]:
        """When other clients' `leases` expire, by our clock (absent: gone). Looked up
        on the server (whole seconds), and reused while more than _FOREIGN_FRESH is
        left: the holder may have renewed since, so a reused expiry is early, never
        late; the server, not this guess, removes an expired key."""
        stale = sorted(i for i in leases if self.foreign.get(i, now) - now <= _FOREIGN_FRESH)
        ttls = await asyncio.gather(*(self.time_to_live(i) for i in stale))
        if len(self.foreign) > _FOREIGN_MAX:
            self.foreign = {i: t for i, t in self.foreign.items() if t > now}
        for lease_id, left in zip(stale, ttls, strict=True):
            if left >= 0:
                self.foreign[lease_id] = now + left
            else:
                self.foreign.pop(lease_id, None)
        return {i: self.foreign[i] for i in leases if i in self.foreign}

    async def _lookup(self, lease_id: int) -> Any | None:
        """The server's LeaseTimeToLive answer; None if it knows no such lease."""
        try:
            return await self._channel.lease(
                "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=lease_id), "a lease lookup"
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise store_error(exc, "a lease lookup") from exc

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds the server still gives the lease; -1 if it is gone."""
        resp = await self._lookup(lease_id)
        return -1 if resp is None else int(resp.TTL)

    async def grant(self, ttl: float) -> Lease:
        want = max(1, math.ceil(ttl))
        try:
            resp = await self._channel.lease(
                "LeaseGrant", rpc.LeaseGrantRequest(TTL=want), "a lease"
            )
        except grpc.aio.AioRpcError as exc:
            raise store_error(exc, "a lease") from exc
        if resp.error:
            raise StoreError(f"etcd refused a lease: {resp.error}")
        return Lease(resp.ID, want, int(resp.TTL), self._clock() + ttl)

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._channel.lease(
                "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id), "a revoke"
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                raise store_error(exc, "a lease revoke") from exc

    async def forget(self, leases: Iterable[Lease]) -> None:
        """Revoke leases granted for a write that did not happen (best effort: they
        would expire anyway)."""
        for lease in leases:
            with contextlib.suppress(TryAgainLater, StoreError):
                await self.revoke(lease.id)

    async def _keepalive(self, lease_id: int) -> int:
        """One keepalive: the lease's new TTL, 0 if it had already expired."""

        async def send(conn: Conn, timeout: float) -> int:
            call = conn.lease.LeaseKeepAlive(timeout=timeout, metadata=METADATA)
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
            return await self._channel.call(send, "a lease keepalive")
        except grpc.aio.AioRpcError as exc:
            raise store_error(exc, "a lease keepalive") from exc

    def adopt(self, lease: Lease | None, replaced: Any = None) -> None:
        """After a write: track the new lease; forget the one the key had before (it
        holds nothing now and will simply expire on the server)."""
        if (
            replaced is not None
            and replaced.lease
            and (lease is None or replaced.lease != lease.id)
        ):
            self.own.pop(replaced.lease, None)
        if lease is not None:
            self.own[lease.id] = lease

    async def sweep(self) -> set[int]:
        """Revoke our leases whose TTL has passed by our clock: their keys become
        delete events now. A lease someone else renewed since is left to them (as a
        lease of theirs). Returns the leases that are gone."""
        now = self._clock()
        due = [lease for lease in self.own.values() if lease.expires_at <= now]
        gone: set[int] = set()
        for lease in due:
            if self.own.pop(lease.id, None) is None:
                continue  # another call is sweeping it
            left = await self.time_to_live(lease.id)
            if left >= 0 and left > lease.granted - (time.monotonic() - lease.renewed) + _SLACK:
                continue
            if left >= 0:
                await self.revoke(lease.id)
            gone.add(lease.id)
        return gone

    def expiry_from_any_thread(self) -> float | None:
        """until_next_expiry() asked from another thread than the loop's, which may be
        changing our leases meanwhile: then 0 (one looks due), and the loop decides."""
        try:
            return self.until_next_expiry()
        except RuntimeError:  # `own` changed size while looked through
            return 0.0

    def none_due(self) -> bool:
        """Whether none of our leases has run out by our clock (any thread): a
        transaction sweeps, a hand-off to the loop, only when one has."""
        left = self.expiry_from_any_thread()
        return left is None or left > 0

    def until_next_expiry(self) -> float | None:
        """Seconds until the first of our leases runs out by our clock (None: we hold
        none): a waiting watch wakes then to sweep it, instead of polling for it."""
        if not self.own:
            return None
        return min(lease.expires_at for lease in self.own.values()) - self._clock()

    async def same_ttl(self, lease_id: int, ttl: float) -> bool | None:
        """Whether the key's lease has the TTL refresh asks for (None: lease gone)."""
        want = max(1, math.ceil(ttl))
        own = self.own.get(lease_id)
        if own is not None:
            return own.requested == want
        resp = await self._lookup(lease_id)
        return None if resp is None or resp.TTL < 0 else int(resp.grantedTTL) == want

    async def renew(self, lease_id: int, ttl: float) -> bool:
        """Keep a lease alive; track it as ours with ttl from now."""
        granted = await self._keepalive(lease_id)
        if granted <= 0:
            self.own.pop(lease_id, None)
            return False
        self.own[lease_id] = Lease(lease_id, max(1, math.ceil(ttl)), granted, self._clock() + ttl)
        return True
