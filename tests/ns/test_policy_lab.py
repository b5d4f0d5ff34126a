"""Policy enforcement in a real lab, in the style of the upstream Kubernetes netpol e2e
suite: namespaces x, y, z with pods a, b, c (examples/topologies/netpol.yaml, 3 nodes,
host-gw), every pod serving 80 and 81 over TCP and UDP.

Each case applies its objects to the lab's store, asks every node's agent to converge
(`policy.sync`), runs the real `podnet probe` over the full 9 x 9 x 2 ports x 2
protocols matrix, and compares every cell with the reference semantics
(policy/evaluate.py) — and, for the classic cases, with a truth table written here by
hand, so the oracle itself is checked. The lab is `pp<hex>`, torn down by recorded
names whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from test_fabric_cluster import eventually

from podnet.lab.sandbox import stop_process
from podnet.objects import store as object_store
from podnet.policy.kinds import NAMESPACE, POD
from podnet.policy.world import load_world
from podnet.rpc.client import call
from policyharness import CASES, CELLS, NODE0_HOST, PODS, Lab, check, cp, netpol_lab, np, tcp_from

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with netpol_lab("host-gw", "pp") as built:
        yield built


@pytest.mark.parametrize("case", sorted(CASES))
def test_truth_table_matches_the_reference(lab, case):
    check(lab, CASES[case])


def test_ipblock_with_except(lab):
    """Allow x/a from the whole cluster range except y/b's address."""
    text = np("p", "x", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: "
              f"{{cidr: 10.244.0.0/16, except: [{lab.ip('y/b')}/32]}}}}]}}]\n")
    got = check(lab, text)
    assert got[(80, "TCP")]["y/b"]["x/a"] is False and got[(80, "TCP")]["y/a"]["x/a"] is True


def test_hand_written_truth_tables(lab):
    """The oracle is checked too: classic upstream tables, written out by hand."""
    got = check(lab, CASES["default-deny-ingress"])
    for cell in CELLS:
        for s in PODS:
            for d in PODS:
                assert got[cell][s][d] is (not d.startswith("x/") or s == d), (cell, s, d)
    got = check(lab, CASES["from-namespace-y"])
    for s in PODS:
        for d in PODS:
            assert got[(80, "TCP")][s][d] is (not d.startswith("x/") or s.startswith("y/") or s == d), (s, d)
    got = check(lab, CASES["named-port-81-tcp"])
    assert got[(81, "TCP")]["z/c"]["x/a"] and not got[(80, "TCP")]["z/c"]["x/a"] and not got[(81, "UDP")]["z/c"]["x/a"]
    got = check(lab, CASES["cp-deny-over-np-allow"])
    assert not got[(80, "TCP")]["z/a"]["x/b"] and got[(80, "TCP")]["y/a"]["x/b"]
    got = check(lab, CASES["egress-to-y-only"])
    assert got[(80, "UDP")]["x/a"]["y/c"] and not got[(80, "UDP")]["x/a"]["z/c"] and got[(80, "UDP")]["z/a"]["x/a"]


def test_relabel_while_traffic_runs(lab):
    """Labels change the live policy: a namespace label, then a pod label, while a
    client keeps opening connections."""
    objects = lab.apply(np("p", "x", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]\n"))
    stop = threading.Event()
    results: list[tuple[float, float, bool]] = []

    def client() -> None:
        while not stop.is_set():
            start = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "podnet.cli", "probe", "--name", lab.name, "-o", "json",
                                  "--from", "namespace=z,pod=a", "--to", "namespace=x,pod=a", "--port", "80",
                                  "--protocol", "tcp", "--timeout", "0.5"], capture_output=True, text=True, check=False)
            if out.returncode == 0:
                results.append((start, time.monotonic(), json.loads(out.stdout)["z/a"]["x/a"]))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(2.0)
        label_at = time.monotonic()
        object_store.label(lab.store, NAMESPACE, "z", ["team=blue"])
        lab.sync()
        labelled = time.monotonic()
        time.sleep(2.0)
        unlabel_at = time.monotonic()
        object_store.label(lab.store, POD, "z/a", ["pod=aa"])  # a pod label: the namespace still matches
        object_store.label(lab.store, NAMESPACE, "z", ["team-"])
        lab.sync()
        unlabelled = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        thread.join(30)
        object_store.label(lab.store, POD, "z/a", ["pod=a"])
        lab.delete(objects)
    before = [ok for start, end, ok in results if end < label_at]
    during = [ok for start, end, ok in results if start > labelled and end < unlabel_at]
    after = [ok for start, end, ok in results if start > unlabelled]
    assert before and not any(before), results
    assert during and all(during), results
    assert after and not any(after), results


