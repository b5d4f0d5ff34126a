"""One peer's addresses from its part of the ring (ring.py).

The peer hands out addresses only inside the spans its own replica says it owns, with
ipam/allocator.py's round-robin choice (the next free address after the last one, so
a released address, or one reclaimed from a dead peer, is reused as late as possible).
When it owns nothing free, `allocate` returns a `SpaceRequest` instead of an address:
the gossip layer sends it to that peer, whose answer is `donate` on its own Allocator
and replica, and the merged ring then gives the asker room.

`reserved`: addresses this peer must not hand out although it owns them, e.g. those
that the gossiped DNS/endpoint documents still name for a dead peer's pods after a
reclaim (see ring.py's module doc). Pure: no I/O; an Allocator is plain state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from podnet.errors import AddressExhausted, AddressInUse, TryAgainLater
from podnet.gossip.ring import Ring
from podnet.gossip.ring_parts import RingError, peer_name
from podnet.ipam import allocator
from podnet.ipam.config import IpRange, RangeSet


@dataclass(frozen=True)
class SpaceRequest:
    """"Peer `to_peer` asks `from_peer` for about `size_hint` addresses" (None: half of
    the donor's largest free run)."""

    from_peer: str
    to_peer: str
    size_hint: int | None = None


def range_set(ring: Ring, peer: str) -> RangeSet | None:
    """`peer`'s spans as an IPAM range set (the range's network address stands as the
    never-handed-out gateway of each), or None when it owns nothing."""
    net = ring.cidr
    spans = ring.owned_by(peer)
    if not spans:
        return None
    return RangeSet(tuple(IpRange(net, IPv4Address(lo), IPv4Address(hi), net.network_address) for lo, hi in spans))


class Allocator:
    """The addresses `peer` holds, and the choice of the next one."""

    def __init__(self, peer: str, held: Iterable[IPv4Address] = (), last: IPv4Address | None = None,
                 size_hint: int | None = None) -> None:
        self.peer = peer_name(peer, "allocator peer")
        self.held: set[IPv4Address] = set(held)
        self.last = last
        self.size_hint = size_hint

    def allocate(self, ring: Ring, live_peers: Iterable[str], reserved: Iterable[IPv4Address] = (),
                 refused: Iterable[str] = ()) -> IPv4Address | SpaceRequest:
        """The next free address of this peer's spans (now held), or a SpaceRequest to
        the live peer owning most space (not one in `refused`: those had none to give).
        `live_peers`: the peers this one is in contact with now. TryAgainLater while
        it is cut off from a majority of the ring's members (they may reclaim its
        space: ring.py's module doc); AddressExhausted when no peer is left to ask."""
        live_peers = set(live_peers)
        if ring.at_risk(self.peer, live_peers):
            raise TryAgainLater(f"peer {self.peer} is cut off from most of the ring's members: it hands out no "
                                "address until it reaches them again (they may reclaim its space)")
        rset = range_set(ring, self.peer)
        if rset is not None:
            try:
                chosen = allocator.next_free(rset, self.held, (ring.cidr.broadcast_address, *reserved), self.last)
            except AddressExhausted:
                pass
            else:
                address = IPv4Address(int(chosen))  # a v4 range set gives v4 addresses
                self.held.add(address)
                self.last = address
                return address
        donor = self.donor(ring, live_peers, refused)
        if donor is None:
            raise AddressExhausted(f"peer {self.peer} has no free address in {ring.cidr} and no live peer to ask",
                                   "wait for a peer to join or reclaim a dead peer's space (podnet peers rm)")
        return SpaceRequest(donor, self.peer, self.size_hint)

    def donor(self, ring: Ring, live_peers: Iterable[str], refused: Iterable[str] = ()) -> str | None:
        skip = {self.peer, *refused}
        sizes = {p: ring.size_owned(p) for p in set(live_peers) - skip if ring.accepts(p)}
        sizes = {p: s for p, s in sizes.items() if s > 0}
        if not sizes:
            return None
        return min(sizes, key=lambda p: (-sizes[p], p))

    def claim(self, ring: Ring, address: IPv4Address, reserved: Iterable[IPv4Address] = ()) -> IPv4Address:
        """Hold a specific address (a restarted agent re-reading its pods): it must lie in
        this peer's spans and be free."""
        rset = range_set(ring, self.peer)
        if rset is None or address not in rset:
            raise AddressInUse(f"address {address} is not in peer {self.peer}'s part of the ring")
        allocator.check_requested(rset, address, self.held, (ring.cidr.broadcast_address, *reserved))
        self.held.add(address)
        return address

    def release(self, address: IPv4Address) -> bool:
        """Give an address back; False when it was not held."""
        if address not in self.held:
            return False
        self.held.discard(address)
        return True

    def donate(self, ring: Ring, request: SpaceRequest, reserved: Iterable[IPv4Address] = (),
               in_contact: Iterable[str] = ()) -> Ring:
        """Answer a SpaceRequest addressed to this peer: the ring with part of its free
        space handed over (RingError when it has none, or when the asker is new to the
        ring and this peer is not `in_contact` with a majority of the members)."""
        if request.from_peer != self.peer:
            raise ValueError(f"space request for {request.from_peer} answered by {self.peer}")
        if ring.at_risk(self.peer, in_contact):
            raise RingError(f"donation: {self.peer} is cut off from most of the ring's members")
        return ring.donate(self.peer, request.to_peer, request.size_hint, (*self.held, *reserved), in_contact)

    def strays(self, ring: Ring) -> list[IPv4Address]:
        """Held addresses the ring no longer gives this peer (never any, unless the ring
        was broken, e.g. this peer was removed while alive)."""
        return sorted(a for a in self.held if ring.owner_of(a) != self.peer)
