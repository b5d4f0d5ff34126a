"""What an ADD reads before its store transaction, and what it re-reads inside it.

Why: a transaction on a shared store (etcd: optimistic, store/etcd/transactions.py)
commits only if nothing it read has changed, and a listing counts as read whole. An
ADD that listed every reservation of the cluster network, and every block claim,
lost to every other node's ADD: 50 nodes attaching pods at once retried in lockstep
until code 11. Calico's IPAM has the same problem and the same answer: read broadly
outside, then commit with a compare on what the decision rests on (its block).

So an ADD works in two steps:

1. `survey()`, before the transaction: the network's reservation keys (taken
   addresses, and the attachment's own, for a repeated ADD), the block claims and the
   round-robin marks. These are hints: nothing is decided on them alone.
2. Inside the transaction, only point reads, each of which the commit checks: the
   reservations the attachment holds (`held_at`), the key of each address it tries
   (absent: it takes it), and the claim of the block that address lies in
   (`ipam/blocks.py` check_claim). A hint proved wrong on the way (an address taken
   meanwhile) only costs one more point read; a decision it can no longer back (its
   blocks looked free but are full, its block's claim moved) raises StoreConflict:
   nothing was written and the caller surveys again.

What this gives up: the transaction no longer depends on the rest of the network, so
a concurrent ADD of the *same* attachment on another process could take a second
address. The CNI spec forbids that ("the container runtime must not invoke parallel
operations for the same container"), and the endpoint record the ADD writes is the
attachment's anyway. Never two attachments on one address still holds: the key of
the address taken is compared (absent) at commit, by every backend.

Standard library only: podnet-ipam runs this in-process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from podnet import keys
from podnet.cluster.leases import claims_in
from podnet.ipam.config import RangeSet
from podnet.model.ipam import Reservation
from podnet.store.base import Entry, Store


class TakenKeys:
    """`address in taken` over the key suffixes of a listing: no parsing of every
    stored address just to check a handful of candidates."""

    __slots__ = ("_keys",)

    def __init__(self, keys: set[str]) -> None:
        self._keys = keys

    def __contains__(self, address: object) -> bool:
        return str(address) in self._keys

    def add(self, address: str) -> None:
        self._keys.add(address)

    def keys(self) -> set[str]:
        """The addresses, as their key suffixes."""
        return self._keys


@dataclass(frozen=True, slots=True)
class Survey:
    """One look at a network taken outside the ADD's transaction (module docstring):
    `taken` address keys, the attachment's own reservations, the block claims (block ->
    node; None without block affinity) and the round-robin mark of each range set."""

    taken: frozenset[str]
    mine: tuple[Reservation, ...]
    claims: Mapping[str, str] | None = None
    last: Mapping[int, str] = field(default_factory=dict)


def of_attachment(entries: Iterable[Entry], container_id: str, ifname: str) -> list[Reservation]:
    """The reservations of one attachment among `entries`. A cheap substring test
    first: parsing every reservation of a big network on each ADD would cost more than
    the rest of the ADD."""
    return [
        res
        for e in entries
        if container_id in e.value
        and (res := Reservation.from_entry(e)).container_id == container_id
        and res.ifname == ifname
    ]


def survey(store: Store, network: str, container_id: str, ifname: str, range_sets: int,
           affinity: bool) -> Survey:
    """Read the hints of one ADD (call it outside the transaction, or it is as costly
    in conflicts as listing inside)."""
    reads = [("list", keys.ipam_addresses(network))]
    reads += [("get", keys.ipam_last(network, index)) for index in range(range_sets)]
    if affinity:  # (hint: check_claim reads the claim it takes)
        reads.append(("list_hint", keys.BLOCKS))
    entries, *rest = store.read_together(reads)  # at once where the store can (etcd)
    marks = rest[:range_sets]
    return Survey(
        taken=frozenset(e.key.rsplit("/", 1)[1] for e in entries),
        mine=tuple(of_attachment(entries, container_id, ifname)),
        claims=claims_in(rest[range_sets]) if affinity else None,
        last={index: entry.value for index, entry in enumerate(marks) if entry is not None},
    )


def held_at(store: Store, network: str, addresses: Iterable[str], container_id: str,
            ifname: str) -> list[Reservation]:
    """The reservations of the attachment at `addresses`, by one point read each
    (inside a transaction: the commit checks exactly these keys)."""
    out = []
    for address in addresses:
        entry = store.get(keys.ipam_address(network, address))
        if entry is None:
            continue
        res = Reservation.from_entry(entry)
        if res.attachment == (container_id, ifname):
            out.append(res)
    return out


def common_prefix(rset: RangeSet) -> str:
    """The whole octets every IPv4 address of the set starts with (`10.244.3.` for a
    /24 or /26 block): the narrowest key prefix that lists the set's reservations.
    "" for IPv6, whose text form (`::`) gives no such guarantee."""
    if rset.version != 4:
        return ""
    shared = os.path.commonprefix([str(a) for r in rset.ranges for a in (r.start, r.end)])
    return shared[: shared.rfind(".") + 1]
