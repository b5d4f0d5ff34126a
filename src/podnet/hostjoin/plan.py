"""What a plain machine needs to be on the pod network: one address and a few routes.

Design notes:
- A joined host runs no agent, so its configuration is static, computed once from
  the store (the nodes' leases and the block claims) and either printed as `ip`
  commands or applied (apply.py); running `host join` again recomputes it, so a new
  node is picked up by re-running (as a static route file would be regenerated).
- The address comes from the block kept for hosts (`leases.HOSTS_OWNER`, no TTL):
  nodes never lease or grow into it, so it never clashes with a pod's. Its first
  address is the router's (the macvlan segment's gateway), never a host's.
- Routed fabrics (vxlan, host-gw, bgp): the address is a /32 on the underlay
  interface, and each node's blocks are routed via that node's underlay address when
  the node is on-link, `src` the podnet address, so pods see (and answer) the podnet
  address, not the underlay one. Nodes off-link (another rack) are reached through
  the default gateway with one route for the whole cluster CIDR: that only works
  where the router knows the pod routes (bgp), which the plan says in its notes.
  The nodes route back with a /32 via the host's underlay address (routes.py).
- macvlan: pods sit on the segment itself (a lease's backend data names it and its
  router), so the address goes on the underlay interface with the segment's prefix
  length and nothing needs routing.
- gossip: refused (reserve.py): its ring hands the whole cluster CIDR to its peers, so
  no block is left for hosts; such a host runs the agent and becomes a peer, as a
  Weave host runs weave.

Pure: no store, no kernel (reserve.py and apply.py do those).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.cluster.leases import HOSTS_OWNER
from podnet.defaults import HOST_ROUTE_PROTO
from podnet.errors import PodnetError
from podnet.model.cluster import NodeLease

MACVLAN = "macvlan"


class JoinError(PodnetError):
    """The host cannot join as asked (no segment, no address left, bad input)."""


@dataclass(frozen=True)
class HostNet:
    """The joining machine's underlay, as its kernel shows it (or as given)."""

    device: str  # the underlay interface, e.g. eth0
    address: ipaddress.IPv4Interface  # its underlay address with the prefix (what is on-link)
    gateway: str = ""  # the default gateway ("": none)


@dataclass(frozen=True, order=True)
class HostRoute:
    dst: str  # "10.244.1.0/24"
    via: str
    dev: str
    src: str  # the podnet address: what pods see


@dataclass(frozen=True)
class JoinPlan:
    """The host's podnet address on `device` and its routes to the pods."""

    name: str
    address: ipaddress.IPv4Interface  # pod_ip/32, or pod_ip/<segment prefix> on macvlan
    device: str
    routes: tuple[HostRoute, ...] = ()
    notes: tuple[str, ...] = ()  # nodes without a route of their own, and why

    @property
    def pod_ip(self) -> str:
        return str(self.address.ip)

    def commands(self) -> list[str]:
        """The plan as `ip` commands (idempotent: `replace` never duplicates)."""
        out = [f"ip address replace {self.address} dev {self.device}"]
        out += [f"ip route replace {r.dst} via {r.via} dev {r.dev} src {r.src} proto {HOST_ROUTE_PROTO}"
                for r in self.routes]
        return out

    def undo_commands(self) -> list[str]:
        """What `host leave` runs on the host: the routes, then the address."""
        out = [f"ip route del {r.dst} via {r.via} dev {r.dev} proto {HOST_ROUTE_PROTO}" for r in self.routes]
        return [*out, f"ip address del {self.address} dev {self.device}"]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": str(self.address), "device": self.device,
                "routes": [{"dst": r.dst, "via": r.via, "dev": r.dev, "src": r.src} for r in self.routes],
                "notes": list(self.notes)}


# -- the address ----------------------------------------------------------------------


def block_for_hosts(claims: Mapping[str, str], cluster: ipaddress.IPv4Network,
                    prefix: int) -> tuple[ipaddress.IPv4Network, bool]:
    """The hosts block, and whether it must be claimed first: the lowest block already
    kept for hosts (`claims`: `leases.list_claims`), else the lowest unclaimed block of
    the cluster CIDR."""
    kept = sorted(ipaddress.IPv4Network(b) for b, owner in claims.items() if owner == HOSTS_OWNER)
    if kept:
        return kept[0], False
    for block in unclaimed_blocks(claims, cluster, prefix):
        return block, True
    raise JoinError(f"no free /{prefix} block left in {cluster} to keep for hosts",
                    "every block is a node's: grow the cluster CIDR")


