"""The `podnet` executable in bridge mode, driven as a runtime drives it, with and
without an agent (the `cni` fixture runs every test both ways)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from cniharness import gso_of, links, nft_rules, reservations, start_echo, tcp_probe

pytestmark = pytest.mark.root


def test_add_gives_a_working_interface(cni, sandbox):
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    r1 = cni.add(c1, "c1")
    r2 = cni.add(c2, "c2")
    assert r1["cniVersion"] == "1.1.0"
    names = [i["name"] for i in r1["interfaces"]]
    assert names[0] == "pntbr0" and names[2] == "eth0" and r1["interfaces"][2]["sandbox"].endswith(c1)
    ip1 = ipaddress.ip_interface(r1["ips"][0]["address"])
    ip2 = ipaddress.ip_interface(r2["ips"][0]["address"])
    assert r1["ips"][0]["interface"] == 2 and r1["ips"][0]["gateway"] == "10.80.0.1"
    assert ip1 in ipaddress.ip_network("10.80.0.0/24") and ip1 != ip2
    shown = json.loads(cni.in_ns(c1, "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert f"{ip1.ip}" in [a["local"] for a in shown["addr_info"]]
    assert "default via 10.80.0.1" in cni.in_ns(c1, "ip", "route").stdout
    start_echo(sandbox, c2, 7000, "c2")
    assert tcp_probe(sandbox, c1, str(ip2.ip), 7000) == "hello from c2"


def test_del_frees_everything_and_is_idempotent(cni, sandbox, host_ns, data_dir):
    c1 = sandbox.netns("c1")
    cni.add(c1, "c1")
    assert len(reservations(data_dir, "t-net")) == 1
    assert len(links(sandbox, host_ns)) == 1
    cni.delete(c1, "c1")
    assert reservations(data_dir, "t-net") == []
    assert links(sandbox, host_ns) == []
    cni.delete(c1, "c1")  # again: still success
    sandbox.delete_netns(c1)
    cni.delete(c1, "c1")  # namespace gone: still success
    assert cni.call("DEL", None, "c1", netns_path="").ok  # empty CNI_NETNS
    assert cni.call("DEL", None, "never-added").ok


def test_del_after_namespace_vanished_releases(cni, sandbox, host_ns, data_dir):
    c1 = sandbox.netns("c1")
    cni.add(c1, "c1")
    sandbox.delete_netns(c1)  # the runtime lost the container
    cni.delete(c1, "c1")
    assert reservations(data_dir, "t-net") == [] and links(sandbox, host_ns) == []


def test_check(cni, sandbox):
    c1 = sandbox.netns("c1")
    result = cni.add(c1, "c1")
    conf = {**cni.config, "prevResult": result}
    assert cni.call("CHECK", c1, "c1", config=conf).ok
    address = result["ips"][0]["address"]
    cni.in_ns(c1, "ip", "addr", "del", address, "dev", "eth0")
    failed = cni.call("CHECK", c1, "c1", config=conf)
    assert not failed.ok and address in failed.output["msg"]


def test_check_names_a_host_veth_taken_off_the_bridge(cni, sandbox, host_ns):
    c1 = sandbox.netns("c1")
    result = cni.add(c1, "c1")
    conf = {**cni.config, "prevResult": result}
    (veth,) = links(sandbox, host_ns)
    sandbox.exec(host_ns, ["ip", "link", "set", veth, "nomaster"])
    failed = cni.call("CHECK", c1, "c1", config=conf)
    assert not failed.ok and f"{veth} is not attached to bridge" in failed.output["msg"], failed.output
    cni.delete(c1, "c1")


def test_add_into_missing_netns_is_code_3_and_leaves_nothing(cni, sandbox, host_ns, data_dir):
    result = cni.call("ADD", None, "c1", netns_path="/run/netns/pn-t-does-not-exist")
    assert not result.ok and result.output["code"] == 3
    assert reservations(data_dir, "t-net") == [] and links(sandbox, host_ns) == []


def test_failed_add_rolls_back(cni, sandbox, host_ns, data_dir):
    """A failure after the address and veth exist (the bridge name is taken by a veth)
    undoes both."""
    sandbox.exec(host_ns, ["ip", "link", "add", "pntbusy0", "type", "veth", "peer", "name", "pntbusy1"])
    c1 = sandbox.netns("c1")
    result = cni.call("ADD", c1, "c1", config={**cni.config, "bridge": "pntbusy0"})
    assert not result.ok and "not a bridge" in result.output["msg"] or "veth" in result.output["msg"]
    assert reservations(data_dir, "t-net") == []
    assert sorted(links(sandbox, host_ns)) == ["pntbusy0", "pntbusy1"]
    assert links(sandbox, c1) == []


def test_gc_removes_exactly_the_invalid_attachments(cni, sandbox, host_ns, data_dir):
    ports = {"portMappings": [{"hostPort": 9001, "containerPort": 80, "protocol": "tcp"}]}
    namespaces = {cid: sandbox.netns(cid) for cid in ("g1", "g2", "g3")}
    for cid, ns in namespaces.items():
        conf = {**cni.config, "runtimeConfig": ports} if cid == "g2" else cni.config
        cni.add(ns, cid, config=conf)
    assert "dport 9001" in nft_rules(sandbox, host_ns)
    gc_conf = {**cni.config, "cni.dev/valid-attachments": [{"containerID": "g1", "ifname": "eth0"}]}
    assert cni.call("GC", config=gc_conf).ok
    held = reservations(data_dir, "t-net")
    assert [(r.container_id, r.ifname) for r in held] == [("g1", "eth0")]
    assert len(links(sandbox, host_ns)) == 1
    assert "dport 9001" not in nft_rules(sandbox, host_ns)
    assert links(sandbox, namespaces["g1"]) == ["eth0"]


def test_status(cni, sandbox, data_dir):
    assert cni.call("STATUS").ok
    tiny = {**cni.config, "ipam": {**cni.config["ipam"], "ranges": [[{"subnet": "10.81.0.0/30"}]]}}
    c1 = sandbox.netns("c1")
    cni.add(c1, "c1", config=tiny)  # the only free address of a /30 (gateway takes .1)
    status = cni.call("STATUS", config=tiny)
    assert not status.ok and status.output["code"] == 50
    exhausted = cni.call("ADD", sandbox.netns("c2"), "c2", config=tiny)
    assert not exhausted.ok and exhausted.output["code"] == 100


def test_published_port_and_its_removal(cni, sandbox, host_ns):
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    ports = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    cni.add(c1, "c1", config={**cni.config, "runtimeConfig": ports})
    cni.add(c2, "c2")
    start_echo(sandbox, c1, 80, "web")
    assert tcp_probe(sandbox, host_ns, "127.0.0.1", 8080) == "hello from web"
    assert tcp_probe(sandbox, host_ns, "10.80.0.1", 8080) == "hello from web"
    assert tcp_probe(sandbox, c2, "10.80.0.1", 8080) == "hello from web"  # from another container
    assert tcp_probe(sandbox, c1, "10.80.0.1", 8080) == "hello from web"  # hairpin
    clash = cni.call("ADD", sandbox.netns("c3"), "c3", config={**cni.config, "runtimeConfig": ports})
    assert not clash.ok and "8080" in clash.output["msg"]
    cni.delete(c1, "c1", config={**cni.config, "runtimeConfig": ports})
    assert "podnet:" not in nft_rules(sandbox, host_ns)
    assert tcp_probe(sandbox, host_ns, "127.0.0.1", 8080, timeout=1) is None


def test_mtu_is_detected_from_the_uplink(cni, sandbox, host_ns):
    sandbox.exec(host_ns, ["ip", "link", "add", "pntup0", "mtu", "1450", "type", "veth", "peer", "name", "pntup1"])
    sandbox.exec(host_ns, ["ip", "addr", "add", "192.0.2.1/24", "dev", "pntup0"])
    sandbox.exec(host_ns, ["ip", "link", "set", "pntup0", "up"])
    sandbox.exec(host_ns, ["ip", "link", "set", "pntup1", "up"])
    sandbox.exec(host_ns, ["ip", "route", "add", "default", "via", "192.0.2.254", "dev", "pntup0"])
    c1 = sandbox.netns("c1")
    cni.add(c1, "c1")
    shown = json.loads(cni.in_ns(c1, "ip", "-j", "link", "show", "eth0").stdout)[0]
    assert shown["mtu"] == 1450
    c2 = sandbox.netns("c2")
    cni.add(c2, "c2", config={**cni.config, "mtu": 1300})  # an explicit mtu wins
    assert json.loads(cni.in_ns(c2, "ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1300


BULK_SINK = (  # counts the bytes of one connection and sends the count back
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',int(sys.argv[1]))); s.listen(1); print('ready',flush=True)\n"
    "c,_=s.accept(); n=0\n"
    "while True:\n"
    "    d=c.recv(1<<20)\n"
    "    if d==b'DONE' or d.endswith(b'DONE'): n+=len(d)-4; break\n"
    "    n+=len(d)\n"
    "c.sendall(str(n).encode()); c.close()\n"
)
BULK_SEND = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=10); left=int(sys.argv[3])\n"
    "chunk=b'x'*(1<<20)\n"
    "while left>0:\n"
    "    c.sendall(chunk[:left]); left-=len(chunk)\n"
    "c.sendall(b'DONE'); print(c.recv(100).decode())\n"
)


def test_gso_limits_follow_the_uplink(cni, sandbox, host_ns):
    """BIG TCP: with a 192 KiB uplink the bridge and both veth ends get 192 KiB (v4 and
    v6); an explicit gsoMaxSize wins; big packets really flow between two pods."""
    from podnet.kernel.gso import LEGACY, GsoLimits
    from podnet.lab.underlay import NIC_GSO, set_nic_gso

    sandbox.exec(host_ns, ["ip", "link", "add", "pntup0", "type", "veth", "peer", "name", "pntup1"])
    set_nic_gso(host_ns, "pntup0", NIC_GSO)
    sandbox.exec(host_ns, ["ip", "addr", "add", "192.0.2.1/24", "dev", "pntup0"])
    sandbox.exec(host_ns, ["ip", "link", "set", "pntup0", "up"])
    sandbox.exec(host_ns, ["ip", "route", "add", "default", "via", "192.0.2.254", "dev", "pntup0"])
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    r1, r2 = cni.add(c1, "c1"), cni.add(c2, "c2")
    big = GsoLimits(NIC_GSO, NIC_GSO)
    assert gso_of(c1, "eth0") == big and gso_of(c2, "eth0") == big
    assert gso_of(host_ns, "pntbr0") == big
    assert gso_of(host_ns, r1["interfaces"][1]["name"]) == big
    ip2 = r2["ips"][0]["address"].split("/")[0]
    sink = sandbox.spawn(c2, [sys.executable, "-c", BULK_SINK, "7002"], stdout=subprocess.PIPE)
    assert sink.stdout is not None and b"ready" in sink.stdout.readline()
    sent = sandbox.exec(c1, [sys.executable, "-c", BULK_SEND, ip2, "7002", str(64 << 20)])
    assert sent.stdout.strip() == str(64 << 20)  # 64 MiB in big GSO packets, all arrived
    c3 = sandbox.netns("c3")
    cni.add(c3, "c3", config={**cni.config, "gsoMaxSize": LEGACY})  # explicit wins
    assert gso_of(c3, "eth0") == GsoLimits(LEGACY, LEGACY)


def test_dual_stack(cni, sandbox):
    conf = {**cni.config, "ipam": {**cni.config["ipam"], "ranges": [
        [{"subnet": "10.82.0.0/24"}], [{"subnet": "fd00:82::/64"}]]}}
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    r1 = cni.add(c1, "c1", config=conf)
    r2 = cni.add(c2, "c2", config=conf)
    assert [ipaddress.ip_interface(i["address"]).version for i in r1["ips"]] == [4, 6]
    v6 = ipaddress.ip_interface(r2["ips"][1]["address"]).ip
    start_echo(sandbox, c2, 7001, "c2v6", bind="::")
    assert tcp_probe(sandbox, c1, str(v6), 7001) == "hello from c2v6"
