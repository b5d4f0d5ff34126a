"""BGPConfiguration and BGPPeer (projectcalico.org/v3, the fields podnet implements)
as frozen values, and the pure answers the BGP fabric asks of them.

  BGPConfiguration   bgpconfigurations/<name>   `default`, or `node.<node>` for one node
  BGPPeer            bgppeers/<name>            a session some nodes open

Decisions (Calico's where it has one):
- `default` holds the cluster's settings; `node.<node>` overrides, field by field, what
  it gives for that node (`effective_config`). Other names would do nothing and are
  refused. A node's own config is where it becomes a route reflector
  (`routeReflectorClusterID`: Calico keeps that on its Node resource, podnet has none);
  `default` may not carry one, and the full mesh is cluster-wide, so a node config may
  not set `nodeToNodeMeshEnabled` (one node leaving the mesh would half-open sessions).
- A BGPPeer applies to one node (`node`), to the nodes matching `nodeSelector`, or to
  every node (neither); its far end is `peerIP` (an address, optionally `:port`) or the
  nodes matching `peerSelector`, which is how Calico spells a route reflector topology:
  nodes labelled `route-reflector == 'true'` peer with each other, every node with them.
- `asNumber` is required with `peerIP`; with `peerSelector` a selected node's own AS
  (its effective config) wins, as in Calico, and `asNumber` is only the fallback.
- podnet's BGP speaks IPv4 (bgp/model.py): an IPv6 peer or service CIDR is refused at
  apply rather than accepted and never announced.
Every refusal names the field path (schema/fields.py). Pure.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple

from podnet import keys
from podnet.bgp.selector import Selector, parse_selector
from podnet.schema import fields
from podnet.schema.fields import Loc
from podnet.schema.kind import Metadata, manifest

API_VERSION = "projectcalico.org/v3"
DEFAULT_CONFIG = "default"
NODE_CONFIG_PREFIX = "node."
DEFAULT_AS_NUMBER = 64512  # Calico's (a private AS)
DEFAULT_LISTEN_PORT = 179
MAX_AS_NUMBER = 4294967295  # 4-byte AS numbers (RFC 6793)
LOG_SEVERITIES = ("Info", "Debug", "Warning", "Error", "Fatal")

CONFIG_FIELDS = ("asNumber", "nodeToNodeMeshEnabled", "serviceClusterIPs", "serviceExternalIPs", "listenPort",
                 "logSeverityScreen", "routeReflectorClusterID")
PEER_FIELDS = ("peerIP", "asNumber", "node", "nodeSelector", "peerSelector", "keepOriginalNextHop")


def node_config_name(node: str) -> str:
    """The name of one node's own BGPConfiguration (`node.node1`)."""
    return NODE_CONFIG_PREFIX + node


class _Object:
    """What both kinds share: cluster-scoped, labels frozen on creation, a key by name."""

    kind: ClassVar[str]
    api_version: ClassVar[str] = API_VERSION
    namespace: ClassVar[None] = None
    prefix: ClassVar[str]
    name: str
    labels: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", fields.frozen_labels(self.labels))

    @property
    def key(self) -> str:
        return keys.object_key(self.prefix, self.name)


@dataclass(frozen=True)
class BGPConfiguration(_Object):
    """One stored configuration: None is "not given" (the default, or what `default`
    says for a node config). `effective_config` returns one with every default filled."""

    kind: ClassVar[str] = "BGPConfiguration"
    prefix: ClassVar[str] = keys.BGP_CONFIGURATIONS

    name: str
    as_number: int | None = None
    node_to_node_mesh: bool | None = None
    service_cluster_ips: tuple[str, ...] | None = None
    service_external_ips: tuple[str, ...] | None = None
    listen_port: int | None = None
    log_severity: str | None = None
    rr_cluster_id: str | None = None  # set: this node is a route reflector (node configs only)
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def node(self) -> str | None:
        """The node a `node.<node>` config is for (None: `default`)."""
        return self.name[len(NODE_CONFIG_PREFIX):] if self.name.startswith(NODE_CONFIG_PREFIX) else None

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        for name, value in (("asNumber", self.as_number), ("nodeToNodeMeshEnabled", self.node_to_node_mesh),
                            ("listenPort", self.listen_port), ("logSeverityScreen", self.log_severity),
                            ("routeReflectorClusterID", self.rr_cluster_id)):
            if value is not None:
                spec[name] = value
        if self.service_cluster_ips is not None:
            spec["serviceClusterIPs"] = [{"cidr": c} for c in self.service_cluster_ips]
        if self.service_external_ips is not None:
            spec["serviceExternalIPs"] = [{"cidr": c} for c in self.service_external_ips]
        return manifest(self.api_version, self.kind, self.name, None, self.labels, spec)


