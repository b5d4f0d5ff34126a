"""Typed, idempotent link/address/route operations over a pyroute2 IPRoute that is
already bound to the right namespace (see kernel/netns.py).

Every `ensure_*` tolerates a concurrent creator (EEXIST) and every `delete_*` a
missing object, because CNI ADD/DEL run in parallel and must be idempotent.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.errors import KernelError
from podnet.kernel import gso, netns, rtnl

IFA_F_NODAD = 0x02


class LinkExists(KernelError):
    """A link of that name is already there."""


class StaleMaster(KernelError):
    """The bridge we meant to enslave to is gone (a cached index went stale)."""
IPAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


_warm = threading.local()
WARM_PER_THREAD = 4


def warm_iproute(netns_fd: int) -> IPRoute:
    """An IPRoute bound to `netns_fd`'s namespace, kept open per worker thread.

    pyroute2 0.9 keeps sockets per thread, so the cache is per thread too; the agent's
    fixed worker pool makes it pay off. A held socket pins its namespace, so the
    (dev, inode) key cannot be reused by another namespace while it is cached.
    """
    cache: OrderedDict = _warm.__dict__.setdefault("sockets", OrderedDict())
    key = netns.identity(netns_fd)
    ipr = cache.get(key)
    if ipr is None:
        with netns.entered(netns_fd):
            ipr = IPRoute()
        cache[key] = ipr
        while len(cache) > WARM_PER_THREAD:
            cache.popitem(last=False)[1].close()
    cache.move_to_end(key)
    return ipr


def _fail(what: str, exc: NetlinkError) -> KernelError:
    return KernelError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}")


def link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_attr(ipr: IPRoute, index: int, attr: str):
    return ipr.get_links(index)[0].get(attr)


def link_kind(ipr: IPRoute, index: int) -> str | None:
    info = ipr.get_links(index)[0].get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
    return info


def ensure_bridge(ipr: IPRoute, name: str, mtu: int | None) -> int:
    """The bridge `name`, created if missing, up. An existing non-bridge is an error."""
    index = link_index(ipr, name)
    if index is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", address=random_mac())
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _fail(f"cannot create bridge {name}", exc) from None
        index = link_index(ipr, name)
        if index is None:  # pragma: no cover - deleted right after creation
            raise KernelError(f"bridge {name} vanished while being created")
    kind = link_kind(ipr, index)
    if kind != "bridge":
        raise KernelError(f"interface {name} exists but is a {kind or 'non-bridge'} device")
    if mtu and link_attr(ipr, index, "IFLA_MTU") != mtu:
        ipr.link("set", index=index, mtu=mtu)
    ipr.link("set", index=index, state="up")
    return index


def ensure_address(ipr: IPRoute, index: int, addr: IPAddr, nodad: bool = False) -> None:
    try:
        kwargs = {"flags": IFA_F_NODAD} if nodad and addr.version == 6 else {}
        ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise _fail(f"cannot add address {addr}", exc) from None


def addresses(ipr: IPRoute, index: int) -> set[str]:
    """'addr/prefix' strings configured on the link."""
    out = set()
    for msg in ipr.get_addr(index=index):
        out.add(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
    return out


def random_mac() -> str:
    """A random locally administered unicast MAC. Choosing it ourselves saves reading
    it back after creation, and a bridge with a fixed MAC never changes it when ports
    come and go."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def create_veth(
    host_netns_fd: int,
    host: str,
    peer: str,
    peer_netns_fd: int,
    mtu: int,
    master: int,
    host_mac: str,
    peer_mac: str,
    hairpin: bool,
    limits: gso.GsoLimits = gso.DEFAULT,
    peer_limits: gso.GsoLimits | None = None,
) -> None:
    """A veth pair in one request (see kernel/rtnl.py): the host end enslaved to
    `master` and up, the peer created directly in the container's namespace under its
    final name (with `peer_limits`, else `limits`); then hairpin mode if asked."""
    with rtnl.RtnlSocket(host_netns_fd) as sock:
        peer_attrs = None if peer_limits is None or peer_limits == limits else peer_limits.link_attrs()
        code = sock.create_veth(host, peer, peer_netns_fd, mtu, master, host_mac, peer_mac, limits.link_attrs(),
                                peer_attrs)
        if code == errno.EEXIST:
            raise LinkExists(f"{host} or {peer} already exists")
        if code in (errno.ENODEV, errno.EINVAL):
            raise StaleMaster(f"bridge index {master} is gone: {os.strerror(code)}")
        if code:
            raise KernelError(f"cannot create veth {host}: {os.strerror(code)}")
        if hairpin:
            sock.set_hairpin(host)


