"""`podnet lab`: a 2-node cluster of namespaces, built and torn down through the CLI.

Every lab here is named `t<hex>` (namespaces `pn-lab-t<hex>-*`); a finalizer runs `lab
down` even when the test failed, and asserts nothing is left.
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

from podnet.lab.state import lab_dir, state_file
from podnet.procs import owner_alive

pytestmark = pytest.mark.root

ICMP_PING = r"""
import os, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); sock.settimeout(2)
hdr = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xffff, 1) + b"podnet-lab-ping!"
sock.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr), os.getpid() & 0xffff, 1) + hdr[8:], (sys.argv[1], 0))
deadline = time.monotonic() + 2
while time.monotonic() < deadline:
    data, addr = sock.recvfrom(2048)
    if addr[0] == sys.argv[1] and data[20] == 0:
        print("reply from", addr[0]); sys.exit(0)
sys.exit(1)
"""
TCP = (
    "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3);"
    "s.sendall(b'hello\\n'); print(s.makefile().readline().strip())"
)
UDP = (
    "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3);"
    "s.sendto(b'hi', (sys.argv[1], int(sys.argv[2]))); print(s.recv(100).decode())"
)
HTTP = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())"


def podnet(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "podnet.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podnet {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def lab_exec(name: str, target: str, *cmd: str) -> subprocess.CompletedProcess:
    return podnet("lab", "exec", "--name", name, target, "--", *cmd, check=False, timeout=20)


def py(name: str, target: str, code: str, *args: str) -> str:
    proc = lab_exec(name, target, sys.executable, "-c", code, *args)
    assert proc.returncode == 0, f"{target}: {proc.stderr.strip()}"
    return proc.stdout.strip()


def recorded(name: str) -> tuple[list[str], list[dict]]:
    """The namespaces and processes a lab recorded."""
    state = json.loads(state_file(name).read_text())
    try:
        procs = json.loads((lab_dir(name) / "procs.json").read_text())
    except FileNotFoundError:
        procs = {}
    return state["namespaces"], list(procs.values())


def assert_gone(name: str, processes: list[dict]) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"pn-lab-{name}-" not in netns
    assert not [p for p in processes if owner_alive(p["owner"])]
    assert not list(Path("/run/podnet").glob(f"lab-{name}-*.sock"))
    assert not state_file(name).exists()
    assert not lab_dir(name).exists()


def down_if_up(name: str) -> None:
    if state_file(name).exists():
        _, processes = recorded(name)
        podnet("lab", "down", "--name", name, check=False)
        assert_gone(name, processes)


@pytest.fixture(scope="module")
def lab() -> Iterator[dict]:
    """`lab up --nodes 2 --pods-per-node 2`, shared by the read-only checks below."""
    if os.geteuid() != 0:
        pytest.skip("needs root (creates network namespaces)")
    name = f"t{secrets.token_hex(2)}"
    try:
        podnet("lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "2")
        yield json.loads(podnet("lab", "status", "--name", name, "-o", "json").stdout)
    finally:
        down_if_up(name)


def pod_ip(lab: dict, key: str) -> str:
    return next(p for p in lab["pods"] if p["name"] == key)["ips"][0].split("/")[0]


def test_status_json(lab: dict) -> None:
    assert lab["phase"] == "up" and lab["supervisor"]["alive"]
    assert [n["name"] for n in lab["nodes"]] == ["node0", "node1"]
    for node in lab["nodes"]:
        assert node["agent_alive"] and "result" in node["agent"], node["agent"]
        assert node["block"] and node["underlay"].startswith("172.31.0.")
    assert sorted(p["name"] for p in lab["pods"]) == ["default/p0-0", "default/p0-1", "default/p1-0", "default/p1-1"]
    assert all(p["ips"] and p["echo_alive"] and p["ports"] == ["80/TCP", "80/UDP"] for p in lab["pods"])
    blocks = {n["name"]: n["block"] for n in lab["nodes"]}
    assert pod_ip(lab, "default/p1-0").rsplit(".", 1)[0] == blocks["node1"].rsplit(".", 1)[0]


def test_underlay_node_to_node_and_outside(lab: dict) -> None:
    name = lab["name"]
    assert "reply from 172.31.0.11" in py(name, "node0", ICMP_PING, "172.31.0.11")
    assert "reply from 198.51.100.1" in py(name, "node1", ICMP_PING, "198.51.100.1")
    assert py(name, "node0", HTTP, "http://198.51.100.1/") == "outside"


def test_same_node_pods_reach_echo_servers(lab: dict) -> None:
    name, target = lab["name"], pod_ip(lab, "default/p0-1")
    assert py(name, "default/p0-0", TCP, target, "80") == "p0-1 hello"
    assert py(name, "default/p0-0", UDP, target, "80") == "p0-1"
    assert py(name, "default/p0-0", HTTP, f"http://{target}/") == "p0-1"


def test_pod_to_outside_with_masquerade(lab: dict) -> None:
    # The outside has no route to the pod CIDR: only a masqueraded flow gets an answer.
    assert py(lab["name"], "default/p1-1", HTTP, "http://198.51.100.1/") == "outside"
    assert py(lab["name"], "default/p1-1", UDP, "198.51.100.1", "80") == "outside"


def test_cross_node_pods(lab: dict) -> None:
    name, target = lab["name"], pod_ip(lab, "default/p1-0")
    assert py(name, "default/p0-0", TCP, target, "80") == "p1-0 hello"
    assert py(name, "default/p0-0", UDP, target, "80") == "p1-0"


def test_exec_in_node_and_pod(lab: dict) -> None:
    name = lab["name"]
    assert "172.31.0.10/24" in lab_exec(name, "node0", "ip", "-o", "addr", "show", "dev", "eth0").stdout
    pod = next(p for p in lab["pods"] if p["name"] == "default/p0-1")
    assert pod["ips"][0] in lab_exec(name, "default/p0-1", "ip", "-o", "addr", "show", "dev", "eth0").stdout
    bad = lab_exec(name, "default/nope", "true")
    assert bad.returncode == 1 and "no pod 'default/nope'" in bad.stderr


def test_lab_down_removes_everything() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"t{secrets.token_hex(2)}"
    try:
        podnet("lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "1")
        namespaces, processes = recorded(name)
        # namespaces: fab0, out, 2 nodes, 2 pods, 2 DNS pods; processes: supervisor, outside, the
        # zygote (lab/zygote.py: it forks the agents and the echo servers), 2 agents, 2 echo
        assert len(namespaces) == 8 and len(processes) == 7
        assert all(owner_alive(p["owner"]) for p in processes)
        podnet("lab", "down", "--name", name)
        assert_gone(name, processes)
        again = podnet("lab", "down", "--name", name, check=False)
        assert again.returncode == 1 and f"no lab named '{name}'" in again.stderr
    finally:
        down_if_up(name)


def test_down_after_crashed_up() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"t{secrets.token_hex(2)}"
    up = subprocess.Popen([sys.executable, "-m", "podnet.cli", "lab", "up", "--name", name, "--nodes", "3",
                           "--pods-per-node", "3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        procs = lab_dir(name) / "procs.json"
        while not (procs.exists() and "agent/node2" in procs.read_text()):
            assert up.poll() is None, "lab up ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        up.send_signal(signal.SIGKILL)
        up.wait(10)
        state = json.loads(state_file(name).read_text())
        assert state["phase"] == "building"
        namespaces, processes = recorded(name)
        assert any(owner_alive(p["owner"]) for p in processes)
        podnet("lab", "down", "--name", name)
        assert_gone(name, processes)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        down_if_up(name)


def test_two_racks_vxlan_crosses_the_router() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"t{secrets.token_hex(2)}"
    try:
        podnet("lab", "up", "--name", name, "--nodes", "2", "--racks", "2", "--pods-per-node", "1")
        lab = json.loads(podnet("lab", "status", "--name", name, "-o", "json").stdout)
        assert [n["underlay"] for n in lab["nodes"]] == ["172.31.0.10", "172.31.1.10"]
        assert "reply from 172.31.1.10" in py(name, "node0", ICMP_PING, "172.31.1.10")
        assert py(name, "default/p1-0", HTTP, "http://198.51.100.1/") == "outside"
        assert py(name, "default/p0-0", TCP, pod_ip(lab, "default/p1-0"), "80") == "p1-0 hello"
    finally:
        down_if_up(name)


def test_etcd_store_and_host_gw() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    name = f"t{secrets.token_hex(2)}"
    try:
        podnet("lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "1", "--store", "etcd",
               "--fabric", "host-gw")
        lab = json.loads(podnet("lab", "status", "--name", name, "-o", "json").stdout)
        assert lab["store_url"].startswith("etcd://172.31.0.200:2379,")
        assert len(lab["etcd"]) == 3
        assert py(name, "default/p0-0", UDP, pod_ip(lab, "default/p1-0"), "80") == "p1-0"
    finally:
        down_if_up(name)
