"""Isolation of user-defined networks, end to end: networks made with the real CLI,
containers attached through the real CNI path (their conflists, executed by libcni in
the host namespace, served by the agent), traffic between namespaces the test made.

    OUT 10.99.0.2 --veth-- HOST (agent; default route via OUT, no route back from OUT)
                             |- neta  10.61.0.0/24 fd00:61::/64: a1, a2
                             |- netb  10.62.0.0/24 fd00:62::/64: b1
                             |- neti  10.63.0.0/24 --internal:   i1, i2
"""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_network_cli import Cli, iso_table

from cniharness import REFERENCE_DIR, start_echo, tcp_probe
from podnet.lab.sandbox import Sandbox
from podnet.networks.service import SYNC_OP, NetworkService
from podnet.rpc.client import call
from podnet.runtime.libcni import Conflist
from podnet.state import StatePaths

pytestmark = pytest.mark.root

OUT_IP = "10.99.0.2"
PORT = 8080


@dataclass
class Lab:
    sandbox: Sandbox
    cli: Cli
    cni_bin: str
    out: str = ""
    nets: dict[str, dict] = field(default_factory=dict)
    ips: dict[str, list[str]] = field(default_factory=dict)  # container -> [v4, v6?]
    ns: dict[str, str] = field(default_factory=dict)  # container -> namespace

    def network(self, name: str, *args: str) -> None:
        self.nets[name] = self.cli.json("create", name, *args)

    def attach(self, container: str, network: str) -> None:
        """ADD through the network's conflist, exactly as a runtime would."""
        ns = self.sandbox.netns(container)
        doc = json.loads(Path(self.nets[network]["conflist"]).read_text())
        conflist = Conflist(doc, [self.cni_bin, REFERENCE_DIR], netns_exec=self.cli.ns)
        result = conflist.add(container, Sandbox.path(ns))
        self.ns[container] = ns
        self.ips[container] = [str(ipaddress.ip_interface(ip["address"]).ip) for ip in result["ips"]]
        start_echo(self.sandbox, ns, PORT, container, bind="::")

    def reach(self, src: str, host: str, port: int = PORT, expect: bool = True) -> bool:
        """Whether a TCP connection from container (or namespace) `src` gets answered."""
        ns = self.ns.get(src, src)
        answer = tcp_probe(self.sandbox, ns, host, port, timeout=3 if expect else 1)
        return answer is not None

    def host(self, *argv: str) -> str:
        return self.sandbox.exec(self.cli.ns, list(argv)).stdout


@pytest.fixture
def cli(sandbox, host_ns, socket_path, tmp_path) -> Cli:
    """`podnet network` in HOST, with an agent there sharing its state dir."""
    cli = Cli(sandbox, host_ns, StatePaths(tmp_path / "state"), socket_path)
    cli.start_agent()
    return cli


@pytest.fixture
def lab(sandbox, cli, cni_bin) -> Lab:
    lab = Lab(sandbox, cli, cni_bin)
    lab.out = sandbox.netns("out")
    lab.host("ip", "link", "add", "pn-up", "type", "veth", "peer", "name", "eth0", "netns", lab.out)
    lab.host("ip", "addr", "add", "10.99.0.1/24", "dev", "pn-up")
    lab.host("ip", "link", "set", "pn-up", "up")
    sandbox.exec(lab.out, ["ip", "addr", "add", f"{OUT_IP}/24", "dev", "eth0"])
    sandbox.exec(lab.out, ["ip", "link", "set", "eth0", "up"])
    lab.host("ip", "route", "add", "default", "via", OUT_IP)
    start_echo(sandbox, lab.out, PORT, "out")
    lab.network("neta", "--subnet", "10.61.0.0/24", "--subnet", "fd00:61::/64")
    lab.network("netb", "--subnet", "10.62.0.0/24", "--subnet", "fd00:62::/64")
    lab.network("neti", "--subnet", "10.63.0.0/24", "--internal")
    for container, network in (("a1", "neta"), ("a2", "neta"), ("b1", "netb"), ("i1", "neti"), ("i2", "neti")):
        lab.attach(container, network)
    return lab


def test_bridged_packets_reach_the_forward_hook_as_bridge_to_bridge(lab):
    """The premise of keying rules on bridge names: with br_netfilter, a frame bridged
    inside one network is seen in the forward hook with iif = oif = the bridge."""
    if lab.host("cat", "/proc/sys/net/bridge/bridge-nf-call-iptables").strip() != "1":
        pytest.skip("br_netfilter is not active: bridged frames never reach the forward hook")
    bridge = lab.nets["neta"]["bridge"]
    lab.sandbox.exec(lab.cli.ns, ["nft", "-f", "-"], input=(
        "table inet pn-t-probe {\n"
        "  chain probe {\n"
        "    type filter hook forward priority -10; policy accept;\n"
        f'    iifname "{bridge}" oifname "{bridge}" counter\n'
        "  }\n"
        "}\n"
    ))
    assert lab.reach("a1", lab.ips["a2"][0])
    listing = json.loads(lab.host("nft", "-j", "list", "table", "inet", "pn-t-probe"))
    counters = [e["counter"]["packets"] for item in listing["nftables"] if "rule" in item
                for e in item["rule"]["expr"] if "counter" in e]
    assert counters[0] > 0  # the bridged TCP exchange, seen as bridge -> bridge


