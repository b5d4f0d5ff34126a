"""Node leases and per-node blocks of the cluster CIDR (pure, standard library only).

Design notes:
- Two keys per node, both written with the same TTL and renewed together:
  `nodes/<name>` (the lease: block, underlay address, fabric, opaque backend data;
  what peers watch) and `blocks/<network>-<prefixlen>` (the claim: which node owns a
  block). The claim is what makes allocation safe: it is taken with
  `compare_and_put(expected_revision=0)`, so of two nodes racing for one block exactly
  one wins, on every Store backend, without a transaction.
- A node prefers, in order: the block of its own live lease, the block it had before
  (the caller's hint, e.g. read from its rendered conflist) if that block is free or
  still claimed by it, then the lowest free block. A claim by the same node name is
  its own (a restart), and is taken over by CAS on the claim's revision.
- Expired leases and claims vanish from every listing at once (Store TTL semantics),
  so their blocks are free again without anyone cleaning up. When a peer's lease goes
  away early (deleted), the peer that notices removes its claim too (`release_block`,
  guarded by the claim's revision and owner).
- A node's pods are numbered in the cluster store itself (its conflist names that
  store: `ipam.store`), so a dead node's IPAM reservations and endpoint records are
  where its peers can free them (`free_block_addresses`), once its block is unclaimed.
  A node taking a block it never had frees whatever a former owner left in it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from podnet import keys
from podnet.errors import PodnetError
from podnet.model.base import CorruptRecord
from podnet.model.cluster import BlockClaim, NodeLease, block_key, block_network
from podnet.model.endpoint import EndpointRecord
from podnet.model.ipam import Reservation
from podnet.store.base import Entry, Store

CLUSTER_NETWORK = "cluster"  # the pod network's name: its IPAM keys are ipam/cluster/...


HOSTS_OWNER = "@hosts"  # the claimant of the block kept for plain hosts and the router (no node name has "@")


class NoFreeBlock(PodnetError):
    """Every block of the cluster CIDR is leased by another node."""


def gateway_of(block: str | ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The block's first host address: the pods' gateway on the node's bridge."""
    return ipaddress.IPv4Network(block).network_address + 1


