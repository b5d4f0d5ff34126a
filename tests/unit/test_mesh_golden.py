"""Golden signals from access records: bucket quantiles against known data, the live
window, the totals as Prometheus reads them from the agent's registry."""

from __future__ import annotations

import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from podnet.agent.metrics import AgentMetrics
from podnet.mesh.access_log import AccessRecord
from podnet.mesh.golden import BOUNDS_MS, OTHER, Golden, bucket_of, quantile

WEB = "default/web:80"


def rec(status: int = 200, total_us: int | None = 1500, retries: int = 0, termination: str = "--",
        service: str = WEB, route: str = "default/web#0", direction: str = "outbound") -> AccessRecord:
    return AccessRecord(time=0.0, direction=direction, tls=False, backend="be", server="s1", status=status,
                        connect_ms=0, response_us=total_us, total_us=total_us, bytes_out=1, bytes_in=1,
                        retries=retries, redispatched=False, termination=termination, pod="default/c-1",
                        service=service, route=route, peer="", method="GET", request_id="r", path="/")


def counts_of(values_ms: list[float]) -> list[int]:
    buckets = [0] * (len(BOUNDS_MS) + 1)
    for value in values_ms:
        buckets[bucket_of(value)] += 1
    return buckets


def test_a_value_on_a_bound_belongs_to_that_bucket() -> None:
    assert bucket_of(1.0) == BOUNDS_MS.index(1)
    assert bucket_of(1.0001) == BOUNDS_MS.index(2)
    assert bucket_of(0.0) == 0
    assert bucket_of(20000) == len(BOUNDS_MS)  # +Inf


def test_quantiles_interpolate_linearly_inside_a_bucket() -> None:
    # 50 fast (<= 0.1 ms) and 50 in (10, 20] ms: the median is the top of the first
    # bucket; p90 is rank 90, 40 of the 50 into (10, 20]: 10 + 10 * 40/50
    buckets = counts_of([0.05] * 50 + [15.0] * 50)
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.9) == pytest.approx(18.0)
    assert quantile(buckets, 0.99) == pytest.approx(10 + 10 * 49 / 50)


def test_quantiles_in_the_open_bucket_and_without_data() -> None:
    assert quantile(counts_of([60000.0] * 3), 0.5) == BOUNDS_MS[-1]
    assert quantile(counts_of([]), 0.5) is None


@pytest.mark.parametrize("seed", range(5))
def test_estimates_fall_in_the_bucket_of_the_true_quantile(seed: int) -> None:
    rng = random.Random(seed)
    values = sorted(rng.lognormvariate(0.5, 1.5) for _ in range(5000))  # ms, ~0.01 ms .. seconds
    buckets = counts_of(values)
    for q in (0.5, 0.9, 0.99):
        true = values[int(q * len(values)) - 1]
        estimate = quantile(buckets, q)
        assert estimate is not None
        index = bucket_of(true)
        low = BOUNDS_MS[index - 1] if index else 0.0
        high = BOUNDS_MS[index] if index < len(BOUNDS_MS) else BOUNDS_MS[-1]
        assert low <= estimate <= high, (q, true, estimate)


def scrape(golden: Golden) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics = AgentMetrics()
    metrics.watch_mesh(golden)
    metrics.watch_mesh(golden)  # a restarted sink registers again: replaced, not refused
    out = {}
    for family in text_string_to_metric_families(metrics.render()):
        if family.name.startswith("podnet_mesh"):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def labels(**extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"service": WEB, "route": "default/web#0", "direction": "outbound", **extra}.items()))


