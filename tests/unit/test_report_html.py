"""observe/report.py: the page `podnet report` writes, from plain data: every value
escaped, failures first, and a clear line where a part is missing."""

from __future__ import annotations

from podnet.observe.report import render

STATUS = {
    "store": {"backend": "sqlite", "url": "/run/podnet/x.db", "latency_ms": 0.4},
    "nodes": [{"name": "node0", "agent": "answers", "blocks": ["10.244.0.0/26", "10.244.0.64/26"]}],
    "blocks": [{"block": "10.244.0.0/26", "node": "node0", "used": 3, "size": 62}],
    "pool": {"cidr": "10.244.0.0/16", "free": 1022},
    "counts": {"pods": 3, "services": 1},
    "degraded": [],
}


def test_a_healthy_cluster_with_its_checks():
    results = [{"check": "pod-to-pod/cross-node", "source": "a", "destination": "b", "ok": True, "detail": "", "ms": 3},
               {"check": "served-port", "source": "a", "destination": "c:80", "ok": False, "detail": "timeout",
                "ms": 1000}]
    page = render("podnet: lab x", STATUS, results, None, now=0)
    assert "<p class=good>healthy</p>" in page and "10.244.0.0/26, 10.244.0.64/26" in page
    assert "1 passed, 1 failed" in page
    assert page.index("served-port") < page.index("pod-to-pod/cross-node")  # failures first
    assert "none given" in page  # no benchmarks: said, not left blank


def test_values_are_escaped_and_degraded_reasons_listed():
    status = {**STATUS, "degraded": ["node <b>x</b>: agent does not answer"],
              "nodes": [{"name": "<script>alert(1)</script>"}]}
    page = render("t", status, None, None, now=0)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "degraded (1):" in page and "node &lt;b&gt;x&lt;/b&gt;" in page
    assert "needs a lab" in page
