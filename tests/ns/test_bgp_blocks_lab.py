"""Block IPAM on the bgp fabric, in a lab with a tiny pool (10.244.0.0/27 in four /29
blocks of five addresses): a node grows into a new block when its blocks fill, borrows
single addresses from a peer's block when the pool has no free block (its node
announces them as /32s), withdraws a borrowed /32 when its pod goes, and releases a
block that empties; pods are routed /32s (Calico's model), so every address works
wherever it came from."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fabric_cluster import eventually

from cniharness import bird_routes, podnet_cli, topology_lab
from podnet.lab.sandbox import Sandbox
from podnet.lab.state import enter
from podnet.runtime.libcni import Conflist

pytestmark = pytest.mark.root

POOL = "10.244.0.0/27"
TOPOLOGY = {
    "nodes": [{"name": "node0"}, {"name": "node1"}],
    # the peerings a topology may declare (applied before the agents start)
    "bgp": [{"kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": {"asNumber": 64600}}],
    "pods": [{"name": "a", "node": "node0", "ports": [{"port": 80, "protocol": "TCP", "name": "http"}]},
             {"name": "b", "node": "node1", "ports": [{"port": 80, "protocol": "TCP", "name": "http"}]}],
}
# A connect to a closed port: refused means the packet reached the address and came back.
REACHES = """
import socket, sys
s = socket.socket(); s.settimeout(1.0)
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    print("yes")
except OSError:
    print("no")
