"""The route-network base every node-to-node fabric shares.

Design notes:
- A fabric is two halves. `desired(ctx, peers, claims)` is pure: from this node's
  lease, its underlay, the cluster CIDR, the peers' leases and the block claims it
  computes the routes, neighbour entries and FDB entries the kernel should hold, plus
  a verdict per peer ("ok" or "refused: why"). A lease is only trusted for a block
  the peer holds the claim of, inside the cluster CIDR (`valid_peers`): no lease can
  route 128.0.0.0/1, the underlay or another node's pods.
  `apply(ipr, desired)` diffs that against the kernel and changes only the difference,
  so running it every few seconds is cheap and repairs drift (a route deleted by hand
  comes back; a stale one goes).
- Ownership is explicit, never guessed: podnet's fabric routes carry their own route
  protocol number (ROUTE_PROTO), and neighbour/FDB entries are only read on the
  fabric's own device. Nothing else in the namespace is ever touched.
- Everything runs in the calling thread's namespace (the agent runs inside its node's
  namespace), on an IPRoute the caller owns.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.cluster.dualstack import Pools
from podnet.defaults import FABRIC_ROUTE_PROTO
from podnet.errors import KernelError
from podnet.fabric import kernel_state
from podnet.fabric.fastpath import FastPath, Tunnel, TunnelPeer, clear
from podnet.fabric.kernel_state import (  # (the specs live there)
    FdbSpec,
    KernelState,
    NeighSpec,
    RouteSpec,
)
from podnet.kernel.rtnl import RtnlSocket
from podnet.model.cluster import NodeLease
from podnet.store.base import Store

log = logging.getLogger("podnet.fabric")

ROUTE_PROTO = FABRIC_ROUTE_PROTO  # tags podnet fabric routes
MAIN_TABLE = 254
OK = "ok"


@dataclass
class Desired:
    routes: set[RouteSpec] = field(default_factory=set)
    neighbours: set[NeighSpec] = field(default_factory=set)
    fdb: set[FdbSpec] = field(default_factory=set)
    peers: dict[str, str] = field(default_factory=dict)  # name -> "ok" | "refused: ..."
    partial: dict[str, str] = field(default_factory=dict)  # an accepted peer's family not routed: why
    blocks: tuple[str, ...] = ()  # this node's own blocks (`own_blocks`), the lease's first


@dataclass(frozen=True)
class FabricContext:
    """This node as the fabric sees it: what a peer's block is checked against."""

    own: NodeLease
    underlay: ipaddress.IPv4Interface  # own underlay address with its prefix
    underlay_mtu: int
    cluster: ipaddress.IPv4Network  # every peer block lies inside
    block_prefix: int  # ... and has exactly this prefix length
    underlay_prefixes: tuple[ipaddress.IPv4Network, ...] = ()  # the underlay's other addresses' prefixes
    cluster6: ipaddress.IPv6Network | None = None  # dual stack: the IPv6 pool (cluster/dualstack.py)
    underlay6: ipaddress.IPv6Interface | None = None  # the underlay's IPv6 address, when it has one

    @property
    def pools(self) -> Pools:
        return Pools(self.cluster, self.block_prefix, self.cluster6)

    def twin(self, block: str | ipaddress.IPv4Network) -> ipaddress.IPv6Network | None:
        """The IPv6 block paired with IPv4 `block` (None: single stack)."""
        return self.pools.twin(block)


