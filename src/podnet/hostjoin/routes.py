"""What a node routes back to the joined hosts (the node service calls `node_routes`).

A joined host's pods-facing address (`pod_ip`) lies in the hosts block, which no node
holds, so without a route a pod's answer would leave by the node's default route. Each
node on the host's segment routes `pod_ip/32` via the host's underlay address, out of
its own underlay interface; a node off-link has nothing to add (the router must know
the address, as it knows the pod routes under bgp). On macvlan the pods and the host
share the segment: nothing to route.

A record is a claim like a lease: its `pod_ip` must lie in the cluster CIDR, outside
this node's own block, and (when the claims are given) in a block kept for hosts, so a
forged record cannot pull another node's pod address to itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from podnet.cluster.leases import HOSTS_OWNER
from podnet.fabric.base import FabricContext, RouteSpec
from podnet.hostjoin.plan import MACVLAN
from podnet.model.cluster import HostRecord


def node_routes(hosts: Mapping[str, HostRecord], ctx: FabricContext,
                claims: Mapping[str, str] | None = None) -> set[RouteSpec]:
    """`pod_ip/32 via underlay_ip dev <own underlay>` for each joined, on-link host."""
    if ctx.own.fabric == MACVLAN:
        return set()
    kept = None if claims is None else [ipaddress.IPv4Network(b) for b, o in claims.items() if o == HOSTS_OWNER]
    out = set()
    for record in hosts.values():
        if not record.pod_ip:
            continue
        try:
            pod_ip = ipaddress.IPv4Address(record.pod_ip)
            via = ipaddress.IPv4Address(record.underlay_ip)
        except ValueError:
            continue
        if pod_ip not in ctx.cluster or pod_ip in ctx.own.network or via not in ctx.underlay.network:
            continue
        if kept is not None and not any(pod_ip in block for block in kept):
            continue
        out.add(RouteSpec(f"{pod_ip}/32", str(via), ctx.own.underlay_if))
    return out
