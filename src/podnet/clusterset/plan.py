"""What one node of a cluster should hold to reach the other clusters of its set (pure).

    every node        routes to each peer's cluster and service CIDRs (proto 80):
                        the active gateway: via the peer's tunnel next hop on pncs0
                        any other node: via the active gateway's underlay address
                      `ip podnet-clusterset`: traffic from our pods to a peer's ranges
                        keeps its source (an identity SNAT ahead of the pods' masquerade)
    the active gateway  pncs0 (VXLAN, VNI 4097, UDP 4800, from its tunnel address),
                        per peer: a next hop 169.254.<i>.1 -> the peer cluster's tunnel
                        MAC -> the peer's active gateway's tunnel address (FDB)

Why a MAC per cluster, not per node: a peer's gateway can fail over to another of its
nodes; only the FDB entry (where to send) changes, never the next hop or the MAC, so
a failover is one FDB update on each side.
Why the identity SNAT: pods masquerade toward everything outside their cluster CIDR
(the conflist's ipMasq); a peer must see our pods' own addresses, or its replies would
go to a node address that means a node of its own. NAT chains run until one decides,
so deciding "no change" first keeps the pods' per-pod rules as they are.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from podnet.clusterset.model import ActiveGateway, ClusterInfo, ClusterPeer
from podnet.fabric.base import Desired, FdbSpec, NeighSpec, RouteSpec

DEVICE = "pncs0"
VNI = 4097
PORT = 4800
OVERHEAD = 50  # VXLAN over IPv4
TABLE = "podnet-clusterset"
NEXT_HOPS = ipaddress.IPv4Network("169.254.0.0/16")  # peer i: 169.254.<i + 1>.1 (link-local, never routed)
MAX_PEERS = 250


def cluster_mac(cluster: str) -> str:
    """A stable, locally administered unicast MAC for `cluster`'s tunnel end."""
    octets = bytearray(hashlib.sha256(f"podnet-clusterset\0{cluster}".encode()).digest()[:6])
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def next_hop(index: int) -> str:
    return str(NEXT_HOPS.network_address + ((index + 1) << 8) + 1)


@dataclass(frozen=True)
class Tunnel:
    """pncs0 as the active gateway runs it."""

    local: str  # the gateway's tunnel address
    mac: str


@dataclass
class NodePlan:
    tunnel: Tunnel | None = None
    fabric: Desired = field(default_factory=Desired)  # routes / neighbours / FDB, applied like a fabric's
    remote_cidrs: tuple[str, ...] = ()  # the nft set: every peer's ranges
    peers: dict[str, str] = field(default_factory=dict)  # peer -> "ok" or why not (yet)


def plan_node(node: str, underlay_if: str, me: ClusterInfo, peers: Sequence[ClusterPeer],
              active: ActiveGateway | None, remote_active: Mapping[str, ActiveGateway | None]) -> NodePlan:
    """The plan of `node` (its underlay interface `underlay_if`), given our cluster, its
    peers, our gateway in charge (None: nobody yet) and, when that is this node, each
    peer's gateway in charge (`remote_active`, by peer name; None: not known)."""
    plan = NodePlan(remote_cidrs=tuple(sorted({c for p in peers for c in p.info.cidrs})))
    if not peers:
        return plan
    if len(peers) > MAX_PEERS:
        raise ValueError(f"at most {MAX_PEERS} peers")
    gateway_here = active is not None and active.node == node
    if gateway_here:
        assert active is not None
        plan.tunnel = Tunnel(active.address, cluster_mac(me.name))
    for index, peer in enumerate(sorted(peers, key=lambda p: p.name)):
        if active is None:
            plan.peers[peer.name] = f"no gateway of {me.name} in charge yet"
            continue
        if not gateway_here:
            for cidr in peer.info.cidrs:
                plan.fabric.routes.add(RouteSpec(cidr, active.underlay, underlay_if, onlink=True))
            plan.peers[peer.name] = f"ok (via {active.node})"
            continue
        theirs = remote_active.get(peer.name)
        if theirs is None:
            plan.peers[peer.name] = f"no gateway of {peer.name} in charge (or its store does not answer)"
            continue
        hop, mac = next_hop(index), cluster_mac(peer.name)
        for cidr in peer.info.cidrs:
            plan.fabric.routes.add(RouteSpec(cidr, hop, DEVICE, onlink=True))
        plan.fabric.neighbours.add(NeighSpec(hop, mac, DEVICE))
        plan.fabric.fdb.add(FdbSpec(mac, theirs.address, DEVICE))
        plan.peers[peer.name] = f"ok (tunnel to {theirs.node} {theirs.address})"
    return plan


def removal_script() -> str:
    """`ip podnet-clusterset` gone (and no error if it never was)."""
    return f"add table ip {TABLE}\ndelete table ip {TABLE}\n"


def nft_script(me: ClusterInfo, remote_cidrs: Sequence[str]) -> str:
    """The whole `ip podnet-clusterset` table, replaced in one transaction (none when
    there is no peer: the table is deleted)."""
    if not remote_cidrs:
        return removal_script()
    elements = ", ".join(str(ipaddress.IPv4Network(c)) for c in remote_cidrs)
    own = ipaddress.IPv4Network(me.cluster_cidr)
    lines = [
        f"add table ip {TABLE}",
        f"delete table ip {TABLE}",
        f"add table ip {TABLE}",
        f"add set ip {TABLE} peers {{ type ipv4_addr; flags interval; elements = {{ {elements} }}; }}",
        f"add chain ip {TABLE} postrouting {{ type nat hook postrouting priority srcnat - 5; policy accept; }}",
        f'add rule ip {TABLE} postrouting ip saddr {own} ip daddr @peers snat to ip saddr '
        f'comment "our pods keep their address toward the clusterset"',
    ]
    return "\n".join(lines) + "\n"
