"""The `podnet` executable in macvlan mode, with and without an agent: the containers
sit on a parent link ("master") of the host namespace, here one end of a veth pair
with MTU 1400, and talk to each other through macvlan bridge mode."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cniharness import Agent, Cni, links, reservations, start_echo, tcp_probe

pytestmark = pytest.mark.root

MASTER = "pntmv0"
NETWORK = "t-mv"
# `"mode": "macvlan"` (podnet's own spelling) and a reference macvlan config, where
# `mode` is the macvlan mode and `master` makes it a macvlan network.
STYLES = {"podnet": {"mode": "macvlan"}, "reference": {"mode": "bridge"}}


def macvlan_config(data_dir: str, socket_path: str, style: str = "podnet", **extra) -> dict:
    return {
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "type": "podnet",
        "master": MASTER,
        **STYLES[style],
        "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": "10.90.0.0/24"}]], "dataDir": data_dir},
        "agentSocket": socket_path,
        **extra,
    }


@pytest.fixture(params=["agent", "in-process"])
def mv(request, sandbox, host_ns, cni_bin, data_dir, socket_path, tmp_path) -> Cni:
    """A macvlan network on MASTER (a veth with MTU 1400, both ends up)."""
    sandbox.exec(host_ns, ["ip", "link", "add", MASTER, "mtu", "1400", "type", "veth", "peer", "name", "pntmv1"])
    sandbox.exec(host_ns, ["ip", "link", "set", MASTER, "up"])
    sandbox.exec(host_ns, ["ip", "link", "set", "pntmv1", "up"])
    if request.param == "agent":
        Agent(sandbox, host_ns, socket_path, str(tmp_path / "agent.db")).start()
    return Cni(cni_bin, host_ns, macvlan_config(data_dir, socket_path), sandbox)


def eth0(cni: Cni, ns: str) -> dict:
    return json.loads(cni.in_ns(ns, "ip", "-d", "-j", "link", "show", "eth0").stdout)[0]


def host_macvlans(sandbox, host_ns) -> list[str]:
    return links(sandbox, host_ns, "macvlan")


@pytest.mark.parametrize("style", sorted(STYLES))
def test_two_containers_on_the_master_reach_each_other(mv, sandbox, host_ns, data_dir, socket_path, style):
    conf = macvlan_config(data_dir, socket_path, style)
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    r1 = mv.add(c1, "c1", config=conf)
    r2 = mv.add(c2, "c2", config=conf)
    assert r1["cniVersion"] == "1.1.0"
    assert [i["name"] for i in r1["interfaces"]] == ["eth0"] and r1["interfaces"][0]["sandbox"].endswith(c1)
    assert r1["ips"][0]["interface"] == 0
    ip1 = ipaddress.ip_interface(r1["ips"][0]["address"])
    ip2 = ipaddress.ip_interface(r2["ips"][0]["address"])
    subnet = ipaddress.ip_network("10.90.0.0/24")
    assert ip1 != ip2 and ip1.network == subnet and ip2.network == subnet
    assert sorted(r.address for r in reservations(data_dir, NETWORK)) == sorted([str(ip1.ip), str(ip2.ip)])
    for ns, result in ((c1, r1), (c2, r2)):
        shown = eth0(mv, ns)
        assert shown["linkinfo"]["info_kind"] == "macvlan"
        assert shown["linkinfo"]["info_data"]["mode"] == "bridge"
        assert shown["mtu"] == 1400  # the master's, as no mtu is configured
        assert shown["address"] == result["interfaces"][0]["mac"]
    assert host_macvlans(sandbox, host_ns) == []  # the macvlans live in the containers
    assert sorted(links(sandbox, host_ns)) == [MASTER, "pntmv1"]
    start_echo(sandbox, c2, 7000, "c2")
    assert tcp_probe(sandbox, c1, str(ip2.ip), 7000) == "hello from c2"
    assert mv.in_ns(c2, "/bin/busybox", "ping", "-c", "1", "-W", "2", str(ip1.ip)).returncode == 0


def test_explicit_smaller_mtu_is_used(mv, sandbox):
    c1 = sandbox.netns("c1")
    mv.add(c1, "c1", config={**mv.config, "mtu": 1300})
    assert eth0(mv, c1)["mtu"] == 1300


def test_mtu_larger_than_the_master_is_refused_and_leaves_nothing(mv, sandbox, host_ns, data_dir):
    c1 = sandbox.netns("c1")
    result = mv.call("ADD", c1, "c1", config={**mv.config, "mtu": 1500})
    assert not result.ok and result.output["code"] == 7
    assert "1500" in result.output["msg"] and "1400" in result.output["msg"], result.output
    assert reservations(data_dir, NETWORK) == []
    assert links(sandbox, c1, "macvlan") == [] and host_macvlans(sandbox, host_ns) == []
    assert mv.call("ADD", c1, "c1").ok  # and the network still works


def test_missing_master_is_invalid_config(mv, sandbox, host_ns, data_dir):
    c1 = sandbox.netns("c1")
    result = mv.call("ADD", c1, "c1", config={**mv.config, "master": "pntnope0"})
    assert not result.ok and result.output["code"] == 7
    assert "pntnope0" in result.output["msg"] and "does not exist" in result.output["msg"], result.output
    assert reservations(data_dir, NETWORK) == [] and links(sandbox, c1, "macvlan") == []
    # No master at all and no default route in the host namespace to pick one from.
    no_master = {k: v for k, v in mv.config.items() if k != "master"}
    result = mv.call("ADD", c1, "c1", config=no_master)
    assert not result.ok and result.output["code"] == 7
    assert "master" in result.output["msg"], result.output
    assert reservations(data_dir, NETWORK) == [] and links(sandbox, c1, "macvlan") == []


def test_without_master_the_default_route_uplink_is_used(mv, sandbox, host_ns):
    sandbox.exec(host_ns, ["ip", "addr", "add", "192.0.2.1/24", "dev", MASTER])
    sandbox.exec(host_ns, ["ip", "route", "add", "default", "via", "192.0.2.254", "dev", MASTER])
    c1 = sandbox.netns("c1")
    mv.add(c1, "c1", config={k: v for k, v in mv.config.items() if k != "master"})
    shown = eth0(mv, c1)
    assert shown["linkinfo"]["info_kind"] == "macvlan" and shown["mtu"] == 1400


def test_port_mappings_are_refused(mv, sandbox, data_dir):
    c1 = sandbox.netns("c1")
    ports = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    result = mv.call("ADD", c1, "c1", config={**mv.config, "runtimeConfig": ports})
    assert not result.ok and result.output["code"] == 7
    assert "port mapping" in result.output["msg"] and "macvlan" in result.output["msg"], result.output
    assert reservations(data_dir, NETWORK) == [] and links(sandbox, c1, "macvlan") == []
    # the runtime's cleanup DEL, with the same config, succeeds
    assert mv.call("DEL", c1, "c1", config={**mv.config, "runtimeConfig": ports}).ok


def test_del_removes_frees_and_is_idempotent(mv, sandbox, host_ns, data_dir):
    c1 = sandbox.netns("c1")
    result = mv.add(c1, "c1")
    assert len(reservations(data_dir, NETWORK)) == 1
    assert mv.call("CHECK", c1, "c1", config={**mv.config, "prevResult": result}).ok
    mv.delete(c1, "c1")
    assert reservations(data_dir, NETWORK) == []
    assert links(sandbox, c1, "macvlan") == []
    assert sorted(links(sandbox, host_ns)) == [MASTER, "pntmv1"]  # the master is untouched
    mv.delete(c1, "c1")  # again
    # The freed address can be handed out again.
    assert mv.call("ADD", c1, "c2", config=mv.config).ok


def test_del_after_the_namespace_is_gone(mv, sandbox, host_ns, data_dir):
    c1 = sandbox.netns("c1")
    mv.add(c1, "c1")
    sandbox.delete_netns(c1)  # takes the macvlan with it
    mv.delete(c1, "c1")
    assert reservations(data_dir, NETWORK) == []
    mv.delete(c1, "c1")
    assert mv.call("DEL", None, "c1", netns_path="").ok
    assert sorted(links(sandbox, host_ns)) == [MASTER, "pntmv1"]
