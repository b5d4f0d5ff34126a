"""Subnets of a new network: parsing, the default /24 allocation, overlap checks and
where `--gateway` / `--ip-range` apply (pure, stdlib only).

Rules (kept simple, as documented in `podnet network create --help`):
- no `--subnet`: the first /24 of 10.89.0.0/16 that overlaps no other network;
- `--gateway` and `--ip-range` may each be given once per address family and apply to
  the first `--subnet` of their family (they need an explicit `--subnet`);
- a subnet must not overlap another subnet of the same or any other network: overlapping
  networks would route ambiguously and hand out one address twice.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

from podnet import addresses
from podnet.errors import InvalidConfig
from podnet.model.network import IPAddress, IPNetwork, NetworkRecord, Subnet

DEFAULT_POOL = ipaddress.IPv4Network("10.89.0.0/16")
DEFAULT_PREFIX = 24
# Smallest subnets with room for a network address, a gateway and a host (as IPAM).
MAX_PREFIX = {4: 30, 6: 126}


def parse_cidr(value: str, what: str) -> IPNetwork:
    """A CIDR with no host bits set (10.89.1.5/24 is refused with the fix in the hint)."""
    addresses.refuse_scope(value, f"invalid {what}")
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise InvalidConfig(f"invalid {what} {value!r}: not a CIDR (e.g. 10.89.1.0/24)") from None
    raise InvalidConfig(f"invalid {what} {value!r}: host bits are set", f"did you mean {loose}?")


def parse_ip(value: str, what: str) -> IPAddress:
    addresses.refuse_scope(value, f"invalid {what}")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise InvalidConfig(f"invalid {what} {value!r}: not an IP address") from None


def host_bounds(net: IPNetwork) -> tuple[IPAddress, IPAddress]:
    """First and last assignable addresses: no network address, no IPv4 broadcast."""
    last = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
    return net.network_address + 1, last


def range_bounds(sub: Subnet) -> tuple[IPAddress, IPAddress] | None:
    """rangeStart/rangeEnd for IPAM from the ip-range, clamped to assignable hosts."""
    if sub.ip_range is None:
        return None
    first, last = host_bounds(sub.subnet)
    return max(sub.ip_range.network_address, first), min(sub.ip_range.broadcast_address, last)


def _check_size(net: IPNetwork) -> None:
    limit = MAX_PREFIX[net.version]
    if net.prefixlen > limit:
        raise InvalidConfig(
            f"subnet {net} is too small", f"use at most a /{limit} for IPv{net.version}"
        )


def owner_of_overlap(net: IPNetwork, networks: Iterable[NetworkRecord]) -> tuple[NetworkRecord, IPNetwork] | None:
    """The first other network (and its subnet) that `net` overlaps, if any."""
    for other in networks:
        for sub in other.subnets:
            if sub.version == net.version and sub.subnet.overlaps(net):
                return other, sub.subnet
    return None


def check_overlaps(nets: Sequence[IPNetwork], networks: Iterable[NetworkRecord]) -> None:
    """Refuse subnets overlapping each other or any subnet of another network (named)."""
    networks = list(networks)
    for i, net in enumerate(nets):
        for earlier in nets[:i]:
            if earlier.version == net.version and earlier.overlaps(net):
                raise InvalidConfig(f"subnet {net} overlaps subnet {earlier} of the same request")
        clash = owner_of_overlap(net, networks)
        if clash is not None:
            other, sub = clash
            raise InvalidConfig(
                f"subnet {net} overlaps subnet {sub} of network {other.name!r}",
                "choose another --subnet, or leave it out to get a free one",
            )


def allocate(networks: Iterable[NetworkRecord], pool: IPNetwork = DEFAULT_POOL, prefix: int = DEFAULT_PREFIX) -> IPNetwork:
    """The first /prefix of the pool that overlaps no subnet of any network."""
    networks = list(networks)
    for candidate in pool.subnets(new_prefix=prefix):
        if owner_of_overlap(candidate, networks) is None:
            return candidate
    raise InvalidConfig(
        f"no free /{prefix} left in {pool} for a new network", "pass --subnet explicitly"
    )


def _per_family(
    values: Sequence[str], what: str, parse: Callable[[str, str], IPAddress | IPNetwork]
) -> dict[int, IPAddress | IPNetwork]:
    out: dict[int, IPAddress | IPNetwork] = {}
    for value in values:
        item = parse(value, what)
        if item.version in out:
            raise InvalidConfig(f"more than one IPv{item.version} {what}: give one per address family")
        out[item.version] = item
    return out


def _first_of_family(nets: Sequence[IPNetwork], version: int, what: str, value: object) -> int:
    for index, net in enumerate(nets):
        if net.version == version:
            return index
    raise InvalidConfig(f"{what} {value} has no IPv{version} --subnet to apply to")


def _gateway(net: IPNetwork, gateway: IPAddress) -> IPAddress:
    first, last = host_bounds(net)
    if gateway not in net:
        raise InvalidConfig(f"gateway {gateway} is outside subnet {net}")
    if not first <= gateway <= last:
        raise InvalidConfig(f"gateway {gateway} is the network or broadcast address of {net}")
    return gateway


def _ip_range(net: IPNetwork, ip_range: IPNetwork) -> IPNetwork:
    if not ip_range.subnet_of(net):  # type: ignore[arg-type] - same family, checked by caller
        raise InvalidConfig(f"ip-range {ip_range} is outside subnet {net}")
    first, last = host_bounds(net)
    if max(ip_range.network_address, first) > min(ip_range.broadcast_address, last):
        raise InvalidConfig(f"ip-range {ip_range} holds no assignable address of {net}")
    return ip_range


def plan_subnets(
    subnets: Sequence[str],
    gateways: Sequence[str],
    ip_ranges: Sequence[str],
    networks: Iterable[NetworkRecord],
    pool: IPNetwork = DEFAULT_POOL,
) -> tuple[Subnet, ...]:
    """The subnets of a new network, validated against the request and every other
    network; InvalidConfig says what is wrong and with which network."""
    networks = list(networks)
    if not subnets and (gateways or ip_ranges):
        raise InvalidConfig("--gateway and --ip-range need an explicit --subnet")
    nets = [addresses.check_assignable(parse_cidr(s, "subnet"), "--subnet") for s in subnets]
    for net in nets:
        _check_size(net)
    if not nets:
        nets = [allocate(networks, pool)]
    check_overlaps(nets, networks)
    gw_by_index: dict[int, IPAddress] = {}
    for version, gw in _per_family(gateways, "gateway", parse_ip).items():
        index = _first_of_family(nets, version, "gateway", gw)
        gw_by_index[index] = _gateway(nets[index], gw)  # type: ignore[arg-type]
    range_by_index: dict[int, IPNetwork] = {}
    for version, rng in _per_family(ip_ranges, "ip-range", parse_cidr).items():
        index = _first_of_family(nets, version, "ip-range", rng)
        range_by_index[index] = _ip_range(nets[index], rng)  # type: ignore[arg-type]
    return tuple(
        Subnet(net, gw_by_index.get(i) or host_bounds(net)[0], range_by_index.get(i))
        for i, net in enumerate(nets)
    )