"""


class NodePods:
    """Pods added to one lab node through its conflist, as a runtime does."""

    def __init__(self, lab: dict, node: str, sandbox: Sandbox) -> None:
        info = lab["nodes"][node]
        self.conflist = Conflist(json.loads(Path(info["conflist"]).read_text()),
                                 [str(Path(lab["labdir"]) / "bin"), "/usr/lib/cni"], enter=enter(info["netns"]))
        self.sandbox = sandbox
        self.netns: dict[str, str] = {}

    def add(self, name: str) -> str:
        self.netns[name] = self.sandbox.netns(name)
        result = self.conflist.add(name, Sandbox.path(self.netns[name]), "eth0",
                                   args=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
        return result["ips"][0]["address"].split("/")[0]

    def delete(self, name: str) -> None:
        self.conflist.delete(name, Sandbox.path(self.netns[name]), "eth0")


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    flags = ("--fabric", "bgp", "--no-cluster-dns", "--cluster-cidr", POOL, "--block-prefix", "29")
    with topology_lab("k", TOPOLOGY, tmp_path_factory.mktemp("blocks"), *flags) as built:
        yield built


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox("pn-t-") as box:
        yield box


def reaches(ns: str, address: str) -> bool:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", REACHES, address],
                         capture_output=True, text=True, timeout=10).stdout
    return out.strip() == "yes"


def routes_of(lab: dict, node: str) -> set[str]:
    """BIRD's routes in a node's kernel, a blackhole (its own block) as `blackhole <block>`."""
    return {f"blackhole {p}" if via == "blackhole" else p for p, via in bird_routes(lab["nodes"][node]["netns"]).items()}


def claims(lab: dict) -> dict[str, str]:
    from podnet.cluster.leases import list_claims
    from podnet.store import open_store

    with open_store(lab["store_url"]) as store:
        return list_claims(store)


def block_of(address: str) -> str:
    return str(ipaddress.ip_network(f"{address}/29", strict=False))


def test_growth_borrowing_withdrawal_and_release(lab, sandbox):
    status = json.loads(podnet_cli("bgp", "status", "--lab", lab["name"], "-o", "json").stdout)
    assert {s["neighbor_as"] for node in status for s in node["sessions"]} == {64600}  # the topology's
    node0 = NodePods(lab, "node0", sandbox)
    remote_pod = lab["pods"]["default/b"]["netns"]
    first = block_of(lab["pods"]["default/a"]["ips"][0].split("/")[0])
    lender = block_of(lab["pods"]["default/b"]["ips"][0].split("/")[0])
    # node0's first block has pod a and four more; the fifth new pod needs a new block
    filled = [node0.add(f"f{i}") for i in range(4)]
    assert {block_of(a) for a in filled} == {first}
    grown = node0.add("g0")
    second = block_of(grown)
    assert second not in (first, lender) and claims(lab)[second] == "node0"
    assert eventually(lambda: second in routes_of(lab, "node1")), routes_of(lab, "node1")
    assert eventually(lambda: f"blackhole {second}" in routes_of(lab, "node0"))
    assert reaches(remote_pod, grown)  # a pod on node1 reaches the new block through BGP
    more = [node0.add(f"g{i}") for i in range(1, 10)]  # fills the second, then takes the last free block
    third = block_of(more[-1])
    assert third not in (first, second, lender) and set(claims(lab)) == {first, second, third, lender}
    # the pool has no free block left: the next address is borrowed from node1's block
    borrowed = node0.add("borrowed")
    assert block_of(borrowed) == lender and claims(lab)[lender] == "node1"
    assert eventually(lambda: f"{borrowed}" in routes_of(lab, "node1")), routes_of(lab, "node1")
    assert reaches(remote_pod, borrowed)  # from inside the very block it was borrowed from
    assert reaches(lab["nodes"]["node1"]["netns"], borrowed)
    # the borrowed pod goes: its /32 is withdrawn; the second block empties: released
    node0.delete("borrowed")
    assert eventually(lambda: borrowed not in routes_of(lab, "node1")), routes_of(lab, "node1")
    for name in ["g0", *(f"g{i}" for i in range(1, 5))]:
        node0.delete(name)
    assert eventually(lambda: second not in claims(lab), timeout=15), claims(lab)
    assert eventually(lambda: second not in routes_of(lab, "node1"), timeout=12), routes_of(lab, "node1")
    assert first in claims(lab)  # never the lease's block


@pytest.fixture(scope="module")
def vxlan_lab(tmp_path_factory) -> Iterator[dict]:
    topology = {k: v for k, v in TOPOLOGY.items() if k != "bgp"}  # BGP objects need --fabric bgp
    flags = ("--fabric", "vxlan", "--no-cluster-dns", "--cluster-cidr", POOL, "--block-prefix", "29")
    with topology_lab("k", topology, tmp_path_factory.mktemp("vxblocks"), *flags) as built:
        yield built


def bridge_gateways(lab: dict, node: str) -> set[str]:
    out = subprocess.run(["ip", "-n", lab["nodes"][node]["netns"], "-j", "addr", "show", "pncl0"],
                         capture_output=True, text=True, check=True).stdout
    return {f"{a['local']}/{a['prefixlen']}" for a in json.loads(out)[0]["addr_info"] if a["family"] == "inet"}


def test_vxlan_grows_into_blocks_with_a_gateway_each_and_never_borrows(vxlan_lab, sandbox):
    """The same block IPAM on a bridge fabric: a new block gets its gateway on pncl0 and
    a VXLAN route on the peers; bridged pods cannot hold a peer's address, so an
    exhausted pool is a clear error (strict affinity), not a borrowed address."""
    from podnet.runtime.libcni import CniFailure

    lab = vxlan_lab
    node0 = NodePods(lab, "node0", sandbox)
    remote_pod = lab["pods"]["default/b"]["netns"]
    first = block_of(lab["pods"]["default/a"]["ips"][0].split("/")[0])
    added = [node0.add(f"v{i}") for i in range(5)]
    second = block_of(added[-1])
    assert {block_of(a) for a in added[:4]} == {first} and second != first
    gateway = f"{ipaddress.ip_network(second).network_address + 1}/29"
    assert gateway in bridge_gateways(lab, "node0")
    assert eventually(lambda: reaches(remote_pod, added[-1]), timeout=15), "node1 never routed the new block"
    added += [node0.add(f"v{i}") for i in range(5, 14)]  # the rest of the pool
    with pytest.raises(CniFailure, match="strictAffinity forbids borrowing"):
        node0.add("one-too-many")
    for i in range(4, 9):  # the second block's pods
        node0.delete(f"v{i}")
    assert eventually(lambda: second not in claims(lab), timeout=15), claims(lab)
    assert eventually(lambda: gateway not in bridge_gateways(lab, "node0"), timeout=10), bridge_gateways(lab, "node0")
