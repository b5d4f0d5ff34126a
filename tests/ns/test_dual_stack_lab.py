"""Dual-stack clusters (issue 18): `lab up --ipv6` on every fabric.

Each lab has three nodes; every pod gets an IPv4 and an IPv6 address, each node an IPv6
block (its IPv4 block's twin, cluster/dualstack.py), and `podnet connectivity test`
passes whole in both families: pod to pod on a node and across nodes, pods to their
node and other nodes, nodes to pods, the path MTU (the largest don't-fragment datagram
answered, one byte more refused), every served port, the cluster DNS service over its
IPv4 (A) and IPv6 (AAAA) ClusterIPs. The IPv6 checks are named `.../ipv6`, and
`--family 6` runs only those.

A second lab (vxlan across two racks, `--ipv6-masquerade`, a dual-stack NodePort
service and an IPv6-only one) shows services of both families, IPv6 NodePorts from the
outside world, and IPv6 masquerade toward it; the first labs show that without
`--ipv6-masquerade` a pod's IPv6 never reaches the world NATed (as Kubernetes: IPv6
pod addresses are routed, and the world has no route back to them here).
Every lab is torn down by name.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections import Counter
from collections.abc import Iterator

import pytest

from cniharness import podnet_cli, topology_lab
from podnet.cluster.dualstack import Pools
from podnet.kernel import gso, netns, rtnl
from podnet.lab.state import NETNS_DIR
from podnet.observe import connectivity
from underlay_capture import capture_in

pytestmark = pytest.mark.root

UDP_TCP_80 = [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}]
THREE_NODES = {"nodes": [{"name": f"node{i}"} for i in range(3)],
               "pods": [{"name": f"p{i}", "namespace": "default", "node": f"node{i}", "ports": UDP_TCP_80}
                        for i in range(3)] + [{"name": "q0", "namespace": "default", "node": "node0",
                                               "ports": UDP_TCP_80}]}
FABRICS = ("vxlan", "host-gw", "bgp", "gossip", "macvlan")


def connectivity_json(name: str, *flags: str) -> list[dict]:
    out = podnet_cli("connectivity", "test", "--lab", name, "-o", "json", *flags, check=False)
    results = json.loads(out.stdout)
    failed = [r for r in results if not r["ok"]]
    assert out.returncode == 0 and not failed, json.dumps(failed, indent=1)
    return results


@pytest.fixture(scope="module", params=FABRICS)
def lab(request, tmp_path_factory) -> Iterator[tuple[str, dict]]:
    fabric = request.param
    with topology_lab("d6", THREE_NODES, tmp_path_factory.mktemp(fabric), "--fabric", fabric, "--ipv6") as state:
        yield fabric, state


def test_every_pod_and_node_has_both_families_and_twin_blocks(lab) -> None:
    fabric, state = lab
    for key, pod in state["pods"].items():
        versions = Counter(ipaddress.ip_interface(ip).version for ip in pod["ips"])
        assert versions == {4: 1, 6: 1}, (key, pod["ips"])
    nodes = json.loads(podnet_cli("get", "nodes", "--lab", state["name"], "-o", "json").stdout)
    prefix = 26 if fabric == "bgp" else 24
    pools = Pools(ipaddress.IPv4Network("10.244.0.0/16"), prefix, ipaddress.IPv6Network("fd00:10:244::/56"))
    for doc in nodes:
        spec = doc["spec"]
        assert spec["block6"] == str(pools.twin(spec["block"])), spec
        assert ipaddress.ip_address(spec["underlayIP6"]).version == 6
    for key, pod in state["pods"].items():  # each pod's IPv6 address lies in its node's IPv6 block
        node = next(d["spec"] for d in nodes if d["metadata"]["name"] == pod["node"])
        v6 = next(ipaddress.ip_interface(ip).ip for ip in pod["ips"] if ":" in ip)
        if fabric != "bgp":  # bgp nodes grow into more blocks as pods come: any of theirs
            assert v6 in ipaddress.ip_network(node["block6"]), (key, v6, node["block6"])


def test_routed_pods_send_ipv4_big_tcp_but_no_ipv6_big_tcp(lab) -> None:
    """The lab's NICs take 192 KiB GSO packets (BIG TCP) of both families, and pods get
    that for IPv4; a pod's own IPv6 GSO stays at 64 KiB, as its node refuses to forward
    IPv6 BIG TCP packets a pod sends (measured: 0.01 Gbit/s, Ip6InTooBigErrors). The
    host end of its veth keeps the uplink's limits toward the pod."""
    fabric, state = lab
    if fabric not in ("host-gw", "bgp"):
        pytest.skip("vxlan and gossip pods stay at 64 KiB for both families; macvlan pods are not forwarded")
    fd = netns.open_netns(str(NETNS_DIR / state["pods"]["default/p1"]["netns"]))
    try:
        with rtnl.RtnlSocket(fd) as sock:  # ip(8) here does not know the IPv4 limit
            found = gso.read(sock, sock.link_index("eth0") or 0)
    finally:
        os.close(fd)
    assert found is not None and (found[0].ipv6, found[0].ipv4) == (65536, 196608), found


