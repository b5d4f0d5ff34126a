"""The agent's cluster flags (--node, --fabric, ...), as one value the node service reads."""

from __future__ import annotations

from dataclasses import dataclass

from podnet.defaults import (
    DEFAULT_BLOCK_PREFIX,
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_LEASE_TTL,
)


@dataclass(frozen=True)
class NodeOptions:
    node: str
    fabric: str = "vxlan"
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR
    block_prefix: int = DEFAULT_BLOCK_PREFIX
    underlay: str = "eth0"
    lease_ttl: float = DEFAULT_LEASE_TTL
    cluster_dns: str | None = None  # the DNS service's ClusterIP, handed to pods (kubelet --cluster-dns)
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN  # (kubelet --cluster-domain)
    cluster_dns_netns: str | None = None  # the DNS pod this agent answers in (/run/netns/...)
    labels: tuple[tuple[str, str], ...] = ()  # published in the lease (BGPPeer selectors: rack, route-reflector)
    strict_affinity: bool = False  # never borrow an address from another node's block (always so on a bridge)
