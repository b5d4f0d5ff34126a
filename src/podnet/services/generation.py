"""The checksum of a plan as rendered (pure): stamped into the table with every change
(set `generation`), so an agent restarted on an unchanged store finds its own table and
leaves it alone instead of rebuilding it (a rebuild drops affinity and counters).

It must change whenever the table would, and cost a change only its own ports: it is a
sum of 64-bit digests, one per service port, plus one of the node settings and of how
the plan renders (render.FORMAT); services/cache.py keeps the sum port by port.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from podnet.services.plan import NodePlan, ServicePort
from podnet.services.render import FORMAT


def port_digest(port: ServicePort) -> int:
    """64 bits of a service port's every field, the same in every process (repr of plain
    values: no salted hash), so a restarted agent computes the checksum it stamped."""
    return int.from_bytes(hashlib.blake2b(repr(port).encode(), digest_size=8).digest(), "big")


def generation(node_ips: Iterable[str], cluster_cidrs: Iterable[str], port_digests: int) -> int:
    """The checksum as one nft mark (32 bits); `port_digests`: the sum of port_digest
    over the plan's ports."""
    head = hashlib.blake2b(f"{FORMAT}\n{tuple(node_ips)!r}\n{tuple(cluster_cidrs)!r}".encode(), digest_size=8)
    total = (int.from_bytes(head.digest(), "big") + port_digests) % (1 << 64)
    return (total ^ (total >> 32)) & 0xFFFFFFFF


def plan_generation(plan: NodePlan) -> int:
    """generation() of a whole plan, from scratch."""
    return generation(plan.node_ips, plan.cluster_cidrs, sum(port_digest(p) for p in plan.services))
