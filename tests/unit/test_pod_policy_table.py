"""A macvlan pod's own policy table (policy/pod_table.py), pure: golden fragments of
the script, and the same lines and names as the node table would give the pod."""

from __future__ import annotations

import re

import pytest
import yaml

from podnet.errors import InvalidConfig
from podnet.objects.registry import parse_documents
from podnet.policy.compile import LOG_GROUP, compile_node
from podnet.policy.evaluate import Endpoint, World
from podnet.policy.pod_table import LINK_CONTROL, compile_pod, compile_pod_table

REMOVE = "table inet podnet-pod-policy\ndelete table inet podnet-pod-policy\n"
A_IPS = ("10.250.0.2",)
PODS = [("x", "a", "node0", "10.250.0.2"), ("x", "b", "node0", "10.250.0.3"),
        ("y", "c", "node1", "10.244.1.2"), ("y", "d", "node1", "10.244.1.3")]


def world(text: str) -> World:
    eps = [Endpoint("pod", name, ns, (ip,), {"app": name}, (), node) for ns, name, node, ip in PODS]
    ns = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"ns": n}}} for n in "xy"]
    return World.build(parse_documents([*ns, *(d for d in yaml.safe_load_all(text) if d)]), eps)


def chains(script: str) -> dict[str, list[str]]:
    """chain name -> its lines, from a rendered table."""
    return {m[1]: [line.strip() for line in m[2].strip().split("\n")]
            for m in re.finditer(r"  chain (\S+) \{\n(.*?)\n  \}", script, re.S)}


def sets(script: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"  set (\S+) \{\n(.*?)\n  \}", script, re.S)}


def head(hook: str, meta: str) -> list[str]:
    return [f"type filter hook {hook} priority 0; policy accept;", "ct state established,related accept",
            f'meta {meta} "lo" accept', LINK_CONTROL]


def policy(name: str, ns: str, selector: str, spec: str) -> str:
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n  podSelector: {selector}\n{spec}\n---\n")


DENY_IN = policy("deny-in", "x", "{matchLabels: {app: a}}", "  policyTypes: [Ingress]")
FROM_C = policy("from-c", "x", "{matchLabels: {app: a}}",
                "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, "
                "podSelector: {matchLabels: {app: c}}}], ports: [{port: 80}]}]")
EGRESS = policy("to-y", "x", "{matchLabels: {app: a}}",
                "  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}], "
                "ports: [{protocol: UDP, port: 53}]}]")
TIERS = """
apiVersion: podnet.io/v1
kind: Tier
metadata: {name: late}
spec: {order: 20}
---
apiVersion: podnet.io/v1
kind: Tier
metadata: {name: early}
spec: {order: 10}
---
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: no-smtp}
spec:
  tier: late
  selector: {podSelector: {}}
  types: [Egress]
  egress: [{action: Deny, name: smtp, protocol: TCP, ports: [25]}]
---
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: dns}
spec:
  tier: early
  selector: {namespaceSelector: {matchLabels: {ns: x}}}
  types: [Egress]
  egress: [{action: Allow, protocol: UDP, ports: [53]}, {action: Pass}]
---
"""


def test_no_policy_leaves_no_table():
    assert compile_pod_table(world(""), "x", "a", A_IPS) == REMOVE
    assert compile_pod(world(""), "x", "a", A_IPS) is None


def test_a_policy_selecting_another_pod_only_leaves_no_table():
    other = policy("deny-b", "x", "{matchLabels: {app: b}}", "  policyTypes: [Ingress, Egress]")
    assert compile_pod_table(world(other), "x", "a", A_IPS) == REMOVE
    assert compile_pod_table(world(other), "x", "b", ("10.250.0.3",)) != REMOVE


def test_ingress_deny_all_hooks_input_with_the_named_default_deny():
    text = compile_pod_table(world(DENY_IN), "x", "a", A_IPS)
    assert text.startswith(REMOVE + "table inet podnet-pod-policy {\n")
    got = chains(text)
    (pod_chain,) = [n for n in got if n.startswith("in_")]
    assert set(got) == {"ingress", pod_chain}  # no egress hook: nothing judges egress
    assert got["ingress"] == [*head("input", "iifname"), f"jump {pod_chain}"]
    assert got[pod_chain] == [f'counter log prefix "D isolated:x/deny-in ingress " group {LOG_GROUP} drop '
                              'comment "default deny ingress x/a (isolated by x/deny-in)"']


