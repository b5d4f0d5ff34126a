"""Two racks, each behind a top-of-rack router, joined by a spine, all running BIRD
(lab/routers.py): nodes peer with their ToR over eBGP (an AS per rack), pods on
different racks talk with no tunnel and no static pod route, and service IPs the nodes
advertise (BGPConfiguration serviceClusterIPs) are reached from the outside world
through the routers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from test_fabric_cluster import eventually

from cniharness import bird_routes, topology_lab
from cniharness import podnet_cli as podnet

pytestmark = pytest.mark.root

TOPOLOGY = {
    "nodes": [{"name": "node0", "rack": 0}, {"name": "node1", "rack": 0},
              {"name": "node2", "rack": 1}, {"name": "node3", "rack": 1}],
    "pods": [{"name": f"p{i}", "node": f"node{i}", "labels": {"app": "web"},
              "ports": [{"port": 80, "protocol": "TCP", "name": "http"}]} for i in range(4)],
    "services": [{"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
                                                        "ports": [{"port": 80, "targetPort": "http"}]}}],
}
SERVICES_ADVERTISED = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  nodeToNodeMeshEnabled: false
  serviceClusterIPs: [{cidr: 10.96.0.0/16}]
"""
GET = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())"


def sessions(ctl: str) -> dict[str, str]:
    out = subprocess.run(["birdc", "-s", ctl, "show", "protocols"], capture_output=True, text=True, timeout=10).stdout
    return {row[0]: row[-1] for row in (line.split() for line in out.splitlines()[2:]) if row[1:2] == ["BGP"]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    with topology_lab("r", TOPOLOGY, tmp_path_factory.mktemp("racks"), "--fabric", "bgp", "--no-cluster-dns") as built:
        yield built


def in_ns(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30,
                          check=True).stdout


def test_nodes_peer_with_their_tor_and_pods_cross_racks_with_no_tunnel(lab):
    routers = lab["routers"]
    assert set(routers) == {"tor0", "tor1", "spine"}
    assert sessions(routers["spine"]["ctl"]) == {"pn_tor0": "Established", "pn_tor1": "Established"}
    for rack, members in ((0, ("node0", "node1")), (1, ("node2", "node3"))):
        tor = sessions(routers[f"tor{rack}"]["ctl"])
        assert tor == {"pn_spine": "Established", **{f"pn_node_{n}": "Established" for n in members}}, tor
    for name, node in lab["nodes"].items():
        links = in_ns(node["netns"], "ip", "-d", "link", "show")
        assert "vxlan" not in links and "ipip" not in links
        assert in_ns(node["netns"], "ip", "route", "show", "proto", "77") == ""
        others = {n["block"] for m, n in lab["nodes"].items() if m != name}
        learned = bird_routes(node["netns"])
        assert others <= set(learned), (name, learned)  # rack mates' blocks too, from the ToR
        for other, info in lab["nodes"].items():
            if other != name and info["rack"] == node["rack"]:  # straight to the rack mate, not via the ToR
                assert learned[info["block"]] == info["underlay"], (name, other, learned)
    proc = podnet("connectivity", "test", "--name", lab["name"], "-o", "json", check=False)
    results = json.loads(proc.stdout)
    assert proc.returncode == 0, [r for r in results if not r["ok"]]
    assert any(r["check"] == "pod-to-pod/cross-rack" for r in results)


def test_service_ips_the_nodes_advertise_are_reached_from_outside_through_the_routers(lab, tmp_path):
    svc = json.loads(podnet("get", "--lab", lab["name"], "svc", "-o", "json").stdout)
    ip = next(d["spec"]["clusterIP"] for d in svc if d["metadata"]["name"] == "web")
    outside = lab["outside"]["netns"]
    assert subprocess.run(["ip", "netns", "exec", outside, sys.executable, "-c", GET, f"http://{ip}/"],
                          capture_output=True, text=True, timeout=30).returncode != 0  # not advertised yet
    path = tmp_path / "bgp.yaml"
    path.write_text(SERVICES_ADVERTISED)
    podnet("apply", "--lab", lab["name"], "-f", str(path))
    spine = lab["routers"]["spine"]["ctl"]

    def spine_knows() -> bool:
        out = subprocess.run(["birdc", "-s", spine, "show", "route", "for", ip], capture_output=True, text=True,
                             timeout=10).stdout
        return "10.96.0.0/16" in out

    assert eventually(spine_knows, timeout=30)
    got = subprocess.run(["ip", "netns", "exec", outside, sys.executable, "-c", GET, f"http://{ip}/"],
                         capture_output=True, text=True, timeout=30)
    assert got.returncode == 0 and got.stdout.strip().startswith("p"), got.stderr
