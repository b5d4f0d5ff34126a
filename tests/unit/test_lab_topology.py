"""The lab topology: defaults, addressing, naming and clear errors for bad files."""

from __future__ import annotations

import pytest

from podnet.lab import topology as topo
from podnet.lab.topology import TopologyError


def test_default_topology_names_pods_ports_and_racks() -> None:
    t = topo.default_topology(nodes=3, pods_per_node=2, racks=2)
    assert [n.name for n in t.nodes] == ["node0", "node1", "node2"]
    assert [n.rack for n in t.nodes] == [0, 1, 0]
    assert [n.underlay_ip for n in t.nodes] == ["172.31.0.10", "172.31.1.10", "172.31.0.11"]
    assert t.racks == 2
    assert [p.key for p in t.pods_on("node1")] == ["default/p1-0", "default/p1-1"]
    pod = t.pods[0]
    assert pod.labels == {"app": "echo"}
    assert [str(p) for p in pod.ports] == ["80/TCP", "80/UDP"]
    assert [ns.name for ns in t.namespaces] == ["default"]


def test_addressing_and_names() -> None:
    t = topo.default_topology(nodes=2)
    assert topo.router_ip(3) == "172.31.3.1"
    assert topo.rack_subnet(1) == "172.31.1.0/24"
    assert topo.etcd_ip(2) == "172.31.0.202"
    assert topo.netns_name("abc", "node0") == "pn-lab-abc-node0"
    assert topo.pod_netns("abc", t.pods[0]) == "pn-lab-abc-p-default-p0-0"
    assert topo.node_block_guess(t.nodes[1]) == "10.244.1.0/24"
    assert topo.node_block_guess(t.nodes[1], "10.1.0.0/16", 26) == "10.1.0.64/26"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"nodes": 0}, "--nodes"), ({"nodes": 2, "racks": 3}, "--racks"), ({"pods_per_node": -1}, "--pods-per-node")],
)
def test_default_topology_rejects_bad_flags(kwargs: dict, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        topo.default_topology(**kwargs)


GOOD = """
nodes:
  - {name: a, rack: 0}
  - {name: b, rack: 1}
  - {name: c}
namespaces:
  - {name: shop, labels: {team: blue, tier: 1}}
pods:
  - name: web
    namespace: shop
    node: b
    labels: {app: web}
    ports: [{port: 80, protocol: tcp, name: http}, {port: 53, protocol: UDP}]
  - {name: idle, node: a}
"""


def test_load_file(tmp_path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(GOOD)
    t = topo.load(path)
    assert [(n.name, n.rack, n.underlay_ip) for n in t.nodes] == [
        ("a", 0, "172.31.0.10"), ("b", 1, "172.31.1.10"), ("c", 0, "172.31.0.11")]
    assert {ns.name: dict(ns.labels) for ns in t.namespaces} == {"shop": {"team": "blue", "tier": "1"}, "default": {}}
    web, idle = t.pods
    assert (web.key, web.node, dict(web.labels)) == ("shop/web", "b", {"app": "web"})
    assert [(p.port, p.protocol, p.name) for p in web.ports] == [(80, "TCP", "http"), (53, "UDP", "")]
    assert (idle.key, idle.ports) == ("default/idle", ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes: [", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("pods: []\n", "declares no nodes"),
        ("nodes: [{name: a}, {name: a}]", "declared twice"),
        ("nodes: [{name: Bad_Name}]", "invalid name"),
        ("nodes: [{name: a, rack: 1}]", "without gaps"),
        ("nodes: [{name: a, rack: x}]", "rack must be an integer"),
        ("nodes: [{name: a, zone: 1}]", "unknown field"),
        ("nodes: [{name: a}]\npods: [{name: p, node: zz}]", "unknown node 'zz'"),
        ("nodes: [{name: a}]\npods: [{name: p, node: a, namespace: nope}]", "unknown namespace 'nope'"),
        ("nodes: [{name: a}]\npods: [{name: p, node: a}, {name: p, node: a}]", "declared twice"),
        ("nodes: [{name: a}]\npods: [{name: p, node: a, ports: [{port: 70000}]}]", "1 to 65535"),
        ("nodes: [{name: a}]\npods: [{name: p, node: a, ports: [{port: 1, protocol: SCTP}]}]", "TCP or UDP"),
        ("nodes: [{name: a}]\npods: [{name: p, node: a, ports: [{port: 1}, {port: 1}]}]", "listed twice"),
        ("nodes: [{name: a}]\npods: [{name: p, node: a, labels: {app: [1]}}]", "scalar value"),
        ("nodes: [{name: a}]\nnamespaces: [{name: default}, {name: default}]", "declared twice"),
    ],
)
def test_bad_files_fail_clearly(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError, match=message) as info:
        topo.load(path)
    assert str(path) in info.value.msg


def test_missing_file_and_bad_lab_name(tmp_path) -> None:
    with pytest.raises(TopologyError, match="cannot read topology file"):
        topo.load(tmp_path / "nope.yaml")
    for bad in ("", "UPPER", "toolongname", "a-b"):
        with pytest.raises(TopologyError, match="invalid lab name"):
            topo.check_lab_name(bad)


def test_cli_reports_a_bad_file_before_touching_anything(tmp_path, capsys) -> None:
    from podnet.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("nodes: [{name: a}]\npods: [{name: p, node: b}]\n")
    assert main(["lab", "up", "--name", "x", "-f", str(path)]) == 1
    assert "unknown node 'b'" in capsys.readouterr().err
    assert main(["lab", "up", "--name", "x", "-f", str(path), "--nodes", "3"]) == 1
    assert "exclude each other" in capsys.readouterr().err


def test_bgp_objects_in_a_topology_are_checked_with_the_field():
    base = {"nodes": [{"name": "n0"}]}
    good = topo.parse({**base, "bgp": [{"kind": "BGPPeer", "metadata": {"name": "tor"},
                                            "spec": {"peerIP": "172.31.0.1", "asNumber": 65100}}]})
    assert good.bgp[0]["apiVersion"] == "projectcalico.org/v3" and good.bgp[0]["kind"] == "BGPPeer"
    with pytest.raises(TopologyError, match="asNumber"):
        topo.parse({**base, "bgp": [{"kind": "BGPPeer", "metadata": {"name": "tor"},
                                         "spec": {"peerIP": "172.31.0.1", "asNumber": 0}}]})
    with pytest.raises(TopologyError, match="bgp\\[0\\].kind must be BGPConfiguration or BGPPeer"):
        topo.parse({**base, "bgp": [{"kind": "Service", "metadata": {"name": "x"}}]})
