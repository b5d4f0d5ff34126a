"""bench/report.py: one self-contained HTML page with a PNG plot per bench, from the
benches' own --json output (a quick run's, kept in tests/unit/data), and a failed bench
shown with its log instead of figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import report  # noqa: E402  (bench/ is no package)

RESULTS = json.loads((Path(__file__).parent / "data" / "bench_results.json").read_text())
PNG = b"\x89PNG\r\n\x1a\n"


def test_every_bench_gets_its_plot_and_table(tmp_path):
    for name, data in RESULTS.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    runs = [{"name": name, "ok": True, "exit": 0, "seconds": 1.0} for name in RESULTS]
    (tmp_path / "index.json").write_text(json.dumps({"quick": True, "started": 0, "runs": runs}))
    page = report.write(tmp_path).read_text()
    for title in ("CNI latency against the reference plugins", "Fabric comparison", "Convergence", "Policy scale",
                  "Service scale", "BGP sessions and memory", "bgp against host-gw (same rack)"):
        assert title in page
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert {"cni_latency.png", "fabric_throughput.png", "fabric_throughput_setup.png", "convergence.png",
            "policy_scale.png", "services_lb.png", "bgp_scale.png"} <= set(pngs)
    assert all((tmp_path / p).read_bytes().startswith(PNG) for p in pngs)
    assert page.count("data:image/png;base64,") == len(pngs)  # one file: every plot embedded
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    vxlan = RESULTS["fabric_throughput"]["paths"]["vxlan"]["median_gbps"]
    assert f"<td>{vxlan}</td>" in page  # the bench's figure, not another
    same_rack = RESULTS["fabric_bgp"]["compare"]["bgp/host-gw, same rack"]
    assert f"<td>{same_rack['ratio']}</td><td>&gt;= 0.95x</td>" in page


def test_a_failed_bench_shows_its_log_not_figures(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"runs": [{"name": "convergence", "ok": False, "exit": 1}]}))
    (tmp_path / "convergence.log").write_text("[bench] lab up failed: agent of node1 exited\n")
    page = report.write(tmp_path).read_text()
    assert "convergence: no results" in page and "agent of node1 exited" in page and "failed (exit 1)" in page
    assert not list(tmp_path.glob("*.png"))
