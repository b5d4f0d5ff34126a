"""kernel/rtnl_watch.py: the node loop's flag for 'the kernel changed', in a sandbox."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from podnet.fabric import kernel_state
from podnet.fabric.base import ROUTE_PROTO, FdbSpec, NeighSpec, RouteSpec
from podnet.kernel import netns
from podnet.kernel.rtnl import RtnlSocket
from podnet.kernel.rtnl_watch import KernelChanges
from podnet.lab.sandbox import ip
from podnet.naming import host_veth_name, is_host_veth

pytestmark = pytest.mark.root


def _flag_within(changes: KernelChanges, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if changes.take():
            return True
        time.sleep(0.02)
    return False


@contextmanager
def watching(sandbox, ns: str, ignored: Callable[[str], bool] | None = None) -> Iterator[tuple[KernelChanges, int]]:
    """KernelChanges started in `ns`, and the namespace's fd for more work there; both
    closed after (also when the test fails)."""
    fd = netns.open_netns(sandbox.path(ns))
    changes = KernelChanges(ignored) if ignored else KernelChanges()
    try:
        with netns.entered(fd):
            assert changes.start()
        yield changes, fd
    finally:
        changes.close()
        os.close(fd)


def test_routes_links_and_permanent_neighbours_raise_the_flag_learned_neighbours_do_not(sandbox):
    ns = sandbox.netns("watch")
    ip("-n", ns, "link", "add", "pnw0", "type", "veth", "peer", "name", "pnw1")
    ip("-n", ns, "link", "set", "pnw0", "up")
    with watching(sandbox, ns) as (changes, _fd):
        assert changes.take()  # nothing is known before the first look
        assert not changes.take()
        ip("-n", ns, "neigh", "add", "10.9.0.7", "lladdr", "02:00:00:00:00:07", "dev", "pnw0", "nud", "reachable")
        assert not _flag_within(changes, 0.5)  # what the kernel learns and ages is not the fabric's
        ip("-n", ns, "neigh", "add", "10.9.0.8", "lladdr", "02:00:00:00:00:08", "dev", "pnw0", "nud", "permanent")
        assert _flag_within(changes)
        ip("-n", ns, "addr", "add", "10.9.0.1/24", "dev", "pnw0")
        _flag_within(changes, 0.5)  # the address's own route; drained
        ip("-n", ns, "route", "add", "10.8.0.0/24", "via", "10.9.0.2")
        assert _flag_within(changes)
        assert not changes.take()
        ip("-n", ns, "route", "del", "10.8.0.0/24")
        assert _flag_within(changes)
        ip("-n", ns, "link", "del", "pnw0")
        assert _flag_within(changes)
    ip("-n", ns, "route", "add", "10.7.0.0/24", "dev", "lo")
    assert changes.take()  # closed: nobody can tell, so always a change


def test_a_pod_veth_joining_the_bridge_is_no_change_but_the_bridge_going_down_is(sandbox):
    ns, pod = sandbox.netns("watchb"), sandbox.netns("watchp")
    ip("-n", ns, "link", "add", "pncl0", "type", "bridge")
    ip("-n", ns, "link", "set", "pncl0", "addrgenmode", "none")  # its link-local route comes ~1 s after
    ip("-n", ns, "link", "set", "pncl0", "up")  # its carrier: a change, and not the one looked at here
    with watching(sandbox, ns, is_host_veth) as (changes, _fd):
        for i, attach in enumerate(("0123456789ab", "123456789abc")):
            changes.take()  # the first port gives the bridge its carrier: a change, once
            host = host_veth_name(attach)
            ip("-n", ns, "link", "add", host, "type", "veth", "peer", "name", f"eth{i}", "netns", pod)
            ip("-n", ns, "link", "set", host, "master", "pncl0")
            ip("-n", ns, "link", "set", host, "up")
            ip("-n", pod, "link", "set", f"eth{i}", "up")
            time.sleep(0.3)
        assert not _flag_within(changes, 1.0)  # what every ADD does: the repair pass has nothing to see
        ip("-n", ns, "link", "del", host)
        assert not _flag_within(changes, 0.5)  # ... and every DEL
        ip("-n", ns, "link", "set", "pncl0", "down")
        assert _flag_within(changes)  # the pod network's own device: repair


def test_changes_made_through_an_ignored_writer_and_fdb_additions_do_not_raise_the_flag(sandbox):
    ns = sandbox.netns("watchw")
    ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "wire0")
    ip("-n", ns, "addr", "add", "172.31.0.1/24", "dev", "eth0")
    for dev in ("eth0", "wire0"):
        ip("-n", ns, "link", "set", dev, "up")
    ip("-n", ns, "link", "add", "pnvx0", "type", "vxlan", "id", "1", "local", "172.31.0.1", "dev", "eth0",
       "dstport", "8472", "nolearning")
    ip("-n", ns, "link", "set", "pnvx0", "up")
    with watching(sandbox, ns) as (changes, fd):
        with netns.entered(fd):
            writer = RtnlSocket()
        changes.ignore_sender(writer.port)
        _flag_within(changes, 0.5)  # drained
        peer = (RouteSpec("10.244.2.0/24", "10.244.2.0", "pnvx0", True), NeighSpec("10.244.2.0", "02:00:00:00:00:02",
                "pnvx0"), FdbSpec("02:00:00:00:00:02", "172.31.0.2", "pnvx0"))
        with netns.entered(fd):
            kernel_state.write([kernel_state.Change("replace", spec) for spec in peer], ROUTE_PROTO, writer)
        assert not _flag_within(changes, 0.5)  # the loop's own writes: nothing to repair
        ip("-n", ns, "route", "del", "10.244.2.0/24")  # by hand: a change
        assert _flag_within(changes)
        ip("-n", ns, "neigh", "replace", "10.244.2.0", "lladdr", "02:00:00:00:00:09", "dev", "pnvx0", "nud",
           "permanent")
        assert _flag_within(changes)
        subprocess_bridge(ns, "del", "02:00:00:00:00:02", "172.31.0.2")  # an FDB entry gone: a change
        assert _flag_within(changes)
        with netns.entered(fd):  # the writer's routes, added and deleted: none
            kernel_state.write([kernel_state.Change("replace", peer[0])], ROUTE_PROTO, writer)
            kernel_state.write([kernel_state.Change("del", peer[0])], ROUTE_PROTO, writer)
        assert not _flag_within(changes, 0.5)
        # (a neighbour the writer deletes is announced gone by the kernel, without a sender: a change)
        writer.close()


def subprocess_bridge(ns: str, op: str, mac: str, dst: str) -> None:
    subprocess.run(["bridge", "-n", ns, "fdb", op, mac, "dev", "pnvx0", "dst", dst, "self", "permanent"],
                   check=True, capture_output=True)