@dataclass
class ApplyReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class RouteNetwork:
    """Base of the fabrics: subclasses give `desired`, the MTU, and any device."""

    name = "base"
    device: str | None = None  # the fabric's own device (neigh/FDB live there), if any

    @property
    def devices(self) -> tuple[str, ...]:
        """Every device of the fabric whose neighbour and FDB entries it owns."""
        return (self.device,) if self.device else ()
    route_proto = ROUTE_PROTO  # the routes `apply` owns: only those are ever changed
    gso_cap: int | None = None  # pods' GSO limit at most this (None: the underlay's, kernel/gso.py)

    def mtu(self, underlay_mtu: int) -> int:
        """The pods' MTU over this fabric."""
        return underlay_mtu

    def backend_data(self, node: str) -> dict[str, Any]:
        """Opaque data published in the lease for the peers' `desired`."""
        return {}

    def setup(self, ipr: IPRoute, ctx: FabricContext) -> None:
        """Create/repair the fabric's own devices (none by default)."""

    # -- the eBPF fast path (`--fastpath ebpf`, fabric/fastpath.py): fabrics whose pods are
    # bridge ports and whose peers' blocks are routed out of one device

    fastpath_ok = False
    fastpath: FastPath | None = None
    _bridge: str | None = None  # the pods' bridge (`use_fastpath`)
    _cleared = False  # the kernel path: an earlier agent's programs were looked for (once)

    def fastpath_device(self, ctx: FabricContext) -> str:
        """The device the peers' blocks are routed out of (the fast path's redirect)."""
        raise NotImplementedError

    def fastpath_tunnel(self, ctx: FabricContext) -> Tunnel | None:
        """The tunnel the fast path writes and reads itself (vxlan), None: no tunnel."""
        return None

    def fastpath_peers(self, want: Desired) -> dict[str, TunnelPeer]:
        """Tunnel mode: each peer block's far end, from `want`'s own entries."""
        return {}

    def use_fastpath(self, mode: str, bridge: str | None) -> None:
        """How pods' packets cross to other nodes: "kernel" (every fabric), or "ebpf"
        (the fabrics with `fastpath_ok`, pods on `bridge`)."""
        self._bridge = bridge
        if mode == "kernel":
            self.fastpath = None
        elif mode == "ebpf" and self.fastpath_ok and bridge:
            self.fastpath = FastPath(None, bridge)
        else:
            raise KernelError(f"fabric {self.name} has no {mode!r} fast path (vxlan and host-gw have ebpf)")

    def setup_fastpath(self, ipr: IPRoute, ctx: FabricContext) -> None:
        """Programs loaded and on every pod veth and the device at start-up, before the
        policy service speaks (they pass everything until it says there is no policy)."""
        if self.fastpath is not None:
            self.fastpath.device = self.fastpath_device(ctx)
            self.fastpath.tunnel = self.fastpath_tunnel(ctx)
            self.fastpath.sync(ipr, self.fastpath.routed)
        elif self.fastpath_ok and not self._cleared:  # the kernel path: none of ours may stay behind
            self._cleared = True
            try:
                tunnel = self.fastpath_tunnel(ctx)
                cleared = clear(ipr, self.fastpath_device(ctx), self._bridge, tunnel.underlay if tunnel else None)
            except NetlinkError as exc:
                log.warning("fast path: cannot look for an earlier agent's programs: %s", exc)
                return
            if cleared:
                log.info("fast path off (--fastpath kernel): took podnet's programs off %s", ", ".join(cleared))

    def fastpath_status(self) -> dict[str, Any]:
        """The fast path in use, as node status shows it."""
        return self.fastpath.status() if self.fastpath is not None else {"mode": "kernel"}

    def desired(self, ctx: FabricContext, peers: Iterable[NodeLease], claims: Mapping[str, str]) -> Desired:
        raise NotImplementedError

    def sync(self, ctx: FabricContext, peers: Iterable[NodeLease], want: Desired, state_dir: Path,
             store: Store | None = None) -> str:
        """Configure the fabric's routing daemon from the peers `want` accepted (the
        bgp fabric's BIRD); nothing for fabrics whose routes are all in `want`."""
        return ""

    # -- the shared kernel half (fabric/kernel_state.py)

    _known: KernelState | None = None  # what the last apply left in the kernel (None: read it)

    def forget_kernel_state(self) -> None:
        """The next apply reads the kernel (a device may have been made again)."""
        self._known = None

    def apply(self, ipr: IPRoute, want: Desired, dry_run: bool = False, trust: bool = False,
              writer: RtnlSocket | None = None) -> ApplyReport:
        """Make the kernel hold exactly `want`'s fabric state; report the changes.
        `dry_run`: change nothing, report what would change (`podnet doctor`: entries
        missing are "added", stale ones "removed"). `trust`: diff against what the last
        apply left instead of reading the kernel (the node loop's pass after a store
        change; its repair pass reads, and brings back what was changed by hand).
        `writer`: the socket that writes (the node loop's, whose announcements it ignores)."""
        known = self._known if trust and not dry_run else None
        if known is not None:
            have, target = known, kernel_state.wanted(want, self.devices)
        else:
            have, present = kernel_state.read(ipr, self.route_proto, self.devices)
            target = kernel_state.wanted(want, present)
        todo = kernel_state.changes(have, target)
        if dry_run:
            return ApplyReport([c.what for c in todo if c.op == "replace"], [c.what for c in todo if c.op == "del"])
        self._known = None  # until this write is known to be whole
        added, removed, complete = kernel_state.write(todo, self.route_proto, writer)
        self._known = target if complete else None
        path = self.fastpath
        if path is not None and path.device:  # the peers' IPv4 blocks behind its device
            path.sync(ipr, {r.dst for r in want.routes if r.dev == path.device and ":" not in r.dst},
                      self.fastpath_peers(want))
        return ApplyReport(added, removed)


