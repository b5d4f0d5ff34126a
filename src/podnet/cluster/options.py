"""The agent's cluster flags (--node, --fabric, ...), as one value the node service reads."""

from __future__ import annotations

from dataclasses import dataclass

from podnet.defaults import DEFAULT_BLOCK_PREFIX, DEFAULT_CLUSTER_CIDR, DEFAULT_LEASE_TTL


@dataclass(frozen=True)
class NodeOptions:
    node: str
    fabric: str = "vxlan"
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR
    block_prefix: int = DEFAULT_BLOCK_PREFIX
    underlay: str = "eth0"
    lease_ttl: float = DEFAULT_LEASE_TTL