def test_isolation_between_within_and_out_of_networks(lab):
    a2_v4, a2_v6 = lab.ips["a2"]
    b1_v4, b1_v6 = lab.ips["b1"]
    i2 = lab.ips["i2"][0]
    gateway = lab.nets["neti"]["subnets"][0]["gateway"]
    rules = iso_table(lab.cli)
    for comment in ("net neta: isolated from other networks", "net netb: isolated from other networks",
                    "net neti: internal, no traffic out", "net neti: internal, no traffic in"):
        assert comment in rules

    # Within a network (bridged), both families; also inside the internal network.
    assert lab.reach("a1", a2_v4) and lab.reach("a1", a2_v6)
    assert lab.reach("i1", i2)

    # Outside: OUT has no route back, so an answer proves the masquerade.
    assert "10.61.0.0" not in lab.sandbox.exec(lab.out, ["ip", "route"]).stdout
    assert lab.reach("a1", OUT_IP)
    # The internal network has no default route (and no masquerade)...
    assert "default" not in lab.sandbox.exec(lab.ns["i1"], ["ip", "route"]).stdout
    assert not lab.reach("i1", OUT_IP, expect=False)
    # ...and with routes added by hand on both sides (i1 and OUT), only the table stands
    # in the way.
    lab.sandbox.exec(lab.ns["i1"], ["ip", "route", "add", "default", "via", gateway])
    lab.sandbox.exec(lab.out, ["ip", "route", "add", "10.63.0.0/24", "via", "10.99.0.1"])
    # The host itself (e.g. DNS on the gateway) stays reachable from inside.
    start_echo(lab.sandbox, lab.cli.ns, 7070, "host")
    assert lab.reach("i1", gateway, 7070)

    blocked = [("a1", b1_v4), ("a1", b1_v6), ("b1", a2_v4), ("a1", i2), ("i1", a2_v4),
               ("i1", OUT_IP), (lab.out, lab.ips["i1"][0])]
    for src, dst in blocked:
        assert not lab.reach(src, dst, expect=False), (src, dst)

    # Control: every route is there; only the table stops the traffic...
    lab.host("nft", "delete", "table", "inet", "podnet-iso")
    for src, dst in blocked:
        assert lab.reach(src, dst), (src, dst)
    # ...and the agent puts it back on request.
    assert call(lab.cli.socket, SYNC_OP)["networks"] == ["neta", "netb", "neti"]
    assert not lab.reach("a1", b1_v4, expect=False)
    assert not lab.reach("i1", OUT_IP, expect=False)


def test_rm_refuses_while_attached_and_force_detaches(lab):
    err = lab.cli.fails("rm", "neta")
    assert "network 'neta' has 2 attached container(s): a1, a2" in err
    attached = json.loads(lab.cli("inspect", "neta").stdout)["containers"]
    assert [(c["name"], c["id"], c["state"], sorted(c["ips"])) for c in attached] == [
        (None, c, "attached (CNI)", sorted(lab.ips[c])) for c in ("a1", "a2")
    ]
    bridge = lab.nets["neta"]["bridge"]
    assert bridge in lab.host("ip", "-br", "link")
    out = lab.cli("rm", "--force", "neta")
    assert out.stdout.strip() == "neta"
    assert "container a1 lost network neta" in out.stderr and "container a2 lost network neta" in out.stderr
    assert bridge not in lab.host("ip", "-br", "link")
    assert "neta" not in iso_table(lab.cli)
    assert [n["name"] for n in lab.cli.json("ls")] == ["netb", "neti"]
    assert not lab.cli.paths.net_d.joinpath("neta.conflist").exists()


def test_agent_applies_store_changes_without_being_asked(cli):
    """No sync op: the agent's watch on networks/ converges the table by itself."""
    with NetworkService(cli.paths) as svc:
        svc.create("quiet", internal=True)
        deadline = time.monotonic() + 10
        while "net quiet: internal" not in iso_table(cli):
            assert time.monotonic() < deadline, "the agent did not apply the new network"
            time.sleep(0.05)
        svc.remove("quiet")
        while iso_table(cli):
            assert time.monotonic() < deadline, "the agent did not drop the removed network"
            time.sleep(0.05)
