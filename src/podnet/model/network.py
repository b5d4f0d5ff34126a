"""NetworkRecord: a user-defined network (`networks/<name>`), and the rules for its name.

One type for the record that `podnet network` writes and the container, DNS and
isolation code read: {"name", "id", "driver", "subnets": [{"subnet", "gateway",
"ip_range"}], "parent", "mtu", "internal", "bridge", "created", "labels"}, plus
"vlan" (right after "parent") only for a macvlan network on an 802.1Q VLAN, so a record
without one keeps the very bytes older releases wrote. Every subnet carries its gateway
(explicit or the first host), so no reader recomputes it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet import addresses, keys
from podnet.errors import InvalidConfig
from podnet.model.base import Fields
from podnet.naming import is_ifname
from podnet.store.base import dumps

DRIVERS = ("bridge", "macvlan")
BRIDGE_PREFIX = "pnb"  # + 10 hex of the id: 13 bytes, inside IFNAMSIZ
# Docker's rule for names. The length cap keeps the conflist file name and the nft
# comments that name the network (kernel limit 128 bytes) well inside their limits.
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
NAME_MAX = 64
VLAN_MIN, VLAN_MAX = 1, 4094  # 802.1Q ids; 0 and 4095 are reserved
# `--network host|none` are modes of `podnet container run`, never network names.
RESERVED_NAMES = frozenset({"host", "none"})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_name(name: str) -> str:
    """A network name as Docker accepts it (plus a length cap); InvalidConfig otherwise."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > NAME_MAX:
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
            subnet=addresses.network(raw["subnet"], "subnet"),
            gateway=addresses.address(raw["gateway"], "gateway"),
            ip_range=addresses.network(ip_range, "ip_range") if ip_range else None,
        )


@dataclass(frozen=True)
class NetworkRecord:
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
    vlan: int | None = None  # macvlan only: the children sit on <parent>.<vlan> (kernel/vlan.py)

    @property
    def key(self) -> str:
        return keys.network(self.name)

    def to_json(self) -> dict[str, Any]:
        vlan = {"vlan": self.vlan} if self.vlan is not None else {}  # absent: the bytes of old records
        return {
            "name": self.name,
            "id": self.id,
            "driver": self.driver,
            "subnets": [s.to_json() for s in self.subnets],
            "parent": self.parent,
            **vlan,
            "mtu": self.mtu,
            "internal": self.internal,
            "bridge": self.bridge,
            "created": self.created,
            "labels": dict(self.labels),
        }

    def nameserver(self) -> str | None:
        """Where the agent's DNS server for this network listens, and what its
        containers get in resolv.conf: the first IPv4 gateway, else the first one."""
        gateways = sorted((s.gateway for s in self.subnets), key=lambda gw: gw.version)
        return str(gateways[0]) if gateways else None

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "network record") -> NetworkRecord:
        f = Fields(raw, what)
        name = f.text("name")
        if not NAME_RE.fullmatch(name) or len(name) > NAME_MAX:
            raise f.error("name", f"is not a network name: {name!r}")
        driver = f.text("driver", "bridge")
        if driver not in DRIVERS:
            raise f.error("driver", f"must be one of {', '.join(DRIVERS)}, got {driver!r}")
        for ifname in ("bridge", "parent"):
            value = f.optional_text(ifname)
            if value is not None and not is_ifname(value):
                raise f.error(ifname, f"is not an interface name: {value!r}")
        mtu = f.integer("mtu")
        if mtu is not None and not 68 <= mtu <= 65535:
            raise f.error("mtu", f"must be between 68 and 65535, got {mtu}")
        vlan = f.integer("vlan")
        if vlan is not None and not VLAN_MIN <= vlan <= VLAN_MAX:
            raise f.error("vlan", f"must be between {VLAN_MIN} and {VLAN_MAX}, got {vlan}")
        if vlan is not None and driver != "macvlan":
            raise f.error("vlan", f"applies to macvlan networks only, not driver {driver!r}")
        subnets = f.raw.get("subnets") or []
        if not isinstance(subnets, list):
            raise f.error("subnets", "must be a list")
        try:
            parsed = tuple(Subnet.from_json(s) for s in subnets)
        except (AttributeError, KeyError, TypeError, ValueError, InvalidConfig) as exc:
            raise f.error("subnets", f"holds an invalid subnet ({exc})") from None
        return cls(
            name=name,
            id=f.text("id"),
            driver=driver,
            subnets=parsed,
            internal=f.flag("internal"),
            parent=f.optional_text("parent"),
            mtu=mtu,
            bridge=f.optional_text("bridge"),
            created=f.number("created"),
            labels=f.labels("labels"),
            vlan=vlan,
        )
