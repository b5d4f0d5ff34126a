"""Route reflectors in a bgp lab, Calico's way: 10 nodes, two of them reflectors
(`routeReflector: true` in the topology), no node-to-node mesh. Sessions are counted:
a client has one per reflector, a reflector one per other node; every node still
learns every block, and pods on clients that share no session talk."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cniharness import bird_routes, topology_lab
from cniharness import podnet_cli as podnet

pytestmark = pytest.mark.root

NODES = 10
REFLECTORS = {"node0", "node5"}
TOPOLOGY = {
    "nodes": [{"name": f"node{i}", **({"routeReflector": True} if f"node{i}" in REFLECTORS else {})}
              for i in range(NODES)],
    "pods": [{"name": f"p{i}", "node": f"node{i}", "ports": [{"port": 80, "protocol": "TCP", "name": "http"}]}
             for i in (1, 4, 9)],
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    with topology_lab("q", TOPOLOGY, tmp_path_factory.mktemp("rr"), "--fabric", "bgp", "--no-cluster-dns", "--timeout", "60") as built:
        yield built


def test_clients_peer_with_the_reflectors_only_and_learn_every_block(lab):
    status = {n["node"]: n for n in json.loads(podnet("bgp", "status", "--lab", lab["name"], "-o", "json").stdout)}
    underlay = {name: info["underlay"] for name, info in lab["nodes"].items()}
    for node, answer in status.items():
        peers = {s["neighbor"] for s in answer["sessions"]}
        assert {s["state"] for s in answer["sessions"]} == {"Established"}, answer
        if node in REFLECTORS:
            assert peers == {ip for n, ip in underlay.items() if n != node}  # every other node
        else:
            assert peers == {underlay[r] for r in REFLECTORS}  # 2 sessions, not 9
    total = sum(len(a["sessions"]) for a in status.values())
    assert total == 2 * (NODES - 1) + 2 * (NODES - 2)  # 34 against 90 for a full mesh
    for name, info in lab["nodes"].items():
        routes = bird_routes(info["netns"])
        learned = {prefix for prefix, via in routes.items() if via != "blackhole"}
        others = {i["block"] for n, i in lab["nodes"].items() if n != name}
        assert learned == others, name
        # a reflected route keeps its originator's next hop: straight to that node, never via a reflector
        for block, via in routes.items():
            if via == "blackhole":
                continue
            assert underlay[next(n for n, i in lab["nodes"].items() if i["block"] == block)] == via
    proc = podnet("connectivity", "test", "--name", lab["name"], "-o", "json", check=False)
    failed = [r for r in json.loads(proc.stdout) if not r["ok"]]
    assert proc.returncode == 0 and not failed, failed
