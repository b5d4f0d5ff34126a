"""Extra pod networks in the lab topology (Multus-style): parsing with errors naming
the field, the pods' lists (or Multus' annotation), and the conflists rendered for
them (pure: no root)."""

from __future__ import annotations

import pytest

from podnet.cni.config import parse_conf, store_path_for
from podnet.ipam.config import parse_ipam_config
from podnet.lab import topology as topo
from podnet.lab.extra_networks import ExtraNetwork, ifname, render_conflist
from podnet.lab.topology import TopologyError
from podnet.runtime.libcni import plugin_config

NODES = [{"name": "node0"}, {"name": "node1"}]
STORAGE = {"name": "storage", "type": "macvlan", "subnet": "192.168.50.0/24"}
LOCAL = {"name": "local", "type": "bridge", "subnet": "192.168.60.0/24"}
NODE = {"socket": "/run/podnet/lab-t-node0.sock", "netns": "pn-lab-t-node0"}
STORE = "/run/podnet/lab-t/store.db"


def parse(networks: list, pods: list | None = None) -> topo.Topology:
    return topo.parse({"nodes": NODES, "networks": networks, "pods": pods or []})


def test_networks_and_pods_that_join_them() -> None:
    t = parse([{**STORAGE, "mode": "vepa", "master": "eth0"}, LOCAL], [
        {"name": "a", "node": "node0", "networks": ["storage", "local"]},
        {"name": "b", "node": "node1", "annotations": {"k8s.v1.cni.cncf.io/networks": " local , storage"}},
        {"name": "c", "node": "node1", "annotations": {"team": "x"}},
    ])
    assert t.networks == (ExtraNetwork("storage", "macvlan", "192.168.50.0/24", "vepa", "eth0"),
                          ExtraNetwork("local", "bridge", "192.168.60.0/24"))
    assert [p.networks for p in t.pods] == [("storage", "local"), ("local", "storage"), ()]
    assert t.networks[0].mode == "vepa" and t.networks[1].bridge == "pnx-local"
    assert [ifname(i) for i in range(3)] == ["eth1", "eth2", "eth3"]


def test_defaults_and_no_networks() -> None:
    t = parse([STORAGE])
    assert (t.networks[0].mode, t.networks[0].master) == ("bridge", "eth0")
    assert topo.default_topology().networks == () and topo.default_topology().pods[0].networks == ()


@pytest.mark.parametrize(("networks", "message"), [
    ([{**STORAGE, "subnet": "10.244.8.0/24"}], "networks[0].subnet: 10.244.8.0/24 overlaps the cluster CIDR"),
    ([{**STORAGE, "subnet": "10.96.0.0/24"}], "networks[0].subnet: 10.96.0.0/24 overlaps the service CIDR"),
    ([{**STORAGE, "subnet": "172.31.5.0/24"}], "overlaps the lab underlay (172.31.0.0/16)"),
    ([{**STORAGE, "subnet": "172.0.0.0/8"}], "overlaps the lab underlay"),
    ([STORAGE, {**LOCAL, "subnet": "192.168.50.128/25"}],
     "networks[1].subnet: 192.168.50.128/25 overlaps network 'storage' (192.168.50.0/24)"),
    ([{**STORAGE, "subnet": "192.168.50.1/24"}], "networks[0].subnet: 192.168.50.1/24 has host bits set"),
    ([{**STORAGE, "subnet": "192.168.50.0"}], "networks[0].subnet must be a CIDR"),
    ([{**STORAGE, "subnet": None}], "networks[0].subnet must be a CIDR"),
    ([{**STORAGE, "subnet": "192.168.50.0/31"}], "is too small"),
    ([STORAGE, {**LOCAL, "name": "storage"}], "networks[1].name: network 'storage' is declared twice"),
    ([{**STORAGE, "name": "Storage"}], "networks[0].name: invalid network name 'Storage'"),
    ([{**STORAGE, "name": "a-very-long-n"}], "invalid network name"),  # pnx-<name> must fit 15 bytes
    ([{**STORAGE, "name": "cluster"}], "is the primary pod network's name"),
    ([{**STORAGE, "type": "ipvlan"}], "networks[0].type must be macvlan or bridge, not 'ipvlan'"),
    ([{**STORAGE, "mode": "passthru"}], "networks[0].mode must be one of bridge, private, vepa"),
    ([{**STORAGE, "master": "not an if"}], "networks[0].master: 'not an if' is not an interface name"),
    ([{**LOCAL, "mode": "bridge"}], "networks[0].mode applies to macvlan networks only"),
    ([{**STORAGE, "vlan": 3}], "networks[0]: unknown field(s) vlan"),
    (["storage"], "networks[0] must be a mapping"),
])
def test_bad_networks_name_the_field(networks: list, message: str) -> None:
    with pytest.raises(TopologyError) as err:
        parse(networks)
    assert message in err.value.msg


