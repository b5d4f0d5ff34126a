"""A dual-stack cluster's IPv6 half: the pool, and each node block's IPv6 twin (pure).

Design notes:
- A cluster is IPv4 first, with an optional IPv6 pool beside it, given as
  kube-controller-manager takes them: `--cluster-cidr 10.244.0.0/16,fd00:10:244::/56`.
- IPv6 blocks are not claimed on their own: block i of the IPv4 pool is paired with
  block i of the IPv6 pool (`paired_block`). Whoever holds an IPv4 block's claim holds
  its twin, so every existing guarantee of the claims carries over unchanged: two
  nodes never share an IPv6 block, a dead node's twin frees itself with its claim, a
  node growing into a block (block IPAM) grows into its twin, the gossip ring's blocks
  have theirs. Kubernetes' node IPAM allocates one CIDR per family per node; pairing
  gives the same, with no second claim to lose or race for.
- The IPv6 block size follows: as many IPv6 blocks as IPv4 blocks, so the IPv6 block
  prefix is the IPv6 pool's plus the bits that number the IPv4 blocks (a /56 pool cut
  like a /16 into /24s gives /64s). Each IPv6 block must hold at least as many
  addresses as its IPv4 twin.
- Standard library only: podnet-ipam runs `paired_block` in-process.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from podnet.errors import InvalidConfig

DEFAULT_CLUSTER_CIDR6 = "fd00:10:244::/56"  # kind's dual-stack pod subnet


@dataclass(frozen=True)
class Pools:
    """The cluster's pools: IPv4 (always) and IPv6 (dual stack), and the IPv4 block size."""

    v4: ipaddress.IPv4Network
    block_prefix: int
    v6: ipaddress.IPv6Network | None = None

    @property
    def block_prefix6(self) -> int | None:
        """The IPv6 blocks' prefix length (None: single stack)."""
        if self.v6 is None:
            return None
        return self.v6.prefixlen + (self.block_prefix - self.v4.prefixlen)

    def twin(self, block: str | ipaddress.IPv4Network) -> ipaddress.IPv6Network | None:
        """The IPv6 block paired with IPv4 `block` (None: single stack)."""
        if self.v6 is None:
            return None
        return paired_block(ipaddress.IPv4Network(block), self.v4, self.block_prefix, self.v6)

    def block_of_twin(self, block6: ipaddress.IPv6Network) -> ipaddress.IPv4Network | None:
        """The IPv4 block whose twin `block6` is (None: not one of the pool's IPv6 blocks)."""
        if self.v6 is None or block6.prefixlen != self.block_prefix6 or not block6.subnet_of(self.v6):
            return None
        index = (int(block6.network_address) - int(self.v6.network_address)) >> (128 - block6.prefixlen)
        return ipaddress.IPv4Network((int(self.v4.network_address) + (index << (32 - self.block_prefix)),
                                      self.block_prefix))


def parse_cluster_cidrs(text: str, where: str = "--cluster-cidr") -> tuple[ipaddress.IPv4Network,
                                                                          ipaddress.IPv6Network | None]:
    """`10.244.0.0/16` or `10.244.0.0/16,fd00:10:244::/56` -> (IPv4 pool, IPv6 pool or None).
    IPv4 comes first: a cluster is IPv4 or dual stack, never IPv6 alone."""
    parts = [p.strip() for p in str(text).split(",")]
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise InvalidConfig(f"{where} {text!r}: give one IPv4 prefix, or an IPv4 and an IPv6 prefix separated by a comma",
                            "e.g. 10.244.0.0/16,fd00:10:244::/56")
    nets = []
    for part in parts:
        try:
            nets.append(ipaddress.ip_network(part))
        except ValueError:
            raise InvalidConfig(f"{where} {part!r} is not a network (no host bits set)") from None
    if nets[0].version != 4:
        raise InvalidConfig(f"{where} {text!r}: the first prefix must be IPv4",
                            "podnet clusters are IPv4 or dual stack (IPv4 first, IPv6 second)")
    if len(nets) == 2 and nets[1].version != 6:
        raise InvalidConfig(f"{where} {text!r}: the second prefix must be IPv6")
    return nets[0], (nets[1] if len(nets) == 2 else None)  # type: ignore[return-value]


def check_pools(v4: ipaddress.IPv4Network, block_prefix: int, v6: ipaddress.IPv6Network | None,
                where: str = "--cluster-cidr") -> None:
    """The IPv6 pool can pair every IPv4 block with a block at least as large."""
    if v6 is None:
        return
    bits = block_prefix - v4.prefixlen
    prefix6 = v6.prefixlen + bits
    if 128 - prefix6 < 32 - block_prefix:
        raise InvalidConfig(
            f"{where}: IPv6 pool {v6} is too small to pair each of the {2 ** bits} /{block_prefix} blocks of {v4} "
            f"with an IPv6 block as large (it would give /{prefix6})",
            f"use an IPv6 prefix of /{96 + v4.prefixlen} or shorter, e.g. {DEFAULT_CLUSTER_CIDR6}")


def paired_block(block: ipaddress.IPv4Network, v4: ipaddress.IPv4Network, block_prefix: int,
                 v6: ipaddress.IPv6Network) -> ipaddress.IPv6Network:
    """Block i of the IPv6 pool for block i of the IPv4 pool."""
    if block.prefixlen != block_prefix or not block.subnet_of(v4):
        raise InvalidConfig(f"block {block} is not a /{block_prefix} block of {v4}")
    index = (int(block.network_address) - int(v4.network_address)) >> (32 - block_prefix)
    prefix6 = v6.prefixlen + (block_prefix - v4.prefixlen)
    base = int(v6.network_address) + (index << (128 - prefix6))
    return ipaddress.IPv6Network((base, prefix6))


def gateway6_of(block6: ipaddress.IPv6Network) -> ipaddress.IPv6Address:
    """The IPv6 block's first host address: its pods' gateway (as the IPv4 block's)."""
    return block6.network_address + 1
