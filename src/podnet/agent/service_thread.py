"""The background thread of an agent service (agent/ops.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from podnet.errors import PodnetError
from podnet.store import RevisionCompacted, Store


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

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(self.join_timeout)
            self._thread = None


def list_then_watch(
    stopping: threading.Event,
    prefix: str,
    store: Callable[[], Store | None],
    converge: Callable[[bool], int],
    resync_seconds: float,
    watch_timeout: float,
    log: logging.Logger,
    max_backoff: float = 30.0,
) -> None:
    """The loop of a service that keeps the kernel in step with a store prefix:
    converge from a snapshot (`converge(full)` returns the snapshot's revision), then
    watch from that revision; converge again on any event, and fully every
    `resync_seconds` (repairing what was changed by hand). Failures back off and retry;
    no store yet (`store()` None) is waited for."""
    revision, dirty, last, backoff = 0, True, float("-inf"), 1.0
    while not stopping.is_set():
        due = time.monotonic() - last >= resync_seconds
        if dirty or due:
            last = time.monotonic() if due else last
            try:
                revision = converge(due)
                dirty, backoff = False, 1.0
            except (PodnetError, OSError, ValueError) as exc:
                log.warning("cannot converge %s: %s", prefix, getattr(exc, "msg", exc))
                stopping.wait(backoff)
                backoff = min(backoff * 2, max_backoff)
                continue
        handle = store()
        if handle is None:  # no store yet: look again later, converge once it appears
            stopping.wait(watch_timeout)
            dirty = store() is not None
            continue
        try:
            events = handle.watch(prefix, revision, watch_timeout)
        except RevisionCompacted:
            dirty = True
            continue
        except PodnetError as exc:
            log.warning("watching %s failed: %s", prefix, exc.msg)
            dirty = True
            stopping.wait(backoff)
            continue
        if events:
            dirty = True
