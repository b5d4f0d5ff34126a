"""IpamService: address reservations of attachments, kept in a Store.

Keys (docs/architecture.md, "IPAM"):
- `ipam/<network>/ip/<address>` -> {"id", "ifname", "state", "owner", "ts"}
- `ipam/<network>/last/<range-set index>` -> the last address handed out there

A reservation is "pending" while its ADD runs and "ready" after it; `owner` is the tag
of the process doing the ADD on its node (procs.py, identity.py), so a resync can roll
back what a killed process left half done, a recycled pid (same number, new start
time) is never mistaken for the original process, and a store shared by several
machines is judged by each node for its own reservations only: GC and rollback never
touch another node's. Every operation on one attachment runs in one store
transaction, which is what keeps two concurrent ADDs from taking one address.

Allocate, confirm and release read the network broadly *before* their transaction
and only the keys they decide on inside it (ipam/survey.py): on a shared etcd store
an ADD conflicts with another only when both touch the same address or block claim,
not with every ADD of the cluster.

Standard library only: podnet-ipam runs this in-process.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from podnet import keys
from podnet.errors import (
    AddressExhausted,
    AddressInUse,
    InvalidConfig,
    StoreConflict,
    UnknownContainer,
)
from podnet.identity import NodeIdentity
from podnet.ipam import allocator, blocks
from podnet.ipam.config import (
    IPAddress,
    IpamConfig,
    IPNetwork,
    RangeSet,
    parse_address,
    parse_ipam_config,
)
from podnet.ipam.result import IpamAddress, IpamResult
from podnet.ipam.survey import Survey, TakenKeys, common_prefix, held_at, of_attachment, survey
from podnet.model.ipam import PENDING, READY, Reservation
from podnet.store.base import Entry, Store

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
SURVEYS = 8  # an allocate that surveys for itself looks again this often after a stale look


# -- the service --------------------------------------------------------------------


class IpamService:
    """Reserve, confirm, release and garbage-collect addresses in a Store."""

    def __init__(
        self,
        store: Store,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        identity: NodeIdentity | None = None,
    ) -> None:
        self.store = store
        self._owner = owner
        self._clock = clock
        self.identity = identity or NodeIdentity.local()

    @property
    def owner(self) -> str:
        if self._owner is None:
            self._owner = self.identity.owner()
        return self._owner

    # -- keys and values --------------------------------------------------------

    @staticmethod
    def _checked(network: str) -> str:
        return _check_name(network, "network name")

    @classmethod
    def _ip_prefix(cls, network: str) -> str:
        return keys.ipam_addresses(cls._checked(network))

    def _value(self, network: str, address: str, container_id: str, ifname: str, state: str) -> Reservation:
        return Reservation(network, address, container_id, ifname, state, self.owner, self._clock())

    # -- reading ----------------------------------------------------------------

    def _entries(self, network: str) -> list[Entry]:
        return self.store.list(self._ip_prefix(network))

    def lookup(self, network: str, container_id: str, ifname: str) -> list[Reservation]:
        """The reservations one attachment holds in network."""
        return of_attachment(self._entries(network), container_id, ifname)

    def survey(self, network: str, container_id: str, ifname: str,
               ipam_config: IpamConfig | Mapping[str, Any]) -> Survey:
        """What allocate() will start from: read it outside the store transaction the
        allocation runs in (ipam/survey.py)."""
        config = _config(ipam_config)
        _check_attachment(container_id, ifname)
        return survey(self.store, self._checked(network), container_id, ifname,
                      len(config.range_sets), config.affinity is not None)

    def reservations(self, network: str) -> list[Reservation]:
        """Every reservation in network, by address key."""
        return [Reservation.from_entry(e) for e in self._entries(network)]

    def networks(self) -> list[str]:
        """Names of the networks that have at least one reservation."""
        names = set()
        for entry in self.store.list(keys.ipam_addresses()):
            where = keys.parse_ipam_address(entry.key)
            if where is not None:
                names.add(where[0])
        return sorted(names)

    # -- allocate -----------------------------------------------------------------

    def allocate(
        self,
        network: str,
        container_id: str,
        ifname: str,
        ipam_config: IpamConfig | Mapping[str, Any],
        requested_ips: Iterable[object] = (),
        mark_ready: bool = False,
        look: Survey | None = None,
    ) -> IpamResult:
        """One address per range set for the attachment, in one transaction.

        Idempotent: addresses the attachment already holds are returned again (and a
        pending one is re-owned by this process, which now drives the ADD).
        requested_ips pins the address of the range set that contains it. `look`: the
        caller's survey(), taken before the transaction it calls this in; without it
        allocate surveys itself (outside its own transaction when the caller is in
        none) and looks again, up to SURVEYS times, when that look proved stale.
        """
        config = _config(ipam_config)
        _check_attachment(container_id, ifname)
        state = READY if mark_ready else PENDING
        requested = tuple(requested_ips)
        for attempt in range(1 if look is not None else SURVEYS):
            hints = look or self.survey(network, container_id, ifname, config)
            try:
                with self.store.transaction():
                    return self._allocate(network, container_id, ifname, config, requested, state, hints)
            except StoreConflict:
                if look is not None or attempt == SURVEYS - 1:
                    raise
        raise AssertionError("unreachable")

    def _allocate(self, network: str, container_id: str, ifname: str, config: IpamConfig,
                  requested: tuple[object, ...], state: str, hints: Survey) -> IpamResult:
        """allocate() inside its transaction: point reads only (ipam/survey.py)."""
        mine = held_at(self.store, network, (r.address for r in hints.mine), container_id, ifname)
        taken = TakenKeys(set(hints.taken))
        if config.affinity is not None:  # the node's blocks, a new one, or a lender's (ipam/blocks.py)
            config = _with_blocks(self.store, config, taken, taken.keys(), mine, claims=hints.claims)
        wanted = _requested_by_set(config, requested)
        ips = tuple(
            self._one(network, container_id, ifname, config, index, wanted.get(index), mine, taken, state,
                      hints)
            for index in range(len(config.range_sets))
        )
        return IpamResult(ips=ips, routes=config.routes)

    def _one(
        self,
        network: str,
        container_id: str,
        ifname: str,
        config: IpamConfig,
        index: int,
        wanted: IPAddress | None,
        mine: list[Reservation],
        taken: TakenKeys,
        state: str,
        hints: Survey,
    ) -> IpamAddress:
        """The address of range set `index`: already held, requested, or next free."""
        rset = config.range_sets[index]
        held = next((r for r in mine if parse_address(r.address, "held") in rset), None)
        if held is not None:
            address = parse_address(held.address, "held")
            if wanted is not None and wanted != address:
                raise AddressInUse(
                    f"{container_id}/{ifname} already holds {address} in {network}; "
                    f"cannot also take requested {wanted}"
                )
            self._refresh_held(network, held, state)
        else:
            if wanted is not None:
                address = allocator.check_requested(rset, wanted, taken, config.reserved)
                if not self._reserve(network, address, container_id, ifname, state):
                    raise AddressInUse(f"address {address} in {network} was taken concurrently")
            else:
                address = self._next(network, container_id, ifname, config, rset, taken, state,
                                     hints.last.get(index), hints.claims)
            if config.affinity is not None and rset.version == 4:  # its block is still whose it was
                blocks.check_claim(self.store, config.affinity, address, hints.claims)
            # The mark is a hint too: written, never read inside the transaction.
            self.store.put(keys.ipam_last(network, index), str(address))
        rng = rset.find(address)
        assert rng is not None
        return IpamAddress(address, rng.subnet, rng.gateway, index)

    def _next(self, network: str, container_id: str, ifname: str, config: IpamConfig, rset: RangeSet,
              taken: TakenKeys, state: str, last: str | None, claims: Mapping[str, str] | None) -> IPAddress:
        """The next address after `last` that the survey saw free and that is still
        free (a point read). When the survey proves stale (ADDs of this process that
        committed while this one waited for the store), the range set's own keys are
        read, once: a dependency on this block only, instead of one read per address
        taken meanwhile. StoreConflict when nothing is free any more (a new look may
        find room elsewhere)."""
        previous = parse_address(last, "last") if last else None
        stale = False
        while True:
            try:
                address = allocator.next_free(rset, taken, config.reserved, previous)
            except AddressExhausted:
                if stale:
                    raise StoreConflict(f"the free addresses of {network} were taken meanwhile",
                                        "nothing was written; retry the operation") from None
                raise
            self._read_ahead(network, address, config, claims)
            if self._reserve(network, address, container_id, ifname, state):
                return address
            taken.add(str(address))
            if not stale:
                stale = True
                prefix = self._ip_prefix(network) + common_prefix(rset)
                for entry in self.store.list(prefix):
                    taken.add(entry.key.rsplit("/", 1)[1])

    def _read_ahead(self, network: str, address: IPAddress, config: IpamConfig,
                    claims: Mapping[str, str] | None) -> None:
        """The candidate's key and its block's claim, which _reserve and check_claim
        read next, prefetched together (etcd: one round trip to the loop and the
        server instead of two; a local store reads nothing twice)."""
        ahead = [keys.ipam_address(network, str(address))]
        claim = None if config.affinity is None else blocks.claim_key(config.affinity, address, claims)
        self.store.prefetch(ahead if claim is None else [*ahead, claim])

    def _reserve(
        self, network: str, address: IPAddress, container_id: str, ifname: str, state: str
    ) -> bool:
        reservation = self._value(network, str(address), container_id, ifname, state)
        return self.store.compare_and_put(reservation.key, reservation.encode(), 0) is not None

    def _refresh_held(self, network: str, held: Reservation, state: str) -> None:
        """A repeated ADD: a pending reservation now belongs to this process (and
        becomes ready if asked); a ready one stays as it is."""
        if held.state == READY:
            return
        if held.owner == self.owner and state == PENDING:
            return
        value = self._value(network, held.address, held.container_id, held.ifname, state)
        if self.store.compare_and_put(value.key, value.encode(), held.revision) is None:
            raise AddressInUse(f"reservation {held.address} in {network} changed concurrently")

    # -- state changes --------------------------------------------------------------

    def mark_ready(self, network: str, container_id: str, ifname: str,
                   addresses: Iterable[str] | None = None) -> list[str]:
        """The ADD finished: its reservations stop being candidates for rollback.
        UnknownContainer if the attachment holds nothing (it was rolled back).
        `addresses`: what its allocate() returned, read by key instead of listing the
        network (in a transaction: a conflict with those keys only)."""
        with self.store.transaction():
            if addresses is None:
                mine = self.lookup(network, container_id, ifname)
            else:
                mine = held_at(self.store, self._checked(network), addresses, container_id, ifname)
            if not mine:
                raise UnknownContainer(
                    f"no reservation for {container_id}/{ifname} in network {network}"
                )
            for held in mine:
                self._refresh_held(network, held, READY)
        return [r.address for r in mine]

    def release(self, network: str, container_id: str, ifname: str) -> list[str]:
        """Free the attachment's addresses; [] if it held none (DEL is idempotent).
        Found by listing before the transaction, deleted by key inside it (each delete
        guarded by the revision read there): the runtime never runs a DEL alongside
        another operation of the same container, so the listing cannot miss one."""
        found = [r.address for r in self.lookup(network, container_id, ifname)]
        with self.store.transaction():
            mine = held_at(self.store, network, found, container_id, ifname)
            return [r.address for r in mine if self._drop(r)]

    def _drop(self, res: Reservation) -> bool:
        return self.store.delete(res.key, expected_revision=res.revision)

    def gc(
        self,
        network: str,
        valid_attachments: Iterable[tuple[str, str]],
        within: Iterable[IPNetwork] | None = None,
    ) -> list[Reservation]:
        """CNI GC: release every reservation of this node whose (container ID, ifname)
        is not valid. A pending one whose owner still runs is an ADD in flight that the
        runtime may not list yet, so it is kept. Another node's reservations belong to
        its runtime, whose valid attachments this caller does not know, and so do
        addresses outside `within` (the subnets of this node's ranges in a store
        shared by several nodes), whoever's they are."""
        valid = {(cid, ifname) for cid, ifname in valid_attachments}
        scope = None if within is None else tuple(within)
        alive: dict[str, bool] = {}
        with self.store.transaction():
            victims = [
                r
                for r in self.reservations(network)
                if r.attachment not in valid
                and self.identity.owns(r.node)
                and (scope is None or _inside(r.address, scope))
                and not self._in_flight(r, alive)
            ]
            return [r for r in victims if self._drop(r)]

    def rollback_dead_pending(self, network: str | None = None) -> list[Reservation]:
        """Release pending reservations whose ADD process died (agent killed mid-ADD):
        this node's only (another node's owner is never dead here, procs.py)."""
        alive: dict[str, bool] = {}

        def dead() -> list[Reservation]:
            pool = self.reservations(network) if network else self._all_reservations()
            return [r for r in pool if r.state == PENDING and not self._in_flight(r, alive)]

        if not dead():  # the usual answer, found without the write lock (every agent's start asks)
            return []
        with self.store.transaction():
            return [r for r in dead() if self._drop(r)]

    def _in_flight(self, res: Reservation, alive: dict[str, bool]) -> bool:
        if res.state == READY:
            return False
        if res.owner not in alive:
            alive[res.owner] = self.identity.owner_alive(res.owner)
        return alive[res.owner]

    def _all_reservations(self) -> Iterator[Reservation]:
        for entry in self.store.list(keys.ipam_addresses()):
            if keys.parse_ipam_address(entry.key) is not None:
                yield Reservation.from_entry(entry)

    # -- status -------------------------------------------------------------------

    def free_count(self, network: str, ipam_config: IpamConfig | Mapping[str, Any]) -> int:
        """Addresses an ADD can still get: the minimum over range sets, since an ADD
        needs one from each (CNI STATUS reports exhaustion from this)."""
        config = _config(ipam_config)
        taken = []
        for entry in self._entries(network):
            try:
                taken.append(parse_address(entry.key.rsplit("/", 1)[1], "key"))
            except InvalidConfig:
                continue
        if config.affinity is not None:  # what an ADD would take from now (nothing claimed)
            try:
                in_use = {str(a) for a in taken}
                config = _with_blocks(self.store, config, TakenKeys(in_use), in_use, (), claim=False)
            except AddressExhausted:
                return 0
        return min(allocator.count_free(rset, taken, config.reserved) for rset in config.range_sets)


