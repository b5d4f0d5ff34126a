"""`podnet dashboard` end to end in a real browser: Playwright driving Debian's chromium
(never a downloaded browser) against the page served in-process for a real lab.

One lab for the module (2 vxlan nodes, 2 pods each, a service over two of them,
namespaces pn-lab-db<hex>-*), torn down by name. The page must show every node and
pod, a denied connection's verdict with its rule while it stays open (no reload), and
a trace run from its form drawn as a path; a screenshot is saved to the test's tmp dir
and to bench/out/dashboard.png when bench/out exists. Without playwright or chromium
the tests are skipped with that reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_fabric_cluster import eventually
from test_metrics_ns import CONNECT, DENY_B  # the policy isolating pod b, and a TCP connect to :80

from cniharness import podnet_cli, topology_lab
from podnet.observe.dashboard.data import ClusterSource
from podnet.observe.dashboard.server import DashboardServer, make_server

pytestmark = pytest.mark.root

BENCH_OUT = Path(__file__).resolve().parents[2] / "bench" / "out"
HOSTILE = '<img src=x id=injected onerror="window.__xss=1">'
TOPOLOGY = {
    "nodes": [{"name": "node0"}, {"name": "node1"}],
    "pods": [{"name": "a", "node": "node0", "labels": {"app": "web"}, "ports": [{"port": 80, "name": "http"}]},
             {"name": "c", "node": "node0"},
             {"name": "b", "node": "node1", "labels": {"app": "web", "pod": "b"},
              "ports": [{"port": 80, "name": "http"}]},
             {"name": "d", "node": "node1"}],
    "services": [{"metadata": {"name": "web", "namespace": "default"},
                  "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}],
}
def chromium() -> str:
    """Debian's chromium, or a skip naming what is missing (never a silent pass)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"playwright cannot be imported ({exc}): install the dev extra (pip install -e '.[dev]')")
    path = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if not path:
        pytest.skip("no browser: /usr/bin/chromium is missing and no chromium is on PATH (make deps installs it; "
                    "`playwright install` downloads are not used)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory) -> Iterator[dict]:
    """The lab (built only once a browser is known to be there)."""
    with topology_lab("db", TOPOLOGY, tmp_path_factory.mktemp("dashboard"), "--fabric", "vxlan",
                      "--no-cluster-dns") as built:
        yield built


def serve(source: Any) -> DashboardServer:
    server = make_server(source, "127.0.0.1", 0, interval=0.5)
    server.serve_in_thread()
    return server


@pytest.fixture(scope="module")
def dashboard(lab) -> Iterator[DashboardServer]:
    source = ClusterSource(lab["store_url"], {n: info["socket"] for n, info in lab["nodes"].items()},
                           lab=lab["name"])
    server = serve(source)
    try:
        yield server
    finally:
        server.close()
        source.close()


@pytest.fixture(scope="module")
def page(browser, dashboard) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(dashboard.url)
    page.evaluate("window.__same_page = 'yes'")  # gone if the page ever reloads
    yield page
    assert not errors, errors
    page.close()


def test_every_node_and_pod_appears_with_its_health(page, lab):
    for node in lab["nodes"]:
        page.wait_for_selector(f'#topology [data-node="{node}"]', timeout=15_000)
    for ref, pod in lab["pods"].items():
        drawn = page.locator(f'#topology [data-pod="{ref}"]')
        drawn.wait_for(timeout=15_000)
        assert pod["ips"][0].split("/")[0] in drawn.text_content()
        assert page.locator(f'#pods tr[data-pod="{ref}"]').count() == 1
    # both agents answer and see each other: every node and the fabric link turn green
    page.wait_for_function("""() => [...document.querySelectorAll('#topology [data-node]')]
        .every((n) => n.dataset.health === 'ok')""", timeout=30_000)
    assert page.locator("#topology .link.health-ok").count() == 1
    endpoints = page.locator('#services tr[data-service="default/web"] [data-endpoint]').all_text_contents()
    assert sorted(e.split()[0] for e in endpoints) == sorted(f"{lab['pods'][p]['ips'][0].split('/')[0]}:80"
                                                             for p in ("default/a", "default/b"))
    page.click('#topology [data-pod="default/a"]')
    assert page.locator("#details-title").text_content() == "pod default/a"
    assert "app=web" in page.locator("#details").text_content()


def test_a_denied_flow_appears_live_and_a_trace_is_drawn(page, lab, dashboard, tmp_path):
    target = lab["pods"]["default/b"]["ips"][0].split("/")[0]
    path = tmp_path / "deny.yaml"
    path.write_text(DENY_B)
    podnet_cli("apply", "--lab", lab["name"], "-f", str(path))
    try:
        def denied() -> bool:
            out = subprocess.run(["ip", "netns", "exec", lab["pods"]["default/a"]["netns"], sys.executable, "-c",
                                  CONNECT, target], capture_output=True, text=True, timeout=10).stdout
            return out.strip() == "TimeoutError"

        assert eventually(denied, 15)
        row = page.locator('#flows tr[data-verdict="deny"][data-rule*="deny-b"]').first
        row.wait_for(timeout=20_000)
        assert page.evaluate("window.__same_page") == "yes"  # arrived over the event stream, no reload
        assert "default/b:80" in row.locator("td.dst").text_content()
        assert row.locator("td.src").text_content().startswith("default/a")

        page.fill("#trace-src", "default/a")
        page.fill("#trace-dst", "default/b")
        page.fill("#trace-port", "80")
        page.click("#trace-run")
        page.wait_for_function("""() => !['running', null].includes(
            document.getElementById('trace-verdict').getAttribute('data-verdict'))""", timeout=60_000)
        query = urllib.parse.urlencode({"src": "default/a", "dst": "default/b", "port": 80, "protocol": "tcp"})
        ask = urllib.request.Request(f"{dashboard.url}api/trace?{query}", headers={"X-Podnet-Dashboard": "1"})
        with urllib.request.urlopen(ask, timeout=60) as reply:
            expected = json.load(reply)
        shown = page.locator("#trace-verdict")
        assert shown.get_attribute("data-verdict") == expected["verdict"] == "dropped", expected
        assert page.locator("#trace-hops li").count() == len(expected["hops"])
        assert expected["died_at"] is not None
        assert page.locator("#trace-hops li.died").count() == 1
        assert page.locator("#topology .trace-hop.died").count() == 1
        points = page.locator("#topology polyline.trace-path").get_attribute("points").split()
        assert len(points) >= 2
        for node in {h["node"] for h in expected["hops"] if h["node"]}:
            assert "on-path" in page.locator(f'#topology [data-node="{node}"]').get_attribute("class")
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if BENCH_OUT.is_dir():
            shutil.copyfile(shot, BENCH_OUT / "dashboard.png")
    finally:
        podnet_cli("delete", "--lab", lab["name"], "-f", str(path))


class HostileSource:
    """A cluster whose names and rules carry markup: the page must show it as text."""

    def snapshot(self) -> dict[str, Any]:
        pod = {"ref": "default/x", "namespace": "default", "name": "x", "node": "n0", "ips": ["10.0.0.2"],
               "labels": {"note": HOSTILE}, "ports": [], "ready": True, "kind": "pod", "health": "ok"}
        return {"title": HOSTILE, "time": 0, "store": {"backend": HOSTILE}, "counts": {}, "degraded": [HOSTILE],
                "racks": [{"rack": 0, "nodes": ["n0"]}], "routers": [], "outside": None,
                "nodes": [{"name": "n0", "health": "ok", "agent": HOSTILE, "reasons": [HOSTILE]}], "links": [],
                "pods": [pod], "services": []}

    def flows(self) -> list[dict[str, Any]]:
        return [{"time": 0, "node": "n0", "verdict": "deny", "src": "10.0.0.2", "dst": HOSTILE, "protocol": "tcp",
                 "rule": HOSTILE, "src_name": "", "dst_name": ""}]

    def trace(self, *args: Any) -> dict[str, Any]:
        raise AssertionError("not asked")


def test_markup_in_cluster_data_is_shown_as_text(browser):
    server = serve(HostileSource())
    page = browser.new_page()
    try:
        page.goto(server.url)
        page.wait_for_selector('#flows tr[data-verdict="deny"]', timeout=10_000)
        page.click('#topology [data-node="n0"]')
        assert HOSTILE in page.locator("#degraded").text_content()
        assert HOSTILE in page.locator("#flows td.rule").first.text_content()
        assert HOSTILE in page.locator("#details").text_content()
        assert page.locator("#injected, img").count() == 0 and page.evaluate("window.__xss") is None
    finally:
        page.close()
        server.close()
