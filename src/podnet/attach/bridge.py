"""Bridge attachment: a veth pair, host side on a Linux bridge in the caller's
namespace (which holds the gateway address), container side addressed and routed."""

from __future__ import annotations

import ipaddress
from contextlib import ExitStack

from pyroute2 import IPRoute

from podnet.attach.base import AttachContext, Attached
from podnet.errors import KernelError, UnknownContainer
from podnet.kernel import links, netns
from podnet.naming import host_veth_name


def _tmp_peer_name(attach_id: str) -> str:
    return "pt" + attach_id[:11]


def _write_sysctl(path: str, value: str) -> None:
    """Set a sysctl of the *calling thread's* namespace, only if it differs."""
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise KernelError(f"cannot set {path}: {exc.strerror}") from None


class BridgeAttacher:
    def host_links(self, ctx: AttachContext) -> tuple[str, ...]:
        return (host_veth_name(ctx.attach_id),)

    def add(self, ctx: AttachContext, undo: ExitStack) -> Attached:
        conf = ctx.conf
        host_name = host_veth_name(ctx.attach_id)
        assert ctx.container_fd is not None
        with netns.entered(ctx.host_fd), IPRoute() as ipr:
            mtu = conf.mtu or links.uplink_mtu(ipr)
            bridge = links.ensure_bridge(ipr, conf.bridge, conf.mtu)
            if conf.is_gateway:
                for ip, gw in zip(ctx.ips, ctx.gateways, strict=False):
                    if gw:
                        gw_if = ipaddress.ip_interface(f"{gw}/{ip.network.prefixlen}")
                        links.ensure_address(ipr, bridge, gw_if, nodad=True)
                if any(ip.version == 4 for ip in ctx.ips):
                    _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
                if any(ip.version == 6 for ip in ctx.ips):
                    _write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")
            links.delete_link(ipr, host_name)  # a leftover of a crashed ADD
            index = links.create_veth(ipr, host_name, _tmp_peer_name(ctx.attach_id), ctx.container_fd, mtu)
            undo.callback(self._delete_host, ctx)
            links.attach_to_bridge(ipr, index, bridge, conf.hairpin_mode)
            bridge_mac = links.link_attr(ipr, bridge, "IFLA_ADDRESS")
            host_mac = links.link_attr(ipr, index, "IFLA_ADDRESS")
        with netns.entered(ctx.container_fd), IPRoute() as ipr:
            _, mac = links.configure_container_iface(
                ipr, _tmp_peer_name(ctx.attach_id), ctx.ifname, ctx.ips, ctx.routes
            )
        return Attached(
            interfaces=[
                {"name": conf.bridge, "mac": bridge_mac},
                {"name": host_name, "mac": host_mac},
                {"name": ctx.ifname, "mac": mac, "sandbox": ctx.netns_path},
            ],
            container_index=2,
            host_if=conf.bridge,
        )

    def _delete_host(self, ctx: AttachContext) -> None:
        with netns.entered(ctx.host_fd), IPRoute() as ipr:
            links.delete_link(ipr, host_veth_name(ctx.attach_id))

    def delete(self, ctx: AttachContext) -> None:
        # Deleting either end of a veth removes both; the host end is always reachable.
        self._delete_host(ctx)

    def check(self, ctx: AttachContext) -> None:
        host_name = host_veth_name(ctx.attach_id)
        with netns.entered(ctx.host_fd), IPRoute() as ipr:
            index = links.link_index(ipr, host_name)
            if index is None:
                raise KernelError(f"host veth {host_name} is missing")
            bridge = links.link_index(ipr, ctx.conf.bridge)
            if bridge is None or links.link_attr(ipr, index, "IFLA_MASTER") != bridge:
                raise KernelError(f"{host_name} is not attached to bridge {ctx.conf.bridge}")
        check_container_iface(ctx)


def check_container_iface(ctx: AttachContext) -> None:
    """The container interface exists, is up, and holds exactly the expected addresses."""
    if ctx.container_fd is None:
        raise UnknownContainer(f"network namespace {ctx.netns_path!r} does not exist")
    with netns.entered(ctx.container_fd), IPRoute() as ipr:
        index = links.link_index(ipr, ctx.ifname)
        if index is None:
            raise KernelError(f"interface {ctx.ifname} is missing in the container")
        present = links.addresses(ipr, index)
        missing = {str(ip) for ip in ctx.ips} - present
        if missing:
            raise KernelError(f"{ctx.ifname} lacks address(es) {', '.join(sorted(missing))}")