# -- helpers ------------------------------------------------------------------------


def _with_blocks(store: Store, config: IpamConfig, taken: TakenKeys, in_use: Iterable[str],
                 mine: Iterable[Reservation], claim: bool = True,
                 claims: Mapping[str, str] | None = None) -> IpamConfig:
    """The config with its IPv4 range set replaced by what block affinity allows now,
    and in a dual-stack pool its IPv6 range set by those blocks' twins
    (`in_use`: every reserved address; `mine`: what the attachment already holds)."""
    assert config.affinity is not None
    index = next((i for i, rset in enumerate(config.range_sets) if rset.version == 4), 0)
    held = [parse_address(r.address, "held") for r in mine]
    rset = blocks.choose(store, config.affinity, taken, in_use, held, config.reserved, claim, claims)
    sets = list(config.range_sets)
    sets[index] = rset
    index6 = next((i for i, rs in enumerate(config.range_sets) if rs.version == 6), None)
    if config.affinity.pool6 is not None and index6 is not None:  # the twins of the blocks chosen
        sets[index6] = blocks.twin_ranges(rset, config.affinity)
    return replace(config, range_sets=tuple(sets))


def _inside(address: str, subnets: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = parse_address(address, "reservation")
    except InvalidConfig:
        return False
    return any(ip.version == net.version and ip in net for net in subnets)


def gc_scope(config: IpamConfig | Mapping[str, Any]) -> list[IPNetwork]:
    """The subnets of every configured range: what one node's GC may judge."""
    return [rng.subnet for rset in _config(config).range_sets for rng in rset.ranges]


def _config(raw: IpamConfig | Mapping[str, Any]) -> IpamConfig:
    return raw if isinstance(raw, IpamConfig) else parse_ipam_config(raw)


def _check_name(value: str, what: str) -> str:
    """Network names become key segments: no "/" may sneak into a key."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidConfig(f"invalid {what} {value!r}: expected [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    return value


def _check_attachment(container_id: str, ifname: str) -> None:
    _check_name(container_id, "container ID")
    if not isinstance(ifname, str) or not ifname:
        raise InvalidConfig(f"invalid interface name {ifname!r}")


def _requested_by_set(config: IpamConfig, requested: Iterable[object]) -> dict[int, IPAddress]:
    """Map each requested address to the range set that holds it (one per set)."""
    out: dict[int, IPAddress] = {}
    for raw in requested:
        address = parse_address(raw, "requested address")
        index = config.set_index(address)
        if index is None:
            raise InvalidConfig(f"requested address {address} is not in any configured range")
        if index in out:
            raise InvalidConfig(
                f"requested addresses {out[index]} and {address} fall in the same range set"
            )
        out[index] = address
    return out
