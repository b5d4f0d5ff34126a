"""What each macvlan mode allows, on a real L2 segment: a "switch" namespace with a
bridge, a "node" whose uplink is a veth into it (the macvlan master), a "peer" machine
on the same bridge, and containers attached by podnet's CNI ADD in each mode.

  bridge    children reach each other inside the node, and the segment
  private   children never reach each other (not even with hairpin on the switch port)
  vepa      children reach each other only through a hairpin switch port
  passthru  one child takes the whole uplink; a second one is refused

And the classic limitation: the node cannot reach its own children through the uplink
(issue 15's host shim is the remedy). The VLAN tests show the clear error on a kernel
without 8021q."""

from __future__ import annotations

import gzip
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cni_macvlan import NETWORK, eth0, macvlan_config

from cniharness import Cni, links, reservations

pytestmark = pytest.mark.root

UPLINK = "pnup0"  # the node's uplink, the macvlan master
SWITCH_PORT = "swnode"  # the switch's port facing the node
NODE_IP, PEER_IP = "10.90.0.1", "10.90.0.254"
POOL = {"type": "podnet-ipam", "ranges": [[{"subnet": "10.90.0.0/24", "rangeStart": "10.90.0.10",
                                            "rangeEnd": "10.90.0.200"}]]}


@dataclass
class Segment:
    """The switch, node and peer namespaces, and a macvlan network on the node's uplink."""

    cni: Cni
    switch: str
    node: str
    peer: str

    def config(self, mode: str, **extra) -> dict:
        return {**self.cni.config, "mode": mode, **extra}

    def attach(self, name: str, mode: str) -> tuple[str, str]:
        """A container namespace with a `mode` macvlan child; (namespace, address)."""
        ns = self.cni.sandbox.netns(name)
        result = self.cni.add(ns, name, config=self.config(mode))
        shown = eth0(self.cni, ns)
        assert shown["linkinfo"]["info_data"]["mode"] == mode
        assert shown["address"] == result["interfaces"][0]["mac"]
        return ns, str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)

    def reaches(self, ns: str, ip: str) -> bool:
        """One ping round trip from namespace `ns` to `ip` (ARP included)."""
        return self.cni.in_ns(ns, "/bin/busybox", "ping", "-c", "1", "-W", "2", ip, check=False).returncode == 0

    def hairpin(self, on: bool) -> None:
        """Reflect frames back out of the node's switch port (what a VEPA switch does)."""
        self.cni.in_ns(self.switch, "bridge", "link", "set", "dev", SWITCH_PORT, "hairpin", "on" if on else "off")
        shown = self.cni.in_ns(self.switch, "bridge", "-d", "link", "show", "dev", SWITCH_PORT).stdout
        assert ("hairpin on" in shown) == on, shown


