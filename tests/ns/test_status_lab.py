"""`podnet status` on a real lab: healthy (exit 0, every node, block and count in
`-o json`, the same in the table), then one agent killed -9 by its recorded PID
(exit 1, that node named in the reason), then that agent started again with its
recorded argv (healthy again).

One lab for the module (2 nodes, vxlan, one pod each, namespaces pn-lab-s<hex>-*),
torn down by name; the restarted agent is stopped by the PID this module started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator

import pytest
from test_fabric_cluster import eventually

from cniharness import podnet_cli as podnet
from podnet.lab.sandbox import stop_process
from podnet.lab.state import lab_dir, owner_alive, state_file

pytestmark = pytest.mark.root


class Lab:
    """The module's lab: its name, and the agent this module started (stopped by PID)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started: list[subprocess.Popen] = []

    def state(self) -> dict:
        return json.loads(state_file(self.name).read_text())

    def status(self, *flags: str) -> subprocess.CompletedProcess:
        return podnet("status", "--lab", self.name, *flags, check=False, timeout=60)

    def healthy(self) -> dict | None:
        out = self.status("-o", "json")
        return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = f"s{secrets.token_hex(2)}"
    built = Lab(name)
    try:
        podnet("lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "1", "--no-cluster-dns")
        yield built
    finally:
        for proc in built.started:  # by the PID we started, never by name
            stop_process(proc)
        if state_file(name).exists():
            podnet("lab", "down", "--name", name)
        assert f"pn-lab-{name}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_a_healthy_lab_shows_every_node_block_and_count(lab: Lab) -> None:
    data = eventually(lab.healthy, 20)
    assert data, lab.status().stdout + lab.status().stderr
    state = lab.state()
    assert data["degraded"] == []
    nodes = {n["name"]: n for n in data["nodes"]}
    assert set(nodes) == set(state["nodes"])
    for name, info in state["nodes"].items():
        node = nodes[name]
        assert node["agent"] == "answers" and node["lease"] and node["fabric"] == "vxlan"
        assert node["underlay_ip"] == info["underlay"].split("/")[0]
        assert node["mtu"] and (node["peers_ok"], node["peers"]) == (1, 1)
        assert node["blocks"] and all(b in node["blocks"] for b in node["agent_blocks"])
    owners = {b["block"]: b["node"] for b in data["blocks"]}
    assert owners == {block: name for name, node in nodes.items() for block in node["blocks"]}
    used = sum(b["used"] for b in data["blocks"])
    assert used >= len(state["pods"])  # each pod's address is reserved in its node's block
    assert data["counts"]["pods"] == len(state["pods"])
    assert data["store"]["backend"] == "sqlite" and data["store"]["latency_ms"] >= 0
    table = lab.status()
    assert table.returncode == 0, table.stdout + table.stderr
    for name in state["nodes"]:
        assert name in table.stdout
    assert "healthy" in table.stdout


def test_report_writes_one_self_contained_page(lab: Lab, tmp_path) -> None:
    """`podnet report`: the snapshot, the connectivity test run now, and a bench run's
    plots embedded; nothing in the page is fetched from elsewhere."""
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "index.json").write_text(json.dumps({"quick": True, "runs": [{"name": "cni_latency", "ok": True,
                                                                          "exit": 0, "seconds": 9.5}]}))
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    (bench / "cni_latency.png").write_bytes(png)
    page = tmp_path / "report.html"
    out = podnet("report", "--lab", lab.name, "--bench", str(bench), "-f", str(page), check=False, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = page.read_text()
    for name in lab.state()["nodes"]:
        assert f"<td>{name}</td>" in text
    assert "healthy" in text and " 0 failed</p>" in text and "pod-to-pod/cross-node" in text
    assert "data:image/png;base64," in text and "cni_latency" in text
    fetched = [marker for marker in ('src="http', "href=", "<link", "url(", "<script") if marker in text]
    assert not fetched, fetched  # the checks' details may name URLs; nothing is loaded from one
    bad = podnet("report", "--lab", lab.name, "--bench", str(tmp_path / "nope"), "-f", str(page), check=False)
    assert bad.returncode != 0 and "is not a directory" in bad.stderr


def test_a_killed_agent_is_degraded_with_its_node_named(lab: Lab) -> None:
    entry = json.loads((lab_dir(lab.name) / "procs.json").read_text())["agent/node1"]
    assert owner_alive(entry["owner"])
    os.kill(entry["pid"], signal.SIGKILL)  # by its recorded pid, as test_lab_reliability does
    assert eventually(lambda: not owner_alive(entry["owner"]), 5)
    out = lab.status("-o", "json")
    assert out.returncode == 1, out.stdout + out.stderr
    reasons = json.loads(out.stdout)["degraded"]
    assert any(r.startswith("node node1: agent does not answer") for r in reasons), reasons
    assert not any("node0" in r for r in reasons), reasons
    assert "node1" in out.stderr  # each reason printed for a person too
    table = lab.status()
    assert table.returncode == 1 and "degraded" in table.stdout and "node1" in table.stdout

    with open(lab_dir(lab.name) / "logs" / "agent_node1.status-test.log", "ab") as log:
        lab.started.append(subprocess.Popen(entry["argv"], stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True))
    assert eventually(lab.healthy, 30), lab.status().stdout
