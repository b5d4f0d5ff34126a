"""The network record (store key `networks/<name>`) and its errors (pure, stdlib only).

The JSON shape is a contract with the container and DNS code, which read the records
directly: {"name", "id", "driver", "subnets": [{"subnet", "gateway", "ip_range"}],
"parent", "mtu", "internal", "bridge", "created", "labels"}.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.errors import InvalidConfig, PodnetError

PREFIX = "networks/"
DRIVERS = ("bridge", "macvlan")
BRIDGE_PREFIX = "pnb"  # + 10 hex of the id: 13 bytes, inside IFNAMSIZ
# Docker's rule for names. The length cap keeps the conflist file name and the nft
# comments that name the network (kernel limit 128 bytes) well inside their limits.
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
NAME_MAX = 64
# `--network host|none` are modes of `podnet container run`, never network names.
RESERVED_NAMES = frozenset({"host", "none"})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class NetworkNotFound(PodnetError):
    """No network of that name is in the store."""

    def __init__(self, name: str) -> None:
        super().__init__(f"network {name!r} not found", "list networks with: podnet network ls")
        self.name = name


class NetworkExists(PodnetError):
    """The name is taken (by a network, or by a conflist podnet did not write)."""


class NetworkInUse(PodnetError):
    """Containers are still attached; `rm --force` removes the network anyway."""


def check_name(name: str) -> str:
    """A network name as Docker accepts it (plus a length cap); InvalidConfig otherwise."""
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > NAME_MAX:
        raise InvalidConfig(
            f"invalid network name {name!r}",
            f"names match [a-zA-Z0-9][a-zA-Z0-9_.-]* and have at most {NAME_MAX} characters",
        )
    if name in RESERVED_NAMES:
        raise InvalidConfig(
            f"network name {name!r} is reserved",
            "it is a network mode of `podnet container run --network`",
        )
    return name


def key(name: str) -> str:
    return PREFIX + name


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + network_id[:10]


@dataclass(frozen=True)
class Subnet:
    """One subnet of a network; `gateway` is always set (explicit or the first host)."""

    subnet: IPNetwork
    gateway: IPAddress
    ip_range: IPNetwork | None = None

    @property
    def version(self) -> int:
        return self.subnet.version

    def to_json(self) -> dict[str, Any]:
        return {
            "subnet": str(self.subnet),
            "gateway": str(self.gateway),
            "ip_range": str(self.ip_range) if self.ip_range is not None else None,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Subnet:
        ip_range = raw.get("ip_range")
        return cls(
            subnet=ipaddress.ip_network(raw["subnet"]),
            gateway=ipaddress.ip_address(raw["gateway"]),
            ip_range=ipaddress.ip_network(ip_range) if ip_range else None,
        )


@dataclass(frozen=True)
class Network:
    name: str
    id: str
    driver: str
    subnets: tuple[Subnet, ...]
    internal: bool = False
    parent: str | None = None
    mtu: int | None = None
    bridge: str | None = None
    created: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        return key(self.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "driver": self.driver,
            "subnets": [s.to_json() for s in self.subnets],
            "parent": self.parent,
            "mtu": self.mtu,
            "internal": self.internal,
            "bridge": self.bridge,
            "created": self.created,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Network:
        return cls(
            name=str(raw["name"]),
            id=str(raw["id"]),
            driver=str(raw.get("driver", "bridge")),
            subnets=tuple(Subnet.from_json(s) for s in raw.get("subnets") or ()),
            internal=bool(raw.get("internal", False)),
            parent=raw.get("parent"),
            mtu=raw.get("mtu"),
            bridge=raw.get("bridge"),
            created=float(raw.get("created", 0.0)),
            labels=dict(raw.get("labels") or {}),
        )
