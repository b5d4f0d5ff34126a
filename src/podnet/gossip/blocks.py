"""The ring IPAM's unit is a block: how `--fabric gossip` meets podnet's block IPAM.

Design notes:
- The ring (ring.py) splits a range of integers among peers; here each integer is one
  block of the cluster CIDR (block i = the i-th /prefix of the CIDR), so a peer's part
  of the ring is a set of whole blocks. Its pods get their addresses from those blocks
  by the block IPAM every fabric uses (ipam/blocks.py, strict affinity: the node's own
  blocks and no other), its peers route each block to it, and its bridge holds one
  gateway per block: nothing below the ring differs from the vxlan fabric. Weave hands
  out single addresses from its ring and routes nothing (its network is one L2 segment);
  podnet's pods are routed per node, so the ring's unit is what a route covers.
- The ring is built over a stand-in network with as many addresses as there are blocks
  (`0.0.0.0/(32 - (prefix - cidr prefix))`), so the ring's rules (ownership tokens,
  versions, donations, votes, reclaims) apply unchanged; `BlockSpace` translates both
  ways. The ring never hands out its range's first and last integer (an address
  range's network and broadcast): here the first and last block are only ever owned by
  the initial claim's peers, never donated.
- Space requests (ring_alloc.SpaceRequest) travel as replicated documents
  `ring/requests/<asker>` -> {"donor", "blocks", "seq"}: the donor answers each
  sequence number once with a donation, the merged ring gives the asker its blocks,
  and the asker deletes its request.

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

from podnet.gossip.ring import Ring
from podnet.gossip.ring_parts import RingError, peer_name

REQUESTS = "ring/requests/"
MAX_REQUEST_BLOCKS = 1024


@dataclass(frozen=True)
class BlockSpace:
    """The blocks of `cidr` of size /`prefix`, numbered from 0."""

    cidr: IPv4Network
    prefix: int

    @classmethod
    def of(cls, cidr: str, prefix: int) -> BlockSpace:
        try:
            net = IPv4Network(cidr)
        except ValueError as exc:
            raise RingError(f"cluster CIDR: {exc}") from None
        if not net.prefixlen + 2 <= prefix <= 30:
            raise RingError(f"block size /{prefix}: the ring needs at least 4 blocks of at least 4 addresses "
                            f"in {net} (a prefix between /{net.prefixlen + 2} and /30)")
        return cls(net, prefix)

    @property
    def count(self) -> int:
        return 1 << (self.prefix - self.cidr.prefixlen)

    @property
    def index_network(self) -> IPv4Network:
        """The ring's stand-in range: one integer per block."""
        return IPv4Network(f"0.0.0.0/{32 - (self.prefix - self.cidr.prefixlen)}")

    def empty_ring(self) -> Ring:
        return Ring.empty(self.index_network)

    def block(self, index: int) -> IPv4Network:
        if not 0 <= index < self.count:
            raise RingError(f"block index {index} is outside the {self.count} blocks of {self.cidr}")
        start = int(self.cidr.network_address) + (index << (32 - self.prefix))
        return IPv4Network(f"{ipaddress.IPv4Address(start)}/{self.prefix}")

    def index(self, block: str | IPv4Network) -> int:
        net = IPv4Network(block)
        if net.prefixlen != self.prefix or not net.subnet_of(self.cidr):
            raise RingError(f"{net} is no /{self.prefix} block of {self.cidr}")
        return (int(net.network_address) - int(self.cidr.network_address)) >> (32 - self.prefix)

    def check_ring(self, ring: Ring) -> None:
        if ring.cidr != self.index_network:
            raise RingError(f"the ring covers {ring.cidr.num_addresses} blocks; this node's cluster "
                            f"{self.cidr} has {self.count} blocks of /{self.prefix}: every peer must use the "
                            "same --cluster-cidr and --block-prefix")

    def owned(self, ring: Ring, peer: str) -> list[IPv4Network]:
        """`peer`'s blocks, lowest first."""
        return [self.block(i) for lo, hi in ring.owned_by(peer) for i in range(lo, hi + 1)]

    def claims(self, ring: Ring) -> dict[str, str]:
        """Every owned block -> its owner: the `blocks/` claims the node's IPAM reads."""
        return {str(self.block(i)): t.owner for t in ring.tokens for i in range(t.start, t.end + 1)}

    def owners(self, ring: Ring) -> dict[str, list[str]]:
        """owner -> its blocks as text, for status."""
        out: dict[str, list[str]] = {}
        for block, owner in self.claims(ring).items():
            out.setdefault(owner, []).append(block)
        return {owner: sorted(blocks, key=IPv4Network) for owner, blocks in sorted(out.items())}

    def indexes(self, blocks: Iterable[str | IPv4Network]) -> list[int]:
        """The ring integers of `blocks` (those of this space; others are skipped)."""
        out = []
        for block in blocks:
            try:
                out.append(self.index(block))
            except (RingError, ValueError):
                continue
        return out


@dataclass(frozen=True)
class BlockRequest:
    """`asker` asks `donor` for `blocks` blocks; `seq` tells a new request from a repeated one."""

    asker: str
    donor: str
    blocks: int
    seq: int

    @property
    def key(self) -> str:
        return REQUESTS + self.asker

    def to_json(self) -> dict:
        return {"donor": self.donor, "blocks": self.blocks, "seq": self.seq}

    @classmethod
    def from_doc(cls, key: str, value: object) -> BlockRequest:
        """A request document read from the gossip, every field checked."""
        if not key.startswith(REQUESTS):
            raise RingError(f"{key}: not a space request")
        asker = peer_name(key[len(REQUESTS):], f"{key}: asker")
        if not isinstance(value, Mapping):
            raise RingError(f"{key}: a space request must be an object")
        donor = peer_name(value.get("donor"), f"{key}.donor")
        blocks, seq = value.get("blocks"), value.get("seq")
        if not isinstance(blocks, int) or isinstance(blocks, bool) or not 1 <= blocks <= MAX_REQUEST_BLOCKS:
            raise RingError(f"{key}.blocks: a count of 1 to {MAX_REQUEST_BLOCKS} blocks, not {blocks!r}")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise RingError(f"{key}.seq: a non-negative integer, not {seq!r}")
        if donor == asker:
            raise RingError(f"{key}: {asker} asks itself for space")
        return cls(asker, donor, blocks, seq)


def choose_donor(ring: Ring, asker: str, live_peers: Iterable[str]) -> str | None:
    """The live peer owning most blocks (ties: lowest name), or None."""
    sizes = {p: ring.size_owned(p) for p in set(live_peers) - {asker} if ring.accepts(p)}
    sizes = {p: s for p, s in sizes.items() if s > 1}  # a peer keeps its last block
    return min(sizes, key=lambda p: (-sizes[p], p)) if sizes else None


def answer(ring: Ring, space: BlockSpace, request: BlockRequest, me: str, occupied: Iterable[str],
           keep: Iterable[str], in_contact: Iterable[str]) -> Ring:
    """The donor's answer: `request.blocks` of its free blocks (never one in `keep`, e.g.
    its lease's, never one holding an address) handed to the asker. RingError when it
    may not or has nothing to give."""
    if request.donor != me:
        raise RingError(f"space request of {request.asker} is for {request.donor}, not {me}")
    if ring.at_risk(me, in_contact):
        raise RingError(f"donation: {me} is cut off from most of the ring's members")
    in_use = set(space.indexes(occupied)) | set(space.indexes(keep))
    return ring.donate(me, request.asker, request.blocks, in_use, in_contact)
