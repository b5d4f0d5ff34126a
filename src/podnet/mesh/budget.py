"""Retry budgets (MeshTrafficPolicy `retries.budgetPercent`), kept from the access log.

HAProxy 2.6 retries per request and has no budget, and its response rules cannot see
how many tries a request took. The node agent can: every access log line carries the
sidecar's pod, the backend and its retries (%rc). So the budget is a control loop:

    log line -> RetryBudgets.observe: per (pod, backend), requests and retried ones
                over the last WINDOW seconds (1 s slots)
    every pass -> over(pod, backend, percent): retried > percent of requests (and more
                than MIN_RETRIES, so a quiet backend may always retry a little)
    a change -> the runtime API sets the backend's key in the sidecar's budget map to 1
                (the backend then `disable-l7-retry`s every request) or back to 0

as Envoy's retry budget caps retries at a share of the active requests. The loop runs
about once a second: a burst can overshoot the budget by a second's worth of retries.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

WINDOW = 10
MIN_RETRIES = 3

Slot = list[int]  # [second, requests, retried]


class RetryBudgets:
    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str], deque[Slot]] = {}

    def observe(self, record: Any, now: float | None = None) -> None:
        """One access record (mesh/access_log.AccessRecord): outbound ones count."""
        if record.direction != "outbound" or not record.backend or record.backend == "passthrough":
            return
        second = int(time.monotonic() if now is None else now)
        with self._lock:
            slots = self._slots.setdefault((record.pod, record.backend), deque())
            if not slots or slots[-1][0] != second:
                slots.append([second, 0, 0])
            while slots and slots[0][0] <= second - self.window:
                slots.popleft()
            slots[-1][1] += 1
            slots[-1][2] += 1 if record.retries > 0 else 0

    def counts(self, pod: str, backend: str, now: float | None = None) -> tuple[int, int]:
        """(requests, retried) in the window."""
        second = int(time.monotonic() if now is None else now)
        with self._lock:
            slots = self._slots.get((pod, backend), ())
            live = [s for s in slots if s[0] > second - self.window]
        return sum(s[1] for s in live), sum(s[2] for s in live)

    def over(self, pod: str, backend: str, percent: float, now: float | None = None) -> bool:
        requests, retried = self.counts(pod, backend, now)
        return retried > MIN_RETRIES and retried * 100 > percent * requests
