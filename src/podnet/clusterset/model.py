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
from podnet.clusterset.globalnet import GlobalLayout, layout
from podnet.errors import InvalidConfig

TUNNELS = ("vxlan", "sleeve")  # between gateways: VXLAN in clear, or the gossip fabric's encrypted sleeve
TUNNEL_SECRET_BYTES = 32
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
    global_cidr: str | None = None  # set: the clusterset reaches us on it only (clusterset/globalnet.py)

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "clusterCIDR": self.cluster_cidr, "serviceCIDR": self.service_cidr}
        if self.global_cidr:
            out["globalCIDR"] = self.global_cidr
        return out

    @classmethod
    def from_json(cls, raw: Any, where: str = keys.CLUSTERSET_SELF) -> ClusterInfo:
        name = check_name(_field(raw, "name", where), f"{where}: name")
        cluster = check_cidr(_field(raw, "clusterCIDR", where), f"{where}: clusterCIDR")
        service = check_cidr(_field(raw, "serviceCIDR", where), f"{where}: serviceCIDR")
        found = raw.get("globalCIDR")
        info = cls(name, cluster, service, None if found is None else check_cidr(found, f"{where}: globalCIDR"))
        if info.global_cidr:
            try:
                info.layout()
            except ValueError as exc:
                raise ClustersetError(f"{where}: globalCIDR: {exc}") from None
        return info

    @property
    def cidrs(self) -> tuple[str, str]:
        return self.cluster_cidr, self.service_cidr

    @property
    def routed(self) -> tuple[str, ...]:
        """What the other clusters route to us: our global CIDR, else our own ranges."""
        return (self.global_cidr,) if self.global_cidr else self.cidrs

    def layout(self) -> GlobalLayout:
        """How our global CIDR maps our ranges (ValueError: it cannot, or there is none)."""
        if not self.global_cidr:
            raise ValueError(f"cluster {self.name} has no global CIDR")
        return layout(self.global_cidr, self.cluster_cidr, self.service_cidr)


@dataclass(frozen=True)
class ClusterPeer:
    """Another cluster of the set, as this cluster's store records it."""

    info: ClusterInfo
    store: str  # where its store is (its agents' --store), read by our active gateway
    tunnel: str = "vxlan"  # or "sleeve": encrypted, keyed from clusterset/tunnel-keys/<peer>

    def to_json(self) -> dict[str, Any]:
        return {**self.info.to_json(), "store": self.store, "tunnel": self.tunnel}

    @classmethod
    def from_json(cls, raw: Any, where: str = keys.CLUSTERSET_PEERS) -> ClusterPeer:
        store = _field(raw, "store", where)
        if not isinstance(store, str) or not store or "\0" in store:
            raise ClustersetError(f"{where}: store: {store!r} is not a store URL")
        tunnel = raw.get("tunnel", "vxlan")
        if tunnel not in TUNNELS:
            raise ClustersetError(f"{where}: tunnel: {tunnel!r} is not one of {', '.join(TUNNELS)}")
        return cls(ClusterInfo.from_json(raw, where), store, tunnel)

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


def tunnel_secret_from_json(raw: Any, where: str) -> bytes:
    """The secret two clusters' sleeve keys derive from (`{"secret": base64}`)."""
    import base64
    import binascii

    text = _field(raw, "secret", where)
    try:
        secret = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) < TUNNEL_SECRET_BYTES:
        raise ClustersetError(f"{where}: secret: not {TUNNEL_SECRET_BYTES} or more bytes of base64")
    return secret


def overlaps(local: ClusterInfo, others: Iterable[ClusterInfo]) -> list[str]:
    """Every range one of the two clusters would route to the other that collides with a
    range the other uses, described (each pair once)."""
    found = []
    for other in others:
        for to, frm in ((local, other), (other, local)):
            for routed in frm.routed:
                theirs = ipaddress.IPv4Network(routed)
                for label, cidr in _labelled(to):
                    if theirs.overlaps(ipaddress.IPv4Network(cidr)):
                        found.append(f"{frm.name} {_label_of(frm, routed)} {theirs} overlaps {to.name} {label} {cidr}")
    return sorted(set(found))


def _labelled(info: ClusterInfo) -> list[tuple[str, str]]:
    out = [("clusterCIDR", info.cluster_cidr), ("serviceCIDR", info.service_cidr)]
    return out + ([("globalCIDR", info.global_cidr)] if info.global_cidr else [])


def _label_of(info: ClusterInfo, cidr: str) -> str:
    return next(label for label, value in _labelled(info) if value == cidr)


def check_joinable(local: ClusterInfo, remote: ClusterInfo, peers: Iterable[ClusterInfo]) -> None:
    """Refuse a join that could not route: the same name, or a range one cluster would
    route toward another that collides with one the other uses (or a peer does: it
    has to reach the newcomer too)."""
    known = list(peers)
    if remote.name == local.name or any(p.name == remote.name for p in known if p != remote):
        raise ClustersetError(f"cluster {remote.name!r}: the clusterset already has a cluster of that name")
    clashes = overlaps(remote, [local, *(p for p in known if p.name != remote.name)])
    if clashes:
        hint = ("clusters of a set route to each other's ranges, so what one routes must not overlap what another "
                "uses: give one of them other ranges (lab up --cluster-cidr/--service-cidr), or give each cluster "
                "whose ranges overlap a global CIDR of its own (podnet cluster init --global-cidr, e.g. "
                "242.0.0.0/15 and 242.2.0.0/15): the others then reach it on global IPs only")
        raise ClustersetError("cannot join: " + "; ".join(clashes), hint)
