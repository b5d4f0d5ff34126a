"""Real BIRD 2 between namespaces: configs from bgp/render.py, driven through
bgp/birdc.py. Each BIRD runs as our child (`bird -f`), stopped by its PID.

    lan:   sw: bridge br0 --veth-- n1 eth0 10.0.0.1/24
                          --veth-- n2 eth0 10.0.0.2/24
                          --veth-- n3 eth0 10.0.0.3/24

    racks: r1 10.0.1.2 --veth-- 10.0.1.1 (tor | router) 10.0.2.1 --veth-- 10.0.2.2 r2

Timings are printed (pytest -s), never asserted: BIRD's first session waits its
`connect delay time` (5 s by default), a route then converges in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from podnet.bgp.birdc import BirdConfigError, BirdControl, NoSuchProtocol
from podnet.bgp.model import BIRD_ROUTE_PROTO, PODNET_ROUTE_PROTO, BirdSpec, Neighbor
from podnet.bgp.render import PROTOCOL_PREFIX, render
from podnet.lab.sandbox import Sandbox, ip, wait_for_path

pytestmark = pytest.mark.root

BIRD = shutil.which("bird") or "/usr/sbin/bird"
ECHO_SERVER = (  # answers datagrams on <address>:7070
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((sys.argv[1],7070))\n"
    "while True:\n"
    "    d,a=s.recvfrom(100); s.sendto(d,a)\n"
)
ECHO_PROBE = (  # from <source> to <address>:7070, a few tries (the server may still be starting)
    "import socket,sys\n"
    "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind((sys.argv[1],0)); u.settimeout(0.5)\n"
    "for _ in range(20):\n"
    "    u.sendto(b'x',(sys.argv[2],7070))\n"
    "    try:\n"
    "        print('echo from', u.recvfrom(100)[1]); break\n"
    "    except TimeoutError:\n"
    "        pass\n"
)
ACCEPT = ("10.244.0.0/16",)
SESSION_TIMEOUT = 60.0  # "not stalled": sessions come up in ~4 s here


@pytest.fixture(autouse=True)
def _needs_bird():
    if not os.path.exists(BIRD):
        pytest.skip("BIRD 2 (Debian bird2) is not installed")


def wait_until(check: Callable[[], object], what: str, timeout: float = SESSION_TIMEOUT, step: float = 0.005):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(step)


def kernel_routes(box: Sandbox, ns: str, proto: int) -> dict[str, dict]:
    """The main table's routes of one protocol number, by destination."""
    out = box.exec(ns, ["ip", "-N", "-j", "route", "show", "table", "main"]).stdout
    return {r["dst"]: r for r in json.loads(out) if r.get("protocol") == str(proto)}


