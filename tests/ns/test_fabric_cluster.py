"""Fabrics end to end: node namespaces on one fabric bridge, one real agent per node
(inside its namespace, via nsenter), a shared SQLite store, pods attached through the
real CNI path with each node's rendered cluster.conflist.

    fab: bridge br0 --veth-- n1 eth0 172.31.0.1/24 -- pncl0 -- pod p1
                    --veth-- n2 eth0 172.31.0.2/24 -- pncl0 -- pod p2
                    --veth-- n3 eth0 172.31.0.3/24 -- pncl0 -- pod p3
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cniharness import REFERENCE_DIR, gso_of
from podnet import keys
from podnet.cluster.leases import CLUSTER_NETWORK
from podnet.kernel.gso import LEGACY, GsoLimits
from podnet.lab.sandbox import Sandbox, wait_for_path
from podnet.lab.state import enter, state_file
from podnet.lab.underlay import NIC_GSO, set_nic_gso
from podnet.model.cluster import NodeLease
from podnet.rpc.client import call
from podnet.runtime.libcni import Conflist
from podnet.store import open_store

pytestmark = pytest.mark.root

PORT = 7070
SERVER = (
    "import socket,sys,threading\n"
    "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(('0.0.0.0',int(sys.argv[1])))\n"
    "def udp():\n"
    "    while True:\n"
    "        d,a=u.recvfrom(65535); u.sendto(str(len(d)).encode(),a)\n"
    "threading.Thread(target=udp,daemon=True).start()\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',int(sys.argv[1]))); s.listen(16); print('ready',flush=True)\n"
    "while True:\n"
    "    c,a=s.accept(); c.recv(100); c.sendall(('hello from '+sys.argv[2]+' client '+a[0]+'\\n').encode()); c.close()\n"
)
PROBE = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n"
    "s.sendall(b'ping\\n'); print(s.recv(200).decode().strip())\n"
)
DF_PROBE = (  # one UDP datagram of N bytes with DF set; prints the echoed length
    "import socket,sys\n"
    "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.settimeout(2)\n"
    "u.setsockopt(socket.IPPROTO_IP,10,2)\n"  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
    "u.sendto(b'x'*int(sys.argv[3]),(sys.argv[1],int(sys.argv[2]))); print(u.recv(100).decode())\n"
)


@dataclass
class Node:
    name: str
    ns: str
    state: Path
    socket: str
    proc: subprocess.Popen | None = None
    pod_ns: str = ""
    pod_ip: str = ""

    @property
    def conflist(self) -> Path:
        return self.state / "net.d" / "cluster.conflist"


@dataclass
class Cluster:
    sandbox: Sandbox
    cni_bin: str
    store: str
    fabric: str
    ttl: float
    nic_gso: int = 0  # the underlay "NICs'" GSO limit (0: the kernel's 64 KiB)
    nodes: list[Node] = field(default_factory=list)

    def add_node(self, i: int, tmp: Path) -> Node:
        box = self.sandbox
        ns = box.netns(f"n{i}")
        fab = box.name("fab")
        peer = f"pnf{box.token}{i}"
        subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer,
                        "netns", fab], check=True)
        subprocess.run(["ip", "-n", fab, "link", "set", peer, "master", "br0", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"172.31.0.{i}/24", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        if self.nic_gso:
            set_nic_gso(ns, "eth0", self.nic_gso)
            set_nic_gso(fab, peer, self.nic_gso)
        node = Node(f"n{i}", ns, tmp / f"n{i}", f"/run/podnet/t-{secrets.token_hex(3)}-n{i}.sock")
        box.on_close(Path(node.socket).unlink)  # a killed agent leaves its socket behind
        self.nodes.append(node)
        return node

    def start(self, node: Node) -> None:
        argv = ["nsenter", f"--net={Sandbox.path(node.ns)}", sys.executable, "-m", "podnet.cli", "agent",
                "--socket", node.socket, "--store", self.store, "--init", "--state-dir", str(node.state),
                "--node", node.name, "--fabric", self.fabric, "--lease-ttl", str(self.ttl)]
        node.proc = self.sandbox.spawn(None, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for_path(str(node.conflist), timeout=20, proc=node.proc)

    def attach_pod(self, node: Node) -> None:
        node.pod_ns = self.sandbox.netns(f"p{node.name}")
        conflist = Conflist(json.loads(node.conflist.read_text()), [self.cni_bin, REFERENCE_DIR], netns_exec=node.ns)
        result = conflist.add(f"pod-{node.name}", Sandbox.path(node.pod_ns))
        node.pod_ip = result["ips"][0]["address"].split("/")[0]
        proc = self.sandbox.spawn(node.pod_ns, [sys.executable, "-c", SERVER, str(PORT), node.name],
                                  stdout=subprocess.PIPE)
        assert proc.stdout is not None and b"ready" in proc.stdout.readline()

    def probe(self, src: Node, dst: Node) -> str | None:
        out = self.sandbox.exec(src.pod_ns, [sys.executable, "-c", PROBE, dst.pod_ip, str(PORT)], check=False)
        return out.stdout.strip() if out.returncode == 0 else None

    def routes(self, node: Node) -> str:
        return self.sandbox.exec(node.ns, ["ip", "route", "show", "proto", "77"]).stdout

    def status(self, node: Node) -> dict:
        return call(node.socket, "node.status")  # type: ignore[return-value]


def eventually(check, timeout: float = 8.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def make_cluster(sandbox: Sandbox, cni_bin: str, tmp_path: Path, fabric: str, n: int, ttl: float,
                 nic_gso: int = 0) -> Cluster:
    fab = sandbox.netns("fab")
    subprocess.run(["ip", "-n", fab, "link", "add", "br0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", fab, "link", "set", "br0", "up"], check=True)
    cluster = Cluster(sandbox, cni_bin, str(tmp_path / "cluster.db"), fabric, ttl, nic_gso)
    nodes = [cluster.add_node(i, tmp_path) for i in range(1, n + 1)]
    for node in nodes:
        cluster.start(node)
    for node in nodes:
        cluster.attach_pod(node)
    return cluster


def test_vxlan_cluster(sandbox, cni_bin, tmp_path):
    c = make_cluster(sandbox, cni_bin, tmp_path, "vxlan", 3, ttl=3.0, nic_gso=NIC_GSO)
    n1, n2, n3 = c.nodes
    # BIG TCP NICs, but no big packets into the tunnel: pnvx0, the bridge and the pods
    # stay at 64 KiB (a bigger pod packet would be segmented in software at pnvx0)
    assert json.loads(n1.conflist.read_text())["plugins"][0]["gsoMaxSize"] == LEGACY
    for ns, ifname in ((n1.ns, "pnvx0"), (n1.ns, "pncl0"), (n1.pod_ns, "eth0")):
        assert gso_of(ns, ifname) == GsoLimits(LEGACY, LEGACY), (ns, ifname)
    blocks = {c.status(n)["block"] for n in c.nodes}
    assert len(blocks) == 3
    # every node sees both peers, one route each
    assert eventually(lambda: all(len(c.status(n)["peers"]) == 2 and
                                  all(p["state"] == "ok" for p in c.status(n)["peers"]) for n in c.nodes))
    assert c.status(n1)["mtu"] == 1450
    # pod to pod across nodes, and the server sees the client pod's own address
    assert eventually(lambda: c.probe(n1, n2)) == f"hello from n2 client {n1.pod_ip}"
    assert c.probe(n3, n1) == f"hello from n1 client {n3.pod_ip}"
    # node to pod (the bridge exists before any pod; vxlan routes from the node too)
    out = sandbox.exec(n1.ns, [sys.executable, "-c", PROBE, n2.pod_ip, str(PORT)], check=False)
    assert out.returncode == 0 and "hello from n2" in out.stdout
    # a full-size datagram with DF set crosses the overlay; one byte more is refused
    fits = 1450 - 28
    out = sandbox.exec(n1.pod_ns, [sys.executable, "-c", DF_PROBE, n2.pod_ip, str(PORT), str(fits)], check=False)
    assert out.stdout.strip() == str(fits), out.stderr
    out = sandbox.exec(n1.pod_ns, [sys.executable, "-c", DF_PROBE, n2.pod_ip, str(PORT), str(fits + 1)], check=False)
    assert out.returncode != 0
    # a route deleted by hand comes back
    b2 = c.status(n2)["block"]
    sandbox.exec(n1.ns, ["ip", "route", "del", b2])
    assert eventually(lambda: b2 in c.routes(n1), timeout=6)
    assert eventually(lambda: c.probe(n1, n2))
    # n3 goes away: stop its agent, delete its lease; the others drop it, its block is free
    b3 = c.status(n3)["block"]
    sandbox.stop(n3.proc)
    store = open_store(c.store)
    try:
        assert store.delete("nodes/n3")
        for node in (n1, n2):
            assert eventually(lambda node=node: b3 not in c.routes(node)), c.routes(node)
            assert eventually(lambda node=node: "n3" not in {p["name"] for p in c.status(node)["peers"]})
        net = b3.split("/")[0]
        assert eventually(lambda: store.get(f"blocks/{net}-24") is None)
        out = sandbox.exec(n1.ns, ["bridge", "fdb", "show", "dev", "pnvx0"]).stdout
        assert "172.31.0.3" not in out and "172.31.0.2" in out
    finally:
        store.close()
    assert c.probe(n1, n2)


def test_hostgw_cluster_and_lease_expiry(sandbox, cni_bin, tmp_path):
    c = make_cluster(sandbox, cni_bin, tmp_path, "host-gw", 2, ttl=1.5, nic_gso=NIC_GSO)
    n1, n2 = c.nodes
    assert c.status(n1)["mtu"] == 1500
    # BIG TCP: the pods, their veths and the bridge take what the node's NIC takes
    assert json.loads(n1.conflist.read_text())["plugins"][0]["gsoMaxSize"] == NIC_GSO
    for ns, ifname in ((n1.ns, "pncl0"), (n1.pod_ns, "eth0"), (n2.pod_ns, "eth0")):
        assert gso_of(ns, ifname) == GsoLimits(NIC_GSO, NIC_GSO), (ns, ifname)
    b2 = c.status(n2)["block"]
    assert eventually(lambda: f"{b2} via 172.31.0.2 dev eth0" in c.routes(n1)), c.routes(n1)
    assert eventually(lambda: c.probe(n1, n2)) == f"hello from n2 client {n1.pod_ip}"
    assert c.probe(n2, n1) == f"hello from n1 client {n2.pod_ip}"
    # the agent dies; its lease expires within the TTL and n1 forgets it
    n2.proc.kill()
    assert eventually(lambda: b2 not in c.routes(n1), timeout=6)
    store = open_store(c.store)
    try:
        assert store.get("nodes/n2") is None
        assert store.get(f"blocks/{b2.split('/')[0]}-24") is None
    finally:
        store.close()


def lab_cli(*args: str) -> str:
    """`podnet ARGS` as a user runs it (tables 300 columns wide); its stdout (a failure
    fails the test)."""
    out = subprocess.run([sys.executable, "-m", "podnet.cli", *args], capture_output=True, text=True,
                         timeout=120, check=False, env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 0, f"podnet {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_lab_refuses_leases_that_would_hijack_routes():
    """Forged leases in a host-gw lab: half the internet (128.0.0.0/1), node1's own
    block, and 10.0.0.0/8 over the whole cluster CIDR. No node routes any of them,
    `lab status` shows each refused with its reason, the real peers keep their routes,
    and once the forged leases are gone no pod's address was freed."""
    name = f"t{secrets.token_hex(2)}"
    try:
        lab_cli("lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "1", "--fabric", "host-gw")
        lab = json.loads(lab_cli("lab", "status", "--name", name, "-o", "json"))
        nodes = {n["name"]: n for n in lab["nodes"]}
        blocks = {n: node["block"] for n, node in nodes.items()}
        underlay = {n: node["underlay"].split("/")[0] for n, node in nodes.items()}
        forged = {"evil": "128.0.0.0/1", "evil-twin": blocks["node1"], "evil-wide": "10.0.0.0/8"}
        with open_store(lab["store_url"]) as store:
            reserved = sorted(e.key for e in store.list(keys.ipam_addresses(CLUSTER_NETWORK)))
            assert len(reserved) == 4  # each node's pod and DNS pod
            for node, block in forged.items():
                lease = NodeLease(node, block, "172.31.0.66", "eth0", "host-gw", {}, time.time())
                store.put(keys.node(node), lease.encode(), ttl=120)

        def status() -> dict:
            return json.loads(lab_cli("lab", "status", "--name", name, "-o", "json"))

        def routes(node: str) -> str:
            out = subprocess.run([*enter(nodes[node]["netns"]), "ip", "route"], capture_output=True, text=True,
                                 timeout=10, check=True)
            return out.stdout

        def converged() -> dict | None:  # every agent has judged every forged lease
            data = status()
            return data if all(set(forged) <= {p["name"] for p in n["agent"]["result"]["peers"]}
                               for n in data["nodes"]) else None

        data = eventually(converged, timeout=20)
        assert data, [n["agent"] for n in status()["nodes"]]
        for node, peer in (("node0", "node1"), ("node1", "node0")):
            table = routes(node)
            assert "128.0.0.0/1" not in table and "10.0.0.0/8" not in table and "172.31.0.66" not in table, table
            assert f"{blocks[peer]} via {underlay[peer]} dev eth0 proto 77" in table, table
        for node in data["nodes"]:
            reasons = {r["name"]: (r["block"], r["reason"]) for r in node["refused"]}
            assert set(reasons) == set(forged), reasons
            assert reasons["evil"] == ("128.0.0.0/1", "block 128.0.0.0/1 is outside the cluster CIDR 10.244.0.0/16")
            assert reasons["evil-wide"] == ("10.0.0.0/8", "block 10.0.0.0/8 is outside the cluster CIDR 10.244.0.0/16")
            twin = "is claimed by node node1" if node["name"] == "node0" else "overlaps this node's"
            assert twin in reasons["evil-twin"][1], reasons
        table = lab_cli("lab", "status", "--name", name)
        assert "evil 128.0.0.0/1: block 128.0.0.0/1 is outside the cluster CIDR 10.244.0.0/16" in table, table
        # the forged leases go away: nothing of the cluster's pods is freed for them
        with open_store(lab["store_url"]) as store:
            for node in forged:
                store.delete(keys.node(node))
        assert eventually(lambda: not any(n["refused"] for n in status()["nodes"]), timeout=20)
        with open_store(lab["store_url"]) as store:
            assert sorted(e.key for e in store.list(keys.ipam_addresses(CLUSTER_NETWORK))) == reserved
        pod_ns = {p["node"]: p["netns"] for p in data["pods"]}
        target = next(p for p in data["pods"] if p["node"] == "node1")["ips"][0].split("/")[0]
        probe = subprocess.run([*enter(pod_ns["node0"]), sys.executable, "-c", PROBE, target, "80"],
                               capture_output=True, text=True, timeout=10, check=False)
        assert probe.returncode == 0 and probe.stdout.strip(), probe.stderr
    finally:
        if state_file(name).exists():
            lab_cli("lab", "down", "--name", name)
