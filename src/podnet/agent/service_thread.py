"""The background thread of an agent service (agent/ops.py)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from podnet.agent.jitter import jittered
from podnet.errors import PodnetError
from podnet.store import RevisionCompacted, Store
from podnet.store.base import Event


class ServiceThread:
    """The background half every agent service shares: one named daemon thread that
    runs `target` until `stopping` is set. Threads are born in their creator's network
    namespace; the agent starts services from its main thread, which never leaves the
    agent's own namespace, so every socket such a thread opens lives there too."""

    def __init__(self, name: str, target: Callable[[], None], join_timeout: float = 10.0) -> None:
        self.name = name
        self.target = target
        self.join_timeout = join_timeout
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(target=self.target, name=self.name, daemon=True)
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the loop to end without waiting for it: the agent asks every service
        first, so their last waits overlap instead of adding up."""
        self.stopping.set()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(self.join_timeout)
            self._thread = None


class NodeLoopService:
    """The life of a service whose loop runs on cluster nodes only (`node` set, from
    `--node`): started there, asked to stop first, then joined."""

    node: str | None
    _loop: ServiceThread

    def start(self) -> None:
        if self.node is not None:
            self._loop.start()

    def request_stop(self) -> None:
        self._loop.signal_stop()

    def stop(self) -> None:
        self._loop.stop()


def list_then_watch(
    stopping: threading.Event,
    prefix: str,
    store: Callable[[], Store | None],
    converge: Callable[[bool, list[Event] | None], int],
    resync_seconds: float,
    watch_timeout: float,
    log: logging.Logger,
    max_backoff: float = 30.0,
    spread: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """The loop of a service that keeps the kernel in step with a store prefix:
    converge from a snapshot (`converge(periodic, events)` returns the revision it
    reflects), then watch from that revision; converge again on any event, and every
    `resync_seconds` +- jitter.SHARE, drawn anew each pass (repairing what was
    changed by hand; the agents of a lab start together and would otherwise list
    their prefixes in the same second for good). `events` are the changes
    seen since the last converge, or None when the caller must list the prefix again
    (first pass, periodic pass, after a failure or a compacted history). Failures back
    off and retry; no store yet (`store()` None) is waited for.

    It is a watch_hint: a timeout with nothing asks the store's server nothing (on
    etcd, an idle 50-node lab's agents made 300 progress requests a second)."""
    revision, dirty, next_pass, backoff = 0, True, float("-inf"), 1.0
    events: list[Event] | None = None
    while not stopping.is_set():
        now = clock()
        due = now >= next_pass
        if dirty or due:
            if due:
                next_pass = now + jittered(resync_seconds, spread=spread)
            try:
                revision = converge(due, None if due else events)
                events = []
                dirty, backoff = False, 1.0
            except (PodnetError, OSError, ValueError) as exc:
                log.warning("cannot converge %s: %s", prefix, getattr(exc, "msg", exc))
                events = None
                stopping.wait(backoff)
                backoff = min(backoff * 2, max_backoff)
                continue
        handle = store()
        if handle is None:  # no store yet: look again later, converge once it appears
            stopping.wait(watch_timeout)
            dirty = store() is not None
            continue
        try:
            seen = handle.watch_hint(prefix, revision, watch_timeout)
        except RevisionCompacted:
            dirty, events = True, None
            continue
        except PodnetError as exc:
            log.warning("watching %s failed: %s", prefix, exc.msg)
            dirty, events = True, None
            stopping.wait(backoff)
            continue
        if seen:
            dirty = True
            revision = max(revision, max(e.revision for e in seen))
            if events is not None:
                events.extend(seen)


class ChangeWait:
    """A loop's sleep that ends early when something under `prefix` changes: a
    watch_hint on it from the revision the loop's last read reflects (a quiet timeout
    asks the store's server nothing). Why: the readiness and clusterset loops polled
    every second (a revision and a listing per agent): an idle 50-node etcd lab served
    160 reads a second, 80 without them. Its own stream, not the shared "": the pods
    of a big lab's ADDs would wake it for nothing."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.at: int | None = None  # the revision the last read reflects; None: read again

    def mark(self, revision: int) -> None:
        """The loop read the prefix at `revision` (store.snapshot's): changes after it count."""
        self.at = revision

    def wait(self, store: Store, timeout: float, stopping: threading.Event) -> bool:
        """Sleep up to `timeout`; True when the prefix must be read again (a change
        under it, a compacted history, a failing store)."""
        if self.at is None:
            stopping.wait(timeout)
            return True
        try:
            seen = store.watch_hint(self.prefix, self.at, timeout)
        except RevisionCompacted:
            self.at = None
            return True
        except PodnetError:
            self.at = None
            stopping.wait(timeout)
            return True
        if seen:
            self.at = max(self.at, max(event.revision for event in seen))
        return bool(seen)
