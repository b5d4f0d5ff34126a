"""Policy fails closed in a real namespace (issue 10, item 4): an agent started on a
store that looks empty keeps the policy table in force, a missing --store is refused,
and what the compiler makes of hostile names and of the node's block is a table the
kernel takes. The lab's own agents are not restarted on an empty store here: their
node service and resync would take the lab's routes and pods apart (another item's
business), so a plain host's enforcer (`--policy-host`) in a namespace of its own
plays the restarted agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from podnet.lab.sandbox import wait_for_path
from podnet.objects import store as objects
from podnet.objects.registry import parse_documents
from podnet.policy.compile import compile_node
from podnet.policy.evaluate import Endpoint, World
from podnet.rpc.client import call
from podnet.store import open_store
from policyharness import NAMESPACES

pytestmark = pytest.mark.root

OLD_TABLE = """table inet podnet-policy {
  set generation { type mark; elements = { 7 } }
  chain ingress {
    type filter hook forward priority 0; policy accept;
    ip daddr 10.99.0.2 counter drop comment "a policy from before"
  }
}
"""
HOST_POLICY = """
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: quiet}
spec:
  selector: {hostEndpointSelector: {matchLabels: {role: vm}}}
  types: [Ingress]
  ingress: [{action: Deny, protocol: TCP, ports: [7777]}]
"""


def table(sandbox, ns: str) -> str:
    out = sandbox.exec(ns, ["nft", "list", "table", "inet", "podnet-policy"], check=False)
    return out.stdout if out.returncode == 0 else ""


def test_a_missing_store_is_refused_by_the_agent(sandbox, tmp_path):
    missing = tmp_path / "typo" / "cluster.db"
    ns = sandbox.netns("typo")  # were it not refused, it would run here, not in this machine's namespace
    out = sandbox.exec(ns, [sys.executable, "-m", "podnet.cli", "agent", "--socket", str(tmp_path / "a.sock"),
                            "--state-dir", str(tmp_path / "state"), "--store", str(missing)], check=False,
                       timeout=20)
    assert out.returncode != 0 and f"store {missing} does not exist" in out.stderr and "--init" in out.stderr
    assert not missing.parent.exists() and not (tmp_path / "a.sock").exists()


def test_an_agent_on_an_empty_store_keeps_the_table_until_the_last_policy_is_deleted(sandbox, tmp_path,
                                                                                     socket_path):
    ns = sandbox.netns("vm")
    sandbox.exec(ns, ["nft", "-f", "-"], input=OLD_TABLE)
    store_path = tmp_path / "fresh.db"
    argv = [sys.executable, "-m", "podnet.cli", "agent", "--socket", socket_path, "--state-dir",
            str(tmp_path / "state"), "--store", str(store_path), "--init", "--policy-host", "vm1"]
    log = sandbox.keep_open(open(tmp_path / "agent.log", "w+b"))  # noqa: SIM115
    agent = sandbox.spawn(ns, argv, stdout=log, stderr=subprocess.STDOUT)
    wait_for_path(socket_path, timeout=20, proc=agent)
    deadline = time.monotonic() + 10
    while (status := call(socket_path, "policy.status"))["error"] is None:  # type: ignore[index]
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert "no record that the last policy was deleted" in status["error"], status  # type: ignore[index]
    assert "a policy from before" in table(sandbox, ns)  # still enforced
    status = call(socket_path, "policy.sync", full=True)
    assert "a policy from before" in table(sandbox, ns)
    log.seek(0)
    assert log.read().count(b"no record that the last policy was deleted") == 1  # logged once

    with open_store(str(store_path), create=False) as store:
        policy = parse_documents([d for d in yaml.safe_load_all(HOST_POLICY) if d])
        objects.apply(store, policy)
        call(socket_path, "policy.sync")
        status = call(socket_path, "policy.status")
        assert status["error"] is None and status["table"] == "inet podnet-policy", status  # type: ignore[index]
        assert "a policy from before" not in table(sandbox, ns)  # replaced by the store's policy
        objects.delete(store, policy)  # the last one: the store records it
        call(socket_path, "policy.sync")
    assert table(sandbox, ns) == "" and call(socket_path, "policy.status")["error"] is None  # type: ignore[index]


def test_hostile_rule_names_and_the_unowned_check_make_a_table_nft_takes(sandbox):
    """nft refused a 203-byte prefix made of a non-ASCII rule name: one such name froze
    policy on every node. Names of any text, and the node block's drop lines, load."""
    ns = sandbox.netns("nft")
    names = ["блокировать-всё-" * 8, 'quote " semicolon ; backslash \\ end', "tab\tand\nnewline", "x" * 300]
    rules = ", ".join(f"{{action: Deny, protocol: TCP, ports: [{7000 + i}], name: {json.dumps(n)}}}"
                      for i, n in enumerate(names))
    text = ("apiVersion: podnet.io/v1\nkind: ClusterPolicy\nmetadata: {name: " + "n" * 63 + "}\nspec:\n"
            "  selector: {namespaceSelector: {}}\n  types: [Ingress, Egress]\n"
            f"  ingress: [{rules}, {{action: Log, name: 'é'}}]\n  egress: [{rules}]\n")
    eps = [Endpoint("pod", p, "x", (f"10.244.0.{i + 2}",), {"pod": p}, (), "node0") for i, p in enumerate("ab")]
    docs = [d for t in (NAMESPACES, text) for d in yaml.safe_load_all(t) if d]
    world = World.build(parse_documents(docs), eps)
    first = compile_node(world, "node0", log_allowed=True, pod_nets=("10.244.0.0/24",))
    sandbox.exec(ns, ["nft", "-f", "-"], input=first.render())
    moved = compile_node(world, "node0", log_allowed=True, pod_nets=("10.244.1.0/24",))
    sandbox.exec(ns, ["nft", "-f", "-"], input=moved.diff(first))
    listed = table(sandbox, ns)
    assert "ip saddr 10.244.1.0/24 ip saddr != @owned4" in listed and "блок" not in listed
