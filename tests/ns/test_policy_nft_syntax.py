"""Every compiled table is one the kernel accepts: each netpol case (and the host
endpoint policies) over a dual-stack world, loaded into a scratch namespace, then
changed by diff() one case to the next, in the same namespace."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from podnet.objects.registry import parse_documents
from podnet.policy.compile import compile_node
from podnet.policy.evaluate import Endpoint, NamedPort, World
from policyharness import CASES, NAMESPACES

pytestmark = pytest.mark.root

PORTS = tuple(NamedPort(f"serve-{p}-{pr.lower()}", p, pr) for p in (80, 81) for pr in ("TCP", "UDP"))
HOSTS = """
apiVersion: podnet.io/v1
kind: HostEndpoint
metadata: {name: node0, labels: {role: node}}
spec: {node: node0, ips: [172.31.0.10, "fd00:31::10"]}
---
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: hosts}
spec:
  selector: {hostEndpointSelector: {matchLabels: {role: node}}}
  types: [Ingress, Egress]
  ingress: [{action: Allow, protocol: ICMP}, {action: Deny, from: [{notNets: [172.31.0.0/16, "fd00:31::/64"]}]}]
  egress: [{action: Log}, {action: Deny, protocol: UDP, ports: ["1000-2000"], to: [{nets: ["fd00:99::/64"]}]}]
"""


def world(text: str) -> World:
    eps = [Endpoint("pod", pod, ns, (f"10.244.{i}.{j + 2}", f"fd00:244:{i}::{j + 2}"), {"pod": pod}, PORTS,
                    f"node{(i + j) % 3}") for i, ns in enumerate("xyz") for j, pod in enumerate("abc")]
    docs = [d for t in (NAMESPACES, text) for d in yaml.safe_load_all(t) if d]
    return World.build(parse_documents(docs), eps)


def nft(ns: str, script: str) -> None:
    out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "nft", "-f", "-"], input=script, text=True,
                         capture_output=True, check=False)
    assert out.returncode == 0, out.stderr + "\n" + script[:3000]


def test_every_case_compiles_to_a_table_the_kernel_takes(sandbox):
    ns = sandbox.netns("nft")
    previous = None
    for name in [*sorted(CASES), "hosts"]:
        compiled = compile_node(world(HOSTS if name == "hosts" else CASES[name]), "node0")
        assert any("ip6 " in line for lines in compiled.chains.values() for line in lines) or name.startswith(
            ("default-deny", "ingress-empty", "sctp", "cp-log", "egress-inferred", "ingress-only")), name
        nft(ns, compiled.render() if previous is None else compiled.diff(previous))
        previous = compiled
    out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "nft", "list", "chain", "inet", "podnet-policy",
                          "host_in"], capture_output=True, text=True, check=True).stdout
    assert "hook input" in out and "2379" in out
