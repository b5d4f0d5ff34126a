"""Two cluster nodes that share one store and look like two real machines: each agent
runs in its own namespace, but both record the same host network-namespace identity,
as every real machine's root namespace has (dev 4, inode 4026531833 on this kernel).
Restarting, GC and kill -9 on one node leave the other's pods, records and
reservations alone (issue 10, item 1).

The identity is made equal with PODNET_TEST_NETNS_IDENTITY, which the agents honour
for the host_netns they record and judge by (podnet/identity.py), and only there:
netlink sockets and caches keep using the real namespaces. A whole second machine is
not available here, and a service-level simulation (tests/unit/test_node_ownership.py)
cannot show what the kernel does with a wrongly repaired gateway or a GC'd record.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fabric_cluster import Cluster, Node, eventually, make_cluster

from cniharness import REFERENCE_DIR, links
from podnet import keys
from podnet.ipam.service import IpamService
from podnet.lab.sandbox import Sandbox, wait_for_path
from podnet.runtime.libcni import CniFailure, Conflist
from podnet.store import open_store

pytestmark = pytest.mark.root

ROOT_NS_IDENTITY = "4:4026531833"


@pytest.fixture
def cluster(sandbox, cni_bin, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """Two host-gw nodes n1 and n2, one pod each (pod-n1, pod-n2), a long lease TTL so
    that no node is reclaimed while a test keeps its agent down."""
    monkeypatch.setenv("PODNET_TEST_NETNS_IDENTITY", ROOT_NS_IDENTITY)  # every agent inherits it
    c = make_cluster(sandbox, cni_bin, tmp_path, "host-gw", 2, ttl=60.0)
    n1, n2 = c.nodes
    assert eventually(lambda: c.probe(n1, n2)) and c.probe(n2, n1)
    yield c


def restart(c: Cluster, node: Node) -> str:
    """Stop the node's agent (if it runs) and start it again; its log until then."""
    log = ""
    if node.proc is not None and node.proc.poll() is None:
        c.sandbox.stop(node.proc)
    if node.proc is not None and node.proc.stdout is not None:
        log = node.proc.stdout.read().decode(errors="replace")
    Path(node.socket).unlink(missing_ok=True)  # a killed agent leaves its socket
    c.start(node)
    wait_for_path(node.socket, timeout=20, proc=node.proc)  # resync is done before it binds
    return log


def gateway(c: Cluster, node: Node) -> str:
    return c.status(node)["block"].replace(".0/24", ".1/24")


def bridge_addresses(c: Cluster, node: Node) -> str:
    return c.sandbox.exec(node.ns, ["ip", "-4", "addr", "show", "dev", "pncl0"]).stdout


def conflist(c: Cluster, node: Node) -> Conflist:
    config = {**json.loads(node.conflist.read_text()), "cniVersion": "1.1.0"}  # GC is CNI 1.1
    return Conflist(config, [c.cni_bin, REFERENCE_DIR], netns_exec=node.ns)


def pod_veths(c: Cluster, node: Node) -> list[str]:
    """The node's host veths of pods (its eth0 is a veth too)."""
    return [name for name in links(c.sandbox, node.ns) if name.startswith("pn")]


def records(c: Cluster) -> dict[str, str]:
    """Endpoint records and reservations of the cluster network, by key."""
    with open_store(c.store) as store:
        return {e.key: e.value for e in store.list(keys.endpoints("cluster")) + store.list(keys.ipam_addresses())}


def test_restart_of_one_node_repairs_only_its_own_pods(cluster: Cluster) -> None:
    n1, n2 = cluster.nodes
    gw1, gw2 = gateway(cluster, n1), gateway(cluster, n2)
    before = records(cluster)
    restart(cluster, n1)
    log = restart(cluster, n1)
    assert f"inet {gw2} " not in bridge_addresses(cluster, n1), log
    assert f"inet {gw1} " in bridge_addresses(cluster, n1)
    assert records(cluster) == before
    assert eventually(lambda: cluster.probe(n1, n2)) == f"hello from n2 client {n1.pod_ip}"


def test_gc_on_one_node_leaves_the_other_nodes_pods(cluster: Cluster) -> None:
    n1, n2 = cluster.nodes
    before = records(cluster)
    conflist(cluster, n1).gc([("pod-n1", "eth0")])  # n1's runtime knows only n1's pods
    assert records(cluster) == before
    n2_veths = pod_veths(cluster, n2)
    restart(cluster, n2)
    assert pod_veths(cluster, n2) == n2_veths
    assert eventually(lambda: cluster.probe(n1, n2)) == f"hello from n2 client {n1.pod_ip}"


def test_kill9_of_one_node_mid_add_is_rolled_back_by_that_node_only(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    n1, n2 = cluster.nodes
    monkeypatch.setenv("PODNET_FAULT", "after-attach:60")
    restart(cluster, n2)
    monkeypatch.delenv("PODNET_FAULT")
    pod = cluster.sandbox.netns("pod-late")
    result: dict = {}

    def add() -> None:
        try:
            conflist(cluster, n2).add("pod-late", Sandbox.path(pod))
        except CniFailure as exc:  # the agent dies under it
            result["code"] = exc.result.error_code

    adding = threading.Thread(target=add)
    adding.start()
    assert eventually(lambda: len(pod_veths(cluster, n2)) == 2, timeout=20), "the ADD built no veth"
    n2.proc.kill()
    n2.proc.wait(10)
    adding.join(30)
    assert result.get("code") == 11, result  # try again later
    late = keys.endpoint("cluster", "pod-late", "eth0")
    half_built = records(cluster)
    assert late in half_built and '"pending"' in half_built[late]
    # n1 restarts while n2 is down: n2's half-built ADD is n2's to roll back
    restart(cluster, n1)
    assert records(cluster) == half_built
    assert eventually(lambda: cluster.probe(n2, n1)) == f"hello from n1 client {n2.pod_ip}"
    # n2 comes back and rolls back its own ADD; its running pod keeps its network
    restart(cluster, n2)
    left = records(cluster)
    assert late not in left and len(left) == len(half_built) - 2
    with open_store(cluster.store) as store:
        assert [r.container_id for r in IpamService(store).reservations("cluster")
                if r.container_id == "pod-late"] == []
    assert len(pod_veths(cluster, n2)) == 1
    assert eventually(lambda: cluster.probe(n1, n2)) == f"hello from n2 client {n1.pod_ip}"
