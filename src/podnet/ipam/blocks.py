"""Block IPAM with node affinity, after Calico: which addresses an ADD may take.

Design notes:
- The pool (the cluster CIDR) is cut into blocks of one size; a node owns the blocks
  whose claim `blocks/<net>-<len>` names it (model/cluster.py BlockClaim; the node's
  first block is the one its lease names, cluster/leases.py). Claims carry the node
  lease's TTL and are renewed with it, so a dead node's blocks free themselves.
- In the ADD's own store transaction (so two ADDs, or an ADD and a release, never
  disagree): the node's blocks, lowest first, are the range set; when they are full,
  the lowest block that nobody claims and that holds no reservation is claimed for
  the node in that transaction; when the pool has no such block, an address is
  borrowed from another node's block (lowest first), unless `strictAffinity`. A
  borrowed address stays in its lender's block: the borrower's node announces it as a
  /32 (fabric/bgp.py), and only routed pods (attach/routed.py) can live with it.
- An extra block that empties is released by its node's agent (`release_empty`),
  never the lease's block; a repeated ADD keeps the address it holds, wherever it is.
- Each block's first host address is its gateway (a bridge's, or for vxlan the VTEP's
  neighbour) and is never handed out, as in every other podnet range.
- The claims an ADD chooses by are read before its transaction (ipam/survey.py);
  inside it, the claim of the block its address comes from is read again by key
  (`check_claim`), so the commit depends on that claim alone, as Calico's per-block
  CAS does, and an ADD never waits for another node's.

Standard library only: podnet-ipam runs this in-process.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address

from podnet import keys
from podnet.cluster.leases import list_claims
from podnet.errors import AddressExhausted, StoreConflict, TryAgainLater
from podnet.ipam import allocator
from podnet.ipam.config import BlockAffinity, IPAddress, IpRange, RangeSet
from podnet.model.base import CorruptRecord
from podnet.model.cluster import BlockClaim, block_key
from podnet.store.base import Store


def twin_ranges(rset: RangeSet, affinity: BlockAffinity) -> RangeSet:
    """The IPv6 twins of an IPv4 range set of blocks (cluster/dualstack.py), in the same
    order: a pod's IPv6 address comes from the twins of the blocks its IPv4 may."""
    pools = affinity.pools
    return RangeSet(tuple(block_range(twin) for r in rset.ranges if (twin := pools.twin(r.subnet)) is not None))


def block_range(block: IPv4Network | IPv6Network) -> IpRange:
    """A block as a range: every host address but the first (its gateway)."""
    first = block.network_address + 1
    return IpRange(subnet=block, start=first, end=block.broadcast_address - 1, gateway=first)


def blocks_of(claims: Mapping[str, str], node: str, affinity: BlockAffinity) -> list[IPv4Network]:
    """The pool's blocks `claims` give to `node`, lowest first (a claim of another
    size or outside the pool is no block of this pool)."""
    out = []
    for block, owner in claims.items():
        net = IPv4Network(block)
        if owner == node and net.prefixlen == affinity.block_size and net.subnet_of(affinity.pool):
            out.append(net)
    return sorted(out)


def _block_of(address: str, affinity: BlockAffinity) -> IPv4Network | None:
    try:
        ip = ip_address(address)
    except ValueError:
        return None
    if not isinstance(ip, IPv4Address) or ip not in affinity.pool:
        return None
    return IPv4Network(f"{ip}/{affinity.block_size}", strict=False)


def choose(store: Store, affinity: BlockAffinity, taken: Container[IPAddress], in_use: Iterable[str],
           held: Iterable[IPAddress] = (), reserved: Iterable = (), claim: bool = True,
           claims: Mapping[str, str] | None = None) -> RangeSet:
    """The range set an ADD takes its address from (call inside the ADD's transaction):
    the node's blocks (and the blocks of addresses the attachment already holds) when
    one has room; else those plus a block newly claimed for the node; else, unless
    strict, a lender's block with room. `in_use`: every reserved address of the
    network (which blocks hold something); `claim=False` (STATUS) only looks;
    `claims`: the survey's (None: list them here).
    AddressExhausted when nothing is left; TryAgainLater while the node is held (a
    gossip node cut off from most of its ring: the others may reclaim its blocks)."""
    if claim and affinity.ring and (hold := store.get_json(keys.ipam_hold(affinity.node))) is not None:
        reason = hold.get("reason") if isinstance(hold, dict) else None
        raise TryAgainLater(f"node {affinity.node} hands out no address now: {reason or 'held'}")
    reserved = tuple(reserved)
    if claims is None:
        claims = list_claims(store)
    mine = blocks_of(claims, affinity.node, affinity)
    for address in held:
        block = _block_of(str(address), affinity)
        if block is not None and block not in mine:
            mine.append(block)
    ranges = tuple(block_range(b) for b in sorted(mine))
    if ranges and _has_room(RangeSet(ranges), taken, reserved):
        return RangeSet(ranges)
    new = _free_block(store, affinity, claims, in_use, claim)
    if new is not None:
        return RangeSet((*ranges, block_range(new)))
    if affinity.strict:
        raise AddressExhausted(f"node {affinity.node}'s blocks are full and pool {affinity.pool} has no free "
                               f"/{affinity.block_size} block; strictAffinity forbids borrowing",
                               "release addresses, widen the pool, or turn strictAffinity off")
    lenders = sorted(b for b in (IPv4Network(k) for k, owner in claims.items() if owner != affinity.node)
                     if b.prefixlen == affinity.block_size and b.subnet_of(affinity.pool))
    for lender in lenders:
        rset = RangeSet((block_range(lender),))
        if _has_room(rset, taken, reserved):
            return rset
    raise AddressExhausted(f"pool {affinity.pool} has no address left for node {affinity.node}",
                           "release addresses or widen the pool")