DEFAULTS = BGPConfiguration(DEFAULT_CONFIG, DEFAULT_AS_NUMBER, True, (), (), DEFAULT_LISTEN_PORT)
_OVERRIDABLE = tuple(f.name for f in dataclasses.fields(BGPConfiguration) if f.name not in ("name", "labels"))


@dataclass(frozen=True)
class BGPPeer(_Object):
    """One BGPPeer: who opens the session (node / nodeSelector / every node) and to
    whom (peerIP, or the nodes peerSelector matches)."""

    kind: ClassVar[str] = "BGPPeer"
    prefix: ClassVar[str] = keys.BGP_PEERS

    name: str
    as_number: int | None = None
    peer_address: str | None = None  # with peer_port: spec.peerIP
    peer_port: int | None = None
    node: str | None = None
    node_selector: Selector | None = None
    peer_selector: Selector | None = None
    keep_original_next_hop: bool = False
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def peer_ip(self) -> str | None:
        """spec.peerIP as stored: `addr` or `addr:port`."""
        if self.peer_address is None or self.peer_port is None:
            return self.peer_address
        return f"{self.peer_address}:{self.peer_port}"  # IPv4 only (parse_peer_ip)

    def applies_to(self, node: str, labels: Mapping[str, str]) -> bool:
        """Whether `node` (with its labels) opens this peer's sessions."""
        if self.node is not None:
            return self.node == node
        return self.node_selector is None or self.node_selector.matches(labels)

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if self.peer_ip is not None:
            spec["peerIP"] = self.peer_ip
        if self.peer_selector is not None:
            spec["peerSelector"] = self.peer_selector.text
        if self.as_number is not None:
            spec["asNumber"] = self.as_number
        if self.node is not None:
            spec["node"] = self.node
        if self.node_selector is not None:
            spec["nodeSelector"] = self.node_selector.text
        if self.keep_original_next_hop:
            spec["keepOriginalNextHop"] = True
        return manifest(self.api_version, self.kind, self.name, None, self.labels, spec)


# --- parsing -------------------------------------------------------------------------


def as_number(obj: Any, loc: Loc) -> int:
    value = fields.integer(obj, loc)
    if not 1 <= value <= MAX_AS_NUMBER:
        raise loc.error(f"{value} is not an AS number (1-{MAX_AS_NUMBER})")
    return value


def _flag(obj: Any, loc: Loc) -> bool:
    if not isinstance(obj, bool):
        raise loc.error(f"{obj!r} is not true or false")
    return obj


def _ipv4_only(address: str, loc: Loc, what: str) -> str:
    if ":" in address:
        raise loc.error(f"{what} {address!r} is IPv6", "podnet's BGP speaks IPv4 only")
    return address


def _cidrs(obj: Any, loc: Loc) -> tuple[str, ...]:
    """`[{cidr: 10.96.0.0/12}, ...]`."""
    out = []
    for i, item in enumerate(fields.items(obj, loc)):
        entry = fields.mapping(item, loc.item(i), ("cidr",))
        if entry.get("cidr") is None:
            raise loc.item(i).field("cidr").error("required")
        net = fields.cidr(entry["cidr"], loc.item(i).field("cidr"), bare_ip=True)
        out.append(_ipv4_only(str(net), loc.item(i).field("cidr"), "CIDR"))
    return tuple(out)


def _cluster_id(obj: Any, loc: Loc) -> str:
    """A route reflector cluster ID: 32 bits written as an IPv4 address (`244.0.0.1`)."""
    try:
        if not isinstance(obj, str):
            raise ValueError(obj)
        return str(ipaddress.IPv4Address(obj))
    except ValueError:
        raise loc.error(f"{obj!r} is not a cluster ID", "32 bits in IPv4 address form, e.g. 244.0.0.1") from None


