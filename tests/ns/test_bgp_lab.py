"""The bgp fabric in a lab, with real BIRD: a 5-node iBGP full mesh carries every pod
block with no tunnel and no podnet route; BIRD killed and restarted by its agent, and
the agent killed and restarted (BIRD adopted), never break a running flow; BGP objects
reconfigure every BIRD in place; bad ones are refused.

One lab for the module (5 nodes, one pod each, host namespaces named pn-lab-b<hex>-*),
torn down by name.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fabric_cluster import eventually

from cniharness import bird_routes
from cniharness import podnet_cli as podnet
from podnet.lab.sandbox import stop_process
from podnet.lab.state import lab_dir, owner_alive, state_file

pytestmark = pytest.mark.root

NODES = 5
# one UDP datagram every 10 ms for `seconds` to ip:80 (the echo answers); prints how many went unanswered
FLOW = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
lost, sent, end = 0, 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    s.sendto(b"x", (sys.argv[1], 80)); sent += 1
    try:
        s.recv(100)
    except TimeoutError:
        lost += 1
    time.sleep(0.01)
print(lost, sent)
"""


class Lab:
    def __init__(self, name: str) -> None:
        self.name = name
        self.started: list[subprocess.Popen] = []

    @property
    def data(self) -> dict:
        return json.loads(state_file(self.name).read_text())

    def ns(self, node: str) -> str:
        return self.data["nodes"][node]["netns"]

    def sh(self, node: str, *cmd: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.ns(node), *cmd], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def bird_dir(self, node: str) -> Path:
        return Path(self.data["nodes"][node]["state_dir"]) / "bird"

    def bird_pid(self, node: str) -> int:
        return int((self.bird_dir(node) / "bird.pid").read_text())

    def sessions(self, node: str) -> dict[str, str]:
        out = subprocess.run(["birdc", "-s", str(self.bird_dir(node) / "bird.ctl"), "show", "protocols"],
                             capture_output=True, text=True, timeout=10).stdout
        rows = [line.split() for line in out.splitlines()[2:] if line.split()[1:2] == ["BGP"]]
        return {row[0]: row[-1] for row in rows}

    def bird_routes(self, node: str) -> set[str]:
        """The blocks BIRD routes to other nodes (the node's own: a blackhole, checked apart)."""
        return {prefix for prefix, via in bird_routes(self.data["nodes"][node]["netns"]).items() if via != "blackhole"}

    def blocks(self) -> dict[str, str]:
        return {name: info["block"] for name, info in self.data["nodes"].items()}

    def flow(self, src: str, dst: str, seconds: float) -> subprocess.Popen:
        pods = self.data["pods"]
        ip = pods[dst]["ips"][0].split("/")[0]
        proc = subprocess.Popen(["ip", "netns", "exec", pods[src]["netns"], sys.executable, "-c", FLOW, ip,
                                 str(seconds)], stdout=subprocess.PIPE, text=True)
        self.started.append(proc)
        return proc


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if not shutil.which("bird"):
        pytest.skip("bird2 is not installed (make deps installs it)")
    name = f"b{secrets.token_hex(2)}"
    built = Lab(name)
    try:
        podnet("lab", "up", "--name", name, "--nodes", str(NODES), "--pods-per-node", "1", "--fabric", "bgp",
               "--no-cluster-dns")
        yield built
    finally:
        for proc in built.started:
            stop_process(proc)
        if state_file(name).exists():
            podnet("lab", "down", "--name", name)
        assert f"pn-lab-{name}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_a_full_mesh_carries_every_block_with_no_tunnel_and_no_podnet_route(lab):
    blocks = lab.blocks()
    for node in blocks:
        sessions = lab.sessions(node)
        assert len(sessions) == NODES - 1 and set(sessions.values()) == {"Established"}, sessions
        assert lab.bird_routes(node) == {b for n, b in blocks.items() if n != node}
        assert bird_routes(lab.data["nodes"][node]["netns"])[blocks[node]] == "blackhole"  # its own, as Calico's
        assert lab.sh(node, "ip", "route", "show", "proto", "77") == ""
        assert "vxlan" not in lab.sh(node, "ip", "-d", "link", "show")
    proc = podnet("connectivity", "test", "--name", lab.name, "-o", "json", check=False)
    results = json.loads(proc.stdout)
    failed = [f"{r['check']} {r['source']} -> {r['destination']}: {r['detail']}" for r in results if not r["ok"]]
    assert proc.returncode == 0 and not failed, failed
    assert len([r for r in results if r["check"] == "bgp/session"]) == NODES * (NODES - 1)