def test_default_deny_stays_while_the_agent_is_down(lab):
    """Fail closed: kill -9 node0's agent; its pods stay isolated; a restarted agent
    takes over the table without a gap and converges a change made meanwhile."""
    from podnet.lab.state import LabState
    from podnet.procs import owner_alive

    objects = lab.apply(np("deny", "x", "  podSelector: {}\n"))  # x/a lives on node0
    entry = LabState.load(lab.name).processes()["agent/node0"]
    try:
        os.kill(entry["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while owner_alive(entry["owner"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not owner_alive(entry["owner"])
        got = lab.probe()
        assert not got[(80, "TCP")]["y/a"]["x/a"] and got[(80, "TCP")]["y/a"]["y/b"]
        # meanwhile, a change: allow y -> x
        more = lab.apply_without_sync(np("allow-y", "x", "  podSelector: {}\n  ingress: [{from: "
                                         "[{namespaceSelector: {matchLabels: {ns: y}}}]}]\n"))
        objects += more
        with open(os.devnull, "wb") as null:
            restarted = subprocess.Popen(entry["argv"], stdin=subprocess.DEVNULL, stdout=null, stderr=null,
                                         start_new_session=True)
        lab.started.append(restarted)  # runs until the module's lab goes
        # an agent's start is real work: on a machine loaded by other labs (load 60) no
        # answer came within 20 s, and the tests after this one found no agent on node0
        deadline, up = time.monotonic() + 60, False
        while not up and time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # not up yet
                up = bool(call(lab.data["nodes"]["node0"]["socket"], "policy.status").get("revision"))  # type: ignore[union-attr]
            if not up:
                time.sleep(0.2)
        assert up, "node0's restarted agent did not answer within 60 s"
        lab.sync()
        assert lab.probe()[(80, "TCP")]["y/a"]["x/a"]
    finally:
        lab.delete(objects)


def test_an_address_no_pod_owns_is_dropped_by_its_node(lab):
    """Fail closed (issue 10, item 4): while policy exists, an address of a node's block
    that no registered pod owns (a pod its orchestrator has not registered yet, a
    recycled address) is dropped both ways by that node, where it used to fall through
    to accept. x/a lives on node0; its record goes, then comes back."""
    from podnet import keys

    objects = lab.apply(cp("allow-all", "  selector: {namespaceSelector: {}}\n  types: [Ingress]\n"
                                        "  ingress: [{action: Allow}]\n"))
    key = keys.pod("x", "a")
    record = lab.store.get(key)
    assert record is not None
    try:
        lab.store.delete(key)
        lab.sync()
        got = lab.probe()[(80, "TCP")]
        others = [p for p in PODS if p != "x/a"]
        assert not any(got["x/a"][d] for d in others), got["x/a"]  # from it: dropped on node0
        assert not any(got[s]["x/a"] for s in others), got  # to it: dropped on node0
        assert got["y/c"]["z/b"] and got["y/a"]["x/b"]  # node0's other pods, other nodes: as before
    finally:
        lab.store.put(key, record.value)
        lab.delete(objects)
    assert lab.probe()[(80, "TCP")]["y/a"]["x/a"]


def _table(ns: str) -> dict:
    """The policy table as {chain: [rules]} and {set: elements}, without handles or
    counters, comparable between two namespaces."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "nft", "-s", "-j", "list", "table", "inet",
                          "podnet-policy"], capture_output=True, text=True, check=True).stdout
    chains: dict[str, list] = {}
    sets: dict[str, list] = {}
    for item in json.loads(out)["nftables"]:
        if item.get("set", {}).get("name") == "generation":
            continue  # the agent's apply counter (the scratch copy has none)
        if "rule" in item:
            rule = item["rule"]
            chains.setdefault(rule["chain"], []).append(json.dumps(rule["expr"], sort_keys=True))
        elif "set" in item or "map" in item:
            s = item.get("set") or item["map"]
            sets[s["name"]] = sorted(json.dumps(e, sort_keys=True) for e in s.get("elem", []))
        elif "chain" in item:
            chains.setdefault(item["chain"]["name"], [])
    return {"chains": chains, "sets": sets}


def test_incremental_updates_equal_a_full_apply(lab):
    """After a series of incremental changes, node0's table is exactly what a full
    apply of the same policy builds (checked in a scratch namespace)."""
    from podnet import keys
    from podnet.model.cluster import NodeLease
    from podnet.policy.compile import compile_node

    steps = [CASES["from-namespace-y"], CASES["cp-order"], CASES["egress-named-port"], CASES["cp-tier-order"]]
    applied: list = []
    try:
        for text in steps:
            applied += lab.apply(text)
        object_store.label(lab.store, NAMESPACE, "z", ["ns=y"])  # z joins the selector of from-namespace-y
        lab.sync()
        node0 = lab.data["nodes"]["node0"]["netns"]
        world, _ = load_world(lab.store)
        node0_block = NodeLease.from_json(lab.store.get_json(keys.node("node0"))).block  # its unowned check
        scratch = f"pn-t-{secrets.token_hex(3)}-full"
        subprocess.run(["ip", "netns", "add", scratch], check=True)
        try:
            subprocess.run(["nsenter", f"--net=/run/netns/{scratch}", "nft", "-f", "-"], check=True, text=True,
                           input=compile_node(world, "node0", pod_nets=(node0_block,)).render())
            assert _table(node0) == _table(scratch)
        finally:
            subprocess.run(["ip", "netns", "del", scratch], check=True)
    finally:
        object_store.label(lab.store, NAMESPACE, "z", ["ns=z"])
        lab.delete(applied)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podnet.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


# How much longer than the test has run a `--since` window reaches back: the CLI reads
# its clock only once it has started, seconds later on a loaded machine, so a window of
# exactly the test's age would begin after the test did (a verdict of its first moments
# was left out); flows_since cuts at the test's own start instead.
STARTUP_SLACK = 60.0


def flows_since(lab_name: str, t0: float, *args: str) -> list[dict]:
    """`podnet flows --lab lab_name ARGS -o json` over the verdicts since `t0` (this
    process's clock, as the kernel's timestamps)."""
    out = cli("flows", "--lab", lab_name, *args, "--since", str(time.time() - t0 + STARTUP_SLACK), "-o", "json")
    assert out.returncode == 0, out.stderr
    return [f for f in json.loads(out.stdout) if f["time"] >= t0]


def test_flows_name_the_rule_that_decided(lab):
    objects = lab.apply(np("deny", "x", "  podSelector: {matchLabels: {pod: b}}\n") + "\n---\n"
                        + cp("no-udp-81", "  selector: {namespaceSelector: {matchLabels: {ns: y}}}\n  types: [Egress]\n"
                             "  egress: [{action: Deny, name: no-udp, protocol: UDP, ports: [81]}]\n"))
    try:
        t0 = time.time()
        got = lab.probe()
        assert not got[(80, "TCP")]["z/a"]["x/b"] and not got[(81, "UDP")]["y/a"]["z/c"]
        # (a verdict is timestamped when the agent reads it: one of an earlier test may
        # be read late, so only this test's rules are looked at; and the agents read the
        # log on their own threads, so a loaded machine may show them a moment later)
        ours = {"isolated:x/deny ingress", "cp:default/no-udp-81 egress[0] no-udp"}

        def ours_logged() -> list[dict]:
            found = [f for f in flows_since(lab.name, t0, "--pod", "x/b", "--verdict", "deny") if f["rule"] in ours]
            return found if {f["rule"] for f in found} == ours else []

        flows = eventually(ours_logged, 20) or ours_logged()
        odd = [f for f in flows if f["dst"] != lab.ip("x/b") or f["verdict"] != "deny"]
        assert flows and not odd, json.dumps(odd)
        # x/b is isolated; y's UDP 81 egress is also denied on y's side, by its own rule
        assert {f["rule"] for f in flows} == ours
        y_ips = {lab.ip(f"y/{p}") for p in "abc"}
        assert all(f["src"] in y_ips and (f["protocol"], f["dport"]) == ("udp", 81)
                   for f in flows if f["rule"].startswith("cp:"))
        assert any(f["src"] == lab.ip("z/a") and f["dport"] == 80 and f["protocol"] == "tcp" for f in flows)
        flows = flows_since(lab.name, t0, "--pod", "y/a")
        rules = {f["rule"] for f in flows if f["dport"] == 81 and f["protocol"] == "udp" and f["rule"] in ours}
        assert rules == {"cp:default/no-udp-81 egress[0] no-udp"}, rules
        table = cli("flows", "--lab", lab.name, "--pod", "x/b", "--verdict", "deny").stdout
        assert "z/a:" in table and "x/b:80" in table and "isolated:x/deny ingress" in table
        counted = json.loads(cli("policy", "counters", "--lab", lab.name, "-o", "json").stdout)
        hits = {(r["node"], r["rule"]): r["packets"] for r in counted}
        x_b_node = lab.data["pods"]["x/b"]["node"]
        assert hits.get((x_b_node, "default deny ingress x/b (isolated by x/deny)"), 0) > 0, counted
    finally:
        lab.delete(objects)


def test_log_allowed_shows_allowed_new_flows(lab):
    objects = lab.apply(np("only-y", "x", "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: "
                           "[{namespaceSelector: {matchLabels: {ns: y}}}]}]\n"))
    try:
        assert cli("policy", "log-allowed", "on", "--lab", lab.name).returncode == 0
        lab.sync()
        assert lab.probe()[(80, "TCP")]["y/b"]["x/c"]
        flows = json.loads(cli("flows", "--lab", lab.name, "--pod", "x/c", "--verdict", "allow", "-o", "json").stdout)
        assert any(f["src"] == lab.ip("y/b") and f["rule"] == "np:x/only-y ingress[0]" for f in flows), flows
    finally:
        cli("policy", "log-allowed", "off", "--lab", lab.name)
        lab.delete(objects)


def test_explain_says_what_and_why_without_traffic(lab):
    objects = lab.apply(CASES["cp-deny-over-np-allow"])
    try:
        out = cli("policy", "explain", "z/a", "x/b", "--port", "80", "--protocol", "tcp", "--lab", lab.name)
        assert out.returncode == 0, out.stderr
        assert "DENIED" in out.stdout and "ClusterPolicy/deny-z" in out.stdout and "security" in out.stdout
        out = cli("policy", "explain", "y/a", "x/b", "--port", "81", "--protocol", "udp", "--lab", lab.name,
                  "-o", "json")
        decision = json.loads(out.stdout)
        assert decision["allowed"] is True and "x/all" in decision["ingress"]["reason"]
        out = cli("policy", "explain", "nope/a", "x/b", "--lab", lab.name)
        assert out.returncode == 1 and "no endpoint 'nope/a'" in out.stderr
        status = cli("policy", "status", "--lab", lab.name, "-o", "json")
        rows = json.loads(status.stdout)
        assert status.returncode == 0 and {r["node"] for r in rows} == {"node0", "node1", "node2"}
        assert all(r["error"] is None and r["rules"] > 0 for r in rows)
    finally:
        lab.delete(objects)


HOSTS = """
apiVersion: podnet.io/v1
kind: HostEndpoint
metadata: {name: vm1, labels: {role: vm}}
spec: {host: vm1}
---
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: vm-from-node1-only}
spec:
  selector: {hostEndpointSelector: {matchLabels: {role: vm}}}
  types: [Ingress]
  ingress: [{action: Allow, from: [{nets: [172.31.0.11/32]}]}, {action: Deny, name: others}]
---
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: z-not-to-vms}
spec:
  selector: {namespaceSelector: {matchLabels: {ns: z}}}
  types: [Egress]
  egress: [{action: Deny, to: [{hostEndpointSelector: {matchLabels: {role: vm}}}]}]