def test_connectivity_passes_in_both_families(lab) -> None:
    fabric, state = lab
    results = connectivity_json(state["name"])
    v6 = Counter(r["check"] for r in results if r["check"].endswith("/ipv6"))
    v4 = Counter(r["check"] for r in results if not r["check"].endswith("/ipv6"))
    assert v6["pod-to-pod/cross-node/ipv6"] == 6 and v6["pmtu/cross-node/ipv6"] == 3, v6
    assert v6["served-port/ipv6"] == 8 and v6["node-to-pod/remote/ipv6"] == 3, v6
    assert v6["dns/cluster-ip/ipv6"] == 6, v6  # AAAA over the DNS service's IPv6 ClusterIP, UDP and TCP
    assert v4["pod-to-pod/cross-node"] == 6 and v4["served-port"] == 8, v4
    outside = [r for r in results if r["check"].startswith("pod-to-outside/") and r["check"].endswith("/ipv6")]
    # macvlan pods sit on the outside world's segment (it is their router): IPv6 reaches
    # it unNATed; elsewhere IPv6 to the world needs --ipv6-masquerade (the other lab)
    assert len(outside) == (6 if fabric == "macvlan" else 0), outside
    only6 = connectivity_json(state["name"], "--family", "6")
    assert only6 and all(r["check"].endswith("/ipv6") for r in only6)
    assert {r["check"] for r in only6} == {r["check"] for r in results if r["check"].endswith("/ipv6")}


def test_vxlan_carries_ipv6_over_the_ipv6_underlay_and_gossip_over_ipv4(lab) -> None:
    """vxlan: both nodes have an IPv6 underlay, so IPv6 pods ride pnvx6 (outer IPv6, UDP
    8472) while IPv4 pods ride pnvx0; the gossip fabric keeps one VXLAN device over
    IPv4 for both (its sleeve and relays are IPv4). What node0's NIC sees while p0 sends
    a marker to p1 (on node1) over each family."""
    fabric, state = lab
    if fabric not in ("vxlan", "gossip"):
        pytest.skip("no tunnel")
    src, node = state["pods"]["default/p0"]["netns"], state["nodes"]["node0"]["netns"]
    dst = {v: next(ip.split("/")[0] for ip in state["pods"]["default/p1"]["ips"] if (":" in ip) == (v == 6))
           for v in (4, 6)}
    over6 = capture_in(node, "eth0", 8472, src, dst[6])
    over4 = capture_in(node, "eth0", 8472, src, dst[4])
    assert over6["marker"] and over4["marker"], (over6, over4)  # VXLAN is not encryption
    assert over4["sleeve"] and not over4["udp6"], over4
    if fabric == "vxlan":
        assert over6["udp6"] and not over6["sleeve"], over6
    else:
        assert over6["sleeve"] and not over6["udp6"], over6


