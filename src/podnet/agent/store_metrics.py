"""The latency and errors of the agent's store calls, measured by a thin proxy around
every store the agent opens (CniService's one warm handle per store: the daemon hands
it `StoreMetrics.timed` as its `wrap_store`), so no call site has to time itself.

Cheap by construction: each call costs two `perf_counter()` reads and one histogram
observe through a child bound once per op (no label look-up, no string built); only
a failing call pays for its label (the exception's class name). `watch` long-polls
(it blocks up to its timeout when nothing happens): it has its own op label so it
never swamps the latency of the others. A `transaction` is timed from its start to
its commit or rollback (the caller's work inside included: the time the store is held),
and the calls inside it are timed as well.

Semantics unchanged: every call goes to the backend with the same arguments and its
result or exception (re-raised as is) comes back; attributes outside the Store
interface are looked up on the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from podnet.store.base import Entry, Event, Store

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

_T = TypeVar("_T")
OPS = ("get", "list", "snapshot", "put", "compare_and_put", "delete", "delete_prefix", "refresh", "revision",
       "watch", "transaction", "read_together")
# SQLite answers in ~50 us, etcd in ~1 ms over a LAN; a watch waits up to its timeout.
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                 5.0, 10.0)


class StoreMetrics:
    """`podnet_store_request_duration_seconds{op}` and `podnet_store_errors_total{op,error}`
    in one agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        latency = Histogram("podnet_store_request_duration_seconds", "the agent's store calls, by operation "
                            "(watch: a long poll, apart)", ["op"], registry=registry, buckets=STORE_BUCKETS)
        self.observe: dict[str, Callable[[float], None]] = {op: latency.labels(op).observe for op in OPS}
        self.errors = Counter("podnet_store_errors", "the agent's store calls that raised, by operation and "
                              "exception type", ["op", "error"], registry=registry)

    def timed(self, store: Store) -> Store:
        """`store` behind the timing proxy (a store already behind it is returned as is)."""
        return store if isinstance(store, TimedStore) else TimedStore(store, self)

    def failed(self, op: str, exc: BaseException) -> None:
        self.errors.labels(op, type(exc).__name__).inc()


class TimedStore(Store):
    """A Store that times every call of the one it wraps (module docstring)."""

    def __init__(self, inner: Store, metrics: StoreMetrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self._observe = metrics.observe

    def _call(self, op: str, fn: Callable[..., _T], *args: Any) -> _T:
        started = perf_counter()
        try:
            return fn(*args)
        except Exception as exc:
            self._metrics.failed(op, exc)
            raise
        finally:
            self._observe[op](perf_counter() - started)

    def get(self, key: str) -> Entry | None:
        return self._call("get", self.inner.get, key)

    def list(self, prefix: str) -> list[Entry]:
        return self._call("list", self.inner.list, prefix)

    def list_hint(self, prefix: str) -> list[Entry]:
        return self._call("list", self.inner.list_hint, prefix)

    def read_together(self, reads: Sequence[tuple[str, str]]) -> list[Any]:
        return self._call("read_together", self.inner.read_together, reads)  # (etcd: at once)

    def prefetch(self, keys: Sequence[str]) -> None:
        self._call("read_together", self.inner.prefetch, keys)

    def put(self, key: str, value: str, ttl: float | None = None) -> int:
        return self._call("put", self.inner.put, key, value, ttl)

    def compare_and_put(self, key: str, value: str, expected_revision: int, ttl: float | None = None) -> int | None:
        return self._call("compare_and_put", self.inner.compare_and_put, key, value, expected_revision, ttl)

    def delete(self, key: str, expected_revision: int | None = None) -> bool:
        return self._call("delete", self.inner.delete, key, expected_revision)

    def delete_prefix(self, prefix: str) -> int:
        return self._call("delete_prefix", self.inner.delete_prefix, prefix)

    def refresh(self, key: str, ttl: float) -> bool:
        return self._call("refresh", self.inner.refresh, key, ttl)

    def watch(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        return self._call("watch", self.inner.watch, prefix, from_revision, timeout)

    def watch_hint(self, prefix: str, from_revision: int, timeout: float) -> list[Event]:
        return self._call("watch", self.inner.watch_hint, prefix, from_revision, timeout)

    def revision(self) -> int:
        return self._call("revision", self.inner.revision)

    def snapshot(self, prefix: str) -> tuple[list[Entry], int]:
        return self._call("snapshot", self.inner.snapshot, prefix)  # a backend may do it its own way (etcd)

    def snapshot_hint(self, prefix: str) -> tuple[list[Entry], int]:
        return self._call("snapshot", self.inner.snapshot_hint, prefix)

    def transaction(self) -> AbstractContextManager[Store]:
        return _TimedTransaction(self)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        """What a backend offers beyond the Store interface (its URL, path...)."""
        if name == "inner":  # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"TimedStore({self.inner!r})"


class _TimedTransaction:
    """The backend's transaction, timed from enter to exit; the block gets the proxy, so
    the calls inside it are timed too (same thread, same backend transaction)."""

    __slots__ = ("_cm", "_started", "_store")

    def __init__(self, store: TimedStore) -> None:
        self._store = store
        self._cm: AbstractContextManager[Store] | None = None
        self._started = 0.0

    def __enter__(self) -> Store:
        self._started = perf_counter()
        try:
            self._cm = self._store.inner.transaction()
            self._cm.__enter__()
        except Exception as exc:
            self._done(exc)
            raise
        return self._store

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        assert self._cm is not None
        try:
            return self._cm.__exit__(exc_type, exc, tb)
        except Exception as raised:
            if raised is not exc:  # the commit or rollback failed, not the block
                self._store._metrics.failed("transaction", raised)
            raise
        finally:
            self._store._observe["transaction"](perf_counter() - self._started)

    def _done(self, exc: Exception) -> None:
        """The transaction could not begin (its exit will not run)."""
        self._store._metrics.failed("transaction", exc)
        self._store._observe["transaction"](perf_counter() - self._started)
