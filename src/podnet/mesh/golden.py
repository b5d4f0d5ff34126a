"""Golden signals of the mesh per (service, route, direction), from the access log.

Every request a sidecar logs (mesh/access_log.py) is counted here once: requests by
status class, errors, retries, the sidecar's own refusals (429 rate-limited, 403
denied) and its latency in a histogram with fixed buckets. Two views of the same data:
- totals since the agent started, scraped as Prometheus metrics (`Golden` is a
  collector: registered on the agent's registry by AgentMetrics.watch_mesh):
  `podnet_mesh_requests_total{service,route,direction,code_class}`,
  `podnet_mesh_request_duration_seconds{service,route,direction}` (histogram),
  `podnet_mesh_retries_total`, `podnet_mesh_request_errors_total` and
  `podnet_mesh_requests_refused_total{...,reason=rate_limited|denied}`;
- a sliding window (the last `window` seconds, in one-second slots) for `podnet mesh
  top`: `snapshot()` rows with rps, error %, p50/p90/p99 and the window's bucket
  counts, so the CLI can add several nodes' histograms before estimating quantiles.

Latency buckets (ms, 1-2-5 steps): 0.1 ms .. 10 s, then +Inf. HAProxy stamps times in
microseconds here (access_log.py), so sub-millisecond buckets are meaningful. A
quantile is estimated as Prometheus' histogram_quantile does: find the bucket where the
rank q*count falls and interpolate linearly between its bounds (the first bucket from
0); in the +Inf bucket the answer is the highest finite bound (10 s). The error is at
most the width of that bucket: 2-2.5x steps, i.e. p99 = 14 ms means "in 10-20 ms".

Memory is bounded: at most MAX_SERIES label sets; beyond that new services count under
service "(other)".
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from podnet.mesh.access_log import AccessRecord

BOUNDS_MS: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
QUANTILES = (0.5, 0.9, 0.99)
WINDOW = 10  # seconds of "live" figures
MAX_SERIES = 2000
OTHER = "(other)"
LABELS = ["service", "route", "direction"]

Key = tuple[str, str, str]  # service, route, direction


def bucket_of(ms: float) -> int:
    """The index of the bucket `ms` falls in (le: a value on a bound belongs to it);
    len(BOUNDS_MS) is the +Inf bucket."""
    return bisect_left(BOUNDS_MS, ms)


def quantile(buckets: Sequence[int], q: float, bounds: Sequence[float] = BOUNDS_MS) -> float | None:
    """The q-quantile (0..1) estimated from bucket counts (not cumulative; the last is
    +Inf) by linear interpolation inside the bucket; None without observations."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index >= len(bounds):
                return float(bounds[-1])
            low = float(bounds[index - 1]) if index else 0.0
            return low + (bounds[index] - low) * max(rank - seen, 0) / count
        seen += count
    return float(bounds[-1])  # rounding: q a hair above 1


