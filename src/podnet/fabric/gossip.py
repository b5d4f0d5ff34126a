"""Gossip fabric, the Weave way: the fast path (kernel VXLAN) over a partial mesh.

Design notes (issue 14; the gossip layer itself is src/podnet/gossip/):
- Peers find each other by gossip and publish who they are connected to; every node
  computes, from the same topology, the first hop towards every other peer (shortest
  path, ties by name: gossip/topology.py `next_hops`). That map is this fabric's
  `routing`, set by the agent before each converge; `desired` stays pure.
- A peer reached directly gets exactly the vxlan fabric's three kernel objects (route
  via its VTEP IP onlink, permanent neighbour, FDB entry to its underlay address), on
  the same device, VNI and port (fabric/vxlan.py), so the fast path is Flannel's.
- A peer reached through a middle peer M: its blocks are routed via M's VTEP IP (M's
  neighbour and FDB entries exist, M being direct). M forwards in the kernel, from its
  VXLAN device back into it, towards the peer by its own routing: the relay never
  leaves the kernel, and each hop decides by its own view, as IP routing does. When
  the direct link returns, the topology changes, the next converge routes direct again.
- A peer with no path is refused ("unreachable"); its routes go, and come back with
  the path.
- Dual stack: each block's IPv6 twin takes its block's path (the VXLAN device via the
  first hop's IPv6 VTEP, or the sleeve's TUN), as in the vxlan fabric.
- The userspace sleeve (fabric/sleeve/: UDP 6784 through a TUN, optionally encrypted)
  takes the peers the routing marks `sleeve`: their routes are left to it here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from podnet.cluster.leases import vtep_ip_of
from podnet.fabric.base import (
    OK,
    Desired,
    FabricContext,
    FdbSpec,
    NeighSpec,
    RouteSpec,
    peer_blocks,
    peer_blocks6,
    valid_peers,
)
from podnet.fabric.sleeve.tun import DEFAULT_MTU as SLEEVE_MTU
from podnet.fabric.sleeve.tun import GSO_MAX_SIZE as SLEEVE_GSO
from podnet.fabric.vxlan import DEVICE, VxlanFabric
from podnet.model.cluster import NodeLease

UNREACHABLE = "refused: unreachable (no path in the gossip topology)"
SLEEVE_DEVICE = "pnsl0"  # agent/gossip_sleeve.py's TUN
SLEEVE_OVERHEAD = 1500 - SLEEVE_MTU  # its headers, AEAD tag and chunking


@dataclass(frozen=True)
class Routing:
    """How this node reaches its peers now: peer -> the peer its packets go to first
    (the peer itself: direct); `sleeve`: peers the userspace sleeve carries."""

    via: Mapping[str, str] = field(default_factory=dict)
    sleeve: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, raw: object) -> Routing:
        """As the gossip service stored it; anything malformed counts as no path."""
        via = raw.get("via") if isinstance(raw, dict) else None
        sleeve = raw.get("sleeve") if isinstance(raw, dict) else None
        if not isinstance(via, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in via.items()):
            via = {}
        if not isinstance(sleeve, list) or not all(isinstance(p, str) for p in sleeve):
            sleeve = []
        return cls(dict(via), frozenset(sleeve))


class GossipFabric(VxlanFabric):
    name = "gossip"

    # Pods send at most what the sleeve's TUN takes: a forwarded GSO packet bigger than
    # the egress device's limit is cut in software (kernel/gso.py), ~6x slower measured.
    gso_cap = SLEEVE_GSO

    def mtu(self, underlay_mtu: int) -> int:
        """One MTU for both paths: the sleeve's (its headers, AEAD tag and chunking cost
        more than VXLAN's 50 bytes), so a peer moving between paths never black-holes."""
        return underlay_mtu - SLEEVE_OVERHEAD

    ipv6_outer = False  # IPv6 pods ride its one VXLAN device (or the sleeve) over the IPv4 underlay

    def __init__(self) -> None:
        super().__init__()
        self.routing = Routing()

    def desired(self, ctx: FabricContext, peers: Iterable[NodeLease], claims: Mapping[str, str]) -> Desired:
        good, refused = valid_peers(ctx, peers, claims)
        want = Desired(peers=dict(refused))
        by_name = {}
        for peer in good:
            mac = peer.backend.get("vtep_mac")
            if peer.fabric != self.name or not isinstance(mac, str):
                want.peers[peer.name] = f"refused: peer runs fabric {peer.fabric!r} without a VTEP MAC"
                continue
            by_name[peer.name] = (peer, mac.lower())
        via = self.routing.via
        for name, (peer, mac) in by_name.items():
            first = via.get(name)
            twins = peer_blocks6(ctx, peer, claims)  # dual stack: the IPv6 blocks take the same path
            if name in self.routing.sleeve:  # the sleeve's TUN; the sleeve picks the first hop
                for net in (*ipaddress.collapse_addresses(peer_blocks(ctx, peer, claims)),
                            *ipaddress.collapse_addresses(twins)):
                    want.routes.add(RouteSpec(str(net), "", SLEEVE_DEVICE))
                if first == name:  # the fast-path probe still goes out through VXLAN (agent/gossip_probe.py)
                    want.neighbours.add(NeighSpec(str(vtep_ip_of(peer.block)), mac, DEVICE))
                    want.fdb.add(FdbSpec(mac, peer.underlay_ip, DEVICE))
                want.peers[name] = "ok: sleeve" if first == name else f"ok: sleeve via {first}"
                continue
            if first is None or first not in by_name or via.get(first) != first:
                want.peers[name] = UNREACHABLE  # no path, or a first hop that is not itself direct
                continue
            hop, hop_mac = by_name[first]
            vtep = str(vtep_ip_of(hop.block))
            for net in ipaddress.collapse_addresses(peer_blocks(ctx, peer, claims)):  # a ring part: few routes
                want.routes.add(RouteSpec(str(net), vtep, DEVICE, onlink=True))
            want.neighbours.add(NeighSpec(vtep, hop_mac, DEVICE))
            hop_twin = ctx.twin(hop.block) if twins and hop.block6 else None
            if hop_twin is not None:  # IPv6 via the first hop's IPv6 VTEP, on the same device
                vtep6 = str(hop_twin.network_address)
                want.routes.update(RouteSpec(str(net), vtep6, DEVICE, onlink=True)
                                   for net in ipaddress.collapse_addresses(twins))
                want.neighbours.add(NeighSpec(vtep6, hop_mac, DEVICE))
            want.fdb.add(FdbSpec(hop_mac, hop.underlay_ip, DEVICE))
            want.peers[name] = OK if first == name else f"ok: via {first}"
        return want
