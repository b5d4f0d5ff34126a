"""EtcdStore: the Store API, composed of the package's parts (see __init__.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from podnet.errors import InvalidConfig, StoreError
from podnet.store.base import Entry, Event, Store, check_key, check_reads, check_ttl
from podnet.store.etcd.channel import Channel, parse_endpoints
from podnet.store.etcd.keys import Keyspace, user_revision
from podnet.store.etcd.leases import Leases
from podnet.store.etcd.loop import Runner
from podnet.store.etcd.operations import Operations
from podnet.store.etcd.transactions import Transactions
from podnet.store.etcd.watch import Watches

DEFAULT_PREFIX = "/podnet/"


class EtcdStore(Store):
    """Store on an etcd cluster, failing over between its members (package docstring).

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
        watch_batch: float = 0.0,
        history: int | None = None,
        max_txn_ops: int = 128,
    ) -> None:
        if "\0" in prefix:
            raise InvalidConfig(f"invalid etcd prefix {prefix!r}: contains NUL")
        self.endpoints = parse_endpoints(endpoints)
        self.prefix = prefix
        timeout = max(0.05, timeout)
        connect_timeout = max(0.01, min(connect_timeout, timeout))
        keys = Keyspace(prefix)
        self._channel = Channel(self.endpoints, timeout, connect_timeout)
        leases = Leases(self._channel, keys, clock)
        history = None if history is None else max(1, history)
        self._ops = Operations(self._channel, keys, leases, history)
        self._runner = Runner(repr(self), timeout)
        self._txs = Transactions(
            self._runner, self._channel, keys, leases, self._ops, clock, max(1, max_txn_ops)
        )
        poll = max(0.001, poll_interval)
        self._watches = Watches(
            self._runner, self._channel, keys, leases, self._ops, poll, steady=clock is time.time,
            batch=max(0.0, watch_batch),
        )

    def __repr__(self) -> str:
        return f"EtcdStore({self.endpoints!r}, prefix={self.prefix!r})"

    @property
    def endpoint(self) -> str:
        """The member this store currently talks to (the last one that answered)."""
        return self.endpoints[self._channel.current]

    def get(self, key: str) -> Entry | None:
        check_key(key)
        tx = self._txs.current()
        if tx is None:
            return self._runner.run(self._ops.get, key)
        return self._txs.get(tx, key)

    def list(self, prefix: str) -> list[Entry]:
        tx = self._txs.current()
        if tx is None:
            return self._runner.run(self._ops.list, prefix)[0]
        return self._txs.list(tx, prefix)

    def list_hint(self, prefix: str) -> list[Entry]:
        """list, without asking the server when other clients' leases run out (one
        LeaseTimeToLive per such lease whose known expiry is near: 50 agents listing
        50 nodes' claims and leases made 400 a second). Inside a transaction, list."""
        if self._txs.current() is not None:
            return self.list(prefix)
        return self._listed(prefix, hint=True)[0]

    def read_together(self, reads: Sequence[tuple[str, str]]) -> list[Any]:
        """The reads concurrently, in one hand-off to the loop (an ADD's survey made
        three round trips one after another). Inside a transaction too, as the
        block's own reads (list_hint is list there)."""
        check_reads(reads)
        for kind, arg in reads:
            if kind == "get":
                check_key(arg)
        tx = self._txs.current()
        if tx is not None:
            return self._txs.read_together(tx, reads)
        return self._runner.run(self._read_together, tuple(reads))

    def prefetch(self, keys: Sequence[str]) -> None:
        """Store.prefetch: inside a transaction, the keys the block has not read yet,
        in one hand-off; outside one nothing is kept, so nothing is read."""
        tx = self._txs.current()
        if tx is not None:
            self.read_together([("get", key) for key in keys])

    async def _read_together(self, reads: tuple[tuple[str, str], ...]) -> list[Any]:
        async def one(kind: str, arg: str) -> Any:
            if kind == "get":
                return await self._ops.get(arg)
            return (await self._ops.list(arg, kind == "list_hint"))[0]

        return list(await asyncio.gather(*(one(kind, arg) for kind, arg in reads)))

    def revision(self) -> int:
        tx = self._txs.current()
        if tx is None:
            return user_revision(self._runner.run(self._ops.head))
        return self._txs.revision(tx)

    def snapshot(self, prefix: str) -> tuple[list[Entry], int]:
        """One Range: the listing and the revision it was read at."""
        if self._txs.current() is not None:
            return super().snapshot(prefix)
        return self._listed(prefix, hint=False)

    def snapshot_hint(self, prefix: str) -> tuple[list[Entry], int]:
        """snapshot, without asking when other clients' leases run out (list_hint)."""
        if self._txs.current() is not None:
            return super().snapshot(prefix)
        return self._listed(prefix, hint=True)

    def _listed(self, prefix: str, hint: bool) -> tuple[list[Entry], int]:
        """One Range outside a transaction: the entries and the revision, as user_revision."""
        entries, revision = self._runner.run(self._ops.list, prefix, hint)
        return entries, user_revision(revision)

    def put(self, key: str, value: str, ttl: float | None = None) -> int:
        check_key(key)
        check_ttl(ttl)
        tx = self._txs.current()
        if tx is not None:
            return self._txs.put(tx, key, value, ttl)
        with self._txs.exclusive():
            return self._runner.run(self._ops.put, key, value, ttl)

    def compare_and_put(
        self, key: str, value: str, expected_revision: int, ttl: float | None = None
    ) -> int | None:
        check_key(key)
        check_ttl(ttl)
        tx = self._txs.current()
        if tx is not None:
            return self._txs.compare_and_put(tx, key, value, expected_revision, ttl)
        with self._txs.exclusive():
            return self._runner.run(self._ops.compare_and_put, key, value, expected_revision, ttl)

    def delete(self, key: str, expected_revision: int | None = None) -> bool:
        check_key(key)
        tx = self._txs.current()
        if tx is not None:
            return self._txs.delete(tx, key, expected_revision)
        with self._txs.exclusive():
            return self._runner.run(self._ops.delete, key, expected_revision)

    def delete_prefix(self, prefix: str) -> int:
        tx = self._txs.current()
        if tx is not None:
            return self._txs.delete_prefix(tx, prefix)
        with self._txs.exclusive():
            return self._runner.run(self._ops.delete_prefix, prefix)

    def refresh(self, key: str, ttl: float) -> bool:
        check_key(key)
        check_ttl(ttl)
        tx = self._txs.current()
        if tx is not None:
            return self._txs.refresh(tx, key, ttl)
        with self._txs.exclusive():
            return self._runner.run(self._ops.refresh, key, ttl)

    def watch(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        return self._watch(prefix, from_revision, timeout, settle=False)

    def watch_hint(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        """watch, whose empty answer after the timeout rests on the kept stream alone:
        no progress request (Store.watch_hint)."""
        return self._watch(prefix, from_revision, timeout, settle=True)

    def _watch(self, prefix: str, from_revision: int, timeout: float, settle: bool) -> list[Event]:
        if self._txs.current() is not None:
            raise StoreError("watch() inside a transaction cannot see anything it would wait for")
        deadline = None
        if timeout > 0:  # (0: exact up to the cluster's head, a read only the loop makes)
            self._runner.check_usable()
            deadline = time.monotonic() + timeout
            found = self._watches.wait_here(prefix, from_revision, deadline, settle)
            if found is not None:
                return found
        return self._runner.run(
            self._watches.watch, prefix, from_revision, timeout, deadline, wait=max(0.0, timeout)
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[EtcdStore]:
        self._txs.begin()
        ok = False
        try:
            yield self
            ok = True
        finally:
            self._txs.end(ok)  # commits (and may raise TryAgainLater) only if ok

    def close(self) -> None:
        """Close streams and channels. A blocked watch is woken and returns; whatever
        is still running after a second is cancelled."""
        self._runner.close(self._close, wake=self._watches.wake_all)

    async def _close(self) -> None:
        await self._watches.close()
        await self._channel.close()
