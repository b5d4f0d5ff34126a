"""NetworkPolicy and ClusterPolicy enforced inside macvlan pods (agent/pod_policy.py),
whose traffic never crosses a node's forward hook: only the table each node's agent
programs inside its pods judges it.

1. The lab (`lab up --fabric macvlan`, the netpol world of tests/policyharness.py: 3
   nodes, x/y/z with pods a/b/c, each namespace one pod per node, every pod a macvlan
   child of its node's eth0): cases compared cell by cell with the reference semantics
   through `podnet probe`, same-node and cross-node cells named, `podnet flows` naming
   the rule a pod's own table logged. Lab `pm<hex>`, torn down by recorded names.
2. Hand-made (namespaces `pnmp-<token>-*`): a switch with a bridge, two nodes whose
   eth0 is a veth into it, pods as bridge-mode macvlan children, endpoint records and
   pod registrations written as the CNI ADD and an orchestrator write them, and the two
   nodes' PodPolicy objects driven directly: the parts a lab does not isolate (a CNI
   ADD programming the table before it returns, the node's shim, removal).

  node0: x/a (app=a, 80 and 81 open), x/b (app=b, 80)     node1: x/c (app=c, 80 open)
  a-in: a accepts only b on 80;  c-in: c accepts only a on 80
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from test_fabric_cluster import eventually
from test_policy_lab import cli, flows_since

from cniharness import start_echo, tcp_probe, wait_until
from podnet import keys
from podnet.agent.pod_policy import PodPolicy
from podnet.endpoints.service import CniService
from podnet.identity import NodeIdentity
from podnet.lab.sandbox import Sandbox
from podnet.model.endpoint import READY, EndpointRecord
from podnet.model.policy import PodRecord
from podnet.objects import store as objects
from podnet.objects.registry import parse_documents
from podnet.policy.world import load_world
from podnet.rpc.client import call
from podnet.store import open_store
from policyharness import CASES, Lab, check, cp, netpol_lab, np

pytestmark = pytest.mark.root

# -- 1. the lab

LAB_CASES = ["default-deny-ingress", "default-deny-egress", "from-namespace-y", "pod-and-namespace-one-peer",
             "port-80-only", "cp-deny-over-np-allow", "cp-allow-over-np-deny"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with netpol_lab("macvlan", "pm") as built:
        yield built


def test_the_lab_pods_are_macvlan_children(lab):
    for pod in ("x/a", "y/b"):
        shown = json.loads(subprocess.run(["ip", "-n", lab.data["pods"][pod]["netns"], "-d", "-j", "link", "show",
                                           "eth0"], capture_output=True, text=True, check=True).stdout)[0]
        assert shown["linkinfo"]["info_kind"] == "macvlan"


@pytest.mark.parametrize("case", LAB_CASES)
def test_cases_match_the_reference(lab, case):
    check(lab, CASES[case])


def test_same_node_and_cross_node_deny_and_allow(lab):
    """x accepts only y: x/a (node0) from y/c (node0) and y/a (node1) allowed, from z/b
    (node0) and x/b (node1) denied; each node holds one pod table (its x pod)."""
    nodes = {pod: lab.data["pods"][pod]["node"] for pod in ("x/a", "y/c", "z/b", "y/a", "x/b")}
    assert nodes["x/a"] == nodes["y/c"] == nodes["z/b"] != nodes["y/a"] == nodes["x/b"]
    applied = lab.apply(CASES["from-namespace-y"])
    try:
        cells = lab.probe()[(80, "TCP")]
        assert cells["y/c"]["x/a"] and cells["y/a"]["x/a"]
        assert not cells["z/b"]["x/a"] and not cells["x/b"]["x/a"]
        for sock in lab.sockets:
            status = call(sock, "policy.status")
            assert status["error"] is None and status["pod_tables"] == 1, status  # type: ignore[index]
    finally:
        lab.delete(applied)
    for sock in lab.sockets:
        assert call(sock, "policy.status")["pod_tables"] == 0  # type: ignore[index]


def test_flows_and_counters_name_the_rule_a_pods_table_hit(lab):
    applied = lab.apply(np("deny", "x", "  podSelector: {matchLabels: {pod: b}}\n") + "\n---\n"
                        + cp("no-81", "  selector: {namespaceSelector: {matchLabels: {ns: y}}}\n  types: [Egress]\n"
                             "  egress: [{action: Deny, name: no-81, protocol: TCP, ports: [81]}]\n"))
    try:
        t0 = time.time()
        got = lab.probe()
        assert not got[(80, "TCP")]["z/a"]["x/b"] and not got[(81, "TCP")]["y/a"]["z/c"]
        ours = {"isolated:x/deny ingress", "cp:default/no-81 egress[0] no-81"}

        def logged() -> set[str]:
            return {f["rule"] for f in flows_since(lab.name, t0, "--verdict", "deny")} & ours

        # the agents read the pods' NFLOG on their own threads, and each look is a CLI
        # process: on a loaded machine both take seconds. (x/b's table went at the end of
        # the previous test: until agent/pod_netns.py closes readers on its polling
        # thread, its reader may fail to bind again, see test_pod_flow_readers_ns.py.)
        assert eventually(lambda: logged() == ours, 20), logged()
        counted = json.loads(cli("policy", "counters", "--lab", lab.name, "-o", "json").stdout)
        hits = {(r["node"], r["rule"]): r["packets"] for r in counted}
        assert hits.get((lab.data["pods"]["x/b"]["node"], "default deny ingress x/b (isolated by x/deny)"), 0) > 0
    finally:
        lab.delete(applied)


# -- 2. hand-made

PODS = {"a": ("node0", "10.91.0.11"), "b": ("node0", "10.91.0.12"), "c": ("node1", "10.91.0.21")}
NODES = {"node0": "10.90.0.1", "node1": "10.90.0.2"}  # underlay addresses
SHIM = "10.91.0.1"  # node0's shim on the pod segment (as fabric/macvlan.py's pnmv0)
NS_X = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}


def only_from(target: str, peer: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"{target}-in", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": target}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}}],
                                  "ports": [{"port": 80}]}]}}


POLICIES = [only_from("a", "b"), only_from("c", "a")]


class Segment:
    def __init__(self, box: Sandbox, store, store_path: str, nodes: dict[str, str], pods: dict[str, str]) -> None:
        self.box, self.store, self.store_path, self.nodes, self.pods = box, store, store_path, nodes, pods
        self.flows: list = []
        self.agents = {node: PodPolicy(lambda: store, node, on_flows=self.flows.extend, store_path=store_path)
                       for node in NODES}

    def converge(self) -> None:
        """What each node's agent does on a policy or endpoint event."""
        world = load_world(self.store, problems=[])[0]
        for agent in self.agents.values():
            agent.refresh()
            agent.enforce(world if world.network_policies else None, node_ips=(SHIM,) if agent.node == "node0" else ())

    def reaches(self, src: str, dst: str, port: int) -> bool:
        return self.reaches_from(self.pods[src], dst, port)

    def reaches_from(self, ns: str, dst: str, port: int) -> bool:
        return tcp_probe(self.box, ns, PODS[dst][1], port, timeout=1.5) == f"hello from {dst}"


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
    with Sandbox("pnmp-") as box:
        switch = box.netns("sw")
        box.exec(switch, ["ip", "link", "add", "br0", "type", "bridge"])
        box.exec(switch, ["ip", "link", "set", "br0", "up"])
        nodes = {}
        for i, (node, address) in enumerate(NODES.items()):
            ns = nodes[node] = box.netns(node)
            box.exec(switch, ["ip", "link", "add", f"sw{i}", "type", "veth", "peer", "name", "eth0", "netns", ns])
            box.exec(switch, ["ip", "link", "set", f"sw{i}", "master", "br0", "up"])
            box.exec(ns, ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
            box.exec(ns, ["ip", "link", "set", "eth0", "up"])
        shim = ["ip", "link", "add", "pnmv0", "link", "eth0", "type", "macvlan", "mode", "bridge"]
        box.exec(nodes["node0"], shim)
        box.exec(nodes["node0"], ["ip", "addr", "add", f"{SHIM}/32", "dev", "pnmv0"])
        box.exec(nodes["node0"], ["ip", "link", "set", "pnmv0", "up"])
        box.exec(nodes["node0"], ["ip", "route", "add", "10.91.0.0/24", "dev", "pnmv0", "src", SHIM])
        store_path = str(tmp_path_factory.mktemp("store") / "cluster.db")
        store = box.keep_open(open_store(store_path))
        objects.apply(store, parse_documents([NS_X]))
        pods = {}
        for name, (node, address) in PODS.items():
            ns = pods[name] = box.netns(name)
            box.exec(nodes[node], ["ip", "link", "add", f"mv{name}", "link", "eth0", "type", "macvlan", "mode", "bridge"])
            box.exec(nodes[node], ["ip", "link", "set", f"mv{name}", "netns", ns])
            box.exec(ns, ["ip", "link", "set", f"mv{name}", "name", "eth0"])
            box.exec(ns, ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
            box.exec(ns, ["ip", "link", "set", "eth0", "up"])
            record = EndpointRecord(state=READY, attach_id="0123456789ab", mode="macvlan", netns=Sandbox.path(ns),
                                    host_netns=(0, 0), ips=(address,), nat=False, node=node)
            store.put(keys.endpoint("macnet", f"cid{name}", "eth0"), record.encode())
            pod = PodRecord("x", name, node, (address,), {"app": name})
            store.put(pod.key, pod.encode())
        for name, ports in (("a", (80, 81)), ("b", (80,)), ("c", (80,))):
            for port in ports:
                start_echo(box, pods[name], port, name)
        seg = Segment(box, store, store_path, nodes, pods)
        for agent in seg.agents.values():
            agent.readers.start()
            box.on_close(agent.stop)
        yield seg


@pytest.fixture(scope="module")
def enforced(segment):
    assert segment.reaches("c", "a", 80) and segment.reaches("b", "c", 80), "open before any policy"
    objects.apply(segment.store, parse_documents(POLICIES))
    segment.converge()
    return segment


def test_same_node_allow_and_deny(enforced):
    assert enforced.reaches("b", "a", 80)  # a-in allows b on 80
    assert not enforced.reaches("b", "a", 81)  # not that port: a's default deny


def test_across_nodes_allow_and_deny(enforced):
    assert enforced.reaches("a", "c", 80)  # c-in allows a
    assert not enforced.reaches("b", "c", 80)  # but not b (another node's pod)
    assert not enforced.reaches("c", "a", 80)  # nor c into a


def test_the_node_reaches_its_isolated_pod_through_its_shim(enforced):
    """As for a bridged pod, whose traffic with its node never crosses the forward
    hook: the node's probes reach it whatever its policy."""
    assert enforced.reaches_from(enforced.nodes["node0"], "a", 81)
    assert not enforced.reaches("b", "a", 81)


def test_each_node_programs_only_its_own_pods(enforced):
    assert enforced.agents["node0"].status() == {"pod_tables": 1, "macvlan_pods": 2}  # a; b is selected by nothing
    assert enforced.agents["node1"].status() == {"pod_tables": 1, "macvlan_pods": 1}
    tables = enforced.box.exec(enforced.pods["b"], ["nft", "list", "tables"]).stdout
    assert "podnet-pod-policy" not in tables


def test_a_denied_flow_is_reported_from_the_pods_namespace_naming_the_rule(enforced):
    enforced.flows.clear()
    assert not enforced.reaches("c", "a", 80)
    wait_until(lambda: any(p.prefix.startswith("D isolated:x/a-in ingress") and p.src == PODS["c"][1]
                           for p in enforced.flows), "the drop's NFLOG record")


def cni_add(seg: Segment, node: str, pod_ns: str, cid: str) -> dict:
    """A macvlan ADD as node's agent runs it: its CniService, with the pod policy's
    after_add hook, the node's namespace as the caller's."""
    service = CniService(default_store=seg.store_path, identity=NodeIdentity.local(node))
    service.after_add.append(seg.agents[node].attached)
    config = {"cniVersion": "1.0.0", "name": "macnet", "type": "podnet", "mode": "macvlan", "master": "eth0",
              "store": seg.store_path, "ipam": {"type": "podnet-ipam", "ranges": [[{
                  "subnet": "10.91.0.0/24", "rangeStart": "10.91.0.100", "rangeEnd": "10.91.0.120"}]]}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": Sandbox.path(pod_ns), "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent"}
    host_fd, pod_fd = os.open(Sandbox.path(seg.nodes[node]), os.O_RDONLY), os.open(Sandbox.path(pod_ns), os.O_RDONLY)
    out = io.StringIO()
    try:
        code = service.run_invocation(env, json.dumps(config).encode(), out, host_fd, pod_fd)
    finally:
        os.close(host_fd)
        os.close(pod_fd)
        service.close()
    assert code == 0, out.getvalue()
    return json.loads(out.getvalue())


def test_a_pod_attached_while_policy_exists_is_judged_before_its_add_returns(enforced):
    """Not registered yet: dropped (fail closed) from the moment its ADD returns, then
    judged by its policy once the orchestrator registers it."""
    d = enforced.box.netns("d")
    address = cni_add(enforced, "node0", d, "cidd")["ips"][0]["address"].split("/")[0]
    assert "podnet-pod-policy" in enforced.box.exec(d, ["nft", "list", "tables"]).stdout  # no converge ran
    assert not enforced.reaches_from(d, "b", 80)
    pod = PodRecord("x", "d", "node0", (address,), {"app": "d"})
    enforced.store.put(pod.key, pod.encode())
    enforced.converge()  # the registration's watch event
    assert enforced.reaches_from(d, "b", 80)  # nothing selects d or b
    assert not enforced.reaches_from(d, "a", 80)  # a-in: only b


def test_deleting_the_last_policy_removes_the_tables(enforced):
    objects.delete(enforced.store, parse_documents(POLICIES))
    enforced.converge()
    assert enforced.reaches("c", "a", 80) and enforced.reaches("b", "c", 80)
    for ns in enforced.pods.values():
        assert "podnet-pod-policy" not in enforced.box.exec(ns, ["nft", "list", "tables"]).stdout
    assert all(agent.readers.watched() == [] for agent in enforced.agents.values())  # none keeps a pod alive
