"""Port mappings and masquerade through real nftables, inside namespaces we create.

Topology (all namespaces named pn-nft-<run>-*, deleted in a finalizer):

    X (10.78.0.2)  --veth--  H: br0 10.77.0.1/24 fd00:77::1/64, vx 10.78.0.1/24
                               |-- vha (hairpin on) -- A: eth0 10.77.0.2 fd00:77::2
                               |-- vhb (hairpin on) -- B: eth0 10.77.0.3 fd00:77::3

A, B and X run a tiny server (TCP 80, UDP 5300, v4+v6) that answers "<name> <peer>",
so each test sees who answered and which source address the server saw (proof of
masquerade). The manager runs in H through `ip netns exec H python -c ...`, so
nothing here can touch the root namespace's nftables or sysctls. Hairpin mode on the
bridge ports stands in for the bridge attach's hairpinMode: with br_netfilter loaded
(bridge-nf-call-iptables=1 in every new namespace) the DNATed hairpin frame is
bridged back out of the port it came from.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podnet import naming

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft not installed"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed"),
]

PY = sys.executable
NET = "pn-nft-net1"
NET2 = "pn-nft-net2"

SERVER = r"""
import socket, sys, threading
name = sys.argv[1]
def peer(a):
    return a[0].removeprefix("::ffff:")
def tcp(fam, host):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 80)); s.listen(16)
    def loop():
        while True:
            c, a = s.accept()
            with c:
                c.sendall(f"{name} {peer(a)}".encode())
    threading.Thread(target=loop, daemon=True).start()
def udp(fam, host):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 5300))
    def loop():
        while True:
            _, a = s.recvfrom(100)
            s.sendto(f"{name} {peer(a)}".encode(), a)
    threading.Thread(target=loop, daemon=True).start()
tcp(socket.AF_INET, "0.0.0.0"); udp(socket.AF_INET, "0.0.0.0")
if len(sys.argv) > 2:
    tcp(socket.AF_INET6, "::"); udp(socket.AF_INET6, "::")
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=1.5)
        s.settimeout(1.5)
        print(s.recv(100).decode())
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(1.5)
        s.sendto(b"hi", (host, port))
        print(s.recv(100).decode())
except OSError as exc:
    print("ERR " + type(exc).__name__)
"""

MANAGER = r"""
import ipaddress, json, sys
from podnet.errors import PodnetError
from podnet.kernel.nft import Nft
from podnet.kernel.nat.manager import NatManager
req = json.load(sys.stdin)
m = NatManager(Nft(), lock_path=req["lock"])
op = req["op"]
try:
    if op == "add":
        ips = [ipaddress.ip_interface(i) for i in req["ips"]]
        m.add(req["network"], req["attach"], ips, req["mappings"], req["ip_masq"], req["host_if"])
        res = None
    elif op == "check":
        ips = [ipaddress.ip_interface(i) for i in req["ips"]]
        res = m.check(req["network"], req["attach"], ips, req["mappings"], req["ip_masq"])
    elif op == "remove":
        res = m.remove(req["network"], req["attach"])
    elif op == "gc":
        res = sorted(m.gc(req["network"], set(req["keep"])))
    elif op == "rules":
        res = m.rules(req["network"])
    print(json.dumps({"ok": res}))
except PodnetError as exc:
    print(json.dumps({"error": type(exc).__name__, "code": exc.code, "msg": exc.msg,
                      "details": exc.details}))
