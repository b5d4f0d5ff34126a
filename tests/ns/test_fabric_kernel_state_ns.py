"""fabric/kernel_state.py through `RouteNetwork.apply` in a sandbox namespace: routes
(onlink, IPv6, via the underlay), permanent neighbours and VXLAN FDB entries written in
batches; a pass that trusts what the last one left writes only the difference (and
leaves a hand-made change to the reading pass); a failure makes the next pass read;
nothing the fabric does not own is touched."""

from __future__ import annotations

import subprocess

import pytest
from pyroute2 import IPRoute

from podnet.errors import KernelError
from podnet.fabric import kernel_state
from podnet.fabric.base import ROUTE_PROTO, Desired, FdbSpec, NeighSpec, RouteSpec
from podnet.fabric.vxlan import VxlanFabric
from podnet.kernel import netns

pytestmark = pytest.mark.root

MAC2, MAC3 = "02:00:00:00:00:02", "02:00:00:00:00:03"


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def node(sandbox):
    ns = sandbox.netns("fk")
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "wire0")
    ip(ns, "addr", "add", "172.31.0.1/24", "dev", "eth0")
    ip(ns, "addr", "add", "fd00::1/64", "dev", "eth0", "nodad")
    ip(ns, "link", "set", "wire0", "up")
    ip(ns, "link", "set", "eth0", "up")
    ip(ns, "link", "add", "pnvx0", "type", "vxlan", "id", "1", "local", "172.31.0.1", "dev", "eth0",
       "dstport", "8472", "nolearning")
    ip(ns, "link", "set", "pnvx0", "up")
    fd = netns.open_netns(sandbox.path(ns))
    with netns.entered(fd), IPRoute() as ipr:
        yield ns, ipr


def desired(*peers: int, mac: dict[int, str] | None = None) -> Desired:
    want = Desired()
    for n in peers:
        vtep, peer_mac = f"10.244.{n}.0", (mac or {}).get(n, f"02:00:00:00:00:{n:02x}")
        want.routes.add(RouteSpec(f"10.244.{n}.0/24", vtep, "pnvx0", onlink=True))
        want.routes.add(RouteSpec(f"fd10:{n}::/64", f"fd10:{n}::", "pnvx0", onlink=True))
        want.neighbours |= {NeighSpec(vtep, peer_mac, "pnvx0"), NeighSpec(f"fd10:{n}::", peer_mac, "pnvx0")}
        want.fdb.add(FdbSpec(peer_mac, f"172.31.0.{n}", "pnvx0"))
    return want


def kernel(ipr: IPRoute) -> kernel_state.KernelState:
    return kernel_state.read(ipr, ROUTE_PROTO, ("pnvx0",))[0]


def test_apply_writes_every_kind_of_entry_and_reads_back_exactly_what_it_wanted(node):
    ns, ipr = node
    fabric, want = VxlanFabric(), desired(2, 3)
    want.routes.add(RouteSpec("10.244.9.0/24", "172.31.0.9", "eth0"))  # host-gw's shape: via the underlay
    report = fabric.apply(ipr, want)
    assert sorted(report.added) == sorted(
        [f"route 10.244.{n}.0/24 via 10.244.{n}.0 dev pnvx0" for n in (2, 3)]
        + [f"route fd10:{n}::/64 via fd10:{n}:: dev pnvx0" for n in (2, 3)]
        + ["route 10.244.9.0/24 via 172.31.0.9 dev eth0"]
        + [f"neigh {a} 02:00:00:00:00:0{n}" for n in (2, 3) for a in (f"10.244.{n}.0", f"fd10:{n}::")]
        + [f"fdb 02:00:00:00:00:0{n} dst 172.31.0.{n}" for n in (2, 3)])
    assert report.removed == []
    assert kernel(ipr) == kernel_state.wanted(want, ("pnvx0",))
    assert "10.244.2.0/24 via 10.244.2.0 dev pnvx0 onlink" in ip(ns, "-4", "route", "show", "proto", str(ROUTE_PROTO))
    assert "fd10:2::/64 via fd10:2:: dev pnvx0 metric 1024 onlink" in ip(ns, "-6", "route", "show", "proto", str(ROUTE_PROTO))
    assert f"10.244.3.0 lladdr {MAC3} PERMANENT" in ip(ns, "neigh", "show", "dev", "pnvx0")
    fdb = subprocess.run(["bridge", "-n", ns, "fdb", "show", "dev", "pnvx0"], capture_output=True, text=True,
                         check=True).stdout
    assert f"{MAC2} dst 172.31.0.2 self permanent" in fdb
    assert not fabric.apply(ipr, want) and not fabric.apply(ipr, want, trust=True)  # nothing left to do