def test_an_allow_from_a_labelled_peer_matches_the_peers_addresses_in_a_set():
    text = compile_pod_table(world(FROM_C), "x", "a", A_IPS)
    got, found = chains(text), sets(text)
    (member_set,) = [n for n, body in found.items() if "10.244.1.2" in body]
    assert found[member_set] == "    type ipv4_addr\n    elements = { 10.244.1.2 }"  # y/c only, not y/d
    (np_chain,) = [n for n in got if n.startswith("np_")]
    assert got[np_chain] == [f"ip saddr @{member_set} meta l4proto tcp th dport 80 counter accept "
                             'comment "NetworkPolicy x/from-c ingress[0]"']
    (pod_chain,) = [n for n in got if n.startswith("in_")]
    assert got[pod_chain][0] == f"jump {np_chain}"
    assert got[pod_chain][1].startswith('counter log prefix "D isolated:x/from-c ingress "')


def test_an_egress_policy_hooks_output():
    got = chains(compile_pod_table(world(EGRESS), "x", "a", A_IPS))
    assert "ingress" not in got
    (pod_chain,) = [n for n in got if n.startswith("out_")]
    assert got["egress"] == [*head("output", "oifname"), f"jump {pod_chain}"]
    (np_chain,) = [n for n in got if n.startswith("np_")]
    assert got[np_chain][0].endswith('meta l4proto udp th dport 53 counter accept comment "NetworkPolicy x/to-y egress[0]"')
    assert got[pod_chain][-1] == (f'counter log prefix "D isolated:x/to-y egress " group {LOG_GROUP} drop '
                                  'comment "default deny egress x/a (isolated by x/to-y)"')


def test_cluster_policies_run_tier_by_tier_with_named_verdicts_before_network_policy():
    got = chains(compile_pod_table(world(TIERS + EGRESS), "x", "a", A_IPS))
    (pod_chain,) = [n for n in got if n.startswith("out_") and "_t" not in n]
    assert got[pod_chain][:2] == [f'jump {pod_chain}_t0 comment "tier early"', f'jump {pod_chain}_t1 comment "tier late"']
    assert got[pod_chain][2].startswith("jump np_")  # NetworkPolicy after every tier
    assert got[f"{pod_chain}_t0"] == [
        'meta l4proto udp th dport { 53 } counter accept comment "ClusterPolicy early/dns egress[0]"',
        'counter return comment "ClusterPolicy early/dns egress[1]"']
    assert got[f"{pod_chain}_t1"] == [
        f'meta l4proto tcp th dport {{ 25 }} counter log prefix "D cp:late/no-smtp egress[0] smtp " '
        f'group {LOG_GROUP} drop comment "ClusterPolicy late/no-smtp egress[0] smtp"']
    # a pod of y: only the late tier's policy selects it
    got_y = chains(compile_pod_table(world(TIERS), "y", "c", ("10.244.1.2",)))
    assert sorted(n[-3:] for n in got_y if n.startswith("out_") and "_t" in n) == ["_t1"]


@pytest.mark.parametrize("text", [DENY_IN, FROM_C, EGRESS, TIERS + EGRESS + FROM_C])
def test_the_same_lines_sets_and_names_as_the_node_table(text):
    """What judges the pod is what the node table would have judged it with, had its
    packets crossed the forward hook."""
    pod = compile_pod(world(text), "x", "a", A_IPS)
    node = compile_node(world(text), "node0")
    assert pod is not None
    assert {n: lines for n, lines in pod.chains.items() if n not in ("ingress", "egress")}.items() <= node.chains.items()
    assert pod.sets.items() <= node.sets.items() and pod.rules.items() <= node.rules.items()


def test_an_address_its_record_does_not_name_is_dropped_both_ways():
    for ns, name, ips in (("x", "a", ("10.250.0.9",)), ("x", "gone", ("10.250.0.9",))):
        got = chains(compile_pod_table(world(FROM_C), ns, name, ips))
        for chain, hook, meta in (("ingress", "input", "iifname"), ("egress", "output", "oifname")):
            assert got[chain] == [*head(hook, meta), f'counter log prefix "D unowned {chain} " group '
                                  f'{LOG_GROUP} drop comment "unowned address of pod {ns}/{name}"']
    assert compile_pod_table(world(""), "x", "gone", ("10.250.0.9",)) == REMOVE  # no policy: nothing to enforce


def test_log_allowed_logs_allow_lines_under_their_prefix():
    got = chains(compile_pod_table(world(FROM_C), "x", "a", A_IPS, log_allowed=True))
    (np_chain,) = [n for n in got if n.startswith("np_")]
    assert f'log prefix "A np:x/from-c ingress[0] " group {LOG_GROUP} accept' in got[np_chain][0]


def test_a_bad_address_names_the_field():
    with pytest.raises(InvalidConfig, match=re.escape("pod x/a: ips[1]: 'nope' is not an IP address")):
        compile_pod_table(world(DENY_IN), "x", "a", ("10.250.0.2", "nope"))
