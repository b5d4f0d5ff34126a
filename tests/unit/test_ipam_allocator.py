"""The pure allocator: properties checked against a brute-force model."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.errors import AddressExhausted, AddressInUse, InvalidConfig
from podnet.ipam.allocator import (
    candidates,
    capacity,
    check_requested,
    count_free,
    next_free,
)
from podnet.ipam.config import IpRange, RangeSet, parse_ipam_config


def one_set(raw: dict, reserved: list[str] | None = None) -> tuple[RangeSet, tuple]:
    conf = parse_ipam_config({"ranges": [[raw]], "reserved": reserved or []})
    return conf.range_sets[0], conf.reserved


@st.composite
def scenarios(draw: st.DrawFn) -> dict:
    """A small v4 range set (one or two ranges) with taken, reserved and last."""
    prefix = draw(st.integers(min_value=24, max_value=30))
    base = draw(st.integers(min_value=0, max_value=2**24 - 1)) << 8
    subnet = IPv4Network((base, prefix), strict=False)
    first, last = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
    cut = draw(st.integers(min_value=first, max_value=last))
    lo1 = draw(st.integers(min_value=first, max_value=cut))
    hi1 = draw(st.integers(min_value=lo1, max_value=cut))
    ranges = [(lo1, hi1)]
    if cut < last and draw(st.booleans()):
        lo2 = draw(st.integers(min_value=cut + 1, max_value=last))
        ranges.append((lo2, draw(st.integers(min_value=lo2, max_value=last))))
    gateway = draw(st.integers(min_value=first, max_value=last))
    hosts = st.integers(min_value=first, max_value=last)
    taken = draw(st.sets(hosts, max_size=40))
    reserved_addrs = draw(st.lists(hosts, max_size=4))
    reserved_nets = [
        str(IPv4Network((h, draw(st.integers(min_value=prefix, max_value=32))), strict=False))
        for h in draw(st.lists(hosts, max_size=2))
    ]
    rset = RangeSet(
        tuple(
            IpRange(subnet, IPv4Address(lo), IPv4Address(hi), IPv4Address(gateway))
            for lo, hi in ranges
        )
    )
    reserved = tuple(
        ip_network(r) for r in [*map(str, map(IPv4Address, reserved_addrs)), *reserved_nets]
    )
    last_given = draw(st.one_of(st.none(), hosts))
    return {
        "rset": rset,
        "subnet": subnet,
        "taken": {IPv4Address(t) for t in taken},
        "reserved": reserved,
        "gateway": IPv4Address(gateway),
        "last": None if last_given is None else IPv4Address(last_given),
    }


def allowed(s: dict) -> list[IPv4Address]:
    """Brute force: every address the set may hand out, in address order."""
    out = []
    for rng in s["rset"].ranges:
        for value in range(int(rng.start), int(rng.end) + 1):
            addr = IPv4Address(value)
            if addr == s["gateway"] or any(addr in net for net in s["reserved"]):
                continue
            out.append(addr)
    return out


def expected_next(s: dict) -> IPv4Address | None:
    """Brute force round-robin (host-local's order): the allowed addresses after
    `last` in its range, then the other ranges in config order (wrapping), then the
    start of last's range up to last itself."""
    ranges = s["rset"].ranges
    per_range = [allowed({**s, "rset": RangeSet((rng,))}) for rng in ranges]
    last = s["last"]
    home = next((i for i, rng in enumerate(ranges) if last is not None and last in rng), None)
    if home is None:
        order = [a for addrs in per_range for a in addrs]
    else:
        others = [*range(home + 1, len(ranges)), *range(home)]
        order = (
            [a for a in per_range[home] if a > last]
            + [a for i in others for a in per_range[i]]
            + [a for a in per_range[home] if a <= last]
        )
    return next((a for a in order if a not in s["taken"]), None)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_next_free_matches_model(s: dict) -> None:
    want = expected_next(s)
    if want is None:
        with pytest.raises(AddressExhausted):
            next_free(s["rset"], s["taken"], s["reserved"], s["last"])
        return
    got = next_free(s["rset"], s["taken"], s["reserved"], s["last"])
    assert got == want
    subnet = s["subnet"]
    assert got in s["rset"] and got in subnet
    assert got not in s["taken"] and got != s["gateway"]
    assert got not in (subnet.network_address, subnet.broadcast_address)
    assert not any(got in net for net in s["reserved"])


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_exhausts_exactly_at_capacity(s: dict) -> None:
    rset, reserved = s["rset"], s["reserved"]
    total = capacity(rset, reserved)
    assert total == len(allowed(s))
    taken: set = set()
    last = s["last"]
    for _ in range(total):
        last = next_free(rset, taken, reserved, last)
        assert last not in taken
        taken.add(last)
    with pytest.raises(AddressExhausted):
        next_free(rset, taken, reserved, last)
    assert count_free(rset, taken, reserved) == 0


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_count_free_and_candidates(s: dict) -> None:
    every = list(candidates(s["rset"], s["reserved"]))
    assert sorted(every) == allowed(s)
    assert len(set(every)) == len(every)
    free = count_free(s["rset"], s["taken"], s["reserved"])
    assert free == len([a for a in allowed(s) if a not in s["taken"]])


def test_round_robin_after_last() -> None:
    rset, reserved = one_set({"subnet": "10.1.0.0/29"})  # hosts .1-.6, gateway .1
    assert next_free(rset, set(), reserved) == ip_address("10.1.0.2")
    assert next_free(rset, set(), reserved, ip_address("10.1.0.4")) == ip_address("10.1.0.5")
    assert next_free(rset, set(), reserved, ip_address("10.1.0.6")) == ip_address("10.1.0.2")
    taken = {ip_address("10.1.0.5"), ip_address("10.1.0.6")}
    assert next_free(rset, taken, reserved, ip_address("10.1.0.4")) == ip_address("10.1.0.2")
    # the last address itself comes round again once everything else is taken
    taken = {ip_address(f"10.1.0.{i}") for i in (2, 3, 5, 6)}
    assert next_free(rset, taken, reserved, ip_address("10.1.0.4")) == ip_address("10.1.0.4")


def test_last_outside_set_starts_at_beginning() -> None:
    rset, reserved = one_set({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100"})
    assert next_free(rset, set(), reserved, ip_address("10.1.0.5")) == ip_address("10.1.0.100")
    assert next_free(rset, set(), reserved, ip_address("fd00::5")) == ip_address("10.1.0.100")


def test_reserved_blocks_are_skipped() -> None:
    rset, reserved = one_set({"subnet": "10.1.0.0/24"}, ["10.1.0.2", "10.1.0.0/28"])
    assert next_free(rset, set(), reserved) == ip_address("10.1.0.16")
    assert capacity(rset, reserved) == 254 - 15  # .1-.15 gone (gateway inside)


def test_ipv6() -> None:
    rset, reserved = one_set({"subnet": "fd00::/120"}, ["fd00::2"])
    assert next_free(rset, set(), reserved) == ip_address("fd00::3")
    assert capacity(rset, reserved) == 255 - 2  # ::1..::ff minus gateway and reserved


def test_huge_v6_range_is_lazy() -> None:
    rset, reserved = one_set({"subnet": "fd00::/64"})
    start = time.perf_counter()
    assert next_free(rset, set(), reserved) == ip_address("fd00::2")
    assert capacity(rset, reserved) == 2**64 - 2
    assert time.perf_counter() - start < 0.1


def test_slash16_nearly_full_is_fast() -> None:
    rset, reserved = one_set({"subnet": "10.7.0.0/16"})
    free = ip_address("10.7.200.9")
    everything = {a for a in candidates(rset, reserved)}
    taken = everything - {free}
    start = time.perf_counter()
    assert next_free(rset, taken, reserved, ip_address("10.7.200.10")) == free
    assert time.perf_counter() - start < 1.0
    with pytest.raises(AddressExhausted, match="no free address"):
        next_free(rset, everything, reserved)


def test_check_requested() -> None:
    rset, reserved = one_set({"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.100"}, ["10.1.0.50"])
    taken = {ip_address("10.1.0.7")}
    assert check_requested(rset, ip_address("10.1.0.8"), taken, reserved) == ip_address("10.1.0.8")
    with pytest.raises(AddressInUse, match="already allocated"):
        check_requested(rset, ip_address("10.1.0.7"), taken, reserved)
    with pytest.raises(AddressInUse, match="gateway"):
        check_requested(rset, ip_address("10.1.0.1"), taken, reserved)
    with pytest.raises(AddressInUse, match="reserved"):
        check_requested(rset, ip_address("10.1.0.50"), taken, reserved)
    with pytest.raises(InvalidConfig, match="not in range set"):
        check_requested(rset, ip_address("10.1.0.200"), taken, reserved)
    with pytest.raises(InvalidConfig):
        check_requested(rset, ip_address("fd00::8"), taken, reserved)
