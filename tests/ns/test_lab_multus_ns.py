"""Extra pod networks in the lab, Multus-style (lab/extra_networks.py): a `storage`
macvlan network on the nodes' eth0 and a node-local `local` bridge network, joined by
pods through `networks:` or Multus' annotation. Built and checked through the CLI
(`lab up -f`, `lab status`, `lab exec`); the module's lab comes down even when a test
failed, and nothing of it is left."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from collections.abc import Iterator

import pytest
from test_lab_cluster import HTTP, down_if_up, lab_exec, podnet, py

pytestmark = pytest.mark.root

STORAGE = "192.168.50.0/24"
LOCAL = "192.168.60.0/24"
TOPOLOGY = f"""
nodes: [{{name: node0}}, {{name: node1}}]
networks:
  - {{name: storage, type: macvlan, subnet: {STORAGE}}}
  - {{name: local, type: bridge, subnet: {LOCAL}}}
pods:
  - {{name: a, node: node0, ports: [{{port: 80}}], networks: [storage, local]}}
  - {{name: b, node: node1, ports: [{{port: 80}}], networks: [storage]}}
  - name: c
    node: node0
    ports: [{{port: 80}}]
    annotations: {{k8s.v1.cni.cncf.io/networks: "local"}}
  - {{name: plain, node: node1, ports: [{{port: 80}}]}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    if os.geteuid() != 0:
        pytest.skip("needs root (creates network namespaces)")
    name = f"t{secrets.token_hex(2)}"
    path = tmp_path_factory.mktemp("multus") / "lab.yaml"
    path.write_text(TOPOLOGY)
    try:
        podnet("lab", "up", "--name", name, "-f", str(path), "--no-cluster-dns", timeout=120)
        status = json.loads(podnet("lab", "status", "--name", name, "-o", "json").stdout)
        yield {**status, "by_pod": {p["name"]: p for p in status["pods"]}}
    finally:
        down_if_up(name)


def addr(lab: dict, pod: str, network: str) -> str:
    return lab["by_pod"][f"default/{pod}"]["networks"][network][0].split("/")[0]


def test_status_records_each_pods_extra_addresses(lab: dict) -> None:
    pods = lab["by_pod"]
    assert {k: sorted(p.get("networks", {})) for k, p in pods.items()} == {
        "default/a": ["local", "storage"], "default/b": ["storage"], "default/c": ["local"], "default/plain": []}
    storage = [addr(lab, "a", "storage"), addr(lab, "b", "storage")]
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(STORAGE) for a in storage)
    assert len(set(storage)) == 2  # numbered in the one cluster store, across nodes


def interfaces(lab: dict, pod: str) -> dict[str, list[str]]:
    out = lab_exec(lab["name"], f"default/{pod}", "ip", "-j", "-4", "addr", "show")
    assert out.returncode == 0, out.stderr
    return {link["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]]
            for link in json.loads(out.stdout) if link["ifname"] != "lo"}


def test_interfaces_in_declared_order_and_default_route_on_eth0(lab: dict) -> None:
    a = interfaces(lab, "a")
    assert sorted(a) == ["eth0", "eth1", "eth2"]
    assert a["eth1"] == [f"{addr(lab, 'a', 'storage')}/24"] and a["eth2"] == [f"{addr(lab, 'a', 'local')}/24"]
    assert interfaces(lab, "c")["eth1"] == [f"{addr(lab, 'c', 'local')}/24"]  # from the annotation
    assert sorted(interfaces(lab, "plain")) == ["eth0"]
    for pod in ("a", "b", "c"):
        routes = lab_exec(lab["name"], f"default/{pod}", "ip", "-4", "route", "show", "default").stdout.strip()
        assert routes.count("default") == 1 and "dev eth0" in routes, (pod, routes)
    kind = lab_exec(lab["name"], "default/b", "ip", "-d", "-o", "link", "show", "eth1").stdout
    assert "macvlan mode bridge" in kind


def test_pods_on_two_nodes_talk_over_storage_with_its_source_address(lab: dict) -> None:
    a, b = addr(lab, "a", "storage"), addr(lab, "b", "storage")
    assert py(lab["name"], "default/a", HTTP, f"http://{b}/peer") == a
    assert py(lab["name"], "default/b", HTTP, f"http://{a}/peer") == b


def test_local_bridge_network_joins_pods_of_one_node(lab: dict) -> None:
    a, c = addr(lab, "a", "local"), addr(lab, "c", "local")
    assert py(lab["name"], "default/c", HTTP, f"http://{a}/peer") == c
    assert py(lab["name"], "default/a", HTTP, f"http://{c}/") == "c"
