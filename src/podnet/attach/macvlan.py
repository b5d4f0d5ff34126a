"""Macvlan attachment: the container gets its own MAC on a parent ("master") link,
so it sits directly on the parent's L2 segment with no bridge and no NAT."""

from __future__ import annotations

from contextlib import ExitStack

from pyroute2 import IPRoute

from podnet.attach.base import AttachContext, Attached
from podnet.attach.bridge import check_container_iface
from podnet.errors import InvalidConfig
from podnet.kernel import gso, links, netns, rtnl, vlan
from podnet.kernel.tombstone import Reaper


def _master_index(ipr: IPRoute, master: str | None) -> int:
    if master:
        index = links.link_index(ipr, master)
        if index is None:
            raise InvalidConfig(f"macvlan master {master!r} does not exist")
        return index
    for route in ipr.get_default_routes(family=2):
        if route.get("RTA_OIF"):
            return int(route.get("RTA_OIF"))
    raise InvalidConfig("macvlan needs 'master': no default route to pick an uplink from")


def _gso_limits(ctx: AttachContext, master: int) -> gso.GsoLimits:
    """BIG TCP for the child: its master's GSO/GRO limits (kernel/gso.py), at most the
    config's `gsoMaxSize`; more than the master takes would be segmented in software."""
    with rtnl.RtnlSocket(ctx.host_fd) as sock:
        limits = gso.limits_of(sock, master)
    if ctx.conf.gso_max_size:
        limits = gso.GsoLimits(min(limits.ipv6, ctx.conf.gso_max_size), min(limits.ipv4, ctx.conf.gso_max_size))
    return limits


class MacvlanAttacher:
    def host_links(self, ctx: AttachContext) -> tuple[str, ...]:
        return ()

    def add(self, ctx: AttachContext, undo: ExitStack) -> Attached:
        assert ctx.container_fd is not None
        with netns.entered(ctx.host_fd), IPRoute() as ipr:
            master = _master_index(ipr, ctx.conf.master)
            if ctx.conf.vlan:
                parent = str(links.link_attr(ipr, master, "IFLA_IFNAME"))
                master = vlan.ensure_vlan(ipr, master, parent, ctx.conf.vlan)
            master_mtu = int(links.link_attr(ipr, master, "IFLA_MTU"))
            mtu = ctx.conf.mtu or master_mtu
            if mtu > master_mtu:
                raise InvalidConfig(f"mtu {mtu} is larger than the master's mtu {master_mtu}")
            mac = links.random_mac()
            links.create_macvlan(ipr, ctx.ifname, master, ctx.conf.macvlan_mode, mtu, ctx.container_fd, mac)
            if ctx.conf.macvlan_mode == "passthru":  # the kernel gives it the master's MAC instead
                mac = str(links.link_attr(ipr, master, "IFLA_ADDRESS"))
            limits = _gso_limits(ctx, master)
        undo.callback(self.delete, ctx)
        if limits.big:  # a new macvlan has the legacy 64 KiB limits whatever its master takes
            with netns.entered(ctx.container_fd), IPRoute() as inside:
                index = links.link_index(inside, ctx.ifname)
            if index is not None:
                links.ensure_gso(ctx.container_fd, index, limits)
        links.configure_container_iface(ctx.container_fd, ctx.ifname, ctx.ips, ctx.routes)
        return Attached(
            interfaces=[{"name": ctx.ifname, "mac": mac, "sandbox": ctx.netns_path}],
            container_index=0,
        )

    def delete(self, ctx: AttachContext, reaper: Reaper | None = None) -> None:
        # (no tombstone: a macvlan lives only in the container, deleted there at once)
        if ctx.container_fd is None:
            return  # the namespace is gone, and the macvlan with it
        with netns.entered(ctx.container_fd), IPRoute() as ipr:
            links.delete_link(ipr, ctx.ifname)

    def check(self, ctx: AttachContext) -> None:
        check_container_iface(ctx)