def create_macvlan(
    ipr: IPRoute, name: str, master_index: int, mode: str, mtu: int, netns_fd: int, mac: str
) -> None:
    """A macvlan on `master_index`, created directly in the container's namespace."""
    try:
        ipr.link(
            "add",
            ifname=name,
            kind="macvlan",
            link=master_index,
            macvlan_mode=mode,
            mtu=mtu,
            net_ns_fd=netns_fd,
            address=mac,
        )
    except NetlinkError as exc:
        if exc.code == errno.EINVAL:  # the MTU is checked before: a passthru conflict
            master = link_attr(ipr, master_index, "IFLA_IFNAME")
            raise KernelError(
                f"cannot create macvlan {name} ({mode} mode) on {master}: a passthru macvlan takes its master "
                "whole, and the master already has one, or this one is passthru and the master has macvlans"
            ) from None
        raise _fail(f"cannot create macvlan {name}", exc) from None


def attach_to_bridge(ipr: IPRoute, index: int, bridge_index: int, hairpin: bool) -> None:
    ipr.link("set", index=index, master=bridge_index)
    if hairpin:
        ipr.brport("set", index=index, mode=1)
    ipr.link("set", index=index, state="up")


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete `name` if it exists; True when something was deleted."""
    index = link_index(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise _fail(f"cannot delete {name}", exc) from None
    return True


def uplink_index(ipr: IPRoute) -> int | None:
    """The interface that carries the default route (v4, then v6), if any."""
    for family in (2, 10):
        for route in ipr.get_default_routes(family=family):
            oif = route.get("RTA_OIF")
            if oif:
                return int(oif)
    return None


def uplink_mtu(ipr: IPRoute) -> int:
    """MTU of the uplink (see uplink_index); 1500 if none.
    Detecting it avoids the classic overlay bug: pods bigger than their path."""
    oif = uplink_index(ipr)
    return int(link_attr(ipr, oif, "IFLA_MTU")) if oif else 1500


def uplink_gso(ipr: IPRoute, netns_fd: int | None) -> gso.GsoLimits:
    """GSO limits of the uplink (see kernel/gso.py): what pods on this node may send."""
    with rtnl.RtnlSocket(netns_fd) as sock:
        return gso.limits_of(sock, uplink_index(ipr))


def ensure_gso(netns_fd: int | None, index: int, wanted: gso.GsoLimits) -> gso.GsoLimits:
    with rtnl.RtnlSocket(netns_fd) as sock:
        return gso.ensure(sock, index, wanted)


def configure_container_iface(
    netns_fd: int,
    ifname: str,
    ips: Iterable[IPAddr],
    routes: Iterable[tuple[str, str | None]],
    neighbours: Iterable[tuple[str, str]] = (),
) -> int:
    """Address `ifname` in namespace `netns_fd`, bring it up, add permanent neighbour
    entries (ip, mac) and routes (one batch, see kernel/rtnl.py); return its index. Loopback is the runtime's business (podman and
    the CNI `loopback` plugin bring it up)."""
    with rtnl.RtnlSocket(netns_fd) as sock:
        index = sock.link_index(ifname)
        if index is None:
            raise KernelError(f"interface {ifname} did not arrive in the container namespace")
        sock.configure(index, ips, routes, neighbours)
    return index


def links_with_prefix(ipr: IPRoute, prefix: str) -> list[str]:
    return [
        name
        for msg in ipr.get_links()
        if (name := msg.get("IFLA_IFNAME")) and name.startswith(prefix)
    ]