class BirdNode:
    """One namespace's BIRD: its files in a short private directory (socket paths are
    limited to 108 bytes), its process our child."""

    def __init__(self, box: Sandbox, ns: str, spec: BirdSpec) -> None:
        self.box, self.ns, self.spec = box, ns, spec
        self.dir = tempfile.mkdtemp(prefix="pn-bird-")
        box.on_close(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.conf = os.path.join(self.dir, "bird.conf")
        self.sock = os.path.join(self.dir, "bird.ctl")
        self.pidfile = os.path.join(self.dir, "bird.pid")
        self.log = box.keep_open(open(os.path.join(self.dir, "bird.log"), "ab"))  # noqa: SIM115 (closed by the sandbox)
        self.ctl = BirdControl(self.sock)
        self.proc: subprocess.Popen | None = None
        self.write(spec)

    def write(self, spec: BirdSpec) -> None:
        self.spec = spec
        with open(self.conf, "w") as f:
            f.write(render(spec))

    def start(self, recover: bool = False) -> BirdNode:
        """`recover`: `-R`, the graceful-restart recovery a BIRD restarted after a crash needs."""
        if os.path.exists(self.sock):
            os.unlink(self.sock)  # a kill -9 leaves it behind
        argv = [BIRD, "-f", *(["-R"] if recover else []), "-c", self.conf, "-s", self.sock, "-P", self.pidfile]
        self.proc = self.box.spawn(self.ns, argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_path(self.sock, proc=self.proc)
        wait_until(self.ctl.alive, "BIRD answers on its socket")
        # `ip netns exec` execs BIRD itself: the child we wait() on is BIRD.
        assert self.pid_in_file() == self.proc.pid
        return self

    def pid_in_file(self) -> int:
        return int(Path(self.pidfile).read_text())

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.box.stop(self.proc)  # already reaped: only forgets it

    def stop(self) -> None:
        assert self.proc is not None
        self.box.stop(self.proc)  # SIGTERM, wait (we are PID 1's child: reap it)

    def session(self, neighbor: str) -> dict:
        return next(p for p in self.ctl.protocols() if p["name"] == PROTOCOL_PREFIX + neighbor)

    def established(self, *neighbors: str) -> bool:
        states = {p["name"]: p["info"] for p in self.ctl.protocols()}
        return all(states.get(PROTOCOL_PREFIX + n) == "Established" for n in neighbors)

    def routes(self, proto: int = BIRD_ROUTE_PROTO) -> dict[str, dict]:
        return kernel_routes(self.box, self.ns, proto)


def lan(box: Sandbox, count: int) -> list[str]:
    """`count` node namespaces on one bridge, eth0 10.0.0.<i>/24."""
    sw = box.netns("sw")
    ip("-n", sw, "link", "add", "br0", "type", "bridge")
    ip("-n", sw, "link", "set", "br0", "up")
    nodes = []
    for i in range(1, count + 1):
        ns = box.netns(f"n{i}")
        ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}", "netns", sw)
        ip("-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"10.0.0.{i}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        nodes.append(ns)
    return nodes


def node_spec(i: int, peers: dict[str, int], originate: tuple[str, ...], **kw) -> BirdSpec:
    """Node i of the LAN, iBGP (AS 65000) with peers {name: i}."""
    neighbors = tuple(Neighbor(name, f"10.0.0.{j}", 65000, rr_client=kw.get("rr_cluster_id") is not None) for name, j in peers.items())
    return BirdSpec(router_id=f"10.0.0.{i}", asn=65000, local_address=f"10.0.0.{i}", neighbors=neighbors,
                    originate=originate, accept=ACCEPT, **kw)


@pytest.fixture
def pair(sandbox):
    """Two iBGP nodes, a (10.244.1.0/26) and b (10.244.2.0/26), sessions Established."""
    n1, n2 = lan(sandbox, 2)
    a = BirdNode(sandbox, n1, node_spec(1, {"b": 2}, ("10.244.1.0/26",), scan_time=1))
    b = BirdNode(sandbox, n2, node_spec(2, {"a": 1}, ("10.244.2.0/26",), scan_time=1))
    t0 = time.monotonic()
    a.start(), b.start()
    wait_until(lambda: a.established("b") and b.established("a"), "sessions Established")
    print(f"\nsessions Established {time.monotonic() - t0:.2f}s after start")
    return a, b


def test_sessions_come_up_and_originations_reach_the_peer_kernel(pair):
    a, b = pair
    t0 = time.monotonic()
    got = wait_until(lambda: b.routes().get("10.244.1.0/26"), "a's block in b's kernel")
    print(f"a's block in b's kernel {1000 * (time.monotonic() - t0):.1f} ms after Established was seen")
    assert got["gateway"] == "10.0.0.1" and got["dev"] == "eth0"
    assert wait_until(lambda: a.routes().get("10.244.2.0/26"), "b's block in a's kernel")["gateway"] == "10.0.0.2"
    # A node's own originations (blackholes) stay inside BIRD: the kernel gets BGP routes only.
    assert set(a.routes()) == {"10.244.2.0/26"} and set(b.routes()) == {"10.244.1.0/26"}
    assert json.loads(a.box.exec(a.ns, ["ip", "-j", "route", "show", "type", "blackhole"]).stdout) == []

    detail = a.ctl.protocol_detail("pn_b")
    assert detail["bgp_state"] == "Established" and detail["neighbor_address"] == "10.0.0.2"
    assert detail["neighbor_as"] == 65000 and detail["local_as"] == 65000
    assert detail["routes"]["imported"] == 1 and detail["routes"]["exported"] == 1
    assert a.ctl.routes_count()["tables"]["master4"] == {"routes": 2, "networks": 2}
    assert a.ctl.alive()
    with pytest.raises(NoSuchProtocol, match="pn_nosuch"):
        a.ctl.protocol_detail("pn_nosuch")
    with pytest.raises(ValueError, match="not a BIRD protocol name"):
        a.ctl.protocol_detail("pn_b\nconfigure")
    with pytest.raises(ValueError, match="one non-empty line"):
        a.ctl.command("show status\ndown")


def test_route_reflector_passes_a_clients_prefix_with_its_next_hop_and_filters_imports(sandbox):
    n1, n2, n3 = lan(sandbox, 3)
    rr = BirdNode(sandbox, n1, node_spec(1, {"c2": 2, "c3": 3}, ("10.244.1.0/26",), rr_cluster_id="10.0.0.1"))
    # c2 also announces a prefix outside `accept`: every import filter drops it.
    c2 = BirdNode(sandbox, n2, node_spec(2, {"rr": 1}, ("10.244.2.0/26", "10.99.0.0/24")))
    c3 = BirdNode(sandbox, n3, node_spec(3, {"rr": 1}, ("10.244.3.0/26",)))
    for node in (rr, c2, c3):
        node.start()
    wait_until(lambda: rr.established("c2", "c3") and c2.established("rr") and c3.established("rr"), "sessions Established")

    reflected = wait_until(lambda: c3.routes().get("10.244.2.0/26"), "c2's block reflected to c3")
    assert reflected["gateway"] == "10.0.0.2"  # c2 itself, not the reflector
    assert wait_until(lambda: c2.routes().get("10.244.3.0/26"), "c3's block reflected to c2")["gateway"] == "10.0.0.3"
    assert wait_until(lambda: c3.routes().get("10.244.1.0/26"), "rr's own block at c3")["gateway"] == "10.0.0.1"
    assert rr.ctl.protocol_detail("pn_c2")["session"].startswith("internal route-reflector")

    # The prefix outside `accept` reached the reflector and was filtered there.
    def filtered() -> int:
        return rr.ctl.protocol_detail("pn_c2")["channels"]["ipv4"]["route_change_stats"]["import_updates"]["filtered"]

    wait_until(lambda: filtered() == 1, "the reflector filtered c2's 10.99.0.0/24")
    assert not any("10.99.0.0/24" in line.text for line in rr.ctl.command("show route"))
    for node in (rr, c2, c3):
        assert "10.99.0.0/24" not in node.routes()


def test_routes_of_podnet_proto_77_are_never_touched(sandbox):
    n1, n2 = lan(sandbox, 2)
    mine = [
        ["10.244.1.0/26", "via", "10.0.0.1", "proto", str(PODNET_ROUTE_PROTO)],  # the same prefix BGP brings (metric 0)
        ["10.77.0.0/24", "via", "10.0.0.1", "proto", str(PODNET_ROUTE_PROTO)],  # a prefix BIRD never heard of
        ["10.244.7.0/26", "via", "10.0.0.1", "proto", str(PODNET_ROUTE_PROTO)],  # inside `accept`, not announced
    ]
    for route in mine:
        ip("-n", n2, "route", "add", *route)
    before = kernel_routes(sandbox, n2, PODNET_ROUTE_PROTO)
    a = BirdNode(sandbox, n1, node_spec(1, {"b": 2}, ("10.244.1.0/26",), scan_time=1)).start()
    b = BirdNode(sandbox, n2, node_spec(2, {"a": 1}, ("10.244.2.0/26",), scan_time=1)).start()
    wait_until(lambda: "10.244.1.0/26" in b.routes(), "a's block in b's kernel")
    time.sleep(2.5)  # two kernel scans (scan time 1)
    assert kernel_routes(sandbox, n2, PODNET_ROUTE_PROTO) == before
    assert b.routes()["10.244.1.0/26"]["metric"] == 32  # beside ours, not instead of it

    a.write(dataclasses.replace(a.spec, originate=("10.244.1.0/26", "10.244.7.0/26")))
    a.ctl.configure()
    wait_until(lambda: "10.244.7.0/26" in b.routes(), "the new block in b's kernel")
    a.write(dataclasses.replace(a.spec, originate=()))
    a.ctl.configure()
    wait_until(lambda: not b.routes(), "b's BIRD routes withdrawn")
    time.sleep(2.5)
    b.stop()  # a clean stop (persist: BIRD's own routes stay too)
    assert kernel_routes(sandbox, n2, PODNET_ROUTE_PROTO) == before


def test_configure_applies_a_change_without_restarting_bird(pair):
    a, b = pair
    wait_until(lambda: "10.244.1.0/26" in b.routes(), "a's block in b's kernel")
    pid, session_since = a.proc.pid, b.session("a")["since"]
    timings = []
    for i in range(5):
        prefix = f"10.244.{100 + i}.0/26"
        a.write(dataclasses.replace(a.spec, originate=(*a.spec.originate, prefix)))
        t0 = time.monotonic()
        a.ctl.configure()
        wait_until(lambda prefix=prefix: prefix in b.routes(), "the new origination in b's kernel", step=0.001)
        timings.append(1000 * (time.monotonic() - t0))
    print("configure -> route in the peer's kernel (ms): " + ", ".join(f"{t:.1f}" for t in timings))
    assert b.routes()["10.244.104.0/26"]["gateway"] == "10.0.0.1"
    assert a.proc.poll() is None and a.proc.pid == pid == a.pid_in_file()
    assert b.session("a")["since"] == session_since and b.session("a")["info"] == "Established"


def test_a_bad_config_is_refused_and_the_old_one_stays(pair):
    a, b = pair
    wait_until(lambda: "10.244.1.0/26" in b.routes(), "a's block in b's kernel")
    good = Path(a.conf).read_text()
    with open(a.conf, "w") as f:
        f.write(good + "protocol bgp broken {\n  local as 1\n}\n")
    with pytest.raises(BirdConfigError, match=rf"{a.conf}:\d+:\d+ syntax error") as info:
        a.ctl.configure()
    assert info.value.bird_code == 8002
    assert a.ctl.alive() and a.established("b")
    assert "broken" not in [p["name"] for p in a.ctl.protocols()]
    assert "10.244.1.0/26" in b.routes()
    # Once the file is good again, configure applies it.
    a.write(dataclasses.replace(a.spec, originate=("10.244.1.0/26", "10.244.9.0/26")))
    a.ctl.configure()
    wait_until(lambda: "10.244.9.0/26" in b.routes(), "the fixed config's origination in b's kernel")


def test_graceful_restart_keeps_routes_on_both_sides(pair):
    a, b = pair
    wait_until(lambda: "10.244.1.0/26" in b.routes() and "10.244.2.0/26" in a.routes(), "both blocks installed")
    a.kill9()
    wait_until(lambda: b.ctl.protocol_detail("pn_a").get("neighbor_graceful_restart_active"), "b sees a restarting")
    assert b.routes()["10.244.1.0/26"]["gateway"] == "10.0.0.1"  # the peer keeps a's route, stale
    assert a.routes()["10.244.2.0/26"]["gateway"] == "10.0.0.2"  # a's kernel keeps what a installed
    assert not BirdControl(a.sock, timeout=0.5).alive()

    t0 = time.monotonic()
    old_pid = a.proc.pid
    a.start(recover=True)
    assert a.proc.pid != old_pid
    gaps = []

    def back() -> bool:
        if "10.244.1.0/26" not in b.routes() or "10.244.2.0/26" not in a.routes():
            gaps.append(time.monotonic() - t0)
        return a.established("b") and b.established("a")

    wait_until(back, "the session back after the restart", step=0.01)
    print(f"session back {time.monotonic() - t0:.2f}s after the restart")
    assert gaps == []  # neither kernel lost a route at any sample while a was away
    wait_until(lambda: "neighbor_graceful_restart_active" not in b.ctl.protocol_detail("pn_a"), "b's restart state over")
    assert b.routes()["10.244.1.0/26"]["gateway"] == "10.0.0.1"

    # persist: a clean stop (SIGTERM) leaves BIRD's routes in the kernel too.
    a.stop()
    assert a.routes()["10.244.2.0/26"]["gateway"] == "10.0.0.2"


def racks(box: Sandbox, middle: str) -> tuple[str, str, str]:
    """r1 -- middle -- r2 on two subnets, a "pod" address 10.244.<i>.1 on each rack
    node's lo, forwarding on in the middle namespace."""
    mid, r1, r2 = box.netns(middle), box.netns("r1"), box.netns("r2")
    for i, ns in ((1, r1), (2, r2)):
        ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"rack{i}", "netns", mid)
        ip("-n", ns, "addr", "add", f"10.0.{i}.2/24", "dev", "eth0")
        ip("-n", mid, "addr", "add", f"10.0.{i}.1/24", "dev", f"rack{i}")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", mid, "link", "set", f"rack{i}", "up")
        ip("-n", ns, "addr", "add", f"10.244.{i}.1/32", "dev", "lo")
    box.exec(mid, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    return mid, r1, r2


def test_a_tor_passes_routes_between_racks_over_ebgp(sandbox):
    """r1 (AS 65001) -- tor (AS 65100) -- r2 (AS 65002): each node's block reaches the
    other with the ToR as next hop, and a packet crosses with no static route."""
    tor_ns, r1, r2 = racks(sandbox, "tor")
    tor = BirdNode(sandbox, tor_ns, BirdSpec(
        router_id="10.0.1.1", asn=65100, local_address="10.0.1.1", accept=ACCEPT,
        neighbors=(Neighbor("rack1", "10.0.1.2", 65001),
                   Neighbor("rack2", "10.0.2.2", 65002, local_address="10.0.2.1")),  # its address on that link
    ))
    n1, n2 = (
        BirdNode(sandbox, ns, BirdSpec(router_id=f"10.0.{i}.2", asn=65000 + i, local_address=f"10.0.{i}.2",
                                       neighbors=(Neighbor("tor", f"10.0.{i}.1", 65100),),
                                       originate=(f"10.244.{i}.0/26",), accept=ACCEPT))
        for i, ns in ((1, r1), (2, r2))
    )
    for node in (tor, n1, n2):
        node.start()
    wait_until(lambda: tor.established("rack1", "rack2") and n1.established("tor") and n2.established("tor"), "sessions Established")
    assert wait_until(lambda: n2.routes().get("10.244.1.0/26"), "r1's block at r2")["gateway"] == "10.0.2.1"  # off r2's link: the ToR's own
    assert wait_until(lambda: n1.routes().get("10.244.2.0/26"), "r2's block at r1")["gateway"] == "10.0.1.1"
    assert tor.routes()["10.244.1.0/26"]["gateway"] == "10.0.1.2"
    assert tor.ctl.protocol_detail("pn_rack2")["session"].startswith("external")
    assert tor.ctl.protocol_detail("pn_rack2")["source_address"] == "10.0.2.1"
    # a datagram from r2's pod address to r1's and back, through the ToR
    sandbox.spawn(r1, [sys.executable, "-c", ECHO_SERVER, "10.244.1.1"])
    probe = sandbox.exec(r2, [sys.executable, "-c", ECHO_PROBE, "10.244.2.1", "10.244.1.1"], check=False)
    assert probe.stdout.strip() == "echo from ('10.244.1.1', 7070)", probe.stderr


def test_multihop_ibgp_resolves_next_hops_through_the_underlay(sandbox):
    """r1 and r2 on two subnets behind a router that does not speak BGP (a default route
    each): an iBGP multihop session; each block is installed via the router, not as an
    `unreachable` route, and podnet's own routes (proto 77) never enter BIRD."""
    _, r1, r2 = racks(sandbox, "rt")
    for i, ns in ((1, r1), (2, r2)):
        ip("-n", ns, "route", "add", "default", "via", f"10.0.{i}.1")
    ip("-n", r1, "route", "add", "10.77.0.0/24", "via", "10.0.1.1", "proto", str(PODNET_ROUTE_PROTO))
    n1, n2 = (
        BirdNode(sandbox, ns, BirdSpec(router_id=f"10.0.{i}.2", asn=65000, local_address=f"10.0.{i}.2",
                                       neighbors=(Neighbor("peer", f"10.0.{3 - i}.2", 65000, direct=False),),
                                       originate=(f"10.244.{i}.0/26",), accept=ACCEPT)).start()
        for i, ns in ((1, r1), (2, r2))
    )
    wait_until(lambda: n1.established("peer") and n2.established("peer"), "sessions Established")
    assert wait_until(lambda: n1.routes().get("10.244.2.0/26"), "r2's block at r1")["gateway"] == "10.0.1.1"
    assert wait_until(lambda: n2.routes().get("10.244.1.0/26"), "r1's block at r2")["gateway"] == "10.0.2.1"
    unreachable = json.loads(sandbox.exec(r1, ["ip", "-j", "route", "show", "type", "unreachable"]).stdout)
    assert unreachable == []
    table = "\n".join(line.text for line in n1.ctl.command("show route"))
    assert "0.0.0.0/0" in table and "10.77.0.0/24" not in table  # the underlay's default, not podnet's route
    assert kernel_routes(sandbox, r1, PODNET_ROUTE_PROTO)["10.77.0.0/24"]["gateway"] == "10.0.1.1"


def test_a_peer_that_never_comes_back_holds_the_kernel_only_graceful_restart_wait(sandbox):
    """Started in recovery (-R) with one of two peers dead: BIRD installs the live peer's
    routes once `graceful restart wait` ends (BIRD's own default would be 240 s)."""
    n1, n2, _ = lan(sandbox, 3)
    a = BirdNode(sandbox, n1, node_spec(1, {"b": 2, "dead": 3}, ("10.244.1.0/26",), graceful_restart_wait=3))
    b = BirdNode(sandbox, n2, node_spec(2, {"a": 1, "dead": 3}, ("10.244.2.0/26",)))
    t0 = time.monotonic()
    a.start(recover=True)
    status = "\n".join(line.text for line in a.ctl.command("show status"))
    assert "Graceful restart recovery in progress" in status and re.search(r"Wait timer is [\d.]+/3\b", status)
    b.start()
    wait_until(lambda: "10.244.2.0/26" in a.routes(), "b's block in a's kernel", timeout=60)
    print(f"\nb's block in a's kernel {time.monotonic() - t0:.2f}s after start (graceful restart wait 3 s)")
