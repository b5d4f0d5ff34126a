"""Routed attachment, Calico's model: no bridge, every pod is a /32 (/128) behind its
own host veth, and the node routes to it.

Why: with block IPAM a node's pods come from several blocks, and a borrowed address
from another node's block; a bridge with one subnet per node cannot hold them, a
route per pod can. Inside the pod: the address as /32, a link-scope route to the
link-local gateway (169.254.1.1, fe80::1 for IPv6) and the default route via it, and a
permanent neighbour entry mapping the gateway to the host veth's MAC, so the pod never
waits for ARP. On the node: the host veth up with proxy ARP (and no delay), as Calico
sets it, so anything else the pod asks for is answered by the host too, a route
`<address>/32 dev <host veth>` and a permanent neighbour entry for the pod's MAC (the
node needs no address to reach it); both go away with the veth.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.attach.base import AttachContext, Attached, IPAddr, pod_end_gso
from podnet.attach.bridge import check_container_iface, delete_host_veth, host_veth
from podnet.errors import KernelError
from podnet.kernel import links, netns, rtnl, sysctl
from podnet.kernel.gso import GsoLimits
from podnet.kernel.tombstone import Reaper
from podnet.naming import host_veth_name

GATEWAY_V4, GATEWAY_V6 = "169.254.1.1", "fe80::1"


def gateway_for(version: int) -> str:
    """The pods' link-local gateway of one address family."""
    return GATEWAY_V4 if version == 4 else GATEWAY_V6


def host_routes(ips: Iterable[IPAddr]) -> list[tuple[str, None]]:
    """The node's routes to the pod: one host route per pod address."""
    return [(f"{ip.ip}/{ip.max_prefixlen}", None) for ip in ips]


class RoutedAttacher:
    def host_links(self, ctx: AttachContext) -> tuple[str, ...]:
        return (host_veth_name(ctx.attach_id),)

    def add(self, ctx: AttachContext, undo: ExitStack) -> Attached:
        assert ctx.container_fd is not None
        host_name = host_veth_name(ctx.attach_id)
        host_mac, peer_mac = links.random_mac(), links.random_mac()
        ipr = links.warm_iproute(ctx.host_fd)
        undo.callback(self.delete, ctx)  # idempotent: safe before the pair exists
        mtu = ctx.conf.mtu or links.uplink_mtu(ipr)
        # What the uplink delivers, the pod's veth must take (kernel/gso.py): BIG TCP on a
        # NIC that does it; the conflist's gsoMaxSize (a cluster node writes its underlay's) wins.
        size = ctx.conf.gso_max_size
        limits = GsoLimits(size, size) if size else links.uplink_gso(ipr, ctx.host_fd)
        try:
            links.create_veth(ctx.host_fd, host_name, ctx.ifname, ctx.container_fd, mtu, 0,
                              host_mac, peer_mac, False, limits, pod_end_gso(ctx, limits))
        except links.LinkExists:
            if not links.delete_link(ipr, host_name):  # a crashed ADD's leftover holds the host name
                raise KernelError(f"interface {ctx.ifname} already exists in the container namespace") from None
            links.create_veth(ctx.host_fd, host_name, ctx.ifname, ctx.container_fd, mtu, 0,
                              host_mac, peer_mac, False, limits, pod_end_gso(ctx, limits))
        with netns.entered(ctx.host_fd):  # /proc/sys/net is the calling thread's namespace
            sysctl.ensure("net.ipv4.conf", 1, host_name, "proxy_arp")
            sysctl.ensure("net.ipv4.neigh", 0, host_name, "proxy_delay")
        with rtnl.RtnlSocket(ctx.host_fd) as sock:
            index = sock.link_index(host_name)
            if index is None:
                raise KernelError(f"host veth {host_name} vanished")
            # The pod's MAC is known: no ARP from a node that may have no address to ask from.
            sock.configure(index, (), host_routes(ctx.ips), [(str(ip.ip), peer_mac) for ip in ctx.ips])
        families = sorted({ip.version for ip in ctx.ips})
        neighbours = [(gateway_for(v), host_mac) for v in families]
        links.configure_container_iface(ctx.container_fd, ctx.ifname, ctx.ips, ctx.routes, neighbours)
        return Attached(
            interfaces=[
                {"name": host_name, "mac": host_mac},
                {"name": ctx.ifname, "mac": peer_mac, "sandbox": ctx.netns_path},
            ],
            container_index=1,
            host_if=host_name,
        )

    def delete(self, ctx: AttachContext, reaper: Reaper | None = None) -> None:
        delete_host_veth(ctx, reaper)  # the pair goes (or goes down), and the node's routes through it

    def check(self, ctx: AttachContext) -> None:
        ipr, index, host_name = host_veth(ctx)
        missing = _missing_routes(ipr, index, ctx.ips)
        if missing:
            raise KernelError(f"the node has no route {missing[0][0]} dev {host_name}")
        check_container_iface(ctx)


def _missing_routes(ipr: IPRoute, index: int, ips: Iterable[IPAddr]) -> list[tuple[str, None]]:
    """The host routes to the pod's addresses that the node lacks on its veth: the
    kernel's own lookup of each address must leave through the veth."""
    missing = []
    for dst, gw in host_routes(ips):
        try:
            found = ipr.route("get", dst=dst.split("/")[0])
        except NetlinkError:
            found = []
        if not any(r.get("RTA_OIF") == index for r in found):
            missing.append((dst, gw))
    return missing


def repair(host_fd: int, attach_id: str, ips: Iterable[IPAddr]) -> list[str]:
    """Resync: the node's routes to a ready routed pod, re-created when deleted by hand."""
    host_name = host_veth_name(attach_id)
    ipr = links.warm_iproute(host_fd)
    index = links.link_index(ipr, host_name)
    if index is None:
        return []
    missing = _missing_routes(ipr, index, ips)
    if missing:
        with rtnl.RtnlSocket(host_fd) as sock:
            sock.configure(index, (), missing)
    return [f"route {dst} dev {host_name}" for dst, _ in missing]
