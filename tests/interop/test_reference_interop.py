"""Interop with the reference plugins (containernetworking-plugins 1.1.1 in
/usr/lib/cni, CNI versions up to 1.0.0), in both directions:

- the reference `bridge` delegating its IPAM to `podnet-ipam`;
- `podnet` delegating its IPAM to the reference `host-local`;
- conflists where reference plugins consume the result `podnet` emits:
  podnet -> bandwidth -> tuning, and podnet -> portmap.

Everything runs inside the test's namespaces (the runtime side runs the plugins in
`host_ns` via `ip netns exec`).
"""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from cniharness import (
    REFERENCE_DIR,
    Agent,
    Cni,
    links,
    nft_rules,
    reservations,
    start_echo,
    tcp_probe,
)
from podnet.lab.sandbox import Sandbox
from podnet.runtime.libcni import Conflist

pytestmark = pytest.mark.root

VERSION = "1.0.0"  # the newest the reference plugins 1.1.1 speak


@pytest.fixture(autouse=True)
def _reference_plugins():
    for plugin in ("bridge", "host-local", "bandwidth", "tuning", "portmap"):
        if not os.access(os.path.join(REFERENCE_DIR, plugin), os.X_OK):
            pytest.skip(f"reference plugin {plugin} is not installed in {REFERENCE_DIR}")


@pytest.fixture(params=["agent", "in-process"])
def served(request, sandbox, host_ns, socket_path, tmp_path) -> str:
    """podnet served by an agent in host_ns, or by the plugin's in-process fallback."""
    if request.param == "agent":
        Agent(sandbox, host_ns, socket_path, str(tmp_path / "agent.db")).start()
    return request.param


def addresses_in(cni: Cni, ns: str, ifname: str = "eth0") -> set[str]:
    shown = json.loads(cni.in_ns(ns, "ip", "-j", "addr", "show", ifname).stdout)[0]
    return {a["local"] for a in shown["addr_info"]}


# -- reference bridge + podnet-ipam ------------------------------------------------------


def ref_bridge_config(data_dir: str, ranges: list) -> dict:
    return {
        "cniVersion": VERSION,
        "name": "t-ref",
        "type": "bridge",
        "bridge": "pntrbr0",
        "isGateway": True,
        "ipam": {"type": "podnet-ipam", "ranges": ranges, "dataDir": data_dir},
    }


def test_reference_bridge_with_podnet_ipam(sandbox, host_ns, cni_bin, data_dir):
    cni = Cni(cni_bin, host_ns, ref_bridge_config(data_dir, [[{"subnet": "10.86.0.0/24"}]]), sandbox)
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    r1, r2 = cni.add(c1, "c1"), cni.add(c2, "c2")
    assert r1["cniVersion"] == VERSION
    ip1 = ipaddress.ip_interface(r1["ips"][0]["address"])
    ip2 = ipaddress.ip_interface(r2["ips"][0]["address"])
    assert ip1 != ip2 and ip1.network == ipaddress.ip_network("10.86.0.0/24")
    assert r1["ips"][0]["gateway"] == "10.86.0.1"
    held = {(r.container_id, r.ifname, r.address, r.state) for r in reservations(data_dir, "t-ref")}
    assert held == {("c1", "eth0", str(ip1.ip), "ready"), ("c2", "eth0", str(ip2.ip), "ready")}
    assert str(ip1.ip) in addresses_in(cni, c1)
    assert len(links(sandbox, host_ns)) == 2  # the reference bridge's host veths
    start_echo(sandbox, c2, 7000, "c2")
    assert tcp_probe(sandbox, c1, str(ip2.ip), 7000) == "hello from c2"
    # CHECK goes through the reference bridge to podnet-ipam's CHECK
    assert cni.call("CHECK", c1, "c1", config={**cni.config, "prevResult": r1}).ok

    cni.delete(c1, "c1")
    assert [(r.container_id, r.address) for r in reservations(data_dir, "t-ref")] == [("c2", str(ip2.ip))]
    cni.delete(c1, "c1")  # twice: still success
    cni.delete(c2, "c2")
    assert reservations(data_dir, "t-ref") == [] and links(sandbox, host_ns) == []
    # a fresh ADD after release works (round robin: not the address just freed)
    r3 = cni.add(c1, "c3")
    assert ipaddress.ip_interface(r3["ips"][0]["address"]).ip not in (ip1.ip, ip2.ip)


