"""What one node of a cluster should hold to reach the other clusters of its set (pure).

    every node        routes to each peer's routed ranges (proto 80): its cluster and
                      service CIDRs, or only its global CIDR when it has one:
                        the active gateway: via the peer's tunnel next hop on pncs0
                        any other node: via the active gateway's underlay address
                      `ip podnet-clusterset`: traffic from our pods to a peer's ranges
                        keeps its source (an identity SNAT ahead of the pods' masquerade),
                        and so does traffic from the clusterset (no external-IP masquerade)
    the active gateway  pncs0 (VXLAN, VNI 4097, UDP 4800, from its tunnel address),
                        per peer: a next hop 169.254.<i>.1 -> the peer cluster's tunnel
                        MAC -> the peer's active gateway's tunnel address (FDB);
                      a peer joined with --encrypt: its ranges into pnslcs0 instead,
                        the gossip fabric's sleeve (UDP 6785, AEAD keys from the pair's
                        secret) to the peer's gateway in charge;
                      with a global CIDR (globalnet.py): our pods' sources mapped to
                        their global IPs on the way into pncs0, their global IPs mapped
                        back on the way out of it (nft prefix NAT, one rule each way)

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
SLEEVE_DEVICE = "pnslcs0"  # a TUN: the gossip fabric's sleeve, encrypted, to the peers joined with --encrypt
SLEEVE_PORT = 6785
TUNNEL_DEVICES = (DEVICE, SLEEVE_DEVICE)
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
class SleevePlan:
    """The encrypted tunnel as the gateway in charge runs it: it listens on its tunnel
    address; each sleeve peer's ranges go to that peer's gateway in charge."""

    listen: str
    peers: dict[str, str] = field(default_factory=dict)  # peer cluster -> its gateway's tunnel address
    routes: dict[str, str] = field(default_factory=dict)  # routed range -> peer cluster


@dataclass
class NodePlan:
    tunnel: Tunnel | None = None
    sleeve: SleevePlan | None = None  # None: no peer of ours is joined encrypted (or we are no gateway)
    fabric: Desired = field(default_factory=Desired)  # routes / neighbours / FDB, applied like a fabric's
    remote_cidrs: tuple[str, ...] = ()  # the nft set: every peer's ranges
    peers: dict[str, str] = field(default_factory=dict)  # peer -> "ok" or why not (yet)


def plan_node(node: str, underlay_if: str, me: ClusterInfo, peers: Sequence[ClusterPeer],
              active: ActiveGateway | None, remote_active: Mapping[str, ActiveGateway | None]) -> NodePlan:
    """The plan of `node` (its underlay interface `underlay_if`), given our cluster, its
    peers, our gateway in charge (None: nobody yet) and, when that is this node, each
    peer's gateway in charge (`remote_active`, by peer name; None: not known)."""
    plan = NodePlan(remote_cidrs=tuple(sorted({c for p in peers for c in p.info.routed})))
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
            for cidr in peer.info.routed:
                plan.fabric.routes.add(RouteSpec(cidr, active.underlay, underlay_if, onlink=True))
            plan.peers[peer.name] = f"ok (via {active.node})"
            continue
        theirs = remote_active.get(peer.name)
        if theirs is None:
            plan.peers[peer.name] = f"no gateway of {peer.name} in charge (or its store does not answer)"
            continue
        if peer.tunnel == "sleeve":
            plan.sleeve = plan.sleeve or SleevePlan(active.address)
            plan.sleeve.peers[peer.name] = theirs.address
            for cidr in peer.info.routed:
                plan.sleeve.routes[cidr] = peer.name
                plan.fabric.routes.add(RouteSpec(cidr, "", SLEEVE_DEVICE))
            plan.peers[peer.name] = f"ok (encrypted tunnel to {theirs.node} {theirs.address})"
            continue
        hop, mac = next_hop(index), cluster_mac(peer.name)
        for cidr in peer.info.routed:
            plan.fabric.routes.add(RouteSpec(cidr, hop, DEVICE, onlink=True))
        plan.fabric.neighbours.add(NeighSpec(hop, mac, DEVICE))
        plan.fabric.fdb.add(FdbSpec(mac, theirs.address, DEVICE))
        plan.peers[peer.name] = f"ok (tunnel to {theirs.node} {theirs.address})"
    return plan


def removal_script() -> str:
    """`ip podnet-clusterset` gone (and no error if it never was)."""
    return f"add table ip {TABLE}\ndelete table ip {TABLE}\n"


def nft_script(me: ClusterInfo, remote_cidrs: Sequence[str], gateway: bool = False) -> str:
    """The whole `ip podnet-clusterset` table, replaced in one transaction (none when
    there is no peer: the table is deleted). `gateway`: this node runs pncs0, and
    maps our pods to their global IPs there when we have a global CIDR."""
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
    ]
    if gateway and me.global_cidr:
        pods, to = me.layout().pod_map
        tunnels = "{ " + ", ".join(f'"{d}"' for d in TUNNEL_DEVICES) + " }"
        lines += [
            f"add chain ip {TABLE} prerouting {{ type nat hook prerouting priority dstnat - 5; policy accept; }}",
            f'add rule ip {TABLE} postrouting oifname {tunnels} ip saddr {pods} snat ip prefix to ip saddr map '
            f'{{ {pods} : {to} }} comment "our pods leave as their global IPs"',
            f'add rule ip {TABLE} prerouting iifname {tunnels} ip daddr {to} dnat ip prefix to ip daddr map '
            f'{{ {to} : {pods} }} comment "a pod\'s global IP is the pod"',
        ]
    lines += [
        f'add rule ip {TABLE} postrouting ip saddr {own} ip daddr @peers snat to ip saddr '
        f'comment "our pods keep their address toward the clusterset"',
        f'add rule ip {TABLE} postrouting ip saddr @peers snat to ip saddr '
        f'comment "the clusterset\'s callers keep theirs (no external-IP masquerade)"',
    ]
    return "\n".join(lines) + "\n"
