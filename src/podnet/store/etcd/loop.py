"""The synchronous, thread-safe Store API over asynchronous gRPC.

Threads: all gRPC work runs on one private asyncio loop thread, shared by the
process's EtcdStores (aetcd's generated etcd v3 stubs on grpc.aio); the Store API is
synchronous and thread-safe. A store cannot be used by a forked child: open a new
one there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc

from podnet.errors import StoreError, TryAgainLater

_T = TypeVar("_T")


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


class Runner:
    """One store's door to the loop thread: runs its coroutines for any caller thread
    and keeps the calls in flight, so that close() can end them. `name` is the store's
    repr, for error messages; `timeout` its request timeout."""

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self._timeout = timeout
        self._calls: set[concurrent.futures.Future[Any]] = set()  # in flight, for close()
        self._calls_lock = threading.Lock()
        self.closed = False
        self._pid = os.getpid()
        self._loop = _LOOP.acquire()

    def check_usable(self) -> None:
        if self.closed:
            raise StoreError(f"{self.name} is closed")
        if os.getpid() != self._pid:
            raise StoreError(f"{self.name} was opened by another process: open a new store here")

    def run(self, fn: Callable[..., Awaitable[_T]], *args: Any, wait: float = 0.0) -> _T:
        """Run fn(*args) on the loop and wait for it. Every coroutine bounds itself;
        the guard here only catches a bug that would otherwise hang the caller."""
        with self._calls_lock:
            self.check_usable()
            future = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)  # type: ignore[arg-type]
            self._calls.add(future)
        try:
            return future.result(timeout=wait + self._timeout * 8 + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TryAgainLater(f"{self.name}: no answer in time") from None
        except concurrent.futures.CancelledError:
            raise StoreError(f"{self.name} was closed during the call") from None
        finally:
            with self._calls_lock:
                self._calls.discard(future)

    def close(
        self, finish: Callable[[], Coroutine[Any, Any, None]], wake: Callable[[], None] | None = None
    ) -> None:
        """Stop taking calls, run wake() on the loop (calls in flight that wait, such
        as a blocked watch, return), then finish() once they did. Whatever is still
        running after a second is cancelled."""
        with self._calls_lock:
            if self.closed:
                return
            self.closed = True
            calls = set(self._calls)
        if os.getpid() != self._pid:
            return  # the loop thread is the parent's
        if wake is not None:
            self._loop.call_soon_threadsafe(wake)
        _, stuck = concurrent.futures.wait(calls, timeout=1.0)
        for future in stuck:
            future.cancel()
        future = asyncio.run_coroutine_threadsafe(finish(), self._loop)
        try:
            future.result(timeout=5)
        except (concurrent.futures.TimeoutError, grpc.aio.AioRpcError):
            future.cancel()
        _LOOP.release(self._loop)