def test_ipv6_to_the_world_is_not_masqueraded_by_default(lab) -> None:
    fabric, state = lab
    if fabric == "macvlan":
        pytest.skip("macvlan pods reach the world on their own segment: no node in the path")
    pod = state["pods"]["default/p0"]
    spec = {"kind": "http", "dst": state["outside"]["ip6"], "port": 80, "path": "/peer", "expect": "-"}
    probe = connectivity.Probe("outside", "default/p0", pod["netns"], "outside", spec)
    result = connectivity.run_probe(probe, timeout=1.0)
    assert not result.ok and "timed out" in result.detail, result  # the answer has no way back
    v4 = connectivity.run_probe(connectivity.Probe("outside", "default/p0", pod["netns"], "outside",
                                                   {**spec, "dst": state["outside"]["ip"],
                                                    "expect": state["nodes"]["node0"]["underlay"]}))
    assert v4.ok, v4  # IPv4 is masqueraded as ever
    assert (NETNS_DIR / pod["netns"]).exists()


SERVICES_TOPOLOGY = {
    "nodes": [{"name": "node0", "rack": 0}, {"name": "node1", "rack": 1}, {"name": "node2", "rack": 1}],
    "pods": [{"name": "web-0", "namespace": "default", "node": "node0", "labels": {"app": "web"}, "ports": UDP_TCP_80},
             {"name": "web-1", "namespace": "default", "node": "node1", "labels": {"app": "web"}, "ports": UDP_TCP_80},
             {"name": "client", "namespace": "default", "node": "node2", "labels": {"app": "client"}}],
    "services": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"type": "NodePort", "ipFamilyPolicy": "RequireDualStack", "selector": {"app": "web"},
                  "ports": [{"name": "http", "port": 8080, "targetPort": 80, "protocol": "TCP"}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web6", "namespace": "default"},
         "spec": {"ipFamilies": ["IPv6"], "selector": {"app": "web"},
                  "ports": [{"name": "echo", "port": 53, "targetPort": 80, "protocol": "UDP"}]}}],
}


def test_services_of_both_families_and_ipv6_masquerade_across_racks(tmp_path) -> None:
    with topology_lab("d6s", SERVICES_TOPOLOGY, tmp_path, "--fabric", "vxlan", "--ipv6",
                      "--ipv6-masquerade") as state:
        results = connectivity_json(state["name"])
        checks = Counter(r["check"] for r in results)
        assert checks["pod-to-pod/cross-rack/ipv6"] == 4 and checks["pod-to-pod/cross-node/ipv6"] == 2, checks
        assert checks["service/cluster-ip"] == 3 and checks["service/cluster-ip/ipv6"] == 6, checks  # web6: v6 only
        assert checks["service/node-port"] == 3 and checks["service/node-port/ipv6"] == 3, checks
        seen = {r["source"]: r["detail"] for r in results if r["check"] == "pod-to-outside/http/ipv6"}
        for pod, node in (("default/web-0", "node0"), ("default/web-1", "node1"), ("default/client", "node2")):
            assert seen[pod] == f"outside saw the client as {state['nodes'][node]['underlay6']}", seen
        services = {d["metadata"]["name"]: d["spec"] for d in
                    json.loads(podnet_cli("get", "svc", "--lab", state["name"], "-o", "json").stdout)}
        assert [ipaddress.ip_address(ip).version for ip in services["web"]["clusterIPs"]] == [4, 6]
        assert services["web"]["ipFamilies"] == ["IPv4", "IPv6"]
        assert [ipaddress.ip_address(ip).version for ip in services["web6"]["clusterIPs"]] == [6]


def test_family_6_on_a_single_stack_lab_is_refused_naming_why(tmp_path) -> None:
    with topology_lab("d4", {"nodes": [{"name": "node0"}], "pods": []}, tmp_path, "--no-cluster-dns") as state:
        out = podnet_cli("connectivity", "test", "--lab", state["name"], "--family", "6", check=False)
        assert out.returncode != 0 and "has no IPv6 (it was built without --ipv6)" in out.stdout + out.stderr
