"""Bridge attachment: a veth pair, host side on a Linux bridge in the caller's
namespace (which holds the gateway address), container side addressed and routed.

The hot path is a handful of netlink requests: the bridge's readiness (exists, is up,
holds the gateways, forwarding on, uplink MTU) is remembered per (namespace, bridge)
for a few seconds, and a vanished bridge is detected by the veth request itself
failing, which re-checks and retries once. Resync repairs anything changed by hand.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from podnet.attach.base import AttachContext, Attached, pod_end_gso
from podnet.errors import KernelError, UnknownContainer
from podnet.kernel import links, netns, rtnl, sysctl
from podnet.kernel.gso import DEFAULT as DEFAULT_GSO
from podnet.kernel.gso import GsoLimits
from podnet.kernel.tombstone import Reaper
from podnet.naming import host_veth_name

RECHECK_SECONDS = 5.0  # how long a bridge's readiness (and the uplink MTU/GSO) is trusted


@dataclass
class BridgeState:
    index: int
    mac: str
    uplink_mtu: int
    gso: GsoLimits = DEFAULT_GSO  # the uplink's, given to the bridge and every pod veth
    bridge_gso: GsoLimits = DEFAULT_GSO  # what the bridge has (capped by its ports' TSO)
    gso_retried: bool = False  # raised the bridge's limits again after its first port
    gateways: set[str] = field(default_factory=set)
    checked: float = 0.0


_states: dict[tuple, BridgeState] = {}
_states_lock = threading.Lock()


def _gateways(ctx: AttachContext) -> set[str]:
    out = set()
    for ip, gw in zip(ctx.ips, ctx.gateways, strict=False):
        if gw:
            out.add(f"{gw}/{ip.network.prefixlen}")
    return out


def prepare_bridge(ipr: IPRoute, ctx: AttachContext, force: bool = False) -> BridgeState:
    """The bridge, up, with this network's gateways and forwarding on: from the
    cache when recently verified, else made so (idempotent) and remembered."""
    conf = ctx.conf
    key = (netns.identity(ctx.host_fd), conf.bridge)
    wanted = _gateways(ctx) if conf.is_gateway else set()
    now = time.monotonic()
    with _states_lock:
        state = _states.get(key)
    explicit = GsoLimits(conf.gso_max_size, conf.gso_max_size) if conf.gso_max_size else None
    if (state and not force and now - state.checked < RECHECK_SECONDS and wanted <= state.gateways
            and explicit in (None, state.gso)):
        return state
    index = links.ensure_bridge(ipr, conf.bridge, conf.mtu)
    for gw in wanted:
        links.ensure_address(ipr, index, ipaddress.ip_interface(gw), nodad=True)
    if conf.is_gateway:
        with netns.entered(ctx.host_fd):  # /proc/sys/net is the calling thread's namespace
            if any(ip.version == 4 for ip in ctx.ips):
                sysctl.ensure("net.ipv4.ip_forward", 1)
            if any(ip.version == 6 for ip in ctx.ips):
                sysctl.ensure("net.ipv6.conf.all.forwarding", 1)
    known = state.gateways if state and state.index == index else set()
    # The bridge is the egress device towards this node's pods: it must take what the
    # uplink delivers (kernel/gso.py), and so must each pod's veth (see _create_pair).
    # explicit gsoMaxSize wins, like mtu (a cluster node writes its underlay's)
    limits = explicit or links.uplink_gso(ipr, ctx.host_fd)
    state = BridgeState(
        index=index,
        mac=str(links.link_attr(ipr, index, "IFLA_ADDRESS")),
        uplink_mtu=links.uplink_mtu(ipr),
        gso=limits,
        bridge_gso=links.ensure_gso(ctx.host_fd, index, limits),
        gateways=known | wanted,
        checked=now,
    )
    with _states_lock:
        _states[key] = state
    return state


def forget_bridge(ctx: AttachContext) -> None:
    with _states_lock:
        _states.pop((netns.identity(ctx.host_fd), ctx.conf.bridge), None)


class BridgeAttacher:
    def host_links(self, ctx: AttachContext) -> tuple[str, ...]:
        return (host_veth_name(ctx.attach_id),)

    def add(self, ctx: AttachContext, undo: ExitStack) -> Attached:
        conf = ctx.conf
        host_name = host_veth_name(ctx.attach_id)
        host_mac, peer_mac = links.random_mac(), links.random_mac()
        assert ctx.container_fd is not None
        ipr = links.warm_iproute(ctx.host_fd)
        undo.callback(self._delete_host, ctx)  # idempotent: safe before the pair exists
        state = self._create_pair(ipr, ctx, host_name, host_mac, peer_mac)
        links.configure_container_iface(ctx.container_fd, ctx.ifname, ctx.ips, ctx.routes)
        return Attached(
            interfaces=[
                {"name": conf.bridge, "mac": state.mac},
                {"name": host_name, "mac": host_mac},
                {"name": ctx.ifname, "mac": peer_mac, "sandbox": ctx.netns_path},
            ],
            container_index=2,
            host_if=conf.bridge,
        )

    def _create_pair(
        self, ipr: IPRoute, ctx: AttachContext, host_name: str, host_mac: str, peer_mac: str
    ) -> BridgeState:
        """One veth request; on a stale bridge or a leftover host veth, fix and retry once."""
        state = prepare_bridge(ipr, ctx)
        for attempt in (1, 2):
            mtu = ctx.conf.mtu or state.uplink_mtu
            try:
                links.create_veth(
                    ctx.host_fd, host_name, ctx.ifname, ctx.container_fd, mtu, state.index,
                    host_mac, peer_mac, ctx.conf.hairpin_mode, state.gso, pod_end_gso(ctx, state.gso),
                )
                if state.bridge_gso != state.gso and not state.gso_retried:
                    # A bridge without ports caps its TSO (so its GSO) at 64 KiB; with
                    # this big-TCP port it can take the uplink's limits now. Once: a
                    # port that caps it for good must not cost every ADD a netlink trip.
                    state.bridge_gso = links.ensure_gso(ctx.host_fd, state.index, state.gso)
                    state.gso_retried = True
                return state
            except links.StaleMaster:
                if attempt == 2:
                    raise
                state = prepare_bridge(ipr, ctx, force=True)
            except links.LinkExists:
                # A leftover of a crashed ADD may hold the host name; the container's
                # own interface name is the runtime's business.
                if attempt == 2 or not links.delete_link(ipr, host_name):
                    raise KernelError(
                        f"interface {ctx.ifname} already exists in the container namespace"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _delete_host(self, ctx: AttachContext) -> None:
        delete_host_veth(ctx)

    def delete(self, ctx: AttachContext, reaper: Reaper | None = None) -> None:
        # Deleting either end of a veth removes both; the host end is always reachable.
        delete_host_veth(ctx, reaper)

    def check(self, ctx: AttachContext) -> None:
        host_name = host_veth_name(ctx.attach_id)
        with rtnl.RtnlSocket(ctx.host_fd) as sock:  # a few fixed lookups: no pyroute2 (kernel/rtnl.py)
            index = sock.link_index(host_name)
            if index is None:
                raise KernelError(f"host veth {host_name} is missing")
            bridge = sock.link_index(ctx.conf.bridge)
            if bridge is None or sock.master(index) != bridge:
                raise KernelError(f"{host_name} is not attached to bridge {ctx.conf.bridge}")
        check_container_iface(ctx)


def delete_host_veth(ctx: AttachContext, reaper: Reaper | None = None) -> None:
    """Delete the pod's host veth (and so the pair), if it is there: one request by
    name (kernel/rtnl.py), the kernel's own veth teardown being most of DEL. With a
    `reaper`, both ends are retired at once and the pair deleted just after
    (kernel/tombstone.py): the agent's DEL then answers in about a millisecond."""
    if reaper is not None:
        reaper.bury(ctx.host_fd, ctx.container_fd, host_veth_name(ctx.attach_id), ctx.ifname)
        return
    with rtnl.RtnlSocket(ctx.host_fd) as sock:
        sock.delete_link(host_veth_name(ctx.attach_id))


def host_veth(ctx: AttachContext) -> tuple[IPRoute, int, str]:
    """The pod's host veth for CHECK: the host namespace's IPRoute, its index and its
    name; KernelError when it is missing."""
    host_name = host_veth_name(ctx.attach_id)
    ipr = links.warm_iproute(ctx.host_fd)
    index = links.link_index(ipr, host_name)
    if index is None:
        raise KernelError(f"host veth {host_name} is missing")
    return ipr, index, host_name


def check_container_iface(ctx: AttachContext) -> None:
    """The container interface exists, is up, and holds exactly the expected addresses."""
    if ctx.container_fd is None:
        raise UnknownContainer(f"network namespace {ctx.netns_path!r} does not exist")
    with rtnl.RtnlSocket(ctx.container_fd) as sock:
        index = sock.link_index(ctx.ifname)
        if index is None:
            raise KernelError(f"interface {ctx.ifname} is missing in the container")
        present = sock.addresses(index)
        missing = {str(ip) for ip in ctx.ips} - present
        if missing:
            raise KernelError(f"{ctx.ifname} lacks address(es) {', '.join(sorted(missing))}")
