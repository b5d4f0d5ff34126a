"""What one node's BIRD is told (pure values): the renderer (bgp/render.py) turns a
`BirdSpec` into bird.conf; the fabric (fabric/bgp.py) builds it from the node's lease,
its peers' leases and the BGP objects of the store."""

from __future__ import annotations

from dataclasses import dataclass

from podnet.defaults import FABRIC_ROUTE_PROTO

BIRD_ROUTE_PROTO = 12  # RTPROT_BIRD: what BIRD's kernel protocol tags its routes with
PODNET_ROUTE_PROTO = FABRIC_ROUTE_PROTO  # podnet's own fabric routes: never touched by BIRD


@dataclass(frozen=True, order=True)
class Neighbor:
    """One BGP session of this node."""

    name: str  # a BIRD protocol name suffix: [a-z0-9_], unique per node (e.g. "node_node1", "peer_tor0")
    address: str  # the peer's address: IPv4, or IPv6 for a dual-stack node's IPv6 session
    asn: int  # the peer's AS number (== the node's own: iBGP)
    rr_client: bool = False  # this node reflects routes to that neighbour (it is a route reflector)
    direct: bool = True  # on the same L2 segment (iBGP between namespaces needs `direct;`)
    port: int = 179
    local_address: str | None = None  # this session's own source address when the node has several
    # (a router with one address per link); None: the spec's local_address
    allow_local_as: bool = False  # accept routes whose AS path holds our own AS: a node of an
    # AS-per-rack design hears its rack mates' blocks back from its ToR (eBGP)


@dataclass(frozen=True)
class BirdSpec:
    """One node's BGP speaker."""

    router_id: str  # IPv4, the node's underlay address
    asn: int
    local_address: str  # source address of the sessions (the underlay address)
    neighbors: tuple[Neighbor, ...] = ()
    originate: tuple[str, ...] = ()  # prefixes this node announces (its blocks, /32s, service CIDRs)
    kernel_blackholes: tuple[str, ...] = ()  # of `originate`, what BIRD also installs in the kernel as a
    # blackhole (the node's own blocks: their pods have more specific routes)
    accept: tuple[str, ...] = ()  # prefixes it installs from peers, with any longer prefix (cluster CIDR, service CIDR)
    rr_cluster_id: str | None = None  # set: this node is a route reflector with that cluster id (IPv4 form)
    listen_port: int = 179
    graceful_restart_time: int = 120  # seconds peers keep our routes while we restart
    kernel_table: int = 254  # main
    scan_time: int = 10  # seconds between kernel scans
    transit: bool = True  # eBGP sessions pass BGP-learned routes on (a router); False: a node that
    # announces only its own prefixes (and reflected ones as a route reflector), never a path through it
    local_address6: str | None = None  # a dual-stack node's IPv6 underlay address: the source of its
    # IPv6 sessions (one per IPv4 session to a dual-stack node, carrying the IPv6 blocks)
    graceful_restart_wait: int = 30  # seconds a BIRD started with -R waits for its sessions to come back
    # before it syncs the kernel (BIRD's default, 240 s, leaves a node with one dead peer without new routes for 4 minutes)
    connect_delay_time: int = 1  # seconds from a session's start to its first connect (BIRD's default, 5 s,
    # is 5 s of every node start, restart and new peer without routes; Calico's bird.cfg says 1 too)
    connect_retry_time: int = 3  # seconds before a failed connect is tried again (BIRD's default, 120 s: a
    # peer that was not listening yet, say it booted a second later, would wait 2 minutes; Calico: 3)
