"""`podnet connectivity test` against real labs: all green, then a broken route.

Labs are named `c<hex>` (namespaces `pn-lab-c<hex>-*`) and always removed with `lab
down` (recorded names and PIDs) in a finally.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from test_lab_cluster import down_if_up, podnet

pytestmark = pytest.mark.root


def connectivity(name: str, *extra: str) -> tuple[int, list[dict], float]:
    """`connectivity test -o json` (probe timeout 5 s unless given: benchmarks may load the machine)."""
    extra = extra or ("--timeout", "5")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "podnet.cli", "connectivity", "test", "--name", name, "-o", "json",
                           *extra], capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.startswith("["), proc.stderr
    return proc.returncode, json.loads(proc.stdout), time.monotonic() - start


def failing(results: list[dict]) -> list[str]:
    return [f"{r['check']} {r['source']} -> {r['destination']}: {r['detail']}" for r in results if not r["ok"]]


@contextlib.contextmanager
def running_lab(*flags: str) -> Iterator[dict]:
    """`lab up` with `flags` under a fresh name; its `lab status -o json`; always `lab down`."""
    if os.geteuid() != 0:
        pytest.skip("needs root (creates network namespaces)")
    name = f"c{secrets.token_hex(2)}"
    try:
        podnet("lab", "up", "--name", name, *flags)
        yield json.loads(podnet("lab", "status", "--name", name, "-o", "json").stdout)
    finally:
        down_if_up(name)


@pytest.fixture(scope="module")
def vxlan_lab() -> Iterator[dict]:
    """3 nodes x 2 pods over VXLAN."""
    with running_lab("--nodes", "3", "--pods-per-node", "2") as lab:
        yield lab


def test_vxlan_all_checks_pass_fast(vxlan_lab: dict) -> None:
    code, results, seconds = connectivity(vxlan_lab["name"])
    assert code == 0, failing(results)
    checks = {r["check"] for r in results}
    assert checks == {"pod-to-pod/same-node", "pod-to-pod/cross-node", "pod-to-node/gateway", "pod-to-node/remote",
                      "node-to-pod/local", "node-to-pod/remote", "pod-to-outside/http", "pod-to-outside/udp",
                      "pmtu/cross-node", "served-port", "dns/cluster-ip"}
    dns = [r["detail"] for r in results if r["check"] == "dns/cluster-ip"]
    assert dns == ["answer 10.96.0.10"] * 6  # 3 nodes' first pods, UDP and TCP
    assert len([r for r in results if r["check"] == "served-port"]) == 12  # 6 pods x (80/TCP, 80/UDP)
    masq = [r["detail"] for r in results if r["check"] == "pod-to-outside/http"]
    assert sorted(masq) == [f"outside saw the client as {n['underlay']}" for n in vxlan_lab["nodes"]]
    pmtu = next(r["detail"] for r in results if r["check"] == "pmtu/cross-node")
    assert pmtu == "MTU 1450: 1422 B with DF answered, 1423 B refused (EMSGSIZE)"  # underlay 1500 - VXLAN 50
    assert seconds < 30, f"connectivity test took {seconds:.1f}s"  # ~0.5 s on an idle 2-core machine


def test_table_output_and_missing_lab(vxlan_lab: dict) -> None:
    table = podnet("connectivity", "test", "--name", vxlan_lab["name"])
    assert "48 passed, 0 failed" in table.stdout and "FAIL" not in table.stdout
    missing = podnet("connectivity", "test", "--name", "nolab", check=False)
    assert missing.returncode == 1 and "no lab named 'nolab'" in missing.stderr


def test_deleted_route_is_reported(vxlan_lab: dict) -> None:
    """node0 loses its route to node1's block (its agent stopped, so nothing repairs it):
    exactly the paths through that route fail, with exit code 1; they pass again once
    the agent runs and repairs the drift."""
    name = vxlan_lab["name"]
    nodes = {n["name"]: n for n in vxlan_lab["nodes"]}
    pid = nodes["node0"]["agent_pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        subprocess.run(["ip", "-n", nodes["node0"]["netns"], "route", "del", nodes["node1"]["block"]], check=True)
        code, results, _ = connectivity(name, "--timeout", "1")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert code == 1
    bad = {(r["check"], r["source"], r["destination"].split(" ")[0]) for r in results if not r["ok"]}
    assert ("pod-to-pod/cross-node", "default/p0-0", "default/p1-0") in bad
    assert ("pod-to-pod/cross-node", "default/p1-0", "default/p0-0") in bad  # replies take that route
    assert ("node-to-pod/remote", "node0", "default/p1-0") in bad
    # node0's agent is stopped, and it answers in node0's DNS pod: any pod's DNS query
    # may be balanced there (a DNS pod down, as a CoreDNS pod can be), so DNS is left out
    assert all("node2" not in src and "p2-" not in src + dst for check, src, dst in bad
               if check != "dns/cluster-ip"), bad
    assert all(r["ok"] for r in results if r["check"] in ("pod-to-outside/http", "pod-to-pod/same-node"))
    deadline = time.monotonic() + 30
    while True:  # the fabric repairs drift every few seconds
        code, results, _ = connectivity(name)
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert code == 0, failing(results)


def test_host_gw() -> None:
    """host-gw on one rack passes everything, at the full underlay MTU."""
    with running_lab("--nodes", "2", "--pods-per-node", "1", "--fabric", "host-gw") as lab:
        code, results, _ = connectivity(lab["name"])
    assert code == 0, failing(results)
    pmtu = next(r["detail"] for r in results if r["check"] == "pmtu/cross-node")
    assert pmtu.startswith("MTU 1500:")  # no encapsulation


def test_vxlan_across_racks() -> None:
    with running_lab("--nodes", "2", "--pods-per-node", "1", "--racks", "2") as lab:
        code, results, _ = connectivity(lab["name"])
    assert code == 0, failing(results)
    assert len([r for r in results if r["check"] == "pod-to-pod/cross-rack"]) == 2