def test_reference_bridge_with_podnet_ipam_dual_stack(sandbox, host_ns, cni_bin, data_dir):
    ranges = [[{"subnet": "10.87.0.0/24"}], [{"subnet": "fd00:87::/64"}]]
    cni = Cni(cni_bin, host_ns, ref_bridge_config(data_dir, ranges), sandbox)
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    r1, r2 = cni.add(c1, "c1"), cni.add(c2, "c2")
    for result in (r1, r2):
        assert [ipaddress.ip_interface(i["address"]).version for i in result["ips"]] == [4, 6]
    v6_1 = ipaddress.ip_interface(r1["ips"][1]["address"]).ip
    v6_2 = ipaddress.ip_interface(r2["ips"][1]["address"]).ip
    assert v6_1 != v6_2 and r1["ips"][1]["gateway"] == "fd00:87::1"
    assert str(v6_1) in addresses_in(cni, c1)
    assert len(reservations(data_dir, "t-ref")) == 4
    start_echo(sandbox, c2, 7001, "c2v6", bind="::")
    assert tcp_probe(sandbox, c1, str(v6_2), 7001) == "hello from c2v6"
    v4_2 = ipaddress.ip_interface(r2["ips"][0]["address"]).ip
    assert tcp_probe(sandbox, c1, str(v4_2), 7001) == "hello from c2v6"
    cni.delete(c1, "c1")
    cni.delete(c2, "c2")
    assert reservations(data_dir, "t-ref") == [] and links(sandbox, host_ns) == []


# -- podnet + reference host-local ------------------------------------------------------


def host_local_config(data_dir: str, socket_path: str, **extra) -> dict:
    return {
        "cniVersion": VERSION,
        "name": "t-hl",
        "type": "podnet",
        "bridge": "pntbr0",
        "isDefaultGateway": True,
        "agentSocket": socket_path,
        "ipam": {"type": "host-local", "subnet": "10.88.0.0/24", "dataDir": f"{data_dir}/hl"},
        **extra,
    }


def host_local_ips(data_dir: str) -> list[str]:
    """The addresses host-local holds: one file named after each in <dataDir>/<network>."""
    directory = f"{data_dir}/hl/t-hl"
    if not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        try:
            out.append(str(ipaddress.ip_address(name)))
        except ValueError:
            continue  # `lock`, `last_reserved_ip.0`
    return sorted(out)


def test_podnet_with_host_local(served, sandbox, host_ns, cni_bin, data_dir, socket_path):
    cni = Cni(cni_bin, host_ns, host_local_config(data_dir, socket_path), sandbox)
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    r1, r2 = cni.add(c1, "c1"), cni.add(c2, "c2")
    ip1 = ipaddress.ip_interface(r1["ips"][0]["address"])
    ip2 = ipaddress.ip_interface(r2["ips"][0]["address"])
    assert ip1.network == ipaddress.ip_network("10.88.0.0/24") and ip1 != ip2
    assert r1["ips"][0]["interface"] == 2 and r1["ips"][0]["gateway"] == "10.88.0.1"
    assert host_local_ips(data_dir) == sorted([str(ip1.ip), str(ip2.ip)])
    with open(f"{data_dir}/hl/t-hl/{ip1.ip}") as f:
        assert f.read().splitlines()[0] == "c1"  # host-local records the owner
    assert str(ip1.ip) in addresses_in(cni, c1)
    assert "default via 10.88.0.1" in cni.in_ns(c1, "ip", "route").stdout
    start_echo(sandbox, c2, 7002, "c2")
    assert tcp_probe(sandbox, c1, str(ip2.ip), 7002) == "hello from c2"
    assert cni.call("CHECK", c1, "c1", config={**cni.config, "prevResult": r1}).ok  # delegated CHECK

    cni.delete(c1, "c1")
    assert host_local_ips(data_dir) == [str(ip2.ip)]
    assert len(links(sandbox, host_ns)) == 1
    cni.delete(c1, "c1")  # twice
    sandbox.delete_netns(c2)
    cni.delete(c2, "c2")  # namespace gone: host-local still releases
    assert host_local_ips(data_dir) == [] and links(sandbox, host_ns) == []


def test_failed_podnet_add_releases_the_host_local_address(served, sandbox, host_ns, cni_bin, data_dir, socket_path):
    """The bridge name is taken by a veth: podnet fails after host-local allocated,
    and its rollback runs host-local's DEL."""
    sandbox.exec(host_ns, ["ip", "link", "add", "pntbusy0", "type", "veth", "peer", "name", "pntbusy1"])
    cni = Cni(cni_bin, host_ns, host_local_config(data_dir, socket_path, bridge="pntbusy0"), sandbox)
    c1 = sandbox.netns("c1")
    result = cni.call("ADD", c1, "c1")
    assert not result.ok, result.output
    assert os.path.isdir(f"{data_dir}/hl/t-hl"), "host-local never ran: the test proves nothing"
    assert host_local_ips(data_dir) == []
    assert sorted(links(sandbox, host_ns)) == ["pntbusy0", "pntbusy1"] and links(sandbox, c1) == []
    # the same network works once the name is free
    sandbox.exec(host_ns, ["ip", "link", "del", "pntbusy0"])
    assert cni.call("ADD", c1, "c1").ok
    assert len(host_local_ips(data_dir)) == 1


# -- conflists: reference plugins after podnet -------------------------------------------


def podnet_plugin(data_dir: str, socket_path: str, subnet: str, bridge: str) -> dict:
    return {
        "type": "podnet",
        "bridge": bridge,
        "isDefaultGateway": True,
        "agentSocket": socket_path,
        "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir},
    }


def host_veths(sandbox: Sandbox, ns: str) -> list[str]:
    return [name for name in links(sandbox, ns) if name.startswith("pn")]


