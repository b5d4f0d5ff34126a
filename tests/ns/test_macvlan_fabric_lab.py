"""The macvlan fabric in a real lab (fabric/macvlan.py, `lab up --fabric macvlan`):
two nodes on one rack, pods as macvlan children of their node's eth0 on the pod
segment (the cluster CIDR, a second prefix on the rack's L2, its router the outside
namespace), a plain host beside them.

Shown: the connectivity test passes (pod to pod across nodes, a node to its own pod
through its shim, the outside seeing the pod's own address: no NAT, cluster DNS
through the service route via the shim); what a pod and a node hold; the router's
block kept for hosts; a plain host and a pod reaching each other; a readiness probe
(sent by the node's agent) passing through the shim; the shim's route repaired.

One lab for the module (namespaces pn-lab-mv<hex>-*), torn down by name, also on failure.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from test_fabric_cluster import eventually

from cniharness import podnet_cli, topology_lab
from podnet import keys
from podnet.cluster.leases import HOSTS_OWNER, list_claims
from podnet.lab.state import NETNS_DIR
from podnet.observe.connectivity import probe_argv
from podnet.store import open_store

pytestmark = pytest.mark.root

PORTS = [{"port": 80, "protocol": "TCP", "name": "http"}, {"port": 80, "protocol": "UDP", "name": "echo"}]
PROBE = {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "failureThreshold": 1}
TOPOLOGY = {
    "nodes": [{"name": "node0"}, {"name": "node1"}],
    "pods": [
        {"name": "a", "node": "node0", "ports": PORTS, "readinessProbe": PROBE},
        {"name": "b", "node": "node0", "ports": PORTS},
        {"name": "c", "node": "node1", "ports": PORTS, "readinessProbe": PROBE},
    ],
}
SEGMENT = ipaddress.IPv4Network("10.244.0.0/16")


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    with topology_lab("mv", TOPOLOGY, tmp_path_factory.mktemp("macvlan"), "--fabric", "macvlan") as built:
        podnet_cli("lab", "host", "add", "vm0", "--lab", built["name"], "--join", timeout=60)
        yield built
    assert f"pn-lab-{built['name']}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                             text=True, check=True).stdout


def sh(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=True,
                          timeout=20).stdout


def probe(netns: str, spec: dict) -> dict:
    out = subprocess.run(probe_argv(netns, {"timeout": 2.0, **spec}), capture_output=True, text=True, timeout=20,
                         check=False)
    return json.loads(out.stdout or "{}")


def pod_ip(lab: dict, pod: str) -> str:
    return lab["pods"][f"default/{pod}"]["ips"][0].split("/")[0]


def host(lab: dict) -> dict:
    from podnet.lab.state import state_file

    return json.loads(state_file(lab["name"]).read_text())["hosts"]["vm0"]


def test_the_connectivity_test_passes(lab: dict) -> None:
    out = podnet_cli("connectivity", "test", "--lab", lab["name"], "-o", "json", timeout=120).stdout
    results = json.loads(out)
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed
    checks = {r["check"] for r in results}
    assert {"pod-to-pod/cross-node", "pod-to-node/shim", "node-to-pod/local", "pod-to-outside/http",
            "dns/cluster-ip"} <= checks


def test_pods_are_macvlans_on_the_segment_and_nodes_have_a_shim(lab: dict) -> None:
    a = lab["pods"]["default/a"]
    link = sh(a["netns"], "ip", "-d", "-j", "link", "show", "eth0")
    info = json.loads(link)[0]["linkinfo"]
    assert info["info_kind"] == "macvlan" and info["info_data"]["mode"] == "bridge"
    node_eth0 = json.loads(sh(lab["nodes"]["node0"]["netns"], "ip", "-d", "-j", "link", "show", "eth0"))[0]
    assert json.loads(link)[0]["gso_max_size"] == node_eth0["gso_max_size"] > 65536  # BIG TCP, as its master
    address = ipaddress.IPv4Interface(a["ips"][0])
    assert address.network == SEGMENT  # on-link to every pod, whichever node
    assert "default via 10.244.0.1 dev eth0" in sh(a["netns"], "ip", "route")
    node0 = lab["nodes"]["node0"]
    block = ipaddress.IPv4Network(node0["block"])
    assert address.ip in block and address.ip != block[1]
    assert f"{block[1]}/32" in sh(node0["netns"], "ip", "-4", "addr", "show", "pnmv0")
    assert "10.244.0.0/16 dev pnmv0" in sh(node0["netns"], "ip", "route")
    assert "pncl0" not in sh(node0["netns"], "ip", "link")  # no bridge


def test_the_routers_block_is_kept_for_hosts(lab: dict) -> None:
    store = open_store(lab["store_url"])
    try:
        claims = list_claims(store)
        leases = {e.key for e in store.list(keys.NODES)}
    finally:
        store.close()
    assert claims["10.244.0.0/24"] == HOSTS_OWNER
    assert len(leases) == 2
    kept = ipaddress.IPv4Network("10.244.0.0/24")
    assert all(ipaddress.IPv4Interface(p["ips"][0]).ip not in kept for p in lab["pods"].values())


def test_a_plain_host_and_a_pod_reach_each_other(lab: dict) -> None:
    vm = host(lab)
    c = lab["pods"]["default/c"]
    to_host = probe(c["netns"], {"kind": "tcp", "dst": vm["underlay"], "port": 80, "expect": "vm0"})
    assert to_host.get("ok"), to_host  # through the segment's router
    to_pod = probe(vm["netns"], {"kind": "tcp", "dst": pod_ip(lab, "c"), "port": 80, "expect": "c"})
    assert to_pod.get("ok"), to_pod


def test_a_joined_host_sits_on_the_segment_with_no_routes(lab: dict) -> None:
    vm = host(lab)
    joined = ipaddress.IPv4Address(vm["pod_ip"])
    assert joined in ipaddress.IPv4Network("10.244.0.0/24") and joined != SEGMENT[1]  # the kept block, not the router
    assert f"{joined}/16" in sh(vm["netns"], "ip", "-4", "addr", "show", "eth0")
    assert "10.244." not in sh(vm["netns"], "ip", "route", "show", "proto", "79")  # on-link: nothing routed
    a = lab["pods"]["default/a"]
    seen = probe(a["netns"], {"kind": "http", "dst": str(joined), "port": 80, "path": "/peer",
                              "expect": pod_ip(lab, "a")})
    assert seen.get("ok"), seen  # the host saw the pod's own address, straight over L2


def test_readiness_probes_reach_the_nodes_own_pods_through_the_shim(lab: dict) -> None:
    def ready() -> dict:
        store = open_store(lab["store_url"])
        try:
            return {e.key.rsplit("/", 1)[1]: e.json()["ready"] for e in store.list(keys.READINESS)}
        finally:
            store.close()

    assert eventually(lambda: ready() == {"a": True, "c": True}, timeout=20), ready()


def test_the_shims_route_is_repaired(lab: dict) -> None:
    node0 = lab["nodes"]["node0"]
    sh(node0["netns"], "ip", "route", "del", "10.244.0.0/16", "dev", "pnmv0")
    assert eventually(lambda: "10.244.0.0/16 dev pnmv0" in sh(node0["netns"], "ip", "route"), timeout=15)
    assert probe(node0["netns"], {"kind": "icmp", "dst": pod_ip(lab, "a")}).get("ok")


def test_agent_refuses_a_segment_gateway_outside_the_cidr() -> None:
    out = subprocess.run([sys.executable, "-m", "podnet.cli", "agent", "--node", "n", "--fabric", "macvlan",
                          "--segment-gateway", "10.9.0.1", "--store", str(NETNS_DIR / "nonexistent.db")],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2
    assert "--segment-gateway: segment gateway 10.9.0.1 is outside the segment 10.244.0.0/16" in out.stderr