def _config_name(meta: Metadata) -> str | None:
    """The node a config is for; None for `default`; anything else is refused."""
    if meta.name == DEFAULT_CONFIG:
        return None
    loc = meta.loc.field("metadata.name")
    if not meta.name.startswith(NODE_CONFIG_PREFIX):
        raise loc.error(f"{meta.name!r} is neither {DEFAULT_CONFIG!r} nor {NODE_CONFIG_PREFIX}<node>",
                        "the cluster's settings are 'default'; one node's are 'node.<its name>'")
    return fields.dns_name(meta.name[len(NODE_CONFIG_PREFIX):], loc, label=True)


def parse_bgp_configuration(meta: Metadata, raw: Any) -> BGPConfiguration:
    loc = meta.loc.field("spec")
    spec = fields.mapping({} if raw is None else raw, loc, CONFIG_FIELDS)
    node = _config_name(meta)

    def given(name: str, parse: Any) -> Any:
        return None if spec.get(name) is None else parse(spec[name], loc.field(name))

    if node is None and spec.get("routeReflectorClusterID") is not None:
        raise loc.field("routeReflectorClusterID").error(
            "a route reflector is one node", "set it in that node's own configuration, node.<name>")
    if node is not None and spec.get("nodeToNodeMeshEnabled") is not None:
        raise loc.field("nodeToNodeMeshEnabled").error(
            "the node-to-node mesh is cluster-wide", f"set it in {DEFAULT_CONFIG!r}")
    severity = spec.get("logSeverityScreen")
    if severity is not None and severity not in LOG_SEVERITIES:
        raise loc.field("logSeverityScreen").error(f"{severity!r} is not one of {', '.join(LOG_SEVERITIES)}")
    return BGPConfiguration(
        meta.name, given("asNumber", as_number), given("nodeToNodeMeshEnabled", _flag),
        given("serviceClusterIPs", _cidrs), given("serviceExternalIPs", _cidrs),
        given("listenPort", fields.port_number), severity, given("routeReflectorClusterID", _cluster_id),
        meta.labels)


_BRACKETED_RE = re.compile(r"\[([^\]]*)\]:([0-9]+)")


def parse_peer_ip(obj: Any, loc: Loc) -> tuple[str, int | None]:
    """`addr`, `addr:port` or `[addr]:port` -> (address, port or None)."""
    if not isinstance(obj, str):
        raise loc.error(f"{obj!r} is not an IP address")
    host, port = obj, None
    bracketed = _BRACKETED_RE.fullmatch(obj)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    elif obj.count(":") == 1:
        host, port = obj.split(":")
    if port is not None and not port.isdigit():
        raise loc.error(f"{obj!r}: {port!r} is not a port (1-65535)")
    address = fields.address(host, loc)
    if bracketed and ":" not in address:
        raise loc.error(f"{obj!r}: only an IPv6 address is written in brackets", f"write {address}:{port}")
    return _ipv4_only(address, loc, "peer"), None if port is None else fields.port_number(int(port), loc)


def parse_bgp_peer(meta: Metadata, raw: Any) -> BGPPeer:
    loc = meta.loc.field("spec")
    spec = fields.mapping({} if raw is None else raw, loc, PEER_FIELDS)
    if spec.get("node") is not None and spec.get("nodeSelector") is not None:
        raise loc.field("nodeSelector").error("give node or nodeSelector, not both",
                                              "neither: every node opens the session")
    if (spec.get("peerIP") is None) == (spec.get("peerSelector") is None):
        raise loc.field("peerIP").error("give exactly one of peerIP and peerSelector",
                                        "peerIP: a router; peerSelector: the nodes that are the peers")
    address, port = (None, None) if spec.get("peerIP") is None else parse_peer_ip(spec["peerIP"], loc.field("peerIP"))
    if address is not None and spec.get("asNumber") is None:
        raise loc.field("asNumber").error("required with peerIP: the AS number of the peer")
    asn = None if spec.get("asNumber") is None else as_number(spec["asNumber"], loc.field("asNumber"))
    node = None if spec.get("node") is None else fields.dns_name(spec["node"], loc.field("node"), label=True)

    def selector(name: str) -> Selector | None:
        return None if spec.get(name) is None else parse_selector(spec[name], loc.field(name))

    keep = _flag(spec.get("keepOriginalNextHop", False), loc.field("keepOriginalNextHop"))
    return BGPPeer(meta.name, asn, address, port, node, selector("nodeSelector"), selector("peerSelector"),
                   keep, meta.labels)