def valid_peers(
    ctx: FabricContext, peers: Iterable[NodeLease], claims: Mapping[str, str]
) -> tuple[list[NodeLease], dict[str, str]]:
    """Peers worth routing to, and the refusal of each other one: a lease is only a
    claim to a block, and a bad or forged one must never become a route.

    `claims` maps each block of `blocks/` to the node whose claim holds it (read by
    the caller: desired() stays pure). A peer's block must be a block of the cluster
    CIDR (its prefix length exactly), overlap neither this node's block nor any prefix
    of the underlay, and be claimed by that very peer. Blocks of one size either
    coincide or are disjoint, and a block has one claim, so two accepted peers never
    overlap: of two leases for one block, the claim's owner wins."""
    good, refused = [], {}
    for peer in sorted(peers, key=lambda p: p.name):
        if peer.name == ctx.own.name:
            continue
        try:
            net = peer.network
            ipaddress.IPv4Address(peer.underlay_ip)
        except ValueError as exc:
            refused[peer.name] = f"refused: malformed lease ({exc})"
            continue
        problem = block_problem(ctx, net) or _claim_problem(net, peer.name, claims) or _twin_problem(ctx, peer)
        if problem:
            refused[peer.name] = f"refused: {problem}"
            continue
        good.append(peer)
    return good, refused


def block_problem(ctx: FabricContext, net: ipaddress.IPv4Network) -> str | None:
    """Why `net` cannot be a peer's block on this node, or None: the shape and place
    checks of `valid_peers` (the claim aside)."""
    if not net.subnet_of(ctx.cluster):
        return f"block {net} is outside the cluster CIDR {ctx.cluster}"
    if net.prefixlen != ctx.block_prefix:
        return f"block {net} is not a /{ctx.block_prefix} block of the cluster CIDR {ctx.cluster}"
    if net.overlaps(ctx.own.network):
        return f"block {net} overlaps this node's {ctx.own.network}"
    for prefix in (ctx.underlay.network, *ctx.underlay_prefixes):
        if net.overlaps(prefix):
            return f"block {net} overlaps the underlay prefix {prefix}"
    return None


def own_blocks(ctx: FabricContext, claims: Mapping[str, str]) -> tuple[str, ...]:
    """This node's blocks: its lease's, then the other blocks of the pool its claims
    hold (block IPAM, ipam/blocks.py `blocks_of`), lowest first."""
    from podnet.ipam.blocks import blocks_of
    from podnet.ipam.config import BlockAffinity

    held = blocks_of(claims, ctx.own.name, BlockAffinity(ctx.own.name, ctx.cluster, ctx.block_prefix))
    return tuple(dict.fromkeys([ctx.own.block, *(str(b) for b in held)]))


def peer_blocks(ctx: FabricContext, peer: NodeLease, claims: Mapping[str, str]) -> list[ipaddress.IPv4Network]:
    """Every block an accepted peer holds: its lease's, then the others its claims
    give it as it grows (block IPAM, ipam/blocks.py), each checked as the lease's is."""
    out = [peer.network]
    for block in _blocks_by_owner(claims).get(peer.name, ()):
        if block == peer.block:
            continue
        try:
            net = ipaddress.IPv4Network(block)
        except ValueError:
            continue
        if block_problem(ctx, net) is None:
            out.append(net)
    return out


_by_owner: tuple[dict[str, str], dict[str, list[str]]] = ({}, {})  # the claims last indexed, and their index


def _blocks_by_owner(claims: Mapping[str, str]) -> dict[str, list[str]]:
    """owner -> its claimed blocks, lowest first, built once per claims listing: every
    peer scanning every claim made a pass O(nodes^2) (1.3 CPU-s per agent while a
    100-node lab came up). Reused while the claims compare equal (one C-level compare)."""
    global _by_owner
    indexed, index = _by_owner
    if indexed != claims:
        index = {}
        for block, owner in sorted(claims.items()):
            index.setdefault(owner, []).append(block)
        _by_owner = (dict(claims), index)
    return index


def peer_blocks6(ctx: FabricContext, peer: NodeLease, claims: Mapping[str, str]) -> list[ipaddress.IPv6Network]:
    """The IPv6 twins of an accepted dual-stack peer's blocks (none when this node or
    the peer is single stack)."""
    if ctx.cluster6 is None or not peer.block6:
        return []
    return [twin for block in peer_blocks(ctx, peer, claims) if (twin := ctx.twin(block)) is not None]


def _twin_problem(ctx: FabricContext, peer: NodeLease) -> str | None:
    """A dual-stack peer's IPv6 block must be its IPv4 block's twin in this cluster's pools."""
    if ctx.cluster6 is None or not peer.block6:
        return None
    twin = ctx.twin(peer.block)
    if str(twin) != peer.block6:
        return f"IPv6 block {peer.block6} is not the twin of {peer.block} in {ctx.cluster6} (expected {twin})"
    return None


def _claim_problem(net: ipaddress.IPv4Network, name: str, claims: Mapping[str, str]) -> str | None:
    owner = claims.get(str(net))
    if owner is None:
        return f"block {net} has no claim under blocks/"
    if owner != name:
        return f"block {net} is claimed by node {owner}"
    return None