def test_a_trusting_pass_writes_only_the_difference_and_the_reading_pass_repairs(node):
    ns, ipr = node
    fabric = VxlanFabric()
    fabric.apply(ipr, desired(2, 3))
    ip(ns, "route", "del", "10.244.2.0/24")  # by hand
    assert not fabric.apply(ipr, desired(2, 3), trust=True)  # trusts the last pass: not seen
    assert "route 10.244.2.0/24 via 10.244.2.0 dev pnvx0" in fabric.apply(ipr, desired(2, 3)).added  # reads
    moved = fabric.apply(ipr, desired(2, 4, mac={2: "02:00:00:00:00:22"}), trust=True)  # 3 left, 4 came, 2 moved
    assert sorted(moved.removed) == sorted(["route 10.244.3.0/24", "route fd10:3::/64", "neigh 10.244.2.0",
                                            "neigh fd10:2::", "neigh 10.244.3.0", "neigh fd10:3::",
                                            f"fdb {MAC2}", f"fdb {MAC3}"])
    assert "fdb 02:00:00:00:00:22 dst 172.31.0.2" in moved.added
    assert kernel(ipr) == kernel_state.wanted(desired(2, 4, mac={2: "02:00:00:00:00:22"}), ("pnvx0",))


def test_a_failed_write_raises_and_the_next_pass_reads_the_kernel(node):
    ns, ipr = node
    fabric = VxlanFabric()
    fabric.apply(ipr, desired(2))
    ip(ns, "route", "del", "10.244.2.0/24")
    bad = desired(2)
    bad.routes.add(RouteSpec("10.244.7.0/24", "172.31.0.7", "eth9"))
    with pytest.raises(KernelError, match="device eth9 does not exist"):  # (found before anything is sent)
        fabric.apply(ipr, bad, trust=True)
    # nothing trusted after a failure: this pass reads, and brings back the hand-deleted route
    assert "route 10.244.2.0/24 via 10.244.2.0 dev pnvx0" in fabric.apply(ipr, desired(2), trust=True).added
    refused = desired(3)
    refused.routes.add(RouteSpec("10.244.8.0/24", "192.0.2.1", "eth0"))  # a gateway not on the link
    with pytest.raises(KernelError, match="cannot replace route 10.244.8.0/24 via 192.0.2.1 dev eth0"):
        fabric.apply(ipr, refused, trust=True)
    assert kernel(ipr) == kernel_state.wanted(desired(3), ("pnvx0",))  # the rest of the batch was written
    ip(ns, "neigh", "del", "10.244.3.0", "dev", "pnvx0")
    assert fabric.apply(ipr, desired(3), trust=True).added == [f"neigh 10.244.3.0 {MAC3}"]  # read again
    assert kernel(ipr) == kernel_state.wanted(desired(3), ("pnvx0",))


def test_only_the_fabric_own_entries_are_touched_and_dry_run_changes_nothing(node):
    ns, ipr = node
    ip(ns, "route", "add", "10.244.2.0/24", "via", "172.31.0.50", "dev", "eth0")  # someone else's (proto boot)
    ip(ns, "neigh", "add", "172.31.0.60", "lladdr", "02:00:00:00:00:60", "dev", "eth0", "nud", "permanent")
    fabric = VxlanFabric()
    fabric.apply(ipr, desired(3))
    plan = fabric.apply(ipr, Desired(), dry_run=True)
    assert "route 10.244.3.0/24" in plan.removed and kernel(ipr) == kernel_state.wanted(desired(3), ("pnvx0",))
    fabric.apply(ipr, Desired(), trust=True)
    assert kernel(ipr) == kernel_state.KernelState(frozenset(), frozenset(), frozenset())
    assert "10.244.2.0/24 via 172.31.0.50 dev eth0" in ip(ns, "-4", "route")
    assert "172.31.0.60 lladdr 02:00:00:00:00:60 PERMANENT" in ip(ns, "neigh", "show", "dev", "eth0")


def test_hundreds_of_entries_go_in_several_batches(node):
    ns, ipr = node
    fabric, peers = VxlanFabric(), range(2, 102)
    assert len(fabric.apply(ipr, desired(*peers)).added) == 500  # five entries a peer, batches of 128
    assert kernel(ipr) == kernel_state.wanted(desired(*peers), ("pnvx0",))
    assert len(fabric.apply(ipr, Desired(), trust=True).removed) == 500
    assert not ip(ns, "-4", "route", "show", "proto", str(ROUTE_PROTO)).strip()