def test_bgp_status_shows_every_session_and_fails_when_a_bird_does_not_answer(lab):
    nodes = json.loads(podnet("bgp", "status", "--lab", lab.name, "-o", "json").stdout)
    assert [n["node"] for n in nodes] == [f"node{i}" for i in range(NODES)]
    for node in nodes:
        assert len(node["sessions"]) == NODES - 1
        assert all(s["state"] == "Established" and s["imported"] == 1 and s["exported"] == 1
                   for s in node["sessions"]), node
    pid = lab.bird_pid("node3")
    os.kill(pid, signal.SIGSTOP)  # BIRD's own pid file: its control socket stops answering
    try:
        proc = podnet("bgp", "status", "--lab", lab.name, "-o", "json", check=False)
    finally:
        os.kill(pid, signal.SIGCONT)
    stuck = {n["node"]: n for n in json.loads(proc.stdout)}
    assert proc.returncode == 1 and "error" in stuck["node3"] and "error" not in stuck["node0"], stuck["node3"]


def test_bird_killed_is_started_again_and_a_running_flow_keeps_going(lab):
    old = lab.bird_pid("node1")
    flow = lab.flow("default/p0-0", "default/p1-0", 4.0)
    time.sleep(0.5)
    os.kill(old, signal.SIGKILL)  # by the pid BIRD wrote; checked to be node1's below
    out, _ = flow.communicate(timeout=30)
    lost, sent = map(int, out.split())
    assert sent > 100 and lost <= 2, (lost, sent)  # graceful restart: the routes stayed everywhere
    assert eventually(lambda: lab.bird_pid("node1") != old and set(lab.sessions("node1").values()) == {"Established"},
                      timeout=20)
    assert len(lab.sessions("node1")) == NODES - 1


def test_an_agent_killed_and_restarted_adopts_its_bird(lab):
    procs = json.loads((lab_dir(lab.name) / "procs.json").read_text())
    entry = procs["agent/node2"]
    bird = lab.bird_pid("node2")
    flow = lab.flow("default/p0-0", "default/p2-0", 3.0)
    os.kill(entry["pid"], signal.SIGKILL)
    assert eventually(lambda: not owner_alive(entry["owner"]), 5)
    assert lab.bird_pid("node2") == bird and Path(f"/proc/{bird}").exists()  # BIRD outlives its agent
    with open(lab_dir(lab.name) / "logs" / "agent_node2.restarted.log", "ab") as log:
        agent = subprocess.Popen(entry["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    lab.started.append(agent)
    out, _ = flow.communicate(timeout=30)
    lost, sent = map(int, out.split())
    assert lost <= 2, (lost, sent)
    log = lab_dir(lab.name) / "logs" / "agent_node2.restarted.log"
    assert eventually(lambda: "routing daemon adopted" in log.read_text(), timeout=20), log.read_text()[-2000:]
    assert lab.bird_pid("node2") == bird  # adopted, not started twice
    assert eventually(lambda: set(lab.sessions("node2").values()) == {"Established"}, timeout=20)


BGP_CONFIG = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 64600}
"""


def test_a_bgp_configuration_reconfigures_every_bird_in_place(lab, tmp_path):
    pids = {node: lab.bird_pid(node) for node in lab.blocks()}
    path = tmp_path / "bgp.yaml"
    path.write_text(BGP_CONFIG)
    podnet("apply", "--lab", lab.name, "-f", str(path))
    try:
        for node in pids:
            conf = lab.bird_dir(node) / "bird.conf"
            assert eventually(lambda c=conf: "as 64600;" in c.read_text(), timeout=15), conf.read_text()
        assert {node: lab.bird_pid(node) for node in pids} == pids  # configure, never a restart
        assert eventually(lambda: all(set(lab.sessions(n).values()) == {"Established"} for n in pids), timeout=30)
    finally:
        podnet("delete", "--lab", lab.name, "-f", str(path))
    for node in pids:
        conf = lab.bird_dir(node) / "bird.conf"
        assert eventually(lambda c=conf: "as 64512;" in c.read_text(), timeout=15)


def test_bad_bgp_objects_are_refused_with_the_field_path(lab, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\n"
                    "spec: {peerIP: not-an-ip, asNumber: 65001}\n")
    proc = podnet("apply", "--lab", lab.name, "-f", str(path), check=False)
    assert proc.returncode != 0 and "spec.peerIP" in proc.stderr, proc.stderr
    path.write_text("apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n"
                    "spec: {asNumber: 4294967296}\n")
    proc = podnet("apply", "--lab", lab.name, "-f", str(path), check=False)
    assert proc.returncode != 0 and "spec.asNumber" in proc.stderr, proc.stderr