@pytest.mark.parametrize(("pod", "message"), [
    ({"networks": ["nope"]}, "pods[0].networks: unknown network 'nope'"),
    ({"networks": "storage"}, "pods[0].networks must be a list"),
    ({"networks": ["storage", "storage"]}, "pods[0].networks: a network is listed twice"),
    ({"networks": ["storage", "n1", "n2", "n3", "n4"]}, "at most 4 extra networks per pod, not 5"),
    ({"networks": ["storage"], "annotations": {"k8s.v1.cni.cncf.io/networks": "storage"}},
     "pods[0]: give the extra networks once"),
    ({"annotations": {"k8s.v1.cni.cncf.io/networks": "storage,nope"}},
     "pods[0].annotations[k8s.v1.cni.cncf.io/networks]: unknown network 'nope'"),
    ({"annotations": {"k8s.v1.cni.cncf.io/networks": "default/storage"}}, "'default/storage' is not supported"),
    ({"annotations": {"k8s.v1.cni.cncf.io/networks": "storage@net1"}}, "'storage@net1' is not supported"),
    ({"annotations": {"k8s.v1.cni.cncf.io/networks": '[{"name": "storage"}]'}}, "is not supported"),
    ({"annotations": {"team": 1}}, "pods[0].annotations must map strings to strings"),
])
def test_bad_pod_networks_name_the_field(pod: dict, message: str) -> None:
    extra = [{"name": f"n{i}", "type": "bridge", "subnet": f"192.168.{70 + i}.0/24"} for i in range(1, 5)]
    with pytest.raises(TopologyError) as err:
        parse([STORAGE, *extra], [{"name": "a", "node": "node0", **pod}])
    assert message in err.value.msg


def test_load_names_the_file(tmp_path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text("nodes: [{name: n}]\nnetworks: [{name: s, type: macvlan, subnet: 10.244.0.0/24}]\n")
    with pytest.raises(TopologyError, match=rf"{path}: networks\[0\].subnet: .* overlaps the cluster CIDR"):
        topo.load(path)


def plugin_of(doc: dict) -> dict:
    assert doc["cniVersion"] == "1.0.0" and len(doc["plugins"]) == 1
    return doc["plugins"][0]


def test_macvlan_conflist() -> None:
    net = ExtraNetwork("storage", "macvlan", "192.168.50.0/24", "private", "eth0")
    doc = render_conflist(net, STORE, NODE)
    assert doc["name"] == "storage"
    assert plugin_of(doc) == {
        "type": "podnet", "mode": "macvlan", "master": "eth0", "macvlanMode": "private",
        "isDefaultGateway": False, "ipMasq": False, "agentSocket": NODE["socket"],
        "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": "192.168.50.0/24"}]], "store": STORE},
    }
    conf = parse_conf(plugin_config(doc, plugin_of(doc), None))  # what the plugin sees at ADD
    assert (conf.mode, conf.master, conf.macvlan_mode, conf.is_default_gateway) == ("macvlan", "eth0", "private", False)
    assert store_path_for(plugin_config(doc, plugin_of(doc), None)) == STORE  # numbered in the lab's store
    ipam = parse_ipam_config(conf.ipam)
    assert not ipam.routes  # no default route: eth0 keeps it


def test_bridge_conflist() -> None:
    doc = render_conflist(ExtraNetwork("local", "bridge", "192.168.60.0/24"), "etcd://172.31.0.200:2379/x", NODE)
    plugin = plugin_of(doc)
    assert (plugin["mode"], plugin["bridge"], plugin["isGateway"], plugin["isDefaultGateway"]) == (
        "bridge", "pnx-local", False, False)
    assert "master" not in plugin and plugin["ipam"]["store"] == "etcd://172.31.0.200:2379/x"
    conf = parse_conf(plugin_config(doc, plugin, None))
    assert (conf.bridge, conf.is_gateway, conf.ip_masq) == ("pnx-local", False, False)


def test_attach_refuses_a_subnet_inside_a_moved_cluster_range(tmp_path) -> None:
    """`lab up --cluster-cidr` can move the pods' blocks onto an extra subnet the
    topology accepted: attach_extra refuses before any ADD."""
    from podnet.lab.extra_networks import attach_extra
    from podnet.lab.state import LabError, LabState

    state = LabState("t", {"name": "t", "labdir": str(tmp_path), "store_url": STORE, "service_cidr": "10.96.0.0/16",
                           "nodes": {"node0": {**NODE, "block": "192.168.50.0/26"}},
                           "pods": {"default/a": {"netns": "pn-lab-t-p-default-a"}}})
    t = parse([STORAGE], [{"name": "a", "node": "node0", "networks": ["storage"]}])
    with pytest.raises(LabError, match=r"network storage: its subnet 192.168.50.0/24 overlaps the block of node0"):
        attach_extra(state, t.pods[0], t.networks)
    assert "networks" not in state.data["pods"]["default/a"]
    assert attach_extra(state, parse([STORAGE], [{"name": "b", "node": "node0"}]).pods[0], t.networks) == {}