@dataclass
class Counts:
    """What is counted per label set, over all time or over one second of the window."""

    requests: int = 0
    errors: int = 0
    retries: int = 0
    rate_limited: int = 0
    denied: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS_MS) + 1))
    seconds: float = 0.0  # sum of observed latencies

    def add(self, record: AccessRecord, bucket: int | None, seconds: float) -> None:
        self.requests += 1
        self.errors += record.failed
        self.retries += record.retries
        self.rate_limited += record.status == 429
        self.denied += record.status == 403
        self.by_class[record.code_class] = self.by_class.get(record.code_class, 0) + 1
        if bucket is not None:
            self.buckets[bucket] += 1
            self.seconds += seconds

    def merge(self, other: Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.retries += other.retries
        self.rate_limited += other.rate_limited
        self.denied += other.denied
        for name, count in other.by_class.items():
            self.by_class[name] = self.by_class.get(name, 0) + count
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.seconds += other.seconds


def row(key: Key, counts: Counts, span: float, total: int | None = None) -> dict[str, Any]:
    """One line of `mesh top` from a window's counts over `span` seconds (also how the
    CLI summarises several nodes' rows once their counts are added)."""
    service, route, direction = key
    p50, p90, p99 = (quantile(counts.buckets, q) for q in QUANTILES)
    return {"service": service, "route": route, "direction": direction,
            "rps": round(counts.requests / span, 2) if span > 0 else 0.0,
            "requests": counts.requests, "errors": counts.errors,
            "error_pct": round(100.0 * counts.errors / counts.requests, 2) if counts.requests else 0.0,
            "retries": counts.retries, "rate_limited": counts.rate_limited, "denied": counts.denied,
            "p50_ms": _ms(p50), "p90_ms": _ms(p90), "p99_ms": _ms(p99),
            "buckets": list(counts.buckets), "window": round(span, 3),
            "total": counts.requests if total is None else total}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Golden:
    """The golden signals of one node's sidecars; thread-safe (the sink thread adds,
    scrapes and `mesh.top` read)."""

    def __init__(self, window: int = WINDOW, max_series: int = MAX_SERIES) -> None:
        self.window = window
        self.max_series = max_series
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._totals: dict[Key, Counts] = {}
        self._slots: deque[tuple[int, dict[Key, Counts]]] = deque()

    # -- counting

    def observe(self, record: AccessRecord, now: float | None = None) -> None:
        """Count one HTTP request (`now`: time.monotonic() when it was received)."""
        now = time.monotonic() if now is None else now
        key = (record.service, record.route, record.direction)
        bucket, seconds = None, 0.0
        if record.total_us is not None and record.total_us >= 0:
            seconds = record.total_us / 1e6
            bucket = bucket_of(record.total_us / 1000)
        second = int(now)
        with self._lock:
            totals = self._totals.get(key)
            if totals is None:
                if len(self._totals) >= self.max_series:
                    key = (OTHER, "", record.direction)
                totals = self._totals.setdefault(key, Counts())
            totals.add(record, bucket, seconds)
            if not self._slots or self._slots[-1][0] != second:
                self._slots.append((second, {}))
                self._expire(second)
            slot = self._slots[-1][1]
            counts = slot.get(key)
            if counts is None:
                counts = slot[key] = Counts()
            counts.add(record, bucket, seconds)

    def _expire(self, second: int) -> None:
        while self._slots and self._slots[0][0] <= second - self.window:
            self._slots.popleft()

    # -- reading

    def snapshot(self, now: float | None = None) -> list[dict[str, Any]]:
        """Per label set seen in the window: its rates and latency quantiles (`row`)."""
        now = time.monotonic() if now is None else now
        second = int(now)
        span = min(self.window - 1 + (now - second), max(now - self.started, 1.0))
        window: dict[Key, Counts] = {}
        with self._lock:
            self._expire(second)
            for _, slot in self._slots:
                for key, counts in slot.items():
                    window.setdefault(key, Counts()).merge(counts)
            totals = {key: self._totals[key].requests for key in window}
        return [row(key, counts, span, totals[key]) for key, counts in sorted(window.items())]

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time: nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            items = [(key, _copy(counts)) for key, counts in sorted(self._totals.items())]
        requests = CounterMetricFamily("podnet_mesh_requests", "HTTP requests through the node's sidecars",
                                       labels=[*LABELS, "code_class"])
        errors = CounterMetricFamily("podnet_mesh_request_errors", "requests that failed: a 5xx, or broken by "
                                     "a server or the proxy (HAProxy termination state)", labels=LABELS)
        retries = CounterMetricFamily("podnet_mesh_retries", "retries the sidecars made", labels=LABELS)
        refused = CounterMetricFamily("podnet_mesh_requests_refused", "requests the sidecar refused itself: "
                                      "429 (rate_limited) or 403 (denied)", labels=[*LABELS, "reason"])
        latency = HistogramMetricFamily("podnet_mesh_request_duration_seconds", "request latency as the "
                                        "sidecar saw it", labels=LABELS)
        for key, counts in items:
            labels = list(key)
            for code_class, count in sorted(counts.by_class.items()):
                requests.add_metric([*labels, code_class], count)
            errors.add_metric(labels, counts.errors)
            retries.add_metric(labels, counts.retries)
            refused.add_metric([*labels, "rate_limited"], counts.rate_limited)
            refused.add_metric([*labels, "denied"], counts.denied)
            latency.add_metric(labels, _cumulative(counts.buckets), counts.seconds)
        return [requests, errors, retries, refused, latency]


def _copy(counts: Counts) -> Counts:
    copy = Counts()
    copy.merge(counts)
    return copy


def _cumulative(buckets: Sequence[int]) -> list[tuple[str, float]]:
    out, running = [], 0
    for bound, count in zip((*(b / 1000 for b in BOUNDS_MS), float("inf")), buckets, strict=True):
        running += count
        out.append((floatToGoString(bound), running))
    return out