def _veth_into_switch(sandbox, switch: str, port: str, ns: str, ifname: str, address: str) -> None:
    sandbox.exec(switch, ["ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns])
    sandbox.exec(switch, ["ip", "link", "set", port, "master", "br0", "up"])
    sandbox.exec(ns, ["ip", "addr", "add", f"{address}/24", "dev", ifname])
    sandbox.exec(ns, ["ip", "link", "set", ifname, "up"])


@pytest.fixture
def segment(sandbox, host_ns, cni_bin, data_dir, socket_path) -> Segment:
    """host_ns plays the node; the plugin runs there, in-process (no agent: the
    agent path of the macvlan attacher is covered by test_cni_macvlan)."""
    switch, peer = sandbox.netns("switch"), sandbox.netns("peer")
    sandbox.exec(switch, ["ip", "link", "add", "br0", "type", "bridge"])
    sandbox.exec(switch, ["ip", "link", "set", "br0", "up"])
    _veth_into_switch(sandbox, switch, SWITCH_PORT, host_ns, UPLINK, NODE_IP)
    _veth_into_switch(sandbox, switch, "swpeer", peer, "eth0", PEER_IP)
    config = {**macvlan_config(data_dir, socket_path, "reference"), "master": UPLINK,
              "ipam": {**POOL, "dataDir": data_dir}}
    seg = Segment(Cni(cni_bin, host_ns, config, sandbox), switch, host_ns, peer)
    assert seg.reaches(peer, NODE_IP), "the segment itself does not work"
    return seg


def test_bridge_children_reach_each_other_and_the_peer(segment):
    c1, ip1 = segment.attach("c1", "bridge")
    c2, ip2 = segment.attach("c2", "bridge")
    assert segment.reaches(c1, ip2) and segment.reaches(c2, ip1)
    assert segment.reaches(c1, PEER_IP) and segment.reaches(segment.peer, ip2)
    # Switched inside the node: the switch never learnt c2's MAC from c1's traffic
    # coming back (without hairpin it could not have delivered it anyway).


def test_the_node_cannot_reach_its_own_children_through_the_uplink(segment):
    """The classic macvlan limitation: frames from the master's own stack leave on
    the wire and the switch does not send them back out of the same port, while the
    master never hands them to its children. Issue 15's host shim will fix this."""
    c1, ip1 = segment.attach("c1", "bridge")
    assert segment.reaches(segment.peer, ip1) and segment.reaches(c1, PEER_IP)  # the child is on the segment
    assert segment.reaches(segment.node, PEER_IP)  # and the node too
    assert not segment.reaches(segment.node, ip1)
    assert not segment.reaches(c1, NODE_IP)


def test_private_children_never_reach_each_other_even_with_hairpin(segment):
    c1, ip1 = segment.attach("c1", "private")
    c2, ip2 = segment.attach("c2", "private")
    assert not segment.reaches(c1, ip2) and not segment.reaches(c2, ip1)
    segment.hairpin(True)
    assert not segment.reaches(c1, ip2) and not segment.reaches(c2, ip1)
    assert segment.reaches(c1, PEER_IP) and segment.reaches(segment.peer, ip2)


def test_vepa_children_reach_each_other_only_through_a_hairpin_switch_port(segment):
    c1, ip1 = segment.attach("c1", "vepa")
    c2, ip2 = segment.attach("c2", "vepa")
    assert not segment.reaches(c1, ip2) and not segment.reaches(c2, ip1)
    assert segment.reaches(c1, PEER_IP) and segment.reaches(segment.peer, ip2)
    segment.hairpin(True)
    assert segment.reaches(c1, ip2) and segment.reaches(c2, ip1)
    assert segment.reaches(c1, PEER_IP) and segment.reaches(segment.peer, ip2)
    segment.hairpin(False)
    for ns in (c1, c2):  # forget the neighbours learnt through the hairpin
        segment.cni.in_ns(ns, "ip", "neigh", "flush", "dev", "eth0")
    assert not segment.reaches(c1, ip2)


def test_passthru_takes_the_whole_uplink_and_a_second_child_is_refused(segment, data_dir):
    c1, ip1 = segment.attach("c1", "passthru")
    uplink = json.loads(segment.cni.in_ns(segment.node, "ip", "-j", "link", "show", UPLINK).stdout)[0]
    assert eth0(segment.cni, c1)["address"] == uplink["address"]  # the kernel's choice, reported by ADD
    assert segment.reaches(c1, PEER_IP) and segment.reaches(segment.peer, ip1)
    c2 = segment.cni.sandbox.netns("c2")
    for mode in ("passthru", "bridge"):
        refused = segment.cni.call("ADD", c2, "c2", config=segment.config(mode))
        assert not refused.ok and refused.error_code == 102, refused.output
        msg = refused.output["msg"]
        assert "passthru" in msg and UPLINK in msg and f"({mode} mode)" in msg, msg
    assert [r.address for r in reservations(data_dir, NETWORK)] == [ip1]  # c2's address was given back
    assert links(segment.cni.sandbox, c2, "macvlan") == []
    segment.cni.delete(c1, "c1")  # and the uplink is free again
    c3, ip3 = segment.attach("c3", "bridge")
    assert segment.reaches(c3, PEER_IP)


def _kernel_vlan_config() -> str | None:
    """CONFIG_VLAN_8021Q from /proc/config.gz ("y", "m"), None when unset or unknown."""
    config = Path("/proc/config.gz")
    if not config.exists():
        return None
    for line in gzip.decompress(config.read_bytes()).decode().splitlines():
        if line.startswith("CONFIG_VLAN_8021Q="):
            return line.split("=", 1)[1]
    return None


def test_vlan_without_8021q_is_a_clear_error_and_leaves_nothing(segment, data_dir):
    if not Path("/proc/config.gz").exists():
        pytest.skip("no /proc/config.gz: cannot tell whether this kernel has 8021q")
    if _kernel_vlan_config() in ("y", "m"):
        pytest.skip("this kernel has 8021q (CONFIG_VLAN_8021Q is set): the missing-module error cannot happen")
    c1 = segment.cni.sandbox.netns("c1")
    refused = segment.cni.call("ADD", c1, "c1", config=segment.config("bridge", vlan=100))
    assert not refused.ok and refused.error_code == 102, refused.output
    msg = refused.output["msg"]
    assert "VLAN sub-interfaces need the 8021q module, which this kernel does not have" in msg, msg
    assert f"{UPLINK}.100" in msg and "VLAN 100" in msg and f"parent {UPLINK}" in msg, msg
    assert reservations(data_dir, NETWORK) == []
    assert links(segment.cni.sandbox, c1, "macvlan") == []
    assert f"{UPLINK}.100" not in segment.cni.in_ns(segment.node, "ip", "-br", "link").stdout
    c1_ok, _ = segment.attach("c2", "bridge")  # the same network without `vlan` works
    assert links(segment.cni.sandbox, c1_ok, "macvlan") == ["eth0"]
