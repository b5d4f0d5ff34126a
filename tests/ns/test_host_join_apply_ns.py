"""hostjoin/apply.py in a sandbox namespace: reading the underlay, applying a plan
idempotently (a route deleted by hand comes back, one the plan dropped goes, a second
run changes nothing), a new address replacing the old one, and `undo` leaving only
what was there before."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest
from pyroute2 import IPRoute

from podnet.hostjoin.apply import apply_plan, local_host, undo
from podnet.hostjoin.plan import HostNet, HostRoute, JoinError, JoinPlan
from podnet.kernel import netns

pytestmark = pytest.mark.root

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def host(sandbox):
    ns = sandbox.netns("vm")
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "wire0")  # (no dummy module on this kernel)
    ip(ns, "addr", "add", "172.31.0.190/24", "dev", "eth0")
    ip(ns, "link", "set", "wire0", "up")
    ip(ns, "link", "set", "eth0", "up")
    ip(ns, "route", "add", "default", "via", "172.31.0.1")
    fd = netns.open_netns(sandbox.path(ns))
    with netns.entered(fd), IPRoute() as ipr:
        yield ns, ipr


def routes(ns: str) -> set[str]:
    return {line.strip() for line in ip(ns, "-4", "route", "show", "proto", "79").splitlines()}


def plan(pod_ip: str = "10.244.2.2", *blocks: str, prefix: int = 32) -> JoinPlan:
    return JoinPlan("vm1", ipaddress.IPv4Interface(f"{pod_ip}/{prefix}"), "eth0",
                    tuple(HostRoute(b, f"172.31.0.{10 + i}", "eth0", pod_ip) for i, b in enumerate(blocks)))


def test_reads_the_underlay_and_refuses_a_missing_interface(host):
    ns, ipr = host
    assert local_host(ipr, None, CLUSTER) == HostNet("eth0", ipaddress.IPv4Interface("172.31.0.190/24"), "172.31.0.1")
    apply_plan(ipr, plan("10.244.2.2"))
    assert local_host(ipr, "eth0", CLUSTER).address.ip == ipaddress.IPv4Address("172.31.0.190")  # not the pod address
    with pytest.raises(JoinError, match="--underlay: no interface 'eth9'"):
        local_host(ipr, "eth9", CLUSTER)


def test_apply_is_idempotent_repairs_drift_and_undo_removes_it_all(host):
    ns, ipr = host
    before = ip(ns, "-4", "route")
    want = plan("10.244.2.2", "10.244.0.0/24", "10.244.1.0/24")
    assert len(apply_plan(ipr, want)) == 3
    assert routes(ns) == {"10.244.0.0/24 via 172.31.0.10 dev eth0 src 10.244.2.2",
                          "10.244.1.0/24 via 172.31.0.11 dev eth0 src 10.244.2.2"}
    assert apply_plan(ipr, want) == []  # nothing twice
    ip(ns, "route", "del", "10.244.1.0/24")
    assert apply_plan(ipr, want) == ["route 10.244.1.0/24 via 172.31.0.11 src 10.244.2.2"]
    assert apply_plan(ipr, plan("10.244.2.2", "10.244.0.0/24")) == ["removed route 10.244.1.0/24"]
    assert "10.244.2.2/32" in ip(ns, "-4", "addr", "show", "dev", "eth0")
    moved = apply_plan(ipr, plan("10.244.0.3", prefix=16), stale_address="10.244.2.2")  # macvlan: on the segment
    assert "removed address 10.244.2.2/32" in moved and routes(ns) == set()
    assert "10.244.0.3/16" in ip(ns, "-4", "addr", "show", "dev", "eth0")
    assert undo(ipr, "10.244.0.3") == ["removed address 10.244.0.3/16"]
    assert ip(ns, "-4", "route") == before and "10.244." not in ip(ns, "-4", "addr")
