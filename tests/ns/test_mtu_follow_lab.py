"""The pod network's MTU follows the underlay's (issue 18), on a lab of each fabric.

Each lab: two nodes, a pod on each. Its whole underlay (every node's eth0, every port of
the rack's bridge namespace and the bridge) goes from 1500 to 9000, then to 1400. Within
a few seconds every pod's interface has the fabric's MTU for it (vxlan 50 less, 70 on a
dual-stack vxlan lab whose IPv6 pods ride the IPv6 underlay, gossip
80: its sleeve's room, and an encrypted gossip lab's sleeve TUN too; host-gw, bgp and
macvlan the underlay's), the
largest UDP datagram that fits (don't-fragment) crosses to the other node's pod and is
answered, and one byte more is refused at the sender with "message too long" (the
kernel's fragmentation-needed answer), never black-holed. `podnet status` records the
change. Both labs are torn down by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cniharness import podnet_cli, topology_lab, wait_until

pytestmark = pytest.mark.root

UDP_80 = [{"port": 80, "protocol": "UDP", "name": "echo"}]
TOPOLOGY = {"nodes": [{"name": "node0"}, {"name": "node1"}],
            "pods": [{"name": "a", "namespace": "default", "node": "node0", "ports": UDP_80},
                     {"name": "b", "namespace": "default", "node": "node1", "ports": UDP_80}]}
# lab -> (the room its encapsulation takes, `lab up` flags); gossip's is its sleeve's
LABS = {"vxlan": (50, ("--fabric", "vxlan")), "host-gw": (0, ("--fabric", "host-gw")),
        "vxlan-ipv6": (70, ("--fabric", "vxlan", "--ipv6")),  # dual stack: IPv6 pods ride pnvx6 (outer IPv6)
        "bgp": (0, ("--fabric", "bgp")), "gossip": (80, ("--fabric", "gossip")),
        "gossip-encrypted": (80, ("--fabric", "gossip", "--encrypt")), "macvlan": (0, ("--fabric", "macvlan"))}

# A don't-fragment UDP datagram of N payload bytes to the lab echo (UDP 80): "answered",
# "too long" (EMSGSIZE: the sender's interface refuses it), or "lost".
DF_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
s.settimeout(2)
try:
    s.sendto(b"x" * int(sys.argv[2]), (sys.argv[1], 80))
    s.recvfrom(65535)
    print("answered")
except OSError as exc:
    print("too long" if exc.errno == 90 else "lost")
"""


@pytest.fixture(scope="module", params=sorted(LABS))
def lab(request, tmp_path_factory) -> Iterator[dict]:
    with topology_lab("m", TOPOLOGY, tmp_path_factory.mktemp("mtu"), *LABS[request.param][1],
                      "--no-cluster-dns") as built:
        built["kind"] = request.param
        yield built


def netns_run(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=True,
                          timeout=20).stdout


def set_underlay(lab: dict, mtu: int) -> None:
    """Every node's eth0, and every port of rack 0's bridge and the bridge, to `mtu`."""
    fab = f"pn-lab-{lab['name']}-fab0"
    ports = [line.split(":")[1].strip().split("@")[0] for line in
             subprocess.run(["ip", "-n", fab, "-o", "link", "show"], capture_output=True, text=True,
                            check=True).stdout.splitlines()]
    nodes = [node["netns"] for node in lab["nodes"].values()]
    steps = [(fab, p) for p in ports if p not in ("lo", "br0")] + [(fab, "br0")] + [(n, "eth0") for n in nodes]
    if mtu < 1500:
        steps.reverse()  # shrink the senders first
    for netns, link in steps:
        subprocess.run(["ip", "-n", netns, "link", "set", link, "mtu", str(mtu)], check=True)


def pod_mtu(lab: dict, pod: str) -> int:
    out = netns_run(lab["pods"][f"default/{pod}"]["netns"], "cat", "/sys/class/net/eth0/mtu")
    return int(out)


def df_send(lab: dict, size: int) -> str:
    target = lab["pods"]["default/b"]["ips"][0].split("/")[0]
    return netns_run(lab["pods"]["default/a"]["netns"], sys.executable, "-c", DF_SEND, target, str(size)).strip()


@pytest.mark.parametrize("underlay", [9000, 1400])
def test_pods_follow_the_underlays_mtu(lab: dict, underlay: int) -> None:
    want = underlay - LABS[lab["kind"]][0]
    set_underlay(lab, underlay)
    wait_until(lambda: pod_mtu(lab, "a") == want and pod_mtu(lab, "b") == want, f"every pod at MTU {want}",
               timeout=15)
    if lab["kind"] == "gossip-encrypted":  # every pod packet crosses the sleeve's TUN: it follows too
        tuns = [node["netns"] for node in lab["nodes"].values()]
        wait_until(lambda: all(netns_run(n, "cat", "/sys/class/net/pnsl0/mtu").strip() == str(want) for n in tuns),
                   f"every sleeve TUN at MTU {want}", timeout=15)
    largest = want - 28  # IPv4 and UDP headers
    assert wait_until(lambda: df_send(lab, largest) == "answered", "the largest datagram answered", timeout=10)
    assert df_send(lab, largest + 1) == "too long"

    def recorded() -> list[dict]:  # (macvlan children shrink with their parent before the agent looks)
        status = json.loads(podnet_cli("status", "--lab", lab["name"], "-o", "json").stdout)
        return [c for row in status["nodes"] for c in row.get("mtu_changes", [])
                if c["underlay"][1] == underlay and c["pods"][1] == want]

    changes = wait_until(lambda: len(recorded()) == len(lab["nodes"]) and recorded(), "each node's change recorded",
                         timeout=10)
    assert all(c["resized"] >= 1 and not c["failed"] for c in changes), changes