def vtep_ip_of(block: str | ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The block's network address, used as the node's VTEP IP (as Flannel does)."""
    return (block_network(block) if isinstance(block, str) else block).network_address


def split_blocks(cluster_cidr: str, prefix: int) -> Iterator[ipaddress.IPv4Network]:
    """The cluster CIDR's blocks in address order (lazy: a /8 into /24s is 65k)."""
    net = ipaddress.IPv4Network(cluster_cidr)
    if not net.prefixlen <= prefix <= 30:
        raise PodnetError(f"block prefix /{prefix} does not fit cluster CIDR {net} (needs {net.prefixlen}..30)")
    return net.subnets(new_prefix=prefix)


def list_leases(store: Store) -> list[NodeLease]:
    """Every live, well-formed lease (a malformed one is skipped, never fatal)."""
    return parse_leases(store.list(keys.NODES))


def parse_leases(entries: Iterable[Entry]) -> list[NodeLease]:
    """The well-formed leases among `nodes/` entries. A malformed one is skipped, and
    so is one whose name is not its key's (`nodes/x` saying it is node y would stand
    in for y's lease, underlay address and all)."""
    out = []
    for entry in entries:
        try:
            lease = NodeLease.from_json(entry.json(), entry.key)
        except (CorruptRecord, ValueError):
            continue
        if lease.key == entry.key:
            out.append(lease)
    return out


def list_claims(store: Store, hint: bool = False) -> dict[str, str]:
    """Every live block claim: block (`10.244.3.0/24`) -> the node holding it. A
    malformed claim, or one whose block is not its key's, backs no lease: skipped.
    hint: read with `Store.list_hint` (no expiry looked up; a claim whose lease ran
    out a moment ago may still be listed), for a caller that checks the claim it
    decides on or learns of expiries from the watch."""
    return claims_in(store.list_hint(keys.BLOCKS) if hint else store.list(keys.BLOCKS))


def claims_in(entries: Iterable[Entry]) -> dict[str, str]:
    """list_claims over a listing of keys.BLOCKS read already."""
    return {claim.block: claim.node for entry in entries if (claim := _claim_of(entry)) is not None}


class ParsedRecords:
    """`parse_leases` and `list_claims` for a loop that reads them on every pass: an
    entry whose text did not change since the last pass is not parsed again (a
    100-node lab's agents parsed 200 records per pass, ~3.5 ms, and did a pass per
    peer's join)."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, NodeLease | None]] = {}
        self._claims: dict[str, tuple[str, BlockClaim | None]] = {}

    def leases(self, entries: Iterable[Entry]) -> list[NodeLease]:
        self._leases = _reparsed(self._leases, entries, lambda entry: next(iter(parse_leases([entry])), None))
        return [lease for _text, lease in self._leases.values() if lease is not None]

    def claims(self, store: Store) -> dict[str, str]:
        """The claims, by `list_hint`: an expired claim leaves as a delete event."""
        self._claims = _reparsed(self._claims, store.list_hint(keys.BLOCKS), _claim_of)
        return {claim.block: claim.node for _text, claim in self._claims.values() if claim is not None}


def _reparsed(cache: dict[str, tuple[str, Any]], entries: Iterable[Entry],
              parse: Callable[[Entry], Any]) -> dict[str, tuple[str, Any]]:
    """key -> (text, parsed) for `entries`, parsing only what is new or changed."""
    out = {}
    for entry in entries:
        held = cache.get(entry.key)
        out[entry.key] = held if held is not None and held[0] == entry.value else (entry.value, parse(entry))
    return out


def _claim_of(entry: Entry) -> BlockClaim | None:
    try:
        claim = BlockClaim.from_json(entry.json(), entry.key)
    except (CorruptRecord, ValueError):
        return None
    return claim if claim.key == entry.key else None


@dataclass
class Claim:
    """A held lease: what acquire() returns and renew() keeps alive."""

    lease: NodeLease
    ttl: float


def _claim_block(store: Store, name: str, block: ipaddress.IPv4Network, ttl: float) -> bool:
    """Take `block` for `name` by CAS: absent -> create; our own claim -> overwrite."""
    claim = BlockClaim(name, str(block))
    entry = store.get(claim.key)
    if entry is None:
        return store.compare_and_put(claim.key, claim.encode(), 0, ttl) is not None
    if _claimant(entry) != name:
        return False
    return store.compare_and_put(claim.key, claim.encode(), entry.revision, ttl) is not None


def _claimant(entry: Entry) -> str | None:
    """The node a stored claim names; None when the claim is malformed (it still
    holds its block: nobody may take it by overwriting)."""
    try:
        return BlockClaim.from_json(entry.json(), entry.key).node
    except (CorruptRecord, ValueError):
        return None


def acquire(
    store: Store,
    name: str,
    cluster_cidr: str,
    prefix: int,
    ttl: float,
    make_lease: Any,
    preferred: str | None = None,
) -> Claim:
    """Claim a block and write the lease. `make_lease(block) -> NodeLease` builds the
    published value once the block is known. Raises NoFreeBlock when none is left."""
    cluster = ipaddress.IPv4Network(cluster_cidr)
    candidates: list[ipaddress.IPv4Network] = []
    own = store.get_json(keys.node(name))
    for hint in ((own or {}).get("block"), preferred):
        if not hint:
            continue
        try:
            net = ipaddress.IPv4Network(hint)
        except ValueError:
            continue
        if net.subnet_of(cluster) and net.prefixlen == prefix and net not in candidates:
            candidates.append(net)
    for net in candidates:
        if _claim_block(store, name, net, ttl):
            return _publish(store, make_lease(str(net)), ttl)
    taken = {e.key for e in store.list(keys.BLOCKS)}
    for net in split_blocks(cluster_cidr, prefix):
        if block_key(net) in taken:
            continue
        if _claim_block(store, name, net, ttl):
            return _publish(store, make_lease(str(net)), ttl)
    raise NoFreeBlock(f"no free /{prefix} block left in {cluster_cidr} for node {name}")


def _publish(store: Store, lease: NodeLease, ttl: float) -> Claim:
    return publish(store, lease, ttl)


def publish(store: Store, lease: NodeLease, ttl: float) -> Claim:
    """Write the lease of a block the node already owns (the gossip fabric: its ring
    hands out blocks and writes their claims, nothing is claimed here)."""
    store.put(lease.key, lease.encode(), ttl)
    return Claim(lease, ttl)


def renew(store: Store, claim: Claim, blocks: bool = True) -> bool:
    """Extend the lease, its block's claim and the node's other block claims (block
    IPAM, ipam/blocks.py); False when the lease or its block's claim is gone (the
    caller must acquire again). Another claim that expired is simply no longer the
    node's. `blocks=False`: claims that carry no TTL (the gossip fabric's, from the
    ring) are only checked."""
    name, own = claim.lease.name, claim.lease.block
    # read before the write lock: a hundred nodes share it, and a busy machine stretches
    # whatever runs while it is held
    others = [b for b, owner in list_claims(store, hint=True).items() if owner == name and b != own] if blocks else []
    with store.transaction():  # one turn of the lock for every key
        lease_ok = store.refresh(claim.lease.key, claim.ttl)
        if not blocks:
            return lease_ok and block_owner(store, own) == name
        block_ok = store.refresh(block_key(own), claim.ttl)
        for block in others:
            store.refresh(block_key(block), claim.ttl)
        return lease_ok and block_ok


def release_block(store: Store, name: str, block: str) -> bool:
    """Drop `name`'s claim on `block` (not a newer owner's); True if deleted."""
    entry = store.get(block_key(block))
    if entry is None:
        return False
    return _claimant(entry) == name and store.delete(entry.key, expected_revision=entry.revision)


def keep_for_hosts(store: Store, block: str | ipaddress.IPv4Network) -> str:
    """Claim `block` for plain hosts and the router, without a TTL (no node renews
    it), unless someone holds it; return its holder. Nodes then never lease it or
    grow into it (acquire and ipam/blocks.py skip claimed blocks), so addresses in
    it (the macvlan segment's router, `podnet host join`'s) never clash with a pod's."""
    claim = BlockClaim(HOSTS_OWNER, str(ipaddress.IPv4Network(block)))
    entry = store.get(claim.key)
    if entry is None and store.compare_and_put(claim.key, claim.encode(), 0) is not None:
        return HOSTS_OWNER
    return block_owner(store, claim.block) or HOSTS_OWNER