def test_totals_are_scraped_per_service_route_and_direction() -> None:
    golden = Golden()
    for record in [rec()] * 6 + [rec(500, retries=2), rec(429, total_us=0), rec(403, total_us=0),
                                 rec(200, termination="SD"), rec(total_us=None)]:
        golden.observe(record, now=100.0)
    golden.observe(rec(route="", direction="inbound"), now=100.0)
    seen = scrape(golden)
    assert seen[("podnet_mesh_requests_total", labels(code_class="2xx"))] == 8
    assert seen[("podnet_mesh_requests_total", labels(code_class="5xx"))] == 1
    assert seen[("podnet_mesh_requests_total", labels(code_class="4xx"))] == 2
    assert seen[("podnet_mesh_request_errors_total", labels())] == 2  # the 500 and the broken 200
    assert seen[("podnet_mesh_retries_total", labels())] == 2
    assert seen[("podnet_mesh_requests_refused_total", labels(reason="rate_limited"))] == 1
    assert seen[("podnet_mesh_requests_refused_total", labels(reason="denied"))] == 1
    # 10 of 11 requests had a latency; 1.5 ms lies in (1, 2]: le=0.001 has only the two 0s
    assert seen[("podnet_mesh_request_duration_seconds_count", labels())] == 10
    assert seen[("podnet_mesh_request_duration_seconds_bucket", labels(le="0.001"))] == 2
    assert seen[("podnet_mesh_request_duration_seconds_bucket", labels(le="0.002"))] == 10
    assert seen[("podnet_mesh_request_duration_seconds_sum", labels())] == pytest.approx(8 * 0.0015)
    inbound = tuple(sorted({"service": WEB, "route": "", "direction": "inbound", "code_class": "2xx"}.items()))
    assert seen[("podnet_mesh_requests_total", inbound)] == 1


def test_the_window_shows_the_last_seconds_only() -> None:
    golden = Golden(window=10)
    golden.started = 0.0
    for i in range(50):
        golden.observe(rec(total_us=900_000), now=100.0 + i / 100)  # slow, at t=100
    for i in range(90):
        golden.observe(rec(total_us=1500 if i % 10 else 3000, status=500 if i < 9 else 200), now=105.5)
    [both] = golden.snapshot(now=109.5)
    assert both["requests"] == 140 and both["total"] == 140
    assert both["rps"] == pytest.approx(140 / 9.5, abs=0.01)  # nine whole seconds and half the current one
    [recent] = golden.snapshot(now=110.2)  # t=100's slot has left the window
    assert recent["requests"] == 90 and recent["total"] == 140
    assert recent["errors"] == 9 and recent["error_pct"] == pytest.approx(10.0)
    assert 1 < recent["p50_ms"] <= 2 and 2 < recent["p99_ms"] <= 5
    assert recent["rps"] == pytest.approx(90 / 9.2, abs=0.01)
    assert golden.snapshot(now=116.0) == []  # nothing live: no rows


def test_series_beyond_the_limit_are_counted_as_other() -> None:
    golden = Golden(max_series=3)
    for n in range(5):
        golden.observe(rec(service=f"default/s{n}:80", route=""), now=1.0)
    rows = golden.snapshot(now=1.5)
    assert [r["service"] for r in rows] == [OTHER, "default/s0:80", "default/s1:80", "default/s2:80"]
    assert rows[0]["requests"] == 2


def test_mesh_top_adds_nodes_up_before_estimating_quantiles() -> None:
    from rich.console import Console

    from podnet.cli.mesh_top import merge, render_top

    fast, slow = Golden(), Golden()
    for golden, total_us, count in ((fast, 1500, 90), (slow, 40_000, 10)):
        golden.started = 0.0
        for _ in range(count):
            golden.observe(rec(total_us=total_us, status=200 if total_us < 10_000 else 503), now=50.0)
    answers = [{"node": "n1", "routes": fast.snapshot(now=55.0)}, {"node": "n2", "routes": slow.snapshot(now=55.0)},
               {"node": "n3", "error": "no podnet agent answers", "routes": []}]
    merged = merge(answers)
    [row] = merged["routes"]
    assert (row["requests"], row["errors"], row["nodes"]) == (100, 10, ["n1", "n2"])
    assert row["error_pct"] == pytest.approx(10.0)
    assert row["rps"] == pytest.approx(100 / 9.0, abs=0.01)
    assert 1 < row["p50_ms"] <= 2 and 20 < row["p99_ms"] <= 50  # from the added buckets
    assert merged["errors"] == {"n3": "no podnet agent answers"}
    console = Console(width=200, record=True)
    console.print(render_top(merged))
    text = console.export_text()
    assert "default/web#0" in text and "n3: no podnet agent answers" in text
