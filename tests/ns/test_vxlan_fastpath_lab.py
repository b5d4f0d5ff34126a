"""The eBPF fast path (`lab up --fastpath ebpf`, fabric/fastpath.py) in a real lab:
the netpol topology (3 nodes, namespaces x, y, z with pods a, b, c) over vxlan, then
over host-gw, every agent started with `--fastpath ebpf`.

What must hold: the program sits on every pod veth and carries pod-to-pod traffic
across nodes past the sending node's bridge (the bridge sees none of it), connectivity
is whole; on vxlan the tunnel is written and read in tc (no packet of it crosses
pnvx0), and a node on the kernel path still reads what the programs send; as soon as
any policy exists every node turns the fast path off and the policy is enforced
exactly as the reference semantics say (the full probe matrix); deleting the last
policy turns it on again; `lab status` says which path is in use; the tunnel's outer
packets are untracked; and closing a fast path leaves no filter.
The lab is `fp<hex>`, torn down by recorded names whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from test_fabric_cluster import eventually

from podnet.lab.sandbox import Sandbox
from podnet.rpc.client import call
from policyharness import CASES, Lab, mismatches, netpol_lab, tcp_from

pytestmark = pytest.mark.root

BURST = 300  # UDP datagrams a test sends across nodes

UDP_BURST = ("import socket,sys\n"
             "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(0.5); got=0\n"
             "for i in range(int(sys.argv[3])):\n"
             "    s.sendto(b'x',(sys.argv[1],int(sys.argv[2])))\n"
             "    try:\n"
             "        s.recv(100); got+=1\n"
             "    except OSError:\n"
             "        pass\n"
             "print(got)\n")


@pytest.fixture(scope="module", params=["vxlan", "host-gw"])
def lab(request) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with netpol_lab(request.param, "fp", fastpath="ebpf") as built:
        name = built.name
        yield built
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"pn-lab-{name}-" not in left  # teardown leaves nothing: the filters went with the namespaces


def fastpaths(lab: Lab) -> dict[str, dict]:
    return {name: call(node["socket"], "node.status")["fastpath"] for name, node in lab.data["nodes"].items()}


def pair(lab: Lab, namespace: str = "x") -> tuple[str, str]:
    """A pod of `namespace` on node0 and one on another node."""
    pods = lab.data["pods"]
    src = next(k for k, p in sorted(pods.items()) if p["node"] == "node0" and k.startswith(f"{namespace}/"))
    dst = next(k for k, p in sorted(pods.items()) if p["node"] != "node0" and k.startswith(f"{namespace}/"))
    return src, dst


def bridge_rx(lab: Lab, node: str) -> int:
    ns = lab.data["nodes"][node]["netns"]
    out = subprocess.run(["ip", "-n", ns, "-j", "-s", "link", "show", "pncl0"], capture_output=True, text=True,
                         check=True)
    return int(json.loads(out.stdout)[0]["stats64"]["rx"]["packets"])


def burst(lab: Lab, src: str, dst: str) -> tuple[int, int]:
    """(answers, packets node0's bridge took up) of BURST datagrams src -> dst's UDP echo."""
    before = bridge_rx(lab, lab.data["pods"][src]["node"])
    ns = lab.data["pods"][src]["netns"]
    out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", UDP_BURST, lab.ip(dst), "80",
                         str(BURST)], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout), bridge_rx(lab, lab.data["pods"][src]["node"]) - before


def filters(ns: str) -> dict[str, str]:
    """Each bridge port's ingress filters in node namespace `ns`, as tc prints them."""
    links = json.loads(subprocess.run(["ip", "-n", ns, "-j", "link", "show", "master", "pncl0"],
                                      capture_output=True, text=True, check=True).stdout)
    return {link["ifname"]: subprocess.run(["tc", "-n", ns, "filter", "show", "dev", link["ifname"], "ingress"],
                                           capture_output=True, text=True, check=True).stdout for link in links}


def link_packets(lab: Lab, node: str, dev: str) -> tuple[int, int]:
    """(rx, tx) packets of `dev` in `node`'s namespace."""
    out = subprocess.run(["ip", "-n", lab.data["nodes"][node]["netns"], "-j", "-s", "link", "show", dev],
                         capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)[0]["stats64"]
    return int(stats["rx"]["packets"]), int(stats["tx"]["packets"])


def underlay_filters(lab: Lab, node: str) -> str:
    return subprocess.run(["tc", "-n", lab.data["nodes"][node]["netns"], "filter", "show", "dev", "eth0", "ingress"],
                          capture_output=True, text=True, check=True).stdout


def test_fast_path_is_on_every_pod_veth_and_carries_cross_node_traffic(lab):
    assert eventually(lambda: all(f.get("state") == "on" for f in fastpaths(lab).values()), timeout=15), fastpaths(lab)
    tunnel = lab.data["fabric"] == "vxlan"
    program = "podnet_encap" if tunnel else "podnet_out"

    def everywhere() -> bool:  # the next pass (a few seconds) puts it on pods attached since the last
        return all(all(program in text and "direct-action" in text for text in filters(node["netns"]).values())
                   for node in lab.data["nodes"].values())

    assert eventually(everywhere, timeout=10)
    for name, node in lab.data["nodes"].items():
        found = filters(node["netns"])
        device = "pnvx0" if lab.data["fabric"] == "vxlan" else "eth0"  # where peers' blocks are routed
        tc = subprocess.run(["tc", "-n", node["netns"], "filter", "show", "dev", device, "ingress"],
                            capture_output=True, text=True, check=True).stdout
        assert "podnet_in" in tc, (name, tc)
        assert fastpaths(lab)[name]["pods"] == len(found)
        assert fastpaths(lab)[name]["blocks"] == len(lab.data["nodes"]) - 1
        assert ("podnet_decap" in underlay_filters(lab, name)) == tunnel
        if tunnel:
            assert fastpaths(lab)[name]["tunnel"] == "in tc (encap on pod veths, decap on eth0)"
    src, dst = pair(lab)
    assert tcp_from(lab, src, lab.ip(dst), 80) == dst.split("/")[1]
    answers, through_bridge = burst(lab, src, dst)
    assert answers >= BURST // 2  # (a loaded machine loses a few to the 0.5 s timeout)
    assert through_bridge < BURST // 10, through_bridge  # past the bridge: the fast path carried them
    if tunnel:
        ends = (lab.data["pods"][src]["node"], lab.data["pods"][dst]["node"])
        seen: list = []

        def past_pnvx0() -> bool:
            """Both ways past pnvx0 too: the programs wrote and read the VXLAN headers. (A
            node hands a pod packets once it has met it, a pass after the kernel path first
            delivered to it; each burst is a new flow, so none is one conntrack knows.)"""
            before = [link_packets(lab, node, "pnvx0") for node in ends]
            answers, _ = burst(lab, src, dst)
            after = [link_packets(lab, node, "pnvx0") for node in ends]
            seen.append((answers, before, after))
            return answers >= BURST // 2 and all(sum(a) - sum(b) < BURST // 10 for b, a in zip(before, after, strict=True))

        assert eventually(past_pnvx0, timeout=20), seen


def test_policy_turns_it_off_on_every_node_and_is_enforced(lab):
    objects = lab.apply(CASES["egress-to-y-only"])  # x's pods may only talk to y
    try:
        states = fastpaths(lab)
        assert all(f["state"].startswith("off") for f in states.values()), states
        src, dst = pair(lab, "y")  # y's pods talk to anyone: the same burst as above
        answers, through_bridge = burst(lab, src, dst)
        assert through_bridge >= answers >= BURST // 2  # the kernel path again: every packet up the bridge
        got, want = lab.probe(), lab.expected()
        assert not mismatches(got, want), "\n".join(mismatches(got, want)[:20])
    finally:
        lab.delete(objects)
    assert eventually(lambda: all(f.get("state") == "on" for f in fastpaths(lab).values()), timeout=15), fastpaths(lab)


def test_lab_status_names_the_path(lab):
    out = subprocess.run([sys.executable, "-m", "podnet.cli", "lab", "status", "--lab", lab.name],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert "fast path ebpf" in out.stdout and "ebpf on" in out.stdout, out.stdout + out.stderr
    assert f"fabric {lab.data['fabric']}" in out.stdout
    data = json.loads(subprocess.run([sys.executable, "-m", "podnet.cli", "lab", "status", "--lab", lab.name, "-o",
                                      "json"], capture_output=True, text=True, timeout=60).stdout)
    assert data["fastpath"] == "ebpf" and all(n["fastpath"]["mode"] == "ebpf" for n in data["nodes"])


def test_tunnel_packets_are_untracked_on_every_node(lab):
    if lab.data["fabric"] != "vxlan":
        pytest.skip("no tunnel")
    for node in lab.data["nodes"].values():
        out = subprocess.run(["ip", "netns", "exec", node["netns"], "nft", "list", "table", "inet", "podnet-fabric"],
                             capture_output=True, text=True, check=True).stdout
        assert 'iifname "eth0" udp dport 8472 notrack' in out and 'oifname "eth0" udp dport 8472 notrack' in out


def test_a_node_on_the_kernel_path_reads_what_the_tunnel_programs_send(lab):
    """Last of the lab's tests (it leaves one node without its decap program): with
    podnet_decap taken off the receiving node's underlay, pnvx0 there decapsulates what
    the sender's podnet_encap wrote (the kernel checks its IPv4 header checksum and
    lengths, and drops what fails them)."""
    if lab.data["fabric"] != "vxlan":
        pytest.skip("no tunnel")
    assert eventually(lambda: all(f.get("state") == "on" for f in fastpaths(lab).values()), timeout=15), fastpaths(lab)
    src, dst = pair(lab)
    receiver = lab.data["pods"][dst]["node"]
    subprocess.run(["tc", "-n", lab.data["nodes"][receiver]["netns"], "filter", "del", "dev", "eth0", "ingress",
                    "pref", "1"], check=True)
    assert "podnet_decap" not in underlay_filters(lab, receiver)
    before = link_packets(lab, receiver, "pnvx0")
    answers, _ = burst(lab, src, dst)
    assert answers >= BURST // 2
    assert link_packets(lab, receiver, "pnvx0")[0] - before[0] >= answers  # each request came in through pnvx0


CLOSE = """
import json, sys
from pyroute2 import IPRoute
from podnet.fabric import fastpath
ipr = IPRoute()
tunnel = fastpath.Tunnel("pnu0", "10.9.0.1", "02:00:00:00:00:01", 8472, 1) if sys.argv[2] == "tunnel" else None
path = fastpath.FastPath("pnvx0", "pncl0", tunnel)
path.release()
path.sync(ipr, {"10.9.1.0/24"}, {"10.9.1.0/24": fastpath.TunnelPeer("10.9.0.2", "02:00:00:00:00:02")})
on = {name: fastpath.attached_programs(ipr, index) for index, name in path.attached.items()}
device = fastpath.attached_programs(ipr, path.device_index)
underlay = fastpath.attached_programs(ipr, ipr.link_lookup(ifname="pnu0")[0])
status = path.status()
if sys.argv[1] == "close":
    path.close(ipr)
else:  # an agent that stopped, and one started after it with --fastpath kernel
    path = None
    status["cleared"] = fastpath.clear(ipr, "pnvx0", "pncl0", "pnu0" if tunnel else None)
print(json.dumps({"on": on, "device": device, "underlay": underlay, "status": status}))
"""


@pytest.mark.parametrize("tunnel", ["", "tunnel"])
@pytest.mark.parametrize("how", ["close", "clear"])
def test_close_leaves_no_filter(how, tunnel):
    """Outside any lab: a bridge with one veth port, a VXLAN device named as the
    fabric's and an underlay link; the fast path attaches (`tunnel`: the vxlan fabric's
    tunnel in tc, with its program on the underlay too), then `close` (or, from a later
    agent on the kernel path, `clear`) takes its filters and qdiscs off again."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with Sandbox("pn-fpt-") as box:
        ns, peer = box.netns("node"), box.netns("pod")
        for argv in (["link", "add", "pncl0", "type", "bridge"],
                     ["link", "add", "pnvx0", "type", "vxlan", "id", "1", "dstport", "8472", "nolearning"],
                     ["link", "add", "pnx1", "type", "veth", "peer", "name", "eth0", "netns", peer],
                     ["link", "set", "pnx1", "master", "pncl0"],
                     ["link", "add", "pnu0", "type", "veth", "peer", "name", "pnu1"]):
            subprocess.run(["ip", "-n", ns, *argv], check=True)
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLOSE, how, tunnel or "-"],
                             capture_output=True, text=True, timeout=60, check=True)
        found = json.loads(out.stdout)
        out_program = "podnet_encap" if tunnel else "podnet_out"
        assert found["on"] == {"pnx1": [out_program]} and found["status"]["state"] == "on", found
        assert found["status"]["inbound"] == "on" and found["device"] == ["podnet_in"], found
        assert found["underlay"] == (["podnet_decap"] if tunnel else []), found
        assert found["status"]["blocks"] == 1, found
        if how == "clear":
            assert sorted(found["status"]["cleared"]) == sorted(["pnvx0", "pnx1", *(["pnu0"] if tunnel else [])])
        for dev in ("pnx1", "pnvx0", "pnu0"):
            assert "clsact" not in subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], capture_output=True,
                                                  text=True, check=True).stdout
