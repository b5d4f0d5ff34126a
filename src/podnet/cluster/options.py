"""The agent's cluster flags (--node, --fabric, ...), as one value the node service reads."""

from __future__ import annotations

from dataclasses import dataclass

from podnet.cluster.leases import DEFAULT_BLOCK_PREFIX, DEFAULT_CLUSTER_CIDR, DEFAULT_TTL

# The fabrics' names, for flags and config files that must not import the fabrics
# themselves (pyroute2): fabric/__init__.py FABRICS has exactly these keys.
FABRIC_NAMES = ("vxlan", "host-gw")


@dataclass(frozen=True)
class NodeOptions:
    node: str
    fabric: str = "vxlan"
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR
    block_prefix: int = DEFAULT_BLOCK_PREFIX
    underlay: str = "eth0"
    lease_ttl: float = DEFAULT_TTL
