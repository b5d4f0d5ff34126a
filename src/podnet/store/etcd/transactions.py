"""transaction() on etcd, which has no interactive transactions: optimistic,
validated, all-or-nothing.

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
  StoreConflict (a TryAgainLater) is raised, naming the keys and prefixes that moved
  (conflicts.py); the block cannot be re-run for the caller, who simply retries the
  operation (CNI error 11 makes the runtime do so). A block that lists a prefix other
  writers write into conflicts with all of them: read broadly before the block, and
  only what the decision rests on inside it (the IPAM does, ipam/survey.py).
- Within one process, transactions and writes are serialised by a lock (as in
  SqliteStore), so threads of one agent never conflict with each other; only other
  processes' writes can make a commit fail.
- Limits: etcd allows max_txn_ops (default 128, etcd's --max-txn-ops) compares and
  writes per Txn. Point reads and ranges always get compares; keys seen only through
  list() get theirs while they fit, beyond that only (2) guards those prefixes (a key
  deleted from a large listed prefix meanwhile goes unnoticed). More than max_txn_ops
  staged writes is a StoreError.
- Inside a block, write methods return a provisional revision (snapshot + 1; before
  the block's first read, the newest revision this store has seen + 1): the real one
  exists only at commit.
- Round trips: each hand-off to the loop waits for a thread switch and etcd, which on
  a crowded node costs more than the request. A block takes its snapshot with its
  first read, not before a write (a write-only block is one Txn), sweeps our leases
  only when one is due, and read_together() sends its point reads and listings at
  once (prefetch(): an ADD reads its address and its block's claim in one).
- refresh() of an existing lease inside a block is sent after the commit (a
  keepalive is not transactional).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aetcd import rpc

from podnet.errors import PodnetError, StoreConflict, StoreError, TryAgainLater
from podnet.store.base import Entry
from podnet.store.etcd.channel import Channel
from podnet.store.etcd.conflicts import culprits, describe
from podnet.store.etcd.keys import Keyspace, mod_is, user_revision, within
from podnet.store.etcd.leases import Leases
from podnet.store.etcd.loop import Runner
from podnet.store.etcd.operations import Operations
from podnet.store.etcd.tx import Staged, Tx


class Transactions:
    """The open transactions of one store's threads (one each), and the lock that
    serialises them with the store's plain writes. Methods taking a Tx are the Store
    methods as they behave inside a block."""

    def __init__(
        self,
        runner: Runner,
        channel: Channel,
        keys: Keyspace,
        leases: Leases,
        ops: Operations,
        clock: Callable[[], float],
        max_txn_ops: int,
    ) -> None:
        self._runner = runner
        self._channel = channel
        self._keys = keys
        self._leases = leases
        self._ops = ops
        self._clock = clock
        self._max_ops = max_txn_ops
        self._write_lock = threading.Lock()
        self._local = threading.local()

    def current(self) -> Tx | None:
        return getattr(self._local, "tx", None)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the write lock for a plain write."""
        self._lock_writes()
        try:
            yield
        finally:
            self._write_lock.release()

    def _lock_writes(self) -> None:
        wait = self._channel.timeout * 10
        if not self._write_lock.acquire(timeout=wait):
            raise TryAgainLater(f"{self._runner.name} is busy: no write lock after {wait:.0f}s")

    def begin(self) -> None:
        tx = self.current()
        if tx is not None:
            tx.depth += 1
            tx.marks.append(len(tx.undo))
            return
        self._runner.check_usable()
        self._lock_writes()
        try:
            if not self._leases.none_due():
                self._runner.run(self._leases.sweep)
        except BaseException:
            self._write_lock.release()
            raise
        self._local.tx = Tx(floor=self._channel.newest)

    def end(self, ok: bool) -> None:
        tx = self.current()
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
                self._runner.run(self._commit, tx)
        finally:
            self._write_lock.release()

    # -- the Store methods inside a block (caller's thread) ---------------------------------

    def get(self, tx: Tx, key: str) -> Entry | None:
        """The key as the transaction sees it: its own staged write, else the snapshot."""
        staged = tx.staged.get(key)
        if staged is not None:
            return self._staged_entry(tx, key, staged)
        if self._knows(tx, key):
            # Known from a listing: no second read, but its condition becomes a
            # compare of its own (a listing's keys may lose theirs to the op limit).
            tx.reads.setdefault(key, tx.listed.get(key, 0))
            return tx.seen.get(key, (None, 0))[0]
        found = self._runner.run(self._range, tx, self._keys.key(key), None)
        return found[0][0] if found else None

    def _knows(self, tx: Tx, key: str) -> bool:
        """Whether the block read `key` already (by key or in a listing)."""
        if key in tx.staged or key in tx.seen or key in tx.listed:
            return True
        raw = self._keys.key(key)
        return any(within(raw, s, e) for s, e in tx.ranges)

    def list(self, tx: Tx, prefix: str) -> list[Entry]:
        start, end = self._keys.range(prefix)
        return self._overlay(tx, prefix, self._runner.run(self._range, tx, start, end))

    def read_together(self, tx: Tx, reads: Sequence[tuple[str, str]]) -> list[Any]:
        """Store.read_together inside a block: what the block read already is answered
        here, the rest is read in one hand-off (_ranges), each read then counting as
        the block's own (compared at commit)."""
        spans: list[tuple[bytes, bytes | None]] = []
        for kind, arg in reads:
            if kind != "get":
                spans.append(self._keys.range(arg))
            elif not self._knows(tx, arg):
                spans.append((self._keys.key(arg), None))
        fetched = self._runner.run(self._ranges, tx, spans) if spans else []
        listings = iter(found for (_, end), found in zip(spans, fetched, strict=True) if end is not None)
        return [self.get(tx, arg) if kind == "get" else self._overlay(tx, arg, next(listings))
                for kind, arg in reads]

    def _overlay(self, tx: Tx, prefix: str, read: list[tuple[Entry, int]]) -> list[Entry]:
        """A listing as the block sees it: what was read, with its own staged writes."""
        found = {e.key: e for e, _ in read}
        for key, staged in tx.staged.items():
            if key.startswith(prefix):
                entry = self._staged_entry(tx, key, staged)
                if entry is None:
                    found.pop(key, None)
                else:
                    found[key] = entry
        return [found[k] for k in sorted(found)]

    def revision(self, tx: Tx) -> int:
        if tx.rev is None:
            self._runner.run(self._snapshot, tx)
        writes = any(not s.keep for s in tx.staged.values())
        return user_revision(tx.provisional() if writes else tx.rev or 0)

    def put(self, tx: Tx, key: str, value: str, ttl: float | None) -> int:
        self._stage(tx, key, value, ttl)
        return tx.provisional()

    def compare_and_put(
        self, tx: Tx, key: str, value: str, expected_revision: int, ttl: float | None
    ) -> int | None:
        current = self.get(tx, key)
        if (current.revision if current else 0) != expected_revision:
            return None
        self._stage(tx, key, value, ttl)
        return tx.provisional()

    def delete(self, tx: Tx, key: str, expected_revision: int | None) -> bool:
        current = self.get(tx, key)
        if current is None or (
            expected_revision is not None and current.revision != expected_revision
        ):
            return False
        self._stage(tx, key, None, None)
        return True

    def delete_prefix(self, tx: Tx, prefix: str) -> int:
        victims = self.list(tx, prefix)
        for entry in victims:
            self._stage(tx, entry.key, None, None)
        return len(victims)

    def refresh(self, tx: Tx, key: str, ttl: float) -> bool:
        current = self.get(tx, key)
        if current is None:
            return False
        staged = tx.staged.get(key)
        if staged is not None and not staged.keep:
            tx.stage(key, Staged(staged.value, ttl, self._clock() + ttl, staged.base))
            return True
        lease_id = tx.seen.get(key, (None, 0))[1]
        same = self._runner.run(self._leases.same_ttl, lease_id, ttl) if lease_id else False
        if same:
            tx.stage(key, Staged(current.value, ttl, self._clock() + ttl, current, keep=lease_id))
        else:
            self._stage(tx, key, current.value, ttl)
        return True

    def _staged_entry(self, tx: Tx, key: str, staged: Staged) -> Entry | None:
        if staged.value is None:
            return None
        base = staged.base
        if staged.keep and base is not None:
            return Entry(key, base.value, base.revision, base.create_revision, staged.expires_at)
        rev = tx.provisional()
        created = base.create_revision if base is not None else rev
        return Entry(key, staged.value, rev, created, staged.expires_at)

    def _stage(self, tx: Tx, key: str, value: str | None, ttl: float | None) -> None:
        previous = tx.staged.get(key)
        if previous is not None:
            base = previous.base
        else:
            base = tx.seen[key][0] if key in tx.seen else None
        expires_at = None if ttl is None else self._clock() + ttl
        tx.stage(key, Staged(value, ttl, expires_at, base))

    # -- snapshot reads, on the loop ----------------------------------------------------------

    async def _range(self, tx: Tx, start: bytes, end: bytes | None) -> list[tuple[Entry, int]]:
        """A read inside a transaction: at the snapshot revision (the first read sets it)."""
        return (await self._ranges(tx, [(start, end)]))[0]

    async def _ranges(self, tx: Tx, spans: list[tuple[bytes, bytes | None]]) -> list[list[tuple[Entry, int]]]:
        """Several reads at once. Before the block has a snapshot they are sent at the
        head and may be answered at different revisions: the snapshot is then the
        oldest of them, so a listing's compare (nothing in it changed after the
        snapshot) covers whatever any of them could have missed. A change between
        the oldest and a newer answer only fails the commit (a retry), never hides."""
        resps = await asyncio.gather(*(self._fetch(tx, start, end) for start, end in spans))
        if tx.rev is None:
            tx.rev = min(int(resp.header.revision) for resp in resps)
        return [await self._record(tx, start, end, resp) for (start, end), resp in zip(spans, resps, strict=True)]

    async def _fetch(self, tx: Tx, start: bytes, end: bytes | None) -> Any:
        request = rpc.RangeRequest(key=start, revision=tx.rev or 0)
        if end is not None:
            request.range_end = end
        try:
            resp = await self._channel.kv("Range", request, "a read")
        except StoreError as exc:
            if "compacted" in str(exc):
                raise TryAgainLater(
                    "the transaction's snapshot was compacted away", "retry the operation"
                ) from exc
            raise
        return resp

    async def _record(self, tx: Tx, start: bytes, end: bytes | None, resp: Any) -> list[tuple[Entry, int]]:
        """What the block saw, to compare at commit; an expired key counts as absent."""
        found = await self._leases.entries(resp.kvs)
        visible = {entry.key: entry.revision for entry, _ in found}
        name = self._keys.name
        if end is None:
            tx.reads.setdefault(name(start), visible.get(name(start), 0))
        else:
            tx.ranges.add((start, end))
            for kv in resp.kvs:
                tx.listed.setdefault(name(kv.key), visible.get(name(kv.key), 0))
        for entry, lease_id in found:
            tx.seen.setdefault(entry.key, (entry, lease_id))
        if end is None and not found:
            tx.seen.setdefault(name(start), (None, 0))
        return found

    async def _snapshot(self, tx: Tx) -> None:
        if tx.rev is None:
            tx.rev = await self._ops.head()

    # -- the commit, on the loop ----------------------------------------------------------------

    async def _commit(self, tx: Tx) -> None:
        writes = sorted((k, s) for k, s in tx.staged.items() if not s.keep)
        keeps = [(k, s) for k, s in tx.staged.items() if s.keep]
        if writes:
            await self._send(tx, writes)
        for _key, staged in keeps:
            assert staged.ttl is not None
            await self._leases.renew(staged.keep, staged.ttl)

    def _compares(self, tx: Tx) -> list[Any]:
        """What must still hold at commit for the block's reads to be true."""
        compares = [mod_is(self._keys.key(k), rev) for k, rev in sorted(tx.reads.items())]
        if tx.ranges:
            assert tx.rev is not None  # set by the reads that listed them
            compares += [
                rpc.Compare(
                    key=s,
                    range_end=e,
                    target=rpc.Compare.MOD,
                    result=rpc.Compare.LESS,
                    mod_revision=tx.rev + 1,
                )
                for s, e in sorted(tx.ranges)
            ]
        if len(compares) > self._max_ops:
            raise StoreError(
                f"transaction read {len(compares)} keys and prefixes; etcd allows "
                f"{self._max_ops} compares per transaction (--max-txn-ops)"
            )
        listed = [(k, r) for k, r in sorted(tx.listed.items()) if k not in tx.reads]
        if len(compares) + len(listed) <= self._max_ops:
            compares += [mod_is(self._keys.key(k), rev) for k, rev in listed]
        return compares

    async def _send(self, tx: Tx, writes: list[tuple[str, Staged]]) -> None:
        """The block's writes in one Txn guarded by _compares; nothing written if any fails."""
        if len(writes) > self._max_ops:
            raise StoreError(
                f"transaction writes {len(writes)} keys; etcd allows {self._max_ops} "
                "per transaction (--max-txn-ops)"
            )
        compares = self._compares(tx)
        leased = [(k, s.ttl) for k, s in writes if s.value is not None and s.ttl is not None]
        granted = await asyncio.gather(*(self._leases.grant(ttl) for _, ttl in leased))
        leases = {k: lease for (k, _), lease in zip(leased, granted, strict=True)}
        ops = []
        for key, staged in writes:
            raw = self._keys.key(key)
            if staged.value is None:
                delete = rpc.DeleteRangeRequest(key=raw, prev_kv=True)
                ops.append(rpc.RequestOp(request_delete_range=delete))
            else:
                lease = leases.get(key)
                put = rpc.PutRequest(key=raw, value=staged.value.encode(), prev_kv=True)
                put.lease = lease.id if lease else 0
                ops.append(rpc.RequestOp(request_put=put))
        request = rpc.TxnRequest(compare=compares, success=ops)
        try:
            resp = await self._channel.kv("Txn", request, "a transaction", resend=False)
        except BaseException:
            await self._leases.forget(leases.values())
            raise
        if not resp.succeeded:
            await self._leases.forget(leases.values())
            seen = {**tx.listed, **tx.reads}
            try:
                found = await culprits(self._channel, self._keys, seen, tx.ranges, tx.rev or 0, self._max_ops)
            except PodnetError:  # the explanation is a courtesy: the conflict stands
                found = None
            raise StoreConflict(
                f"transaction conflict: a key it read was changed by another client ({describe(found)})",
                "nothing was written; retry the operation",
            )
        for (key, _), result in zip(writes, resp.responses, strict=True):
            if result.HasField("response_put"):
                prev = result.response_put.prev_kv
                self._leases.adopt(
                    leases.get(key), prev if result.response_put.HasField("prev_kv") else None
                )
            else:
                for kv in result.response_delete_range.prev_kvs:
                    self._leases.adopt(None, kv)
        await self._ops.compact(resp.header.revision)