"""


def sh(*args: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, input=input, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Lab:
    host: str
    a: str
    b: str
    x: str
    lock: str
    namespaces: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen] = field(default_factory=list)

    def mgr(self, op: str, **kw: object) -> object:
        """Run one NatManager call inside the host namespace; return its result."""
        req = {"op": op, "lock": self.lock, **kw}
        out = sh("ip", "netns", "exec", self.host, PY, "-c", MANAGER, input=json.dumps(req))
        doc = json.loads(out)
        if "error" in doc:
            raise ManagerError(doc)
        return doc["ok"]

    def add(
        self,
        attach: str,
        ips: list[str],
        mappings: list[dict],
        network: str = NET,
        ip_masq: bool = False,
        host_if: str | None = "br0",
    ) -> None:
        self.mgr(
            "add",
            network=network,
            attach=attach,
            ips=ips,
            mappings=mappings,
            ip_masq=ip_masq,
            host_if=host_if,
        )

    def connect(self, ns: str, host: str, port: int, proto: str = "tcp") -> str:
        return sh("ip", "netns", "exec", ns, PY, "-c", CLIENT, host, str(port), proto).strip()

    def nft_list(self) -> str:
        return sh("ip", "netns", "exec", self.host, "nft", "list", "ruleset")


class ManagerError(Exception):
    def __init__(self, doc: dict) -> None:
        super().__init__(doc["msg"])
        self.doc = doc


A_IPS = ["10.77.0.2/24", "fd00:77::2/64"]
B_IPS = ["10.77.0.3/24", "fd00:77::3/64"]
ATT_A = naming.attach_id(NET, "ctr-a", "eth0")
ATT_B = naming.attach_id(NET, "ctr-b", "eth0")
ATT_C = naming.attach_id(NET2, "ctr-c", "eth0")


def _start_server(lab: Lab, ns: str, name: str, v6: bool) -> None:
    args = ["ip", "netns", "exec", ns, PY, "-c", SERVER, name] + (["v6"] if v6 else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    lab.servers.append(proc)  # `ip netns exec` execs python: this PID is the server
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.strip() == "ready", f"server in {ns} did not start"


def _teardown(lab: Lab) -> None:
    for proc in lab.servers:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
    for ns in lab.namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    run = secrets.token_hex(3)
    lab = Lab(
        host=f"pn-nft-{run}-h",
        a=f"pn-nft-{run}-a",
        b=f"pn-nft-{run}-b",
        x=f"pn-nft-{run}-x",
        lock=str(tmp_path / "nft.lock"),
    )
    try:
        for ns in (lab.host, lab.a, lab.b, lab.x):
            sh("ip", "netns", "add", ns)
            lab.namespaces.append(ns)  # recorded before anything else can fail
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        h = lab.host
        sh("ip", "-n", h, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", h, "addr", "add", "10.77.0.1/24", "dev", "br0")
        sh("ip", "-n", h, "addr", "add", "fd00:77::1/64", "dev", "br0", "nodad")
        sh("ip", "-n", h, "link", "set", "br0", "up")
        for ns, port, ips in ((lab.a, "vha", A_IPS), (lab.b, "vhb", B_IPS)):
            sh(
                "ip",
                "-n",
                h,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            sh("ip", "-n", h, "link", "set", port, "master", "br0")
            sh("ip", "-n", h, "link", "set", port, "type", "bridge_slave", "hairpin", "on")
            sh("ip", "-n", h, "link", "set", port, "up")
            sh("ip", "-n", ns, "addr", "add", ips[0], "dev", "eth0")
            sh("ip", "-n", ns, "addr", "add", ips[1], "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", "10.77.0.1")
            sh("ip", "-n", ns, "-6", "route", "add", "default", "via", "fd00:77::1")
        sh(
            "ip",
            "-n",
            h,
            "link",
            "add",
            "vx",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            lab.x,
        )
        sh("ip", "-n", h, "addr", "add", "10.78.0.1/24", "dev", "vx")
        sh("ip", "-n", h, "link", "set", "vx", "up")
        sh("ip", "-n", lab.x, "addr", "add", "10.78.0.2/24", "dev", "eth0")
        sh("ip", "-n", lab.x, "link", "set", "eth0", "up")
        sh(
            "ip",
            "netns",
            "exec",
            h,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        )
        _start_server(lab, lab.a, "A", v6=True)
        _start_server(lab, lab.b, "B", v6=True)
        _start_server(lab, lab.x, "X", v6=False)
        yield lab
    finally:
        _teardown(lab)


def test_tcp_mapping_localhost_bridge_hairpin_and_neighbour(lab: Lab) -> None:
    rl = "/proc/sys/net/ipv4/conf/br0/route_localnet"
    assert sh("ip", "netns", "exec", lab.host, "cat", rl).strip() == "0"
    lab.add(ATT_A, A_IPS, [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    assert sh("ip", "netns", "exec", lab.host, "cat", rl).strip() == "1"
    # Host to its loopback: output DNAT, route_localnet, masquerade 127/8 -> br0's address.
    assert lab.connect(lab.host, "127.0.0.1", 8080) == "A 10.77.0.1"
    assert lab.connect(lab.host, "10.77.0.1", 8080) == "A 10.77.0.1"
    # Hairpin: A reaches itself through the host port, seen as coming from the bridge.
    assert lab.connect(lab.a, "10.77.0.1", 8080) == "A 10.77.0.1"
    # A neighbour on the same subnet: masqueraded so A's reply goes back through H.
    assert lab.connect(lab.b, "10.77.0.1", 8080) == "A 10.77.0.1"
    # From outside the bridge: DNAT only, A sees the real client address.
    assert lab.connect(lab.x, "10.78.0.1", 8080) == "A 10.78.0.2"
    # The kernel's rules read back exactly as rendered.
    checked = lab.mgr(
        "check",
        network=NET,
        attach=ATT_A,
        ips=A_IPS,
        mappings=[{"hostPort": 8080, "containerPort": 80}],
        ip_masq=False,
    )
    assert checked == []


def test_ipv6_mapping_and_hairpin(lab: Lab) -> None:
    lab.add(ATT_A, A_IPS, [{"hostPort": 8080, "containerPort": 80}])
    assert lab.connect(lab.host, "fd00:77::1", 8080) == "A fd00:77::1"
    assert lab.connect(lab.a, "fd00:77::1", 8080) == "A fd00:77::1"
    assert lab.connect(lab.b, "fd00:77::1", 8080) == "A fd00:77::1"
    # No route_localnet for IPv6: [::1]:hostPort is deliberately not mapped.
    assert lab.connect(lab.host, "::1", 8080).startswith("ERR")


def test_udp_mapping(lab: Lab) -> None:
    lab.add(ATT_A, A_IPS, [{"hostPort": 5353, "containerPort": 5300, "protocol": "udp"}])
    assert lab.connect(lab.host, "10.77.0.1", 5353, "udp") == "A 10.77.0.1"
    assert lab.connect(lab.host, "127.0.0.1", 5353, "udp") == "A 10.77.0.1"
    assert lab.connect(lab.b, "10.77.0.1", 5353, "udp") == "A 10.77.0.1"
    assert lab.connect(lab.host, "10.77.0.1", 5353, "tcp").startswith("ERR")


def test_host_ip_restricts_the_mapping(lab: Lab) -> None:
    lab.add(ATT_A, A_IPS, [{"hostPort": 8082, "containerPort": 80, "hostIP": "10.78.0.1"}])
    assert lab.connect(lab.x, "10.78.0.1", 8082) == "A 10.78.0.2"
    assert lab.connect(lab.host, "10.77.0.1", 8082).startswith("ERR")
    assert lab.connect(lab.host, "127.0.0.1", 8082).startswith("ERR")
    assert lab.connect(lab.host, "fd00:77::1", 8082).startswith("ERR")  # v4 hostIP: v4 only
    rl = "/proc/sys/net/ipv4/conf/br0/route_localnet"
    assert sh("ip", "netns", "exec", lab.host, "cat", rl).strip() == "0"


def test_ip_masq(lab: Lab) -> None:
    # Without masquerade X cannot answer 10.77.0.2 (no route back): the attempt fails.
    assert lab.connect(lab.a, "10.78.0.2", 80).startswith("ERR")
    lab.add(ATT_A, A_IPS, [], ip_masq=True)
    assert lab.connect(lab.a, "10.78.0.2", 80) == "X 10.78.0.1"
    # Same subnet is not masqueraded: B sees A's own address.
    assert lab.connect(lab.a, "10.77.0.3", 80) == "B 10.77.0.2"


def test_conflicting_host_port_is_refused(lab: Lab) -> None:
    lab.add(ATT_A, A_IPS, [{"hostPort": 8080, "containerPort": 80}])
    before = lab.nft_list()
    with pytest.raises(ManagerError) as info:
        lab.add(ATT_B, B_IPS, [{"hostPort": 8080, "containerPort": 80, "hostIP": "10.77.0.1"}])
    assert info.value.doc["code"] == 104
    assert ATT_A in info.value.doc["msg"]
    with pytest.raises(ManagerError):  # a different network shares the table: still taken
        lab.add(ATT_C, B_IPS, [{"hostPort": 8080, "containerPort": 80}], network=NET2)
    assert lab.nft_list() == before
    # Another protocol or port is fine.
    lab.add(ATT_B, B_IPS, [{"hostPort": 8080, "containerPort": 5300, "protocol": "udp"}])
    assert lab.connect(lab.host, "10.77.0.1", 8080, "udp") == "B 10.77.0.1"
    assert lab.connect(lab.host, "10.77.0.1", 8080) == "A 10.77.0.1"


def test_readd_replaces_rules_atomically(lab: Lab) -> None:
    lab.add(ATT_A, A_IPS, [{"hostPort": 8080, "containerPort": 81}])
    first = lab.mgr("rules", network=NET)[ATT_A]
    lab.add(ATT_A, A_IPS, [{"hostPort": 8080, "containerPort": 80}])
    second = lab.mgr("rules", network=NET)[ATT_A]
    assert len(first) == len(second)
    assert not any(":81" in r for r in second)
    assert lab.connect(lab.host, "10.77.0.1", 8080) == "A 10.77.0.1"


def test_remove_deletes_exactly_one_attachment(lab: Lab) -> None:
    lab.add(ATT_A, A_IPS, [{"hostPort": 8080, "containerPort": 80}], ip_masq=True)
    lab.add(ATT_B, B_IPS, [{"hostPort": 8081, "containerPort": 80}], ip_masq=True)
    rules = lab.mgr("rules", network=NET)
    n_a = len(rules[ATT_A])
    assert lab.mgr("remove", network=NET, attach=ATT_A) == n_a
    rules = lab.mgr("rules", network=NET)
    assert set(rules) == {ATT_B}
    assert ATT_A not in lab.nft_list()
    assert lab.connect(lab.host, "10.77.0.1", 8080).startswith("ERR")
    assert lab.connect(lab.host, "10.77.0.1", 8081) == "B 10.77.0.1"
    assert lab.connect(lab.host, "127.0.0.1", 8081) == "B 10.77.0.1"
    assert lab.mgr("remove", network=NET, attach=ATT_A) == 0  # idempotent


def test_remove_and_gc_without_tables(lab: Lab) -> None:
    assert lab.mgr("remove", network=NET, attach=ATT_A) == 0
    assert lab.mgr("gc", network=NET, keep=[]) == []
    assert lab.mgr("rules", network=None) == {}


def test_gc_keeps_only_valid_attachments(lab: Lab) -> None:
    lab.add(ATT_A, A_IPS, [{"hostPort": 8080, "containerPort": 80}])
    lab.add(ATT_B, B_IPS, [{"hostPort": 8081, "containerPort": 80}])
    lab.add(ATT_C, ["10.77.0.3/24"], [{"hostPort": 9090, "containerPort": 80}], network=NET2)
    assert lab.mgr("gc", network=NET, keep=[ATT_B]) == [ATT_A]
    assert set(lab.mgr("rules", network=None)) == {ATT_B, ATT_C}
    assert lab.connect(lab.host, "10.77.0.1", 8080).startswith("ERR")
    assert lab.connect(lab.host, "10.77.0.1", 8081) == "B 10.77.0.1"
    assert lab.connect(lab.host, "10.77.0.1", 9090) == "B 10.77.0.1"  # other network kept
    assert lab.mgr("gc", network=NET, keep=[ATT_B]) == []


def test_rendered_rules_round_trip_through_the_kernel(lab: Lab) -> None:
    mappings = [
        {"hostPort": 8080, "containerPort": 80},
        {"hostPort": 8443, "containerPort": 443, "protocol": "sctp", "hostIP": "10.77.0.1"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "fd00:77::1"},
        {"hostPort": 6000, "containerPort": 6000, "hostIP": "0.0.0.0"},
    ]
    ips = [*A_IPS, "10.77.1.2/32"]
    lab.add(ATT_A, ips, mappings, ip_masq=True)
    req = {"network": NET, "attach": ATT_A, "ips": ips, "mappings": mappings, "ip_masq": True}
    assert lab.mgr("check", **req) == []
    lab.mgr("remove", network=NET, attach=ATT_A)
    assert lab.mgr("check", **req) != []
