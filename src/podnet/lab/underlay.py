"""The lab's plumbing: veths into the rack bridges, machine routes, NIC limits, sysctls.

Shared by the builder (nodes, router, outside, etcd members) and `lab host add` (plain
hosts), so every machine on the fabric is wired the same way. Everything here acts on a
named lab namespace: `ip -n NS` for links and routes; netlink and /proc/sys from the
calling thread, entered into the namespace with `kernel/netns.entered`, which always
returns to where the thread was (also when the block raises), so the root namespace
is never changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from podnet.kernel import gso, netns, rtnl, sysctl
from podnet.lab import topology as topo
from podnet.lab.state import NETNS_DIR, LabError, ip

NIC_GSO = gso.BIG_TCP


@contextmanager
def _netns_fd(ns: str) -> Iterator[int]:
    """An fd of lab namespace `ns`, closed afterwards (never creates one)."""
    fd = netns.open_netns(str(NETNS_DIR / ns))
    try:
        yield fd
    finally:
        os.close(fd)


def set_sysctls(ns: str, settings: dict[str, str | int]) -> None:
    """Write `settings` (sysctl name -> value) in lab namespace `ns`, from this thread."""
    with _netns_fd(ns) as fd, netns.entered(fd):
        for name, value in settings.items():
            sysctl.ensure(name, value)


def route_to_racks(ns: str, racks: int, ipv6: bool = False) -> None:
    """From rack 0, the other racks' segments are behind the router."""
    if racks > 1:
        ip("-n", ns, "route", "add", f"{topo.UNDERLAY_PREFIX}.0.0/16", "via", topo.router_ip(0))
        if ipv6:
            ip("-n", ns, "-6", "route", "add", topo.UNDERLAY6_AGGREGATE, "via", topo.underlay6_of(topo.router_ip(0)))


def machine_routes(ns: str, rack: int, racks: int, ipv6: bool = False) -> None:
    """A node's or plain host's routes: on rack 0 the world is behind the outside
    namespace (and other racks behind the router); elsewhere everything is. `ipv6`:
    the same for the dual-stack underlay."""
    if rack == 0:
        route_to_racks(ns, racks, ipv6)
        gateway = topo.OUTSIDE_UNDERLAY
    else:
        gateway = topo.router_ip(rack)
    ip("-n", ns, "route", "add", "default", "via", gateway)
    if ipv6:
        ip("-n", ns, "-6", "route", "add", "default", "via", topo.underlay6_of(gateway))


def plug(fab: str, fabric_end: str, ns: str, ifname: str, address: str, nic_gso: int, ipv6: bool = False) -> None:
    """A veth from the rack bridge in `fab` into `ns` (named `ifname` there), addressed
    and up, with the lab NICs' GSO limits; `ipv6`: also the IPv6 address read off the
    IPv4 one (topology.underlay6_of), without duplicate address detection (the lab
    numbers every machine, and DAD would hold the address back for a second)."""
    ip("-n", fab, "link", "add", fabric_end, "type", "veth", "peer", "name", ifname, "netns", ns)
    ip("-n", fab, "link", "set", fabric_end, "master", "br0", "up")
    ip("-n", ns, "addr", "add", address, "dev", ifname)
    if ipv6:
        ip("-n", ns, "addr", "add", f"{topo.underlay6_of(address.split('/')[0])}/64", "dev", ifname, "nodad")
    ip("-n", ns, "link", "set", ifname, "up")
    for where, name in ((fab, fabric_end), (ns, ifname)):
        set_nic_gso(where, name, nic_gso)


def set_nic_gso(ns: str, ifname: str, size: int) -> None:
    """Give a lab underlay link the GSO/GRO limits of a NIC that does BIG TCP, as
    server NICs (mlx5, ice, bnxt) do: the agents detect it on their uplink and give
    their pods the same (kernel/gso.py). No ip(8) here knows the IPv4 attributes."""
    with _netns_fd(ns) as fd, rtnl.RtnlSocket(fd) as sock:
        index = sock.link_index(ifname)
        if index is None:
            raise LabError(f"{ifname} is missing in {ns}")
        gso.ensure(sock, index, gso.GsoLimits(size, size))
