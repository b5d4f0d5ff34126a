"""Live updates: one poller for every open page.

However many pages are open, the cluster is read by one thread: every `interval`
(about a second) it takes a snapshot and the new flows from the data source, and hands
each subscriber (one per open event stream) a `snapshot` event when the snapshot
changed (clocks and timings aside, snapshot.digest) and one `flow` event per new
verdict. A subscriber that joins gets the last snapshot and the recent flows at once.
A slow reader's queue is bounded: it loses the oldest events, never stalls the poller.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from podnet.observe.dashboard.snapshot import digest

RECENT_FLOWS = 200
QUEUE_LIMIT = 1000
Event = tuple[str, Any]  # (event name, JSON-able data)


class Source(Protocol):
    """What the dashboard reads (data.ClusterSource; a fake in the unit tests)."""

    def snapshot(self) -> dict[str, Any]: ...

    def flows(self) -> list[dict[str, Any]]: ...

    def trace(self, src: str, dst: str, port: int | None, protocol: str, live: bool) -> dict[str, Any]: ...


class Subscriber:
    """One event stream's queue; `None` in it means the server is stopping."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event | None] = queue.Queue(QUEUE_LIMIT)

    def put(self, event: Event | None) -> None:
        while True:
            try:
                self.events.put_nowait(event)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.events.get_nowait()  # drop the oldest: a live view wants the newest


class Hub:
    def __init__(self, source: Source, interval: float = 1.0, on_error: Callable[[Exception], None] | None = None):
        self.source = source
        self.interval = interval
        self.on_error = on_error
        self.latest: dict[str, Any] | None = None
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_FLOWS)
        self._digest = ""
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-poller", daemon=True)

    def start(self) -> None:
        try:
            self.poll()  # the first page load has something to show at once
        except Exception as exc:  # noqa: BLE001 - the poller tries again; the page says it cannot read
            if self.on_error is not None:
                self.on_error(exc)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            for sub in self._subscribers:
                sub.put(None)

    def subscribe(self) -> Subscriber:
        sub = Subscriber()
        with self._lock:
            if self.latest is not None:
                sub.put(("snapshot", self.latest))
            for flow in self.recent:
                sub.put(("flow", flow))
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def snapshot(self) -> dict[str, Any]:
        """The last snapshot (taken now if there is none yet)."""
        if self.latest is None:
            self.poll()
        assert self.latest is not None
        return self.latest

    def poll(self) -> None:
        """Read the cluster once and tell every subscriber what is new."""
        snap = self.source.snapshot()
        flows = self.source.flows()
        events: list[Event] = []
        mark = digest(snap)
        with self._lock:
            if mark != self._digest:
                events.append(("snapshot", snap))
            self.latest, self._digest = snap, mark
            self.recent.extend(flows)
            events += [("flow", flow) for flow in flows]
            for sub in self._subscribers:
                for event in events:
                    sub.put(event)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - a failed read must not end the live view
                if self.on_error is not None:
                    self.on_error(exc)
