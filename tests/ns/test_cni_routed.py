"""The `podnet` executable in routed mode (attach/routed.py, Calico's model): every pod
a /32 behind its own host veth with a link-local gateway, driven as a runtime drives
it, with and without an agent."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cniharness import Cni, bridge_config, gso_of, links, reservations, start_echo, tcp_probe

pytestmark = pytest.mark.root


@pytest.fixture
def routed(cni: Cni, sandbox, host_ns) -> Cni:
    """The `cni` fixture's network in routed mode; the host forwards (it is the pods' router)."""
    sandbox.exec(host_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    config = bridge_config("t-net", cni.config["ipam"]["dataDir"], mode="routed",
                           agentSocket=cni.config.get("agentSocket"))
    return Cni(cni.bin_dir, host_ns, config, sandbox)


def test_add_gives_a_slash_32_behind_a_link_local_gateway(routed, sandbox, host_ns):
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    r1, r2 = routed.add(c1, "c1"), routed.add(c2, "c2")
    assert [i["name"] for i in r1["interfaces"]][1] == "eth0" and r1["interfaces"][1]["sandbox"].endswith(c1)
    ip1, ip2 = (ipaddress.ip_interface(r["ips"][0]["address"]) for r in (r1, r2))
    assert ip1.network.prefixlen == 32 and ip1.ip in ipaddress.ip_network("10.80.0.0/24") and ip1 != ip2
    assert r1["ips"][0]["gateway"] == "169.254.1.1" and r1["ips"][0]["interface"] == 1
    routes = routed.in_ns(c1, "ip", "route").stdout
    assert "default via 169.254.1.1 dev eth0" in routes and "169.254.1.1 dev eth0 scope link" in routes
    host_veth = r1["interfaces"][0]
    neigh = json.loads(routed.in_ns(c1, "ip", "-j", "neigh", "show", "169.254.1.1").stdout)
    assert neigh[0]["lladdr"] == host_veth["mac"] and "PERMANENT" in neigh[0]["state"]
    host_routes = routed.in_ns(host_ns, "ip", "route", "show", f"{ip1.ip}").stdout
    assert f"dev {host_veth['name']}" in host_routes
    proxy = routed.in_ns(host_ns, "cat", f"/proc/sys/net/ipv4/conf/{host_veth['name']}/proxy_arp").stdout
    assert proxy.strip() == "1"
    assert not routed.in_ns(host_ns, "ip", "-j", "link", "show", "type", "bridge").stdout.strip("[]\n")
    start_echo(sandbox, c2, 7000, "c2")
    assert tcp_probe(sandbox, c1, str(ip2.ip), 7000) == "hello from c2"  # pod to pod through the host's routes


def test_check_notices_a_deleted_host_route_and_del_frees_everything(routed, sandbox, host_ns, data_dir):
    c1 = sandbox.netns("c1")
    result = routed.add(c1, "c1")
    conf = {**routed.config, "prevResult": result}
    assert routed.call("CHECK", c1, "c1", config=conf).ok
    address = ipaddress.ip_interface(result["ips"][0]["address"]).ip
    routed.in_ns(host_ns, "ip", "route", "del", f"{address}/32")
    failed = routed.call("CHECK", c1, "c1", config=conf)
    assert not failed.ok and f"{address}/32" in failed.output["msg"]
    routed.delete(c1, "c1")
    assert reservations(data_dir, "t-net") == [] and links(sandbox, host_ns) == []
    assert str(address) not in routed.in_ns(host_ns, "ip", "route").stdout
    routed.delete(c1, "c1")  # idempotent


def test_port_mappings_work_in_routed_mode(routed, sandbox, host_ns):
    c1, client = sandbox.netns("c1"), sandbox.netns("client")
    config = {**routed.config, "capabilities": {"portMappings": True},
              "runtimeConfig": {"portMappings": [{"hostPort": 8081, "containerPort": 7000, "protocol": "tcp"}]}}
    result = routed.call("ADD", c1, "c1", config=config)
    assert result.ok, result.output
    start_echo(sandbox, c1, 7000, "c1")
    routed.in_ns(host_ns, "ip", "link", "add", "pntu0", "type", "veth", "peer", "name", "pntu1", "netns", client)
    routed.in_ns(host_ns, "ip", "addr", "add", "192.0.2.1/24", "dev", "pntu0")
    routed.in_ns(host_ns, "ip", "link", "set", "pntu0", "up")
    routed.in_ns(client, "ip", "addr", "add", "192.0.2.2/24", "dev", "pntu1")
    routed.in_ns(client, "ip", "link", "set", "pntu1", "up")
    assert tcp_probe(sandbox, client, "192.0.2.1", 8081) == "hello from c1"


def test_an_explicit_gso_limit_reaches_both_ends_of_the_pods_veth(routed, sandbox, host_ns):
    """The pod must take what the node's uplink delivers (BIG TCP on a NIC that does it):
    the conflist's gsoMaxSize, as a cluster node writes it, goes to both ends."""
    from podnet.kernel.gso import GsoLimits

    big = GsoLimits(196608, 196608)
    c1 = sandbox.netns("c1")
    config = {**routed.config, "gsoMaxSize": 196608}
    result = routed.call("ADD", c1, "c1", config=config)
    assert result.ok, result.output
    assert gso_of(c1, "eth0") == big and gso_of(host_ns, result.output["interfaces"][0]["name"]) == big
