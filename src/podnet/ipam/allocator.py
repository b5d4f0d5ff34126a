"""Address choice, as pure functions over a RangeSet (no store, no I/O).

Round-robin like host-local: the next address after the last one handed out,
wrapping, so a just-released address is not reused at once (a stale ARP entry or
conntrack flow elsewhere would send its traffic to the new owner).

Candidates are produced lazily as integers, jumping over the gateway and reserved
blocks by interval, so a /16 (or an IPv6 /64) is never materialised: the cost of a
call is the number of taken addresses it has to step over, not the size of the range.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Container, Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address

from podnet.errors import AddressExhausted, AddressInUse, InvalidConfig
from podnet.ipam.config import IPAddress, IPNetwork, RangeSet

Interval = tuple[int, int]  # inclusive [lo, hi]


def excluded(range_set: RangeSet, reserved: Iterable[IPNetwork | IPAddress] = ()) -> list[Interval]:
    """Sorted, merged integer intervals that must never be handed out in this set:
    every range's gateway and the reserved blocks of the set's family."""
    spans: list[Interval] = [(int(r.gateway), int(r.gateway)) for r in range_set.ranges]
    for item in reserved:
        if item.version != range_set.version:
            continue
        if isinstance(item, (IPv4Address, IPv6Address)):
            spans.append((int(item), int(item)))
        else:
            spans.append((int(item.network_address), int(item.broadcast_address)))
    return _merge(spans)


def _merge(spans: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def _segments(range_set: RangeSet, last: IPAddress | None) -> Iterator[Interval]:
    """The set's ranges in round-robin order: from just after `last` (if it lies in
    the set) to the end, then wrapping round to `last` itself."""
    bounds = [r.bounds for r in range_set.ranges]
    home = None
    if last is not None and last.version == range_set.version:
        home = next((i for i, (lo, hi) in enumerate(bounds) if lo <= int(last) <= hi), None)
    if home is None:
        yield from bounds
        return
    pos = int(last)  # type: ignore[arg-type]
    lo, hi = bounds[home]
    if pos < hi:
        yield (pos + 1, hi)
    for i in [*range(home + 1, len(bounds)), *range(home)]:
        yield bounds[i]
    yield (lo, pos)


def _allowed(lo: int, hi: int, skip: list[Interval]) -> Iterator[int]:
    """Integers in [lo, hi] outside the merged intervals `skip`, ascending, lazily."""
    i = bisect_right(skip, (lo, float("inf"))) - 1
    if i >= 0 and skip[i][1] >= lo:
        lo = skip[i][1] + 1
    i += 1
    while lo <= hi:
        stop = min(hi, skip[i][0] - 1) if i < len(skip) else hi
        yield from range(lo, stop + 1)
        if i >= len(skip):
            return
        lo = skip[i][1] + 1
        i += 1


def candidates(
    range_set: RangeSet,
    reserved: Iterable[IPNetwork | IPAddress] = (),
    last: IPAddress | None = None,
) -> Iterator[IPAddress]:
    """Every address the set may hand out, in round-robin order after `last`."""
    skip = excluded(range_set, reserved)
    make = IPv4Address if range_set.version == 4 else IPv6Address
    for lo, hi in _segments(range_set, last):
        for value in _allowed(lo, hi, skip):
            yield make(value)


def next_free(
    range_set: RangeSet,
    taken: Container[IPAddress],
    reserved: Iterable[IPNetwork | IPAddress] = (),
    last: IPAddress | None = None,
) -> IPAddress:
    """The first candidate after `last` that is not in `taken`; AddressExhausted if
    every address of the set is taken, reserved or a gateway."""
    for address in candidates(range_set, reserved, last):
        if address not in taken:
            return address
    raise AddressExhausted(
        f"no free address left in range set {range_set}",
        "release addresses (podnet gc) or widen the range",
    )


def check_requested(
    range_set: RangeSet,
    address: IPAddress,
    taken: Container[IPAddress],
    reserved: Iterable[IPNetwork | IPAddress] = (),
) -> IPAddress:
    """Validate a specifically requested address (CNI_ARGS IP=, runtimeConfig ips):
    InvalidConfig if it is outside the set, AddressInUse if it may not be handed out."""
    rng = range_set.find(address)
    if rng is None:
        raise InvalidConfig(f"requested address {address} is not in range set {range_set}")
    if any(address == r.gateway for r in range_set.ranges):
        raise AddressInUse(f"requested address {address} is the gateway of {rng.subnet}")
    for item in reserved:
        if item.version == address.version and (
            address == item if isinstance(item, (IPv4Address, IPv6Address)) else address in item
        ):
            raise AddressInUse(f"requested address {address} is reserved ({item})")
    if address in taken:
        raise AddressInUse(f"requested address {address} is already allocated")
    return address


def capacity(range_set: RangeSet, reserved: Iterable[IPNetwork | IPAddress] = ()) -> int:
    """How many addresses the set can hand out in total (interval arithmetic)."""
    skip = excluded(range_set, reserved)
    total = 0
    for lo, hi in (r.bounds for r in range_set.ranges):
        total += hi - lo + 1
        for slo, shi in skip:
            overlap = min(hi, shi) - max(lo, slo) + 1
            if overlap > 0:
                total -= overlap
    return total


def count_free(
    range_set: RangeSet,
    taken: Iterable[IPAddress],
    reserved: Iterable[IPNetwork | IPAddress] = (),
) -> int:
    """Addresses still available in the set: capacity minus taken ones that count
    against it (taken addresses outside the set, or excluded, do not)."""
    reserved = list(reserved)
    skip = excluded(range_set, reserved)
    used = 0
    for address in set(taken):
        if address in range_set and not _inside(int(address), skip):
            used += 1
    return capacity(range_set, reserved) - used


def _inside(value: int, skip: list[Interval]) -> bool:
    i = bisect_right(skip, (value, float("inf"))) - 1
    return i >= 0 and skip[i][0] <= value <= skip[i][1]