def unclaimed_blocks(claims: Mapping[str, str], cluster: ipaddress.IPv4Network,
                     prefix: int) -> Iterator[ipaddress.IPv4Network]:
    if not cluster.prefixlen <= prefix <= 30:
        raise JoinError(f"block prefix /{prefix} does not fit cluster CIDR {cluster} (needs {cluster.prefixlen}..30)")
    taken = [ipaddress.IPv4Network(b) for b in claims]
    return (net for net in cluster.subnets(new_prefix=prefix) if not any(net.overlaps(t) for t in taken))


def free_addresses(block: ipaddress.IPv4Network, taken: Iterable[str]) -> Iterator[ipaddress.IPv4Address]:
    """The block's addresses a host may get, lowest first: not the network or
    broadcast address, not the first (the router's), not one `taken`."""
    used = {ipaddress.IPv4Address(a) for a in taken}
    router = block.network_address + 1
    return (a for a in block.hosts() if a != router and a not in used)


# -- the routes -----------------------------------------------------------------------


def node_blocks(lease: NodeLease, claims: Mapping[str, str], cluster: ipaddress.IPv4Network) -> list[str]:
    """A node's blocks as the claims say: its lease's (only if its claim names the
    node: a lease alone proves nothing), then every other block of the cluster CIDR
    it claims (block IPAM, the gossip ring), lowest first."""
    if claims.get(lease.block) != lease.name or not lease.network.subnet_of(cluster):
        return []
    extra = sorted((ipaddress.IPv4Network(b) for b, owner in claims.items() if owner == lease.name
                    and b != lease.block and ipaddress.IPv4Network(b).subnet_of(cluster)))
    return [lease.block, *(str(b) for b in extra)]


def macvlan_segment(leases: Sequence[NodeLease]) -> tuple[ipaddress.IPv4Network, str] | None:
    """The pods' segment and router from a macvlan lease's backend data; None
    without a macvlan node. Raises when a macvlan lease does not say."""
    for lease in sorted(leases, key=lambda x: x.name):
        if lease.fabric != MACVLAN:
            continue
        segment, gateway = lease.backend.get("segment"), lease.backend.get("gateway", "")
        try:
            return ipaddress.IPv4Network(str(segment)), str(gateway)
        except ValueError:
            raise JoinError(f"node {lease.name}: its macvlan lease has no valid backend.segment ({segment!r})") from None
    return None


def plan(name: str, pod_ip: ipaddress.IPv4Address, host: HostNet, leases: Sequence[NodeLease],
         claims: Mapping[str, str], cluster: ipaddress.IPv4Network) -> JoinPlan:
    """The host's address and routes (`leases`, `claims`: as read from the store)."""
    segment = macvlan_segment(leases)
    if segment is not None:
        net = segment[0]
        if pod_ip not in net:
            raise JoinError(f"host {name}: its podnet address {pod_ip} is outside the macvlan segment {net}")
        return JoinPlan(name, ipaddress.IPv4Interface(f"{pod_ip}/{net.prefixlen}"), host.device)
    routes: set[HostRoute] = set()
    notes: list[str] = [] if leases else ["no node is up: no route yet (join again once nodes are)"]
    off_link: list[str] = []
    src = str(pod_ip)
    for lease in sorted(leases, key=lambda x: x.name):
        blocks = node_blocks(lease, claims, cluster)
        if not blocks:
            notes.append(f"node {lease.name}: no route (its block {lease.block} is not claimed by it "
                         f"inside {cluster})")
            continue
        try:
            on_link = ipaddress.IPv4Address(lease.underlay_ip) in host.address.network
        except ValueError:
            notes.append(f"node {lease.name}: no route (underlay address {lease.underlay_ip!r} is not IPv4)")
            continue
        if on_link:
            routes.update(HostRoute(b, lease.underlay_ip, host.device, src) for b in blocks)
        else:
            off_link.append(lease.name)
    if off_link:
        if host.gateway:
            routes.add(HostRoute(str(cluster), host.gateway, host.device, src))
            notes.append(f"nodes {', '.join(off_link)} are not on-link: reached through the default gateway "
                         f"{host.gateway} (the router must know the pod routes, as with bgp)")
        else:
            notes.append(f"nodes {', '.join(off_link)} are not on-link and the host has no default gateway: "
                         "no route to their pods")
    return JoinPlan(name, ipaddress.IPv4Interface(f"{pod_ip}/32"), host.device, tuple(sorted(routes)),
                    tuple(notes))