def claim_key(affinity: BlockAffinity, address: IPAddress, claims: Mapping[str, str] | None) -> str | None:
    """The key check_claim will read for `address` (None: it reads none)."""
    block = _block_of(str(address), affinity)
    return None if block is None or claims is None else block_key(block)


def check_claim(store: Store, affinity: BlockAffinity, address: IPAddress,
                claims: Mapping[str, str] | None) -> None:
    """Inside the ADD's transaction, once `address` is chosen: its block is this node's
    or still the lender's `claims` named, read by key so the commit depends on that
    claim. StoreConflict when it moved (a peer freed the block, or took it): nothing
    is written and the ADD surveys again."""
    block = _block_of(str(address), affinity)
    if block is None or claims is None:
        return
    entry = store.get(block_key(block))
    now = None
    if entry is not None:
        try:
            now = BlockClaim.from_json(entry.json(), entry.key).node
        except (CorruptRecord, ValueError):
            now = "?"
    if now == affinity.node or (now is not None and now == claims.get(str(block))):
        return  # ours (perhaps claimed by this very transaction), or still its lender's
    raise StoreConflict(f"the claim of block {block} changed while {affinity.node} took {address}",
                        "nothing was written; retry the operation")


def _has_room(rset: RangeSet, taken: Container[IPAddress], reserved: tuple) -> bool:
    try:
        allocator.next_free(rset, taken, reserved)
    except AddressExhausted:
        return False
    return True


def _free_block(store: Store, affinity: BlockAffinity, claims: Mapping[str, str], in_use: Iterable[str],
                claim: bool) -> IPv4Network | None:
    """The lowest block of the pool that nobody claims and nothing is reserved in (a
    dead owner's leftovers are its peers' to free first), claimed for the node when
    `claim`; None when none is left; StoreConflict when the ones `claims` showed free
    were all claimed meanwhile."""
    occupied = {b for a in in_use if (b := _block_of(a, affinity)) is not None}
    raced = None
    for block in affinity.pool.subnets(new_prefix=affinity.block_size):
        if str(block) in claims or block in occupied:
            continue
        if not claim:
            return block
        record = BlockClaim(affinity.node, str(block))
        if store.compare_and_put(record.key, record.encode(), 0, affinity.ttl) is not None:
            return block
        raced = block
    if raced is not None:  # `claims` (a survey's) is stale: a fresh look may find room
        raise StoreConflict(f"block {raced} was claimed by another node meanwhile",
                            "nothing was written; retry the operation")
    return None


def borrowed(store: Store, node: str, network: str, own_blocks: Iterable[IPv4Network]) -> list[str]:
    """Addresses `node`'s pods hold outside its own blocks (borrowed): what its node
    announces as /32s."""
    from podnet.model.ipam import Reservation

    own = tuple(own_blocks)
    out = []
    for entry in store.list(keys.ipam_addresses(network)):
        address = entry.key.rsplit("/", 1)[1]
        try:
            ip = ip_address(address)
        except ValueError:
            continue
        if any(ip in b for b in own) or node not in entry.value:
            continue
        if Reservation.from_entry(entry).node == node:
            out.append(str(ip))
    return sorted(out, key=lambda a: ip_address(a))


def release_empty(store: Store, node: str, keep: str, network: str, pool: IPv4Network,
                  block_size: int) -> list[str]:
    """Release `node`'s blocks of the pool that hold no reservation, but never `keep`
    (its lease's block); in one transaction, so an ADD racing for an address in one
    either sees the claim gone or keeps it. The blocks released."""
    affinity = BlockAffinity(node, pool, block_size)
    if not [b for b in blocks_of(list_claims(store, hint=True), node, affinity) if str(b) != keep]:
        return []  # the common case, seen without the write lock every node's repair pass would take
    released = []
    with store.transaction():
        mine = [b for b in blocks_of(list_claims(store), node, affinity) if str(b) != keep]
        if not mine:
            return []
        occupied = occupied_blocks(store, network, affinity)
        for block in mine:
            if block in occupied:
                continue
            entry = store.get(block_key(block))
            if entry is not None and store.delete(entry.key, expected_revision=entry.revision):
                released.append(str(block))
    return released


def occupied_blocks(store: Store, network: str, affinity: BlockAffinity) -> set[IPv4Network]:
    """The pool's blocks that hold a reservation of `network` (any node's)."""
    return {b for e in store.list(keys.ipam_addresses(network))
            if (b := _block_of(e.key.rsplit("/", 1)[1], affinity)) is not None}