def test_conflist_podnet_bandwidth_tuning(served, sandbox, host_ns, cni_bin, data_dir, socket_path, tmp_path):
    mac = "c2:0e:aa:bb:cc:01"
    conflist = Conflist(
        {
            "cniVersion": VERSION,
            "name": "t-chain",
            "plugins": [
                podnet_plugin(data_dir, socket_path, "10.89.0.0/24", "pntbr1"),
                {"type": "bandwidth", "capabilities": {"bandwidth": True}},
                {
                    "type": "tuning",
                    "mac": mac,
                    "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"},
                    "dataDir": str(tmp_path / "tuning"),
                },
            ],
        },
        cni_path=[cni_bin, REFERENCE_DIR],
        netns_exec=host_ns,
    )
    bandwidth = {"ingressRate": 8_000_000, "ingressBurst": 800_000, "egressRate": 4_000_000, "egressBurst": 400_000}
    runtime = {"bandwidth": bandwidth}
    c1 = sandbox.netns("c1")
    netns = Sandbox.path(c1)
    result = conflist.add("c1", netns, runtime_config=runtime)

    # podnet's result survived the chain, updated by tuning
    assert result["cniVersion"] == VERSION
    ip1 = ipaddress.ip_interface(result["ips"][0]["address"])
    assert ip1.network == ipaddress.ip_network("10.89.0.0/24")
    container_if = result["interfaces"][result["ips"][0]["interface"]]
    assert container_if["name"] == "eth0" and container_if["mac"] == mac

    # bandwidth: ingress tbf on podnet's host veth, egress via an ifb with tbf
    [veth] = host_veths(sandbox, host_ns)
    qdiscs = sandbox.exec(host_ns, ["tc", "qdisc", "show", "dev", veth]).stdout
    assert "tbf" in qdiscs and "ingress" in qdiscs, qdiscs
    ifbs = links(sandbox, host_ns, "ifb")
    assert len(ifbs) == 1
    assert "tbf" in sandbox.exec(host_ns, ["tc", "qdisc", "show", "dev", ifbs[0]]).stdout

    # tuning: inside the container
    shown = json.loads(sandbox.exec(c1, ["ip", "-j", "link", "show", "eth0"]).stdout)[0]
    assert shown["address"] == mac
    assert sandbox.exec(c1, ["cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"]).stdout.strip() == "2"
    assert str(ip1.ip) in {a["local"] for a in json.loads(
        sandbox.exec(c1, ["ip", "-j", "addr", "show", "eth0"]).stdout)[0]["addr_info"]}

    # the container still reaches the host through the shaped path
    start_echo(sandbox, c1, 7003, "shaped")
    assert tcp_probe(sandbox, host_ns, str(ip1.ip), 7003) == "hello from shaped"

    conflist.check("c1", netns, result, runtime_config=runtime)

    conflist.delete("c1", netns, prev=result, runtime_config=runtime)
    assert links(sandbox, host_ns) == [] and links(sandbox, host_ns, "ifb") == []
    assert links(sandbox, c1) == []
    assert reservations(data_dir, "t-chain") == []
    assert "podnet:" not in nft_rules(sandbox, host_ns)
    conflist.delete("c1", netns, prev=result, runtime_config=runtime)  # twice: still success


def test_conflist_podnet_then_reference_portmap(served, sandbox, host_ns, cni_bin, data_dir, socket_path):
    """podnet does not declare portMappings, portmap does: portmap must find the
    container's address in the prevResult podnet emits."""
    conflist = Conflist(
        {
            "cniVersion": VERSION,
            "name": "t-pm",
            "plugins": [
                podnet_plugin(data_dir, socket_path, "10.91.0.0/24", "pntbr2"),
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            ],
        },
        cni_path=[cni_bin, REFERENCE_DIR],
        netns_exec=host_ns,
    )
    runtime = {"portMappings": [{"hostPort": 8090, "containerPort": 80, "protocol": "tcp"}]}
    c1 = sandbox.netns("c1")
    netns = Sandbox.path(c1)
    result = conflist.add("c1", netns, runtime_config=runtime)
    ip1 = ipaddress.ip_interface(result["ips"][0]["address"])
    gateway = result["ips"][0]["gateway"]
    assert gateway == "10.91.0.1"
    rules = nft_rules(sandbox, host_ns)
    assert "podnet:" not in rules  # podnet got no portMappings: portmap did the NAT
    assert "8090" in rules and str(ip1.ip) in rules, rules

    start_echo(sandbox, c1, 80, "web")
    assert tcp_probe(sandbox, host_ns, gateway, 8090) == "hello from web"

    conflist.delete("c1", netns, prev=result, runtime_config=runtime)
    assert tcp_probe(sandbox, host_ns, gateway, 8090, timeout=1) is None
    rules = nft_rules(sandbox, host_ns)
    assert "8090" not in rules and str(ip1.ip) not in rules and "podnet:" not in rules
    assert links(sandbox, host_ns) == [] and reservations(data_dir, "t-pm") == []
