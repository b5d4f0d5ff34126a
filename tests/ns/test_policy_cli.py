"""`podnet apply|get|label|delete` against a real lab whose store is a 3-member etcd
cluster on the lab fabric: the CLI runs itself inside the lab (the root namespace never
talks to lab addresses), and the lab has registered its namespaces and pods.

The lab is `pc<hex>` (namespaces `pn-lab-pc<hex>-*`), torn down by recorded names."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from podnet.lab.state import state_file

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not shutil.which("etcd"), reason="needs etcd (Debian etcd-server)"),
]

TOPOLOGY = """
nodes: [{name: node0}, {name: node1}]
namespaces: [{name: x, labels: {ns: x}}]
pods:
  - {name: a, namespace: x, node: node0, labels: {pod: a}, ports: [{port: 80, protocol: TCP, name: http}]}
  - {name: b, namespace: x, node: node1, labels: {pod: b}}
"""
POLICIES = """
apiVersion: podnet.io/v1
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-http, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {}}], ports: [{port: http}]}]
---
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: deny-outside}
spec:
  tier: security
  selector: {namespaceSelector: {}}
  types: [Egress]
  egress: [{action: Deny, to: [{nets: [198.51.100.0/24]}]}]
"""


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podnet.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from podnet.lab import topology as topo
    from podnet.lab.builder import LabBuilder, LabOptions
    from podnet.lab.teardown import teardown

    name = f"pc{secrets.token_hex(2)[:3]}"
    path = tmp_path_factory.mktemp("topo") / "t.yaml"
    path.write_text(TOPOLOGY)
    builder = LabBuilder(topo.load(path), LabOptions(name=name, fabric="host-gw", store="etcd", timeout=60))
    try:
        builder.build()
        yield name
    finally:
        if state_file(name).exists():
            assert not teardown(name)


def test_lab_registered_its_namespaces_and_pods(lab):
    out = cli("get", "ns", "--lab", lab, "-o", "json")
    assert out.returncode == 0, out.stderr
    labels = {d["metadata"]["name"]: d["metadata"]["labels"] for d in json.loads(out.stdout)}
    assert labels["x"] == {"ns": "x", "kubernetes.io/metadata.name": "x"}
    pods = json.loads(cli("get", "pods", "-n", "x", "--lab", lab, "-o", "json").stdout)
    a = next(p for p in pods if p["metadata"]["name"] == "a")
    assert a["spec"]["nodeName"] == "node0" and a["metadata"]["labels"] == {"pod": "a"}
    assert a["spec"]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP"}]
    assert a["status"]["podIPs"][0].startswith("10.244.")


def test_apply_get_label_delete(lab, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(POLICIES)
    out = cli("apply", "-f", str(path), "--lab", lab)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["tier/security created", "networkpolicy/x/allow-http created",
                                          "clusterpolicy/deny-outside created"]
    assert "unchanged" in cli("apply", "-f", "-", "--lab", lab, stdin=POLICIES).stdout
    got = cli("get", "netpol", "-n", "x", "--lab", lab, "-o", "yaml")
    assert got.returncode == 0 and "name: allow-http" in got.stdout
    table = cli("get", "clusterpolicies", "--lab", lab)
    assert "deny-outside" in table.stdout and "security" in table.stdout
    assert cli("label", "namespace", "x", "team=red", "--lab", lab).stdout.strip() == "namespace/x labeled"
    assert cli("label", "pod", "x/a", "tier=web", "pod-", "--lab", lab).returncode == 0
    pods = json.loads(cli("get", "po", "-n", "x", "--lab", lab, "-o", "json").stdout)
    assert next(p for p in pods if p["metadata"]["name"] == "a")["metadata"]["labels"] == {"tier": "web"}
    ns = {d["metadata"]["name"]: d for d in json.loads(cli("get", "ns", "--lab", lab, "-o", "json").stdout)}
    assert ns["x"]["metadata"]["labels"]["team"] == "red"
    out = cli("delete", "-f", str(path), "--lab", lab)
    assert out.stdout.count("deleted") == 3
    assert json.loads(cli("get", "netpol", "--lab", lab, "-o", "json").stdout) == []


def test_describe_and_nodes_from_inside_an_etcd_lab(lab, tmp_path):
    """describe re-runs inside the lab like every store command; a pod names its node
    and the policies selecting it; nodes are the agents' leases."""
    path = tmp_path / "p.yaml"
    path.write_text(POLICIES)
    assert cli("apply", "-f", str(path), "--lab", lab).returncode == 0
    try:
        out = cli("describe", "pod", "x/b", "--lab", lab)  # (another test relabels x/a)
        assert out.returncode == 0, out.stderr
        assert "Spec:\n  nodeName: node1" in out.stdout
        assert "ClusterPolicy deny-outside (tier security" in out.stdout and "allow-http" not in out.stdout
        netpol = cli("describe", "netpol", "allow-http", "-n", "x", "--lab", lab).stdout
        assert "Selects:\n" in netpol and "pod x/b" not in netpol
        nodes = json.loads(cli("get", "nodes", "--lab", lab, "-o", "json").stdout)
        assert sorted(n["metadata"]["name"] for n in nodes) == ["node0", "node1"]
        assert all(n["spec"]["block"].startswith("10.244.") for n in nodes)
    finally:
        cli("delete", "-f", str(path), "--lab", lab)


@pytest.mark.parametrize("args, stdin, message", [
    (["apply", "-f", "-"], "kind: Deployment\napiVersion: apps/v1\nmetadata: {name: x}\n", "Deployment"),
    (["apply", "-f", "-"], "a: [", "not valid YAML"),
    (["apply", "-f", "/nonexistent.yaml"], None, "cannot read"),
    (["get", "widgets"], None, "unknown kind"),
    (["label", "pod", "x/ghost", "a=b"], None, "not known"),
])
def test_errors_are_messages_and_exit_1(lab, args, stdin, message):
    out = cli(*args, "--lab", lab, stdin=stdin)
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_lab_is_a_clear_error():
    out = cli("get", "ns", "--lab", "nolab9")
    assert out.returncode == 1 and "no lab named 'nolab9'" in out.stderr
