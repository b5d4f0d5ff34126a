"""The records that join clusters into a clusterset, each validated when read (pure).

Each cluster keeps its own store; joining writes, in each of the two stores, who the
other is (`clusterset/peers/<cluster>`: its name, its store and its CIDRs, copied from
its `clusterset/self`). A cluster's gateway candidates are `clusterset/gateways/<node>`
(the node and the address its gateway tunnels from); the one in charge holds
`clusterset/active-gateway`, a key with a TTL its holder refreshes, taken by another
candidate once it expired (agent/clusterset_service.py).

Everything read from a store, ours or a peer's, goes through `from_json` here before
it reaches a route, a tunnel or an nft set: names are DNS labels, CIDRs IPv4 networks,
addresses IPv4 addresses, with the field named when one is not.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from podnet import keys
from podnet.errors import InvalidConfig

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


class ClustersetError(InvalidConfig):
    """A clusterset record or request that cannot be used (the field is named)."""


def _field(raw: Mapping[str, Any], name: str, where: str) -> Any:
    if not isinstance(raw, Mapping) or name not in raw:
        raise ClustersetError(f"{where}: {name}: missing")
    return raw[name]


def check_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ClustersetError(f"{where}: {value!r} is not a cluster name (lowercase letters, digits and '-', "
                              "at most 32, starting and ending with a letter or digit)")
    return value


def check_cidr(value: Any, where: str) -> str:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except (TypeError, ValueError) as exc:
        raise ClustersetError(f"{where}: {value!r} is not an IPv4 network: {exc}") from None
    if net.prefixlen < 8 or net.is_loopback or net.is_multicast:
        raise ClustersetError(f"{where}: {net} cannot be a cluster's range (a /8 or longer, not loopback or multicast)")
    return str(net)


def check_address(value: Any, where: str) -> str:
    try:
        addr = ipaddress.IPv4Address(value)
    except (TypeError, ValueError):
        raise ClustersetError(f"{where}: {value!r} is not an IPv4 address") from None
    if addr.is_loopback or addr.is_multicast or addr.is_unspecified:
        raise ClustersetError(f"{where}: {addr} cannot be a gateway's address")
    return str(addr)


@dataclass(frozen=True)
class ClusterInfo:
    """Who a cluster is (`clusterset/self`): what a peer needs to route to it."""

    name: str
    cluster_cidr: str
    service_cidr: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "clusterCIDR": self.cluster_cidr, "serviceCIDR": self.service_cidr}

    @classmethod
    def from_json(cls, raw: Any, where: str = keys.CLUSTERSET_SELF) -> ClusterInfo:
        return cls(check_name(_field(raw, "name", where), f"{where}: name"),
                   check_cidr(_field(raw, "clusterCIDR", where), f"{where}: clusterCIDR"),
                   check_cidr(_field(raw, "serviceCIDR", where), f"{where}: serviceCIDR"))

    @property
    def cidrs(self) -> tuple[str, str]:
        return self.cluster_cidr, self.service_cidr


@dataclass(frozen=True)
class ClusterPeer:
    """Another cluster of the set, as this cluster's store records it."""

    info: ClusterInfo
    store: str  # where its store is (its agents' --store), read by our active gateway

    def to_json(self) -> dict[str, Any]:
        return {**self.info.to_json(), "store": self.store}

    @classmethod
    def from_json(cls, raw: Any, where: str = keys.CLUSTERSET_PEERS) -> ClusterPeer:
        store = _field(raw, "store", where)
        if not isinstance(store, str) or not store or "\0" in store:
            raise ClustersetError(f"{where}: store: {store!r} is not a store URL")
        return cls(ClusterInfo.from_json(raw, where), store)

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(frozen=True)
class GatewayCandidate:
    """A node that may carry the clusterset's traffic, and the address it tunnels from."""

    node: str
    address: str

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "address": self.address}

    @classmethod
    def from_json(cls, raw: Any, where: str = keys.CLUSTERSET_GATEWAYS) -> GatewayCandidate:
        node = _field(raw, "node", where)
        if not isinstance(node, str) or not node or "/" in node:
            raise ClustersetError(f"{where}: node: {node!r} is not a node name")
        return cls(node, check_address(_field(raw, "address", where), f"{where}: address"))


@dataclass(frozen=True)
class ActiveGateway:
    """The gateway in charge: its node, its tunnel address, its underlay address (where
    the other nodes send the clusterset's traffic), since when. The key has a TTL its
    holder keeps refreshing: when the holder dies, the key expires and another
    candidate takes it (agent/clusterset_service.py)."""

    node: str
    address: str
    underlay: str
    since: float

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "address": self.address, "underlay": self.underlay, "since": self.since}

    @classmethod
    def from_json(cls, raw: Any, where: str = keys.CLUSTERSET_ACTIVE_GATEWAY) -> ActiveGateway:
        candidate = GatewayCandidate.from_json(raw, where)
        since = _field(raw, "since", where)
        if not isinstance(since, (int, float)) or isinstance(since, bool) or since < 0:
            raise ClustersetError(f"{where}: since: {since!r} is not a time")
        return cls(candidate.node, candidate.address,
                   check_address(_field(raw, "underlay", where), f"{where}: underlay"), float(since))


def overlaps(local: ClusterInfo, others: Iterable[ClusterInfo]) -> list[str]:
    """Every pair of ranges that collide between `local` and `others`, described."""
    found = []
    mine = {f"{local.name} {kind}": ipaddress.IPv4Network(cidr)
            for kind, cidr in (("clusterCIDR", local.cluster_cidr), ("serviceCIDR", local.service_cidr))}
    for other in others:
        for kind, cidr in (("clusterCIDR", other.cluster_cidr), ("serviceCIDR", other.service_cidr)):
            theirs = ipaddress.IPv4Network(cidr)
            for label, net in mine.items():
                if net.overlaps(theirs):
                    found.append(f"{label} {net} overlaps {other.name} {kind} {theirs}")
    return found


def check_joinable(local: ClusterInfo, remote: ClusterInfo, peers: Iterable[ClusterInfo]) -> None:
    """Refuse a join that could not route: the same name, or ranges that overlap
    (each other's, or a peer's the other would have to reach too)."""
    known = list(peers)
    if remote.name == local.name or any(p.name == remote.name for p in known if p != remote):
        raise ClustersetError(f"cluster {remote.name!r}: the clusterset already has a cluster of that name")
    clashes = overlaps(remote, [local, *(p for p in known if p.name != remote.name)])
    if clashes:
        raise ClustersetError(
            "cannot join: " + "; ".join(clashes),
            "clusters of a set route to each other's pods and services directly, so their ranges must not "
            "overlap: give one of them other ranges (lab up --cluster-cidr/--service-cidr). Overlapping clusters "
            "need global addressing (Submariner's Globalnet, `--global-cidr`), which podnet does not offer yet")
