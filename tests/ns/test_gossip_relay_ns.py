"""The gossip fabric's kernel relay (fabric/gossip.py) on real namespaces: three nodes
on one underlay bridge, each node's pnvx0 and entries made by GossipFabric's own
setup and apply. The a-c underlay link is cut by an nft drop in the underlay's bridge
namespace (never by touching a node): with a and c routing each other via b, b's
kernel forwards from its VXLAN device back into it; with the cut healed and direct
routing back, packets go straight again."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from podnet.lab.sandbox import Sandbox, ip

pytestmark = pytest.mark.root

NODES = {"a": 1, "b": 2, "c": 3}
# What one node runs in its own namespace: the fabric's setup and apply for a routing.
CONVERGE = r"""
import ipaddress, json, sys
from pyroute2 import IPRoute
from podnet.fabric.base import FabricContext
from podnet.fabric.gossip import GossipFabric, Routing
from podnet.fabric.vxlan import vtep_mac
from podnet.model.cluster import NodeLease
me, via, nodes = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
def lease(n):
    return NodeLease(n, f"10.244.{nodes[n]}.0/24", f"172.31.0.{nodes[n]}", "eth0", "gossip",
                     {"vtep_mac": vtep_mac(n)}, 0.0)
ctx = FabricContext(lease(me), ipaddress.IPv4Interface(f"172.31.0.{nodes[me]}/24"), 1500,
                    ipaddress.IPv4Network("10.244.0.0/16"), 24)
fabric = GossipFabric()
fabric.routing = Routing(via)
peers = [lease(n) for n in nodes if n != me]
with IPRoute() as ipr:
    fabric.setup(ipr, ctx)
    want = fabric.desired(ctx, peers, {p.block: p.name for p in peers})
    fabric.apply(ipr, want)
print(json.dumps(want.peers))
"""


@pytest.fixture(scope="module")
def mesh() -> Iterator[dict[str, str]]:
    with Sandbox("pn-t-") as box:
        fab = box.netns("fab")
        ip("-n", fab, "link", "add", "br0", "type", "bridge")
        ip("-n", fab, "link", "set", "br0", "up")
        names = {"fab": fab}
        for node, n in NODES.items():
            ns = names[node] = box.netns(node)
            ip("-n", fab, "link", "add", f"u{node}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", fab, "link", "set", f"u{node}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"172.31.0.{n}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            box.exec(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        yield names


def converge(mesh: dict[str, str], node: str, via: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["nsenter", f"--net=/run/netns/{mesh[node]}", "--", sys.executable, "-c", CONVERGE,
                          node, json.dumps(via), json.dumps(NODES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def direct(node: str) -> dict[str, str]:
    return {peer: peer for peer in NODES if peer != node}


def pings(mesh: dict[str, str], src: str, dst: str) -> bool:
    target = f"10.244.{NODES[dst]}.0"  # the destination's VTEP address, on its pnvx0
    out = subprocess.run(["nsenter", f"--net=/run/netns/{mesh[src]}", "--", "busybox", "ping", "-c", "2", "-W", "1",
                          target], capture_output=True, text=True, timeout=20)
    return out.returncode == 0


def route(mesh: dict[str, str], node: str, dst: str) -> str:
    return ip("-n", mesh[node], "route", "get", f"10.244.{NODES[dst]}.0").stdout


def cut(mesh: dict[str, str], on: bool) -> None:
    if on:
        rules = ("table bridge pn-cut {\n chain cut { type filter hook forward priority 0; policy accept;\n"
                 "  ip saddr 172.31.0.1 ip daddr 172.31.0.3 drop\n  ip saddr 172.31.0.3 ip daddr 172.31.0.1 drop\n }\n}\n")
        subprocess.run(["ip", "netns", "exec", mesh["fab"], "nft", "-f", "-"], input=rules, text=True, check=True)
    else:
        subprocess.run(["ip", "netns", "exec", mesh["fab"], "nft", "delete", "table", "bridge", "pn-cut"], check=True)


def test_a_cut_link_is_relayed_by_the_middle_peer_and_heals_to_direct(mesh):
    for node in NODES:
        assert set(converge(mesh, node, direct(node)).values()) == {"ok"}
    assert pings(mesh, "a", "c")
    assert "via 10.244.3.0" in route(mesh, "a", "c")
    cut(mesh, True)
    try:
        assert not pings(mesh, "a", "c")  # the cut is real
        assert converge(mesh, "a", {"b": "b", "c": "b"}) == {"b": "ok", "c": "ok: via b"}
        assert converge(mesh, "c", {"a": "b", "b": "b"}) == {"a": "ok: via b", "b": "ok"}
        assert "via 10.244.2.0 dev pnvx0" in route(mesh, "a", "c")  # c's block through b's VTEP
        assert pings(mesh, "a", "c") and pings(mesh, "c", "a")  # b forwards, in its kernel
    finally:
        cut(mesh, False)
    for node in ("a", "c"):
        converge(mesh, node, direct(node))
    assert "via 10.244.3.0" in route(mesh, "a", "c") and pings(mesh, "a", "c")
