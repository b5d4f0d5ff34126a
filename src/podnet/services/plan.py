"""What one node's service load balancer must do, as plain values (pure).

The agent builds a `NodePlan` from the store (services, endpoint slices, pod
readiness, this node's addresses) and hands it to services/render.py, which turns it
into one nftables table; comparing two plans gives the incremental update. Nothing
here reads the store or the kernel, so rendering is tested without root.

Every address and port here was validated by the object parsers; the renderer checks
them again through kernel/nftsyntax.py anyway (a plan can be built from a store).
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True, order=True)
class Backend:
    """One ready endpoint of a service port: where a connection is DNATed to."""

    ip: str
    port: int
    local: bool = False  # on this node: the only ones a `Local` traffic policy uses


@dataclass(frozen=True)
class ServicePort:
    """One port of one service: every frontend that leads to it, and its backends."""

    id: str  # short stable identifier, [a-z0-9]{1,16}: names its chains and sets
    ref: str  # "namespace/name:port" for comments and counters
    protocol: str  # one of PROTOCOLS
    port: int  # the service port (on cluster IPs and external IPs)
    cluster_ips: tuple[str, ...] = ()  # empty: headless (not rendered)
    node_port: int | None = None
    external_ips: tuple[str, ...] = ()  # spec.externalIPs and status.loadBalancer ingress IPs
    backends: tuple[Backend, ...] = ()  # ready endpoints, sorted
    affinity_timeout: int | None = None  # seconds of ClientIP affinity; None: no affinity
    external_local: bool = False  # externalTrafficPolicy: Local (NodePort, external IPs)
    internal_local: bool = False  # internalTrafficPolicy: Local (cluster IPs)


@dataclass(frozen=True)
class NodePlan:
    """Every service port as this node implements it."""

    node_ips: tuple[str, ...]  # the node's own addresses: NodePorts answer on these
    cluster_cidrs: tuple[str, ...]  # pod addresses: a client outside them is external
    services: tuple[ServicePort, ...] = ()