---""" + NODE0_HOST


def test_host_endpoints_plain_host_and_node(lab):
    """A plain host added with `podnet lab host add` and a lab node, both protected by
    ClusterPolicy through HostEndpoints; pods' egress to host endpoints by selector.
    Pods on x/a, y/c, z/b live on node0; y/a, x/b, z/c on node1 (netpol.yaml). Pod
    traffic to the underlay is masqueraded to its node's address (as Flannel and
    Calico's natOutgoing do), so a host sees nodes, not pods."""
    out = cli("lab", "host", "add", "vm1", "--name", lab.name, "-o", "json")
    assert out.returncode == 0, out.stderr
    vm = json.loads(out.stdout)["underlay"]
    node0 = lab.data["nodes"]["node0"]["underlay"]
    assert tcp_from(lab, "x/a", vm, 80) == "vm1"  # no policy yet
    listener = subprocess.Popen(["nsenter", f"--net=/run/netns/{lab.data['nodes']['node0']['netns']}",
                                 sys.executable, "-m", "podnet.lab.echo", "--name", "node0", "--tcp", "7777"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    objects = []
    try:
        objects = lab.apply(HOSTS)
        call(f"/run/podnet/lab-{lab.name}-h-vm1.sock", "policy.sync")  # the host's own enforcer
        assert tcp_from(lab, "y/a", vm, 80) == "vm1"  # node1's address: allowed
        assert tcp_from(lab, "x/a", vm, 80) == "blocked"  # node0's address: the host denies
        assert tcp_from(lab, "z/c", vm, 80) == "blocked"  # z may not reach vms: denied on node1
        assert tcp_from(lab, "x/a", node0, 7777) == "blocked"  # a local x pod to node0
        assert tcp_from(lab, "y/c", node0, 7777) == "node0"
        assert tcp_from(lab, "z/b", node0, 7777) == "node0"
        status = call(f"/run/podnet/lab-{lab.name}-h-vm1.sock", "policy.status")
        assert status["node"] == "vm1" and status["rules"] > 0, status  # type: ignore[index]
        lab.sync()  # the agents still answer: failsafe rules keep the store and VXLAN open
    finally:
        stop_process(listener)
        lab.delete(objects)
        call(f"/run/podnet/lab-{lab.name}-h-vm1.sock", "policy.sync")  # the host's enforcer, as after apply
    assert tcp_from(lab, "x/a", vm, 80) == "vm1"
