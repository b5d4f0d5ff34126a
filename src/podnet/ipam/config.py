"""The IPAM section of a CNI config, parsed into frozen values (pure).

Field names are host-local's, so an existing config only needs its `type` changed:
`ranges` (a list of range sets, each a list of {subnet, rangeStart, rangeEnd,
gateway}), the older flat `subnet`/`rangeStart`/`rangeEnd`/`gateway`, `routes` and
`dataDir`; podnet adds `reserved` (alias `exclude`): addresses or CIDRs never handed
out, and `blockAffinity` (Calico's block IPAM, ipam/blocks.py: the node's pods come
from the blocks of `pool` it claims, `ranges` then only names its first block). One
address is allocated from every range set, so dual stack is two sets.

Everything is validated here, once, with the field's path in the message, so the
allocator can assume a well-formed config. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from podnet import addresses
from podnet.cluster.dualstack import Pools, check_pools
from podnet.errors import InvalidConfig

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Smallest usable subnets: a v4 /31 or /32 (and v6 /127, /128) has no room for a
# network address, a gateway and a host, so host-local refuses them and so do we.
_MAX_PREFIX = {4: 30, 6: 126}


@dataclass(frozen=True)
class IpRange:
    """One contiguous block [start, end] inside `subnet`; `gateway` is never handed
    out (it defaults to the subnet's first usable address)."""

    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress

    @property
    def version(self) -> int:
        return self.subnet.version

    @property
    def bounds(self) -> tuple[int, int]:
        return int(self.start), int(self.end)

    def __contains__(self, address: object) -> bool:
        return (
            isinstance(address, (IPv4Address, IPv6Address))
            and address.version == self.version
            and self.start <= address <= self.end
        )

    def __str__(self) -> str:
        return f"{self.subnet} [{self.start}-{self.end}]"


@dataclass(frozen=True)
class RangeSet:
    """Ranges of one family; an attachment gets one address from the whole set."""

    ranges: tuple[IpRange, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def find(self, address: IPAddress) -> IpRange | None:
        """The range holding address, or None."""
        for rng in self.ranges:
            if address in rng:
                return rng
        return None

    def __contains__(self, address: object) -> bool:
        return any(address in rng for rng in self.ranges)

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.ranges)


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None

    def as_cni(self) -> dict[str, str]:
        out = {"dst": str(self.dst)}
        if self.gw is not None:
            out["gw"] = str(self.gw)
        return out


@dataclass(frozen=True)
class BlockAffinity:
    """`ipam.blockAffinity`: number `node`'s pods from the blocks of `pool` it claims
    (`blocks/`, one /`block_size` at a time, each claim living `ttl` seconds unless
    renewed); `strict`: never borrow from another node's block; `ring`: the blocks come
    from the gossip fabric's ring, which may hold the node (agent/gossip_ring.py), so an
    ADD reads the hold first (other nodes' ADDs pay nothing for it)."""

    node: str
    pool: IPv4Network
    block_size: int
    strict: bool = False
    ttl: float = 10.0
    ring: bool = False
    pool6: IPv6Network | None = None  # dual stack: each IPv4 block's twin numbers the IPv6 address

    @property
    def pools(self) -> Pools:
        return Pools(self.pool, self.block_size, self.pool6)


@dataclass(frozen=True)
class IpamConfig:
    range_sets: tuple[RangeSet, ...]
    routes: tuple[Route, ...] = ()
    reserved: tuple[IPNetwork, ...] = ()
    data_dir: str | None = None
    type: str = ""
    affinity: BlockAffinity | None = None

    def set_index(self, address: IPAddress) -> int | None:
        """Index of the range set that holds address, or None."""
        for index, rset in enumerate(self.range_sets):
            if address in rset:
                return index
        return None


# -- parsing ----------------------------------------------------------------------


def parse_ipam_config(raw: Mapping[str, Any]) -> IpamConfig:
    """Validate the `ipam` object of a network config; InvalidConfig names the field."""
    if not isinstance(raw, Mapping):
        raise InvalidConfig("'ipam' must be an object")
    sets = _range_sets(raw)
    _check_sets_disjoint(sets)
    data_dir = raw.get("dataDir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise InvalidConfig(f"ipam.dataDir must be a string, got {data_dir!r}")
    kind = raw.get("type", "")
    return IpamConfig(
        range_sets=sets,
        routes=_routes(raw.get("routes")),
        reserved=_reserved(raw),
        data_dir=data_dir or None,
        type=kind if isinstance(kind, str) else "",
        affinity=_affinity(raw.get("blockAffinity")),
    )


def _affinity(raw: object) -> BlockAffinity | None:
    where = "ipam.blockAffinity"
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidConfig(f"{where} must be an object")
    unknown = set(raw) - {"node", "pool", "pool6", "blockSize", "strictAffinity", "ttl", "ring"}
    if unknown:
        raise InvalidConfig(f"{where}.{sorted(unknown)[0]} is not a field of {where}")
    node = raw.get("node")
    if not isinstance(node, str) or not node or "/" in node:
        raise InvalidConfig(f"{where}.node must be the node's name, got {node!r}")
    pool = _network(raw.get("pool"), f"{where}.pool")
    if not isinstance(pool, IPv4Network):
        raise InvalidConfig(f"{where}.pool must be an IPv4 network, got {pool}")
    size = raw.get("blockSize")
    if not isinstance(size, int) or isinstance(size, bool) or not pool.prefixlen <= size <= _MAX_PREFIX[4]:
        raise InvalidConfig(f"{where}.blockSize must be an integer from {pool.prefixlen} to {_MAX_PREFIX[4]}, "
                            f"got {size!r}")
    strict = raw.get("strictAffinity", False)
    if not isinstance(strict, bool):
        raise InvalidConfig(f"{where}.strictAffinity must be true or false, got {strict!r}")
    ttl = raw.get("ttl", 10.0)
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0 < ttl <= 86400:
        raise InvalidConfig(f"{where}.ttl must be a number of seconds (0 < ttl <= 86400), got {ttl!r}")
    ring = raw.get("ring", False)
    if not isinstance(ring, bool):
        raise InvalidConfig(f"{where}.ring must be true or false, got {ring!r}")
    pool6 = None
    if raw.get("pool6") is not None:
        pool6 = _network(raw.get("pool6"), f"{where}.pool6")
        if not isinstance(pool6, IPv6Network):
            raise InvalidConfig(f"{where}.pool6 must be an IPv6 network, got {pool6}")
        check_pools(pool, size, pool6, f"{where}.pool6")
    return BlockAffinity(node, pool, size, strict, float(ttl), ring, pool6)


def parse_address(value: object, where: str) -> IPAddress:
    """An address; also accepts "addr/prefix" (runtimes pass requested IPs as CIDRs)."""
    if isinstance(value, (IPv4Address, IPv6Address)):
        return value
    if isinstance(value, str) and "/" in value:
        return addresses.interface(value, where).ip
    return addresses.address(value, where)


def _network(value: object, where: str) -> IPNetwork:
    return addresses.network(value, where, strict=False)


def _range_sets(raw: Mapping[str, Any]) -> tuple[RangeSet, ...]:
    sets: list[RangeSet] = []
    if raw.get("subnet") is not None:  # host-local's flat form comes first
        sets.append(RangeSet((_range(raw, "ipam"),)))
    ranges = raw.get("ranges")
    if ranges is not None:
        if not isinstance(ranges, list):
            raise InvalidConfig("ipam.ranges must be a list of range sets")
        sets.extend(_range_set(rs, f"ipam.ranges[{i}]") for i, rs in enumerate(ranges))
    if not sets:
        raise InvalidConfig("ipam has no address ranges: set 'ranges' or 'subnet'")
    return tuple(sets)


def _range_set(raw: object, where: str) -> RangeSet:
    if not isinstance(raw, list) or not raw:
        raise InvalidConfig(f"{where} must be a non-empty list of ranges")
    ranges = tuple(_range(item, f"{where}[{j}]") for j, item in enumerate(raw))
    families = {r.version for r in ranges}
    if len(families) > 1:
        raise InvalidConfig(f"{where} mixes IPv4 and IPv6 ranges; use one range set per family")
    _check_disjoint(ranges, where)
    return RangeSet(ranges)


def _range(raw: object, where: str) -> IpRange:
    if not isinstance(raw, Mapping):
        raise InvalidConfig(f"{where} must be an object with a 'subnet'")
    subnet = addresses.check_assignable(_network(raw.get("subnet"), f"{where}.subnet"), f"{where}.subnet")
    if subnet.prefixlen > _MAX_PREFIX[subnet.version]:
        raise InvalidConfig(
            f"{where}.subnet {subnet} is too small to allocate from",
            f"use at most a /{_MAX_PREFIX[subnet.version]} for IPv{subnet.version}",
        )
    first, last = _usable(subnet)
    gateway = _member(raw, "gateway", where, subnet, first)
    start = _member(raw, "rangeStart", where, subnet, first)
    end = _member(raw, "rangeEnd", where, subnet, last)
    if start > end:
        raise InvalidConfig(f"{where}.rangeStart {start} is after rangeEnd {end}")
    return IpRange(subnet=subnet, start=start, end=end, gateway=gateway)


def _usable(subnet: IPNetwork) -> tuple[IPAddress, IPAddress]:
    """First and last host addresses: not the network address, not v4 broadcast."""
    first = subnet.network_address + 1
    last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    return first, last


def _member(
    raw: Mapping[str, Any], field: str, where: str, subnet: IPNetwork, default: IPAddress
) -> IPAddress:
    """An optional address field that must be a usable host of subnet."""
    value = raw.get(field)
    if value is None:
        return default
    address = parse_address(value, f"{where}.{field}")
    first, last = _usable(subnet)
    if address.version != subnet.version or address not in subnet:
        raise InvalidConfig(f"{where}.{field} {address} is outside subnet {subnet}")
    if not first <= address <= last:
        raise InvalidConfig(
            f"{where}.{field} {address} is the network or broadcast address of {subnet}"
        )
    return address


def _check_disjoint(ranges: Iterable[IpRange], where: str) -> None:
    ordered = sorted(ranges, key=lambda r: (r.version, int(r.start)))
    for prev, cur in zip(ordered, ordered[1:], strict=False):
        if prev.version == cur.version and int(cur.start) <= int(prev.end):
            raise InvalidConfig(f"{where}: range {cur} overlaps range {prev}")


def _check_sets_disjoint(sets: tuple[RangeSet, ...]) -> None:
    """Two sets sharing addresses would hand one address out twice."""
    _check_disjoint((r for s in sets for r in s.ranges), "ipam range sets")


def _routes(raw: object) -> tuple[Route, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidConfig("ipam.routes must be a list of {dst, gw} objects")
    routes = []
    for i, item in enumerate(raw):
        where = f"ipam.routes[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidConfig(f"{where} must be an object with 'dst'")
        dst = _network(item.get("dst"), f"{where}.dst")
        gw = None
        if item.get("gw") is not None:
            gw = parse_address(item["gw"], f"{where}.gw")
            if gw.version != dst.version:
                raise InvalidConfig(f"{where}.gw {gw} is not of the same family as dst {dst}")
        routes.append(Route(dst, gw))
    return tuple(routes)


def _reserved(raw: Mapping[str, Any]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for field in ("reserved", "exclude"):
        items = raw.get(field)
        if items is None:
            continue
        if not isinstance(items, list):
            raise InvalidConfig(f"ipam.{field} must be a list of addresses or CIDRs")
        out.extend(_network(item, f"ipam.{field}[{i}]") for i, item in enumerate(items))
    return tuple(out)
