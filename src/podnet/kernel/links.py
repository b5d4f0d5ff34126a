"""Typed, idempotent link/address/route operations over a pyroute2 IPRoute that is
already bound to the right namespace (see kernel/netns.py).

Every `ensure_*` tolerates a concurrent creator (EEXIST) and every `delete_*` a
missing object, because CNI ADD/DEL run in parallel and must be idempotent.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.errors import KernelError

IFA_F_NODAD = 0x02
IPAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


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
            ipr.link("add", ifname=name, kind="bridge")
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


def create_veth(ipr: IPRoute, host: str, peer: str, peer_netns_fd: int, mtu: int) -> int:
    """A veth pair whose peer lands directly in the container's namespace."""
    try:
        ipr.link(
            "add",
            ifname=host,
            kind="veth",
            mtu=mtu,
            peer={"ifname": peer, "net_ns_fd": peer_netns_fd, "mtu": mtu},
        )
    except NetlinkError as exc:
        raise _fail(f"cannot create veth {host}", exc) from None
    index = link_index(ipr, host)
    if index is None:  # pragma: no cover
        raise KernelError(f"veth {host} vanished after creation")
    return index


def create_macvlan(
    ipr: IPRoute, name: str, master_index: int, mode: str, mtu: int, netns_fd: int
) -> None:
    try:
        ipr.link(
            "add",
            ifname=name,
            kind="macvlan",
            link=master_index,
            macvlan_mode=mode,
            mtu=mtu,
            net_ns_fd=netns_fd,
        )
    except NetlinkError as exc:
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


def uplink_mtu(ipr: IPRoute) -> int:
    """MTU of the interface that carries the default route (v4, then v6); 1500 if none.
    Detecting it avoids the classic overlay bug: pods bigger than their path."""
    for family in (2, 10):
        for route in ipr.get_default_routes(family=family):
            oif = route.get("RTA_OIF")
            if oif:
                return int(link_attr(ipr, oif, "IFLA_MTU"))
    return 1500


def configure_container_iface(
    ipr: IPRoute,
    tmp_name: str,
    ifname: str,
    ips: Iterable[IPAddr],
    routes: Iterable[tuple[str, str | None]],
) -> tuple[int, str]:
    """Rename the new link to `ifname`, address it, bring it and lo up, add routes.
    Returns (index, mac)."""
    index = link_index(ipr, tmp_name)
    if index is None:
        raise KernelError(f"interface {tmp_name} did not arrive in the container namespace")
    if tmp_name != ifname:
        try:
            ipr.link("set", index=index, ifname=ifname)
        except NetlinkError as exc:
            raise _fail(f"cannot rename {tmp_name} to {ifname}", exc) from None
    for addr in ips:
        ensure_address(ipr, index, addr, nodad=True)
    ipr.link("set", index=index, state="up")
    lo = link_index(ipr, "lo")
    if lo is not None:
        ipr.link("set", index=lo, state="up")
    for dst, gw in routes:
        add_route(ipr, dst, gw, index)
    return index, str(link_attr(ipr, index, "IFLA_ADDRESS"))


def add_route(ipr: IPRoute, dst: str, gw: str | None, oif: int) -> None:
    net = ipaddress.ip_network(dst, strict=False)
    kwargs = {"dst": str(net.network_address), "dst_len": net.prefixlen, "oif": oif}
    if gw:
        kwargs["gateway"] = gw
    kwargs["family"] = 10 if net.version == 6 else 2
    try:
        ipr.route("add", **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise _fail(f"cannot add route {dst} via {gw}", exc) from None


def links_with_prefix(ipr: IPRoute, prefix: str) -> list[str]:
    return [
        name
        for msg in ipr.get_links()
        if (name := msg.get("IFLA_IFNAME")) and name.startswith(prefix)
    ]
