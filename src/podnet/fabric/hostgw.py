"""host-gw fabric, after Flannel's host-gw backend.

Design notes:
- No encapsulation: each remote block is routed via the remote node's underlay IP,
  out of the underlay interface. Full underlay MTU, no overhead, the fastest fabric.
- It only works when every peer is on-link (one L2 segment): a next hop in another
  subnet would need the underlay router to know pod routes, which it does not. Such a
  peer is refused with a clear reason (logged, shown in op node.status), never given
  a route that would silently black-hole traffic. Use vxlan across racks.
- Dual stack: a peer's IPv6 blocks go via its IPv6 underlay address, which must be
  on this node's IPv6 segment; without one, IPv4 still works and `partial` in
  node.status says why IPv6 does not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from pyroute2 import IPRoute

from podnet.fabric.base import (
    OK,
    Desired,
    FabricContext,
    RouteNetwork,
    RouteSpec,
    peer_blocks,
    peer_blocks6,
    valid_peers,
)
from podnet.model.cluster import NodeLease


class HostGwFabric(RouteNetwork):
    name = "host-gw"
    fastpath_ok = True  # `--fastpath ebpf`: straight to and from the underlay (fabric/fastpath.py)

    def fastpath_device(self, ctx: FabricContext) -> str:
        return ctx.own.underlay_if

    def setup(self, ipr: IPRoute, ctx: FabricContext) -> None:
        self.setup_fastpath(ipr, ctx)

    def desired(self, ctx: FabricContext, peers: Iterable[NodeLease], claims: Mapping[str, str]) -> Desired:
        good, refused = valid_peers(ctx, peers, claims)
        want = Desired(peers=dict(refused))
        segment = ctx.underlay.network
        for peer in good:
            if peer.fabric != self.name:
                want.peers[peer.name] = f"refused: peer runs fabric {peer.fabric!r}, not host-gw"
                continue
            if ipaddress.IPv4Address(peer.underlay_ip) not in segment:
                want.peers[peer.name] = (
                    f"refused: not on-link: underlay {peer.underlay_ip} is outside this node's "
                    f"segment {segment} (host-gw needs one L2 segment; use vxlan across racks)"
                )
                continue
            for block in peer_blocks(ctx, peer, claims):
                want.routes.add(RouteSpec(str(block), peer.underlay_ip, ctx.own.underlay_if))
            twins = peer_blocks6(ctx, peer, claims)
            if twins and (problem := _v6_next_hop_problem(ctx, peer)) is None:
                want.routes.update(RouteSpec(str(b), str(peer.underlay_ip6), ctx.own.underlay_if) for b in twins)
            elif twins:
                want.partial[peer.name] = problem  # type: ignore[assignment]
            want.peers[peer.name] = OK
        return want


def _v6_next_hop_problem(ctx: FabricContext, peer: NodeLease) -> str | None:
    """Why a dual-stack peer's IPv6 blocks get no route here, or None: host-gw routes
    them via the peer's IPv6 underlay address, on this node's IPv6 segment."""
    if ctx.underlay6 is None:
        return "IPv6 not routed: this node's underlay has no IPv6 address"
    if not peer.underlay_ip6:
        return f"IPv6 not routed: peer {peer.name}'s underlay has no IPv6 address"
    if ipaddress.IPv6Address(peer.underlay_ip6) not in ctx.underlay6.network:
        return (f"IPv6 not routed: not on-link: {peer.underlay_ip6} is outside this node's IPv6 segment "
                f"{ctx.underlay6.network}")
    return None
