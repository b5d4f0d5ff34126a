"""The Store's reads and writes outside a transaction, each one etcd request (or Txn),
run on the loop thread; and compaction after writes, when the store keeps `history`.

compare_and_put is one Txn comparing the mod revision (expected 0: create revision
0). refresh() is a lease keepalive when the key's lease has the requested TTL: the
revision does not change. etcd cannot change a lease's TTL nor attach a lease without
a write, so refresh() of a key with a different TTL, or with no TTL, re-puts the same
value on a new lease (guarded by the key's revision): the revision changes.
"""

from __future__ import annotations

import contextlib

from aetcd import rpc

from podnet.errors import StoreError, TryAgainLater
from podnet.store.base import Entry
from podnet.store.etcd.channel import Channel
from podnet.store.etcd.keys import Keyspace, mod_is
from podnet.store.etcd.leases import Leases


class Operations:
    """Plain operations of one store. `compacted`: the revision up to which its etcd
    history is known to be compacted (by us, or seen from a watch)."""

    def __init__(
        self, channel: Channel, keys: Keyspace, leases: Leases, history: int | None
    ) -> None:
        self._channel = channel
        self._keys = keys
        self._leases = leases
        self._history = history
        self.compacted = 0

    async def compact(self, revision: int) -> None:
        """Keep `history` revisions, compacting in batches of a tenth (as SqliteStore)."""
        if self._history is None or revision - self.compacted <= self._history * 11 // 10:
            return
        target = revision - self._history
        with contextlib.suppress(StoreError):  # another client compacted further already
            await self._channel.kv(
                "Compact", rpc.CompactionRequest(revision=target), "a compaction"
            )
        self.compacted = max(self.compacted, target)

    async def head(self) -> int:
        resp = await self._channel.kv(
            "Range", rpc.RangeRequest(key=self._keys.prefix or b"\0", count_only=True), "a read"
        )
        return int(resp.header.revision)

    async def get(self, key: str) -> Entry | None:
        resp = await self._channel.kv("Range", rpc.RangeRequest(key=self._keys.key(key)), "a read")
        found = await self._leases.entries(resp.kvs)
        return found[0][0] if found else None

    async def list(self, prefix: str, hint: bool = False) -> tuple[list[Entry], int]:
        """The live entries under prefix and the revision read at. hint: other clients'
        lease expiry only from what is known already (EtcdStore.list_hint)."""
        start, end = self._keys.range(prefix)
        resp = await self._channel.kv("Range", rpc.RangeRequest(key=start, range_end=end), "a list")
        return [e for e, _ in await self._leases.entries(resp.kvs, ask=not hint)], int(resp.header.revision)

    async def put(self, key: str, value: str, ttl: float | None) -> int:
        await self._leases.sweep()
        lease = await self._leases.grant(ttl) if ttl is not None else None
        request = rpc.PutRequest(
            key=self._keys.key(key),
            value=value.encode(),
            lease=lease.id if lease else 0,
            prev_kv=True,
        )
        try:
            resp = await self._channel.kv("Put", request, "a put")
        except BaseException:
            await self._leases.forget([lease] if lease else [])
            raise
        self._leases.adopt(lease, resp.prev_kv if resp.HasField("prev_kv") else None)
        await self.compact(resp.header.revision)
        return int(resp.header.revision)

    async def compare_and_put(
        self, key: str, value: str, expected: int, ttl: float | None
    ) -> int | None:
        await self._leases.sweep()
        raw = self._keys.key(key)
        if expected == 0:
            compare = rpc.Compare(
                key=raw, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
            )
        else:
            compare = mod_is(raw, expected)
        lease = await self._leases.grant(ttl) if ttl is not None else None
        put = rpc.PutRequest(key=raw, value=value.encode(), lease=lease.id if lease else 0)
        put.prev_kv = True
        request = rpc.TxnRequest(compare=[compare], success=[rpc.RequestOp(request_put=put)])
        try:
            resp = await self._channel.kv("Txn", request, "a compare-and-put", resend=False)
        except BaseException:
            await self._leases.forget([lease] if lease else [])
            raise
        if not resp.succeeded:
            await self._leases.forget([lease] if lease else [])
            return None
        put_resp = resp.responses[0].response_put
        self._leases.adopt(lease, put_resp.prev_kv if put_resp.HasField("prev_kv") else None)
        await self.compact(resp.header.revision)
        return int(resp.header.revision)

    async def delete(self, key: str, expected: int | None) -> bool:
        await self._leases.sweep()
        raw = self._keys.key(key)
        op = rpc.DeleteRangeRequest(key=raw, prev_kv=True)
        if expected is None:
            resp = await self._channel.kv("DeleteRange", op, "a delete")
            deleted, prev = resp.deleted, list(resp.prev_kvs)
        else:
            request = rpc.TxnRequest(
                compare=[mod_is(raw, expected)], success=[rpc.RequestOp(request_delete_range=op)]
            )
            resp = await self._channel.kv("Txn", request, "a conditional delete", resend=False)
            if not resp.succeeded:
                return False
            inner = resp.responses[0].response_delete_range
            deleted, prev = inner.deleted, list(inner.prev_kvs)
        for kv in prev:
            self._leases.adopt(None, kv)
        if deleted:
            await self.compact(resp.header.revision)
        return deleted > 0

    async def delete_prefix(self, prefix: str) -> int:
        await self._leases.sweep()
        start, end = self._keys.range(prefix)
        resp = await self._channel.kv(
            "DeleteRange", rpc.DeleteRangeRequest(key=start, range_end=end), "a delete"
        )
        if resp.deleted:
            await self.compact(resp.header.revision)
        return int(resp.deleted)

    async def refresh(self, key: str, ttl: float) -> bool:
        await self._leases.sweep()
        raw = self._keys.key(key)
        for _ in range(3):
            resp = await self._channel.kv("Range", rpc.RangeRequest(key=raw), "a read")
            found = await self._leases.entries(resp.kvs)
            if not found:
                return False
            entry, lease_id = found[0]
            if lease_id:
                same = await self._leases.same_ttl(lease_id, ttl)
                if same is None:
                    return False
                if same:
                    return await self._leases.renew(lease_id, ttl)
            # No lease, or one of another TTL: a new lease needs a (guarded) write.
            if await self.compare_and_put(key, entry.value, entry.revision, ttl) is not None:
                return True
        raise TryAgainLater(f"key {key!r} kept changing while being refreshed")
