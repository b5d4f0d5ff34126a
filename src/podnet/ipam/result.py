"""What an IPAM hands out, typed: addresses with their subnet and gateway, routes, DNS.

The built-in IPAM (service.py) builds these directly; a CNI result in JSON (a
delegated IPAM plugin's reply, CHECK's prevResult, a stored endpoint's result) is
parsed into them once (`parse_result`). Nothing turns them back into JSON before the
reply is written (`as_cni`).

Standard library only: podnet-ipam answers ADD with an IpamResult.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet import addresses
from podnet.errors import InvalidConfig
from podnet.ipam.config import IPAddress, IPNetwork, Route, parse_address

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class IpamAddress:
    """An allocated address with the subnet and gateway of its range."""

    address: IPAddress
    subnet: IPNetwork
    gateway: IPAddress | None
    range_set: int

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.subnet.prefixlen}"

    @property
    def ip_interface(self) -> IPInterface:
        """The address with its prefix, as the container's interface gets it."""
        return ipaddress.ip_interface(self.cidr)

    def as_cni(self, interface: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.cidr}
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        if interface is not None:
            out["interface"] = interface
        return out


@dataclass(frozen=True)
class IpamResult:
    """What an IPAM hands out: one address per range set, the routes, and (from a
    delegated plugin only) DNS settings. podnet-ipam answers ADD with it."""

    ips: tuple[IpamAddress, ...]
    routes: tuple[Route, ...] = ()
    dns: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def addresses(self) -> list[str]:
        return [str(ip.address) for ip in self.ips]

    def as_cni(self, interface: int | None = None) -> dict[str, Any]:
        """The CNI 1.0 result fragment: {"ips": [...], "routes": [...], "dns"?}.
        `interface` is the index into the final result's `interfaces`, if any."""
        out: dict[str, Any] = {
            "ips": [ip.as_cni(interface) for ip in self.ips],
            "routes": [r.as_cni() for r in self.routes],
        }
        if self.dns:
            out["dns"] = dict(self.dns)
        return out


@dataclass(frozen=True)
class ParsedRoute(Route):
    """A route read from a CNI result: podnet acts on dst and gw; the other fields
    (CNI 1.1 mtu, table, scope...) go back to the runtime as they were written."""

    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def as_cni(self) -> dict[str, Any]:
        return {**super().as_cni(), **self.extra}


def parse_result(raw: Mapping | None, what: str) -> IpamResult:
    """A CNI result of any version (a delegate's reply) as typed addresses, routes and
    DNS; InvalidConfig names what does not parse (`what`: which result)."""
    raw = raw or {}
    routes = _list(raw, "routes", what)
    dns = raw.get("dns") or {}
    if not isinstance(dns, Mapping):
        raise InvalidConfig(f"{what}: 'dns' must be an object")
    return IpamResult(parse_addresses(raw, what),
                      tuple(_route(r, f"{what}: routes[{i}]") for i, r in enumerate(routes)), dict(dns))


def parse_addresses(raw: Mapping, what: str) -> tuple[IpamAddress, ...]:
    """The `ips` of a CNI result (a delegate's, CHECK's prevResult, a stored one)."""
    out = []
    for index, ip in enumerate(_list(raw, "ips", what)):
        where = f"{what}: ips[{index}]"
        if not isinstance(ip, Mapping):
            raise InvalidConfig(f"{where} must be an object")
        iface = addresses.interface(ip.get("address"), f"{where}.address")
        gateway = ip.get("gateway")
        out.append(IpamAddress(iface.ip, iface.network,
                               parse_address(gateway, f"{where}.gateway") if gateway else None, index))
    return tuple(out)


def _route(raw: object, where: str) -> ParsedRoute:
    if not isinstance(raw, Mapping):
        raise InvalidConfig(f"{where} must be an object")
    network = addresses.network(raw.get("dst"), f"{where}.dst", strict=False)
    gw = parse_address(raw["gw"], f"{where}.gw") if raw.get("gw") else None
    return ParsedRoute(network, gw, {k: v for k, v in raw.items() if k not in ("dst", "gw")})


def _list(raw: Mapping, name: str, what: str) -> list:
    value = raw.get(name) or []
    if not isinstance(value, list):
        raise InvalidConfig(f"{what}: '{name}' must be a list")
    return value

