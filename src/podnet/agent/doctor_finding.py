"""What every `podnet doctor` check reports (agent/doctor.py and its check modules):
one fault, named, with its fix, and whether `--fix` repairs it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    check: str  # fabric, mtu, conntrack, bgp, orphans, leaks, nft, leases, dns
    problem: str
    fix: str  # what `--fix` does, or how to fix it by hand
    fixable: bool = False  # `--fix` repairs it
    target: tuple[str, ...] = ()  # what `--fix` acts on: (veth,) of an orphan, (container ID, ifname) of a leak,
    # (table, service) of an nft table, (block,) of an expired lease

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