def hosts_blocks(claims: dict[str, str]) -> list[ipaddress.IPv4Network]:
    """The blocks kept for hosts, lowest first (`claims`: `list_claims`)."""
    return sorted(ipaddress.IPv4Network(b) for b, owner in claims.items() if owner == HOSTS_OWNER)


def block_owner(store: Store, block: str) -> str | None:
    """The node whose live claim holds `block`, or None when it is free."""
    entry = store.get(block_key(block))
    if entry is None:
        return None
    owner = _claimant(entry)
    return "?" if owner is None else owner  # a malformed claim still holds the block


def free_block_addresses(store: Store, block: str, network: str = CLUSTER_NETWORK) -> list[str]:
    """Delete the IPAM reservations of `network` inside `block`, and the endpoint
    records (`endpoints/<network>/<cid>/<ifname>`) of the attachments that held them or
    whose recorded addresses lie in `block`; return the addresses freed.

    Only for a block that nobody claims (a dead node's): the pods it numbered are gone
    with their node, by the lease contract. Every delete is guarded by the revision
    read, so a write racing with it wins."""
    net = ipaddress.IPv4Network(block)
    freed, holders = [], set()
    for entry in store.list(keys.ipam_addresses(network)):
        reservation = Reservation.from_entry(entry)
        try:
            inside = ipaddress.ip_address(reservation.address) in net
        except ValueError:
            continue
        if not inside:
            continue
        if reservation.container_id and reservation.ifname:
            holders.add(reservation.attachment)
        if store.delete(entry.key, expected_revision=entry.revision):
            freed.append(reservation.address)
    for entry in store.list(keys.endpoints(network)):
        _net, cid, ifname = keys.parse_endpoint(entry.key)
        try:
            ips = EndpointRecord.decode(entry.value, entry.key).ips
            numbered_here = any(ipaddress.ip_interface(a).ip in net for a in ips)
        except (CorruptRecord, ValueError):
            numbered_here = False
        if (cid, ifname) in holders or numbered_here:
            store.delete(entry.key, expected_revision=entry.revision)
    return freed


def free_node_addresses(store: Store, node: str, network: str = CLUSTER_NETWORK) -> list[str]:
    """Delete the reservations `node`'s pods hold in `network` (those it borrowed in
    other nodes' blocks: the rest went with its blocks) and their endpoint records;
    for a node whose lease is gone, which by the lease contract is dead."""
    freed, holders = [], set()
    for entry in store.list(keys.ipam_addresses(network)):
        if node not in entry.value:  # the owner tag names the node: skip the rest unparsed
            continue
        reservation = Reservation.from_entry(entry)
        if reservation.node != node:
            continue
        holders.add(reservation.attachment)
        if store.delete(entry.key, expected_revision=entry.revision):
            freed.append(reservation.address)
    for entry in store.list(keys.endpoints(network)):
        _net, cid, ifname = keys.parse_endpoint(entry.key)
        if (cid, ifname) in holders:
            store.delete(entry.key, expected_revision=entry.revision)
    return freed


def now() -> float:
    return time.time()