# --- what the fabric asks ------------------------------------------------------------


def effective_config(configs: Iterable[BGPConfiguration], node: str) -> BGPConfiguration:
    """One node's settings: the defaults, then what `default` gives, then what
    `node.<node>` gives. Named after the most specific config that applied."""
    by_name = {c.name: c for c in configs}
    out = DEFAULTS
    for name in (DEFAULT_CONFIG, node_config_name(node)):
        config = by_name.get(name)
        if config is not None:
            given = {f: getattr(config, f) for f in _OVERRIDABLE if getattr(config, f) is not None}
            out = replace(out, name=name, **given)
    return out


@dataclass(frozen=True)
class NodeInfo:
    """What peers_for knows of a node: its session address, labels, and (from its
    effective config) its AS, route reflector cluster ID and listen port."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)
    asn: int | None = None
    rr_cluster_id: str | None = None
    listen_port: int = DEFAULT_LISTEN_PORT


class PeerTarget(NamedTuple):
    """One session a node opens because of a BGPPeer."""

    name: str  # the BGPPeer's name
    address: str
    asn: int
    port: int = DEFAULT_LISTEN_PORT
    node: str | None = None  # the node at the far end (peerSelector), None for a router
    keep_original_next_hop: bool = False
    rr_client: bool = False  # this node is a route reflector and the far node is its client


def node_infos(nodes: Mapping[str, tuple[str, Mapping[str, str]]],
               configs: Iterable[BGPConfiguration]) -> dict[str, NodeInfo]:
    """{node: (address, labels)} with each node's effective config -> {node: NodeInfo}."""
    configs = tuple(configs)
    out = {}
    for name, (address, labels) in nodes.items():
        config = effective_config(configs, name)
        out[name] = NodeInfo(address, labels, config.as_number, config.rr_cluster_id,
                             config.listen_port or DEFAULT_LISTEN_PORT)
    return out


def peers_for(node: str, node_labels: Mapping[str, str], peers: Iterable[BGPPeer],
              nodes: Mapping[str, NodeInfo]) -> list[PeerTarget]:
    """The sessions the BGPPeers give `node`, by peer name: peerIP as written,
    peerSelector expanded to the matching nodes' addresses, and, for a node a
    peerSelector selects, the nodes that peer applies to (sessions are symmetric: a
    reflector peers back with its clients); never `node` itself. One session per far
    address (the first peer by name wins), as BIRD has one per neighbour."""
    me = nodes.get(node)
    mine = {me.address} if me else set()
    out: dict[str, PeerTarget] = {}

    def session(peer: BGPPeer, name: str, other: NodeInfo) -> PeerTarget:
        asn = other.asn if other.asn is not None else peer.as_number or DEFAULT_AS_NUMBER
        client = me is not None and me.rr_cluster_id is not None and other.rr_cluster_id != me.rr_cluster_id
        return PeerTarget(peer.name, other.address, asn, other.listen_port, name, peer.keep_original_next_hop, client)

    for peer in sorted(peers, key=lambda p: p.name):
        targets: list[PeerTarget] = []
        if peer.applies_to(node, node_labels):
            if peer.peer_address is not None:
                assert peer.as_number is not None  # parse_bgp_peer requires it with peerIP
                targets.append(PeerTarget(peer.name, peer.peer_address, peer.as_number,
                                          peer.peer_port or DEFAULT_LISTEN_PORT, None, peer.keep_original_next_hop))
            elif peer.peer_selector is not None:
                targets += [session(peer, name, other) for name, other in sorted(nodes.items())
                            if peer.peer_selector.matches(other.labels)]
        if peer.peer_selector is not None and peer.peer_selector.matches(node_labels):
            # the far end of a peerSelector peer peers back, as Calico's confd renders it:
            # a reflector opens a session with every node that selects it
            targets += [session(peer, name, other) for name, other in sorted(nodes.items())
                        if name != node and peer.applies_to(name, other.labels)]
        for target in targets:
            if target.address not in mine:  # never a session to itself (by name or by address)
                out.setdefault(target.address, target)
    return list(out.values())
