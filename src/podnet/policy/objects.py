"""The policy documents `podnet apply -f FILE.yaml` accepts, parsed into frozen values.

Five kinds, each a frozen dataclass with a store key and a `to_dict()` manifest that
`parse_document` reads back to an equal object (the store keeps manifests, not pickles):

  v1 Namespace                          policy/namespaces/<name>
  networking.k8s.io/v1 NetworkPolicy    policy/networkpolicies/<namespace>/<name>
  podnet.io/v1 Tier                     policy/tiers/<name>
  podnet.io/v1 ClusterPolicy            policy/clusterpolicies/<name>
  podnet.io/v1 HostEndpoint             policy/hostendpoints/<name>

Parsing validates everything evaluation relies on, so `evaluate` never re-checks, and
fails with a message naming the document and the field path
(`NetworkPolicy x/deny-all: spec.ingress[0].ports[1].port: 70000 is not a port (1-65535)`).
Unknown fields in a spec are errors (a typo such as `podselector` must not silently
widen a policy); unknown metadata (annotations, uid, ...) and `status` are ignored.

Decisions worth knowing:
- NetworkPolicy follows the Kubernetes API exactly, defaults included (see
  `_policy_types` and `NetworkPolicyRule`). CIDRs must not have host bits set.
- Namespace always carries `kubernetes.io/metadata.name: <name>` (as the API server
  sets it), so namespaceSelectors can pick a namespace by name.
- The built-in Tier "default" (order 1000) always exists; a document may restate it
  with order 1000 but defining it with another order is an error: policies all over
  the cluster rely on where "default" sits.
- A ClusterPolicy must select something (spec.selector with at least one part), and
  rules of a direction not in spec.types are an error: a Deny rule that is silently
  ignored is worse than a refused document. (NetworkPolicy keeps the k8s behaviour of
  ignoring them.)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from podnet.policy.selectors import LabelSelector, PolicyError, parse_labels

__all__ = [
    "ClusterPolicy", "ClusterRule", "EndpointSelector", "HostEndpoint", "IPBlock", "Namespace",
    "NetworkPolicy", "NetworkPolicyPort", "NetworkPolicyRule", "Peer", "PolicyError",
    "PolicyObject", "PortRange", "Tier", "parse_document", "parse_documents",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

K8S_NAME_LABEL = "kubernetes.io/metadata.name"
DEFAULT_TIER = "default"
DEFAULT_TIER_ORDER = 1000
DEFAULT_POLICY_ORDER = 1000
DIRECTIONS = ("Ingress", "Egress")
NP_PROTOCOLS = ("TCP", "UDP", "SCTP")
CP_PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP")
ACTIONS = ("Allow", "Deny", "Pass", "Log")

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
# IANA_SVC_NAME: at most 15 characters, lowercase alphanumerics and '-', at least one
# letter, no leading/trailing or doubled '-'.
_SVC_NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_METADATA_KEYS = frozenset({"name", "namespace", "labels"})


def _frozen_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(sorted(labels.items())))


# --- locations and typed accessors -------------------------------------------------


@dataclass(frozen=True)
class _Loc:
    """Where in which document: renders as `NetworkPolicy x/a: spec.ingress[0]`."""

    doc: str
    path: str = ""

    def field(self, name: str) -> _Loc:
        return _Loc(self.doc, f"{self.path}.{name}" if self.path else name)

    def item(self, i: int) -> _Loc:
        return _Loc(self.doc, f"{self.path}[{i}]")

    def __str__(self) -> str:
        return f"{self.doc}: {self.path}" if self.path else self.doc

    def error(self, msg: str, hint: str = "") -> PolicyError:
        return PolicyError(f"{self}: {msg}", hint)


def _mapping(obj: Any, loc: _Loc, allowed: Iterable[str] | None = None) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise loc.error("must be a mapping")
    if allowed is not None:
        allowed = tuple(allowed)
        unknown = sorted(str(k) for k in obj if k not in allowed)
        if unknown:
            raise loc.field(unknown[0]).error("unknown field", f"known: {', '.join(allowed)}")
    return obj


def _list(obj: Any, loc: _Loc) -> list[Any]:
    if not isinstance(obj, list):
        raise loc.error("must be a list")
    return obj


def _int(obj: Any, loc: _Loc) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int):
        raise loc.error(f"{obj!r} is not an integer")
    return obj


def _number(obj: Any, loc: _Loc) -> int | float:
    if isinstance(obj, bool) or not isinstance(obj, int | float) or obj != obj:
        raise loc.error(f"{obj!r} is not a number")
    return obj


def _port(obj: Any, loc: _Loc) -> int:
    port = _int(obj, loc)
    if not 1 <= port <= 65535:
        raise loc.error(f"{port} is not a port (1-65535)")
    return port


def _name(obj: Any, loc: _Loc, *, label: bool) -> str:
    """A DNS-1123 label (namespaces, tiers, nodes) or subdomain (other object names)."""
    if label:
        if not isinstance(obj, str) or not _DNS_LABEL_RE.match(obj):
            raise loc.error(f"{obj!r} is not a DNS label",
                            "at most 63 lowercase alphanumerics or '-', starting and ending "
                            "with an alphanumeric")
    elif (not isinstance(obj, str) or len(obj) > 253 or not _DNS_SUBDOMAIN_RE.match(obj)):
        raise loc.error(f"{obj!r} is not a DNS subdomain name",
                        "at most 253 lowercase alphanumerics, '-' or '.'")
    return obj


def _network(obj: Any, loc: _Loc, *, bare_ip: bool = False) -> IPNetwork:
    if not isinstance(obj, str):
        raise loc.error(f"{obj!r} is not a CIDR")
    if bare_ip and "/" not in obj:
        try:
            return ipaddress.ip_network(obj)
        except ValueError:
            raise loc.error(f"{obj!r} is not an IP address or CIDR") from None
    if "/" not in obj:
        raise loc.error(f"{obj!r} is not a CIDR (address/prefix-length)")
    try:
        return ipaddress.ip_network(obj)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(obj, strict=False)
    except ValueError:
        raise loc.error(f"{obj!r} is not a CIDR") from None
    raise loc.error(f"{obj!r} has host bits set", f"did you mean {net}?")


def _selector(obj: Any, loc: _Loc) -> LabelSelector:
    return LabelSelector.parse(obj, str(loc))


def _types(obj: Any, loc: _Loc) -> tuple[str, ...]:
    out: list[str] = []
    for i, t in enumerate(_list(obj, loc)):
        if t not in DIRECTIONS:
            raise loc.item(i).error(f"{t!r} is not Ingress or Egress")
        if t in out:
            raise loc.item(i).error(f"{t} is listed twice")
        out.append(t)
    return tuple(sorted(out, key=DIRECTIONS.index))


def _inferred_types(given: Any, egress: Any, loc: _Loc) -> tuple[str, ...]:
    """Kubernetes' default (SetDefaults_NetworkPolicy): an absent or empty policyTypes
    means ["Ingress"], plus "Egress" when the egress rule list is non-empty. So
    `egress: []` without policyTypes does NOT isolate egress, exactly as in Kubernetes."""
    if given is not None and _list(given, loc):
        return _types(given, loc)
    return ("Ingress", "Egress") if egress else ("Ingress",)


# --- peers and ports ---------------------------------------------------------------


@dataclass(frozen=True)
class IPBlock:
    """`cidr` minus every `except` (each strictly inside cidr, as the API validates)."""

    cidr: IPNetwork
    except_: tuple[IPNetwork, ...] = ()

    def contains(self, addr: IPAddress) -> bool:
        return (addr.version == self.cidr.version and addr in self.cidr
                and not any(addr in e for e in self.except_))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cidr": str(self.cidr)}
        if self.except_:
            out["except"] = [str(e) for e in self.except_]
        return out

    @staticmethod
    def parse(obj: Any, loc: _Loc) -> IPBlock:
        obj = _mapping(obj, loc, ("cidr", "except"))
        if "cidr" not in obj:
            raise loc.field("cidr").error("required")
        cidr = _network(obj["cidr"], loc.field("cidr"))
        excepts = []
        ex_loc = loc.field("except")
        for i, e in enumerate(_list(obj.get("except") or [], ex_loc)):
            net = _network(e, ex_loc.item(i))
            if (net.version != cidr.version or not net.subnet_of(cidr)  # type: ignore[arg-type]
                    or net.prefixlen <= cidr.prefixlen):
                raise ex_loc.item(i).error(f"{net} is not strictly inside cidr {cidr}")
            excepts.append(net)
        return IPBlock(cidr, tuple(excepts))


@dataclass(frozen=True)
class Peer:
    """One entry of `from`/`to`. The fields given are ANDed.

    NetworkPolicy: podSelector alone = pods of the policy's own namespace;
    namespaceSelector alone = every pod of the matching namespaces; both = matching pods
    of matching namespaces; ipBlock stands alone. ClusterPolicy (cluster-scoped, no own
    namespace): podSelector alone = matching pods of every namespace, and it adds
    hostEndpointSelector (host endpoints only) and nets/notNets (address filters that may
    be ANDed with the selectors)."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None
    host_endpoint_selector: LabelSelector | None = None
    nets: tuple[IPNetwork, ...] = ()
    not_nets: tuple[IPNetwork, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pod_selector is not None:
            out["podSelector"] = self.pod_selector.to_dict()
        if self.namespace_selector is not None:
            out["namespaceSelector"] = self.namespace_selector.to_dict()
        if self.ip_block is not None:
            out["ipBlock"] = self.ip_block.to_dict()
        if self.host_endpoint_selector is not None:
            out["hostEndpointSelector"] = self.host_endpoint_selector.to_dict()
        if self.nets:
            out["nets"] = [str(n) for n in self.nets]
        if self.not_nets:
            out["notNets"] = [str(n) for n in self.not_nets]
        return out

    @staticmethod
    def parse(obj: Any, loc: _Loc, *, cluster: bool) -> Peer:
        fields = ["podSelector", "namespaceSelector", "ipBlock"]
        if cluster:
            fields += ["hostEndpointSelector", "nets", "notNets"]
        obj = _mapping(obj, loc, fields)
        if not obj:
            raise loc.error("a peer needs at least one of " + ", ".join(fields))

        def sel(key: str) -> LabelSelector | None:
            return None if obj.get(key) is None else _selector(obj[key], loc.field(key))

        def nets(key: str) -> tuple[IPNetwork, ...]:
            if obj.get(key) is None:
                return ()
            items = _list(obj[key], loc.field(key))
            if not items:
                raise loc.field(key).error("must not be empty (leave it out instead)")
            return tuple(_network(n, loc.field(key).item(i), bare_ip=True)
                         for i, n in enumerate(items))

        ip_block = None if obj.get("ipBlock") is None else IPBlock.parse(obj["ipBlock"],
                                                                         loc.field("ipBlock"))
        peer = Peer(sel("podSelector"), sel("namespaceSelector"), ip_block,
                    sel("hostEndpointSelector"), nets("nets"), nets("notNets"))
        others = [k for k in fields if k != "ipBlock" and obj.get(k) is not None]
        if ip_block is not None and others:
            raise loc.error(f"ipBlock cannot be combined with {others[0]}",
                            "use two peers (they are ORed)")
        if peer.host_endpoint_selector is not None and (
                peer.pod_selector is not None or peer.namespace_selector is not None):
            raise loc.error("hostEndpointSelector cannot be combined with podSelector or "
                            "namespaceSelector (no endpoint is both)", "use two peers")
        if all(obj.get(k) is None for k in fields):
            raise loc.error("a peer needs at least one of " + ", ".join(fields))
        return peer


def _peers(obj: Any, loc: _Loc, *, cluster: bool) -> tuple[Peer, ...] | None:
    if obj is None:
        return None
    return tuple(Peer.parse(p, loc.item(i), cluster=cluster)
                 for i, p in enumerate(_list(obj, loc)))


@dataclass(frozen=True)
class NetworkPolicyPort:
    """protocol (default TCP), port: a number, a named container port or None (all
    ports of the protocol), end_port: the inclusive end of a numeric range."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol}
        if self.port is not None:
            out["port"] = self.port
        if self.end_port is not None:
            out["endPort"] = self.end_port
        return out

    @staticmethod
    def parse(obj: Any, loc: _Loc) -> NetworkPolicyPort:
        obj = _mapping(obj, loc, ("protocol", "port", "endPort"))
        proto = obj.get("protocol", "TCP")
        if proto not in NP_PROTOCOLS:
            raise loc.field("protocol").error(f"{proto!r} is not one of {', '.join(NP_PROTOCOLS)}")
        port = obj.get("port")
        if isinstance(port, str):
            if len(port) > 15 or not _SVC_NAME_RE.match(port) or not re.search("[a-z]", port):
                raise loc.field("port").error(
                    f"{port!r} is neither a port number nor a port name",
                    "a named port has at most 15 lowercase alphanumerics or '-' with at "
                    "least one letter (IANA_SVC_NAME)")
        elif port is not None:
            port = _port(port, loc.field("port"))
        end = obj.get("endPort")
        if end is not None:
            end = _port(end, loc.field("endPort"))
            if not isinstance(port, int):
                raise loc.field("endPort").error("needs a numeric port")
            if end < port:
                raise loc.field("endPort").error(f"{end} is below port {port}")
        return NetworkPolicyPort(proto, port, end)


@dataclass(frozen=True)
class NetworkPolicyRule:
    """One ingress or egress rule. `peers` is `from` (ingress) or `to` (egress).

    Kubernetes API docs: "If this field is empty or missing, this rule matches all
    sources" (and all ports for `ports`). So None (missing) and () (an empty list) mean
    the same thing, "any"; both are kept apart only so the manifest round-trips."""

    peers: tuple[Peer, ...] | None = None
    ports: tuple[NetworkPolicyPort, ...] | None = None

    def to_dict(self, peer_key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.ports is not None:
            out["ports"] = [p.to_dict() for p in self.ports]
        if self.peers is not None:
            out[peer_key] = [p.to_dict() for p in self.peers]
        return out

    @staticmethod
    def parse(obj: Any, loc: _Loc, peer_key: str) -> NetworkPolicyRule:
        obj = _mapping(obj, loc, (peer_key, "ports"))
        ports = None
        if obj.get("ports") is not None:
            ports = tuple(NetworkPolicyPort.parse(p, loc.field("ports").item(i))
                          for i, p in enumerate(_list(obj["ports"], loc.field("ports"))))
        return NetworkPolicyRule(_peers(obj.get(peer_key), loc.field(peer_key), cluster=False),
                                 ports)


@dataclass(frozen=True)
class PortRange:
    lo: int
    hi: int

    def __contains__(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def to_value(self) -> int | str:
        return self.lo if self.lo == self.hi else f"{self.lo}-{self.hi}"

    @staticmethod
    def parse(obj: Any, loc: _Loc) -> PortRange:
        if isinstance(obj, str):
            lo_s, sep, hi_s = obj.partition("-")
            if not (lo_s.strip().isdigit() and (not sep or hi_s.strip().isdigit())):
                raise loc.error(f"{obj!r} is not a port or a 'lo-hi' range")
            lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
        else:
            lo = hi = _int(obj, loc)
        for p in (lo, hi):
            if not 1 <= p <= 65535:
                raise loc.error(f"{p} is not a port (1-65535)")
        if hi < lo:
            raise loc.error(f"{obj!r}: the range ends below its start")
        return PortRange(lo, hi)


@dataclass(frozen=True)
class ClusterRule:
    """A ClusterPolicy rule: the first matching rule's action decides (Log continues).
    protocol None = any protocol, ports None = any port, peers None = any peer."""

    action: str
    name: str | None = None
    protocol: str | None = None
    ports: tuple[PortRange, ...] | None = None
    peers: tuple[Peer, ...] | None = None

    def to_dict(self, peer_key: str) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        if self.name is not None:
            out["name"] = self.name
        if self.protocol is not None:
            out["protocol"] = self.protocol
        if self.ports is not None:
            out["ports"] = [r.to_value() for r in self.ports]
        if self.peers is not None:
            out[peer_key] = [p.to_dict() for p in self.peers]
        return out

    @staticmethod
    def parse(obj: Any, loc: _Loc, peer_key: str) -> ClusterRule:
        obj = _mapping(obj, loc, ("action", "name", "protocol", "ports", peer_key))
        action = obj.get("action")
        if action is None:
            raise loc.field("action").error("required", f"one of {', '.join(ACTIONS)}")
        if action not in ACTIONS:
            raise loc.field("action").error(f"{action!r} is not one of {', '.join(ACTIONS)}")
        name = obj.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise loc.field("name").error(f"{name!r} is not a rule name (a non-empty string)")
        proto = obj.get("protocol")
        if proto is not None and proto not in CP_PROTOCOLS:
            raise loc.field("protocol").error(f"{proto!r} is not one of {', '.join(CP_PROTOCOLS)}")
        ports = None
        if obj.get("ports") is not None:
            if proto not in NP_PROTOCOLS:
                raise loc.field("ports").error("ports need protocol TCP, UDP or SCTP")
            items = _list(obj["ports"], loc.field("ports"))
            if not items:
                raise loc.field("ports").error("must not be empty (leave it out for any port)")
            ports = tuple(PortRange.parse(p, loc.field("ports").item(i))
                          for i, p in enumerate(items))
        peers = _peers(obj.get(peer_key), loc.field(peer_key), cluster=True)
        return ClusterRule(action, name, proto, ports, peers)


# --- the kinds ---------------------------------------------------------------------


class _Labelled:
    """Kinds whose labels are frozen on creation (they are hashed and shared)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen_labels(self.labels))  # type: ignore[attr-defined]


class _RuleSet(_Labelled):
    """What NetworkPolicy and ClusterPolicy share: ingress and egress rule lists."""

    ingress: tuple
    egress: tuple

    def rules(self, direction: str) -> tuple:
        return self.ingress if direction == "Ingress" else self.egress

    def _with_rules(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self.ingress:
            spec["ingress"] = [r.to_dict("from") for r in self.ingress]
        if self.egress:
            spec["egress"] = [r.to_dict("to") for r in self.egress]
        return spec


@dataclass(frozen=True)
class Namespace:
    kind: ClassVar[str] = "Namespace"
    api_version: ClassVar[str] = "v1"

    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    namespace: ClassVar[None] = None

    def __post_init__(self) -> None:
        labels = dict(self.labels)
        if labels.setdefault(K8S_NAME_LABEL, self.name) != self.name:
            raise PolicyError(f"Namespace {self.name}: label {K8S_NAME_LABEL} must be the name")
        object.__setattr__(self, "labels", _frozen_labels(labels))

    @property
    def key(self) -> str:
        return f"policy/namespaces/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return _manifest(self, None)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], index: int = 0) -> Namespace:
        return _from_dict(cls, doc, index)


@dataclass(frozen=True)
class NetworkPolicy(_RuleSet):
    """A Kubernetes NetworkPolicy. `ingress`/`egress` are ignored for a direction not in
    `policy_types`, and a selected pod with no rule of a listed direction is isolated
    (deny all) in that direction."""

    kind: ClassVar[str] = "NetworkPolicy"
    api_version: ClassVar[str] = "networking.k8s.io/v1"

    name: str
    namespace: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]
    ingress: tuple[NetworkPolicyRule, ...] = ()
    egress: tuple[NetworkPolicyRule, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        return f"policy/networkpolicies/{self.namespace}/{self.name}"

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"podSelector": self.pod_selector.to_dict(),
                                "policyTypes": list(self.policy_types)}
        return _manifest(self, self._with_rules(spec))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], index: int = 0) -> NetworkPolicy:
        return _from_dict(cls, doc, index)


@dataclass(frozen=True)
class Tier(_Labelled):
    kind: ClassVar[str] = "Tier"
    api_version: ClassVar[str] = "podnet.io/v1"

    name: str
    order: int
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    namespace: ClassVar[None] = None

    @property
    def key(self) -> str:
        return f"policy/tiers/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return _manifest(self, {"order": self.order})

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], index: int = 0) -> Tier:
        return _from_dict(cls, doc, index)


DEFAULT_TIER_OBJECT = Tier(DEFAULT_TIER, DEFAULT_TIER_ORDER)


@dataclass(frozen=True)
class EndpointSelector:
    """ClusterPolicy spec.selector. Pods are selected when podSelector and/or
    namespaceSelector is given and every given one matches (AND); host endpoints when
    hostEndpointSelector is given and matches. Both halves may be given."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    host_endpoint_selector: LabelSelector | None = None

    @property
    def selects_pods(self) -> bool:
        return self.pod_selector is not None or self.namespace_selector is not None

    @property
    def selects_hosts(self) -> bool:
        return self.host_endpoint_selector is not None

    def selects_pod(self, labels: Mapping[str, str], ns_labels: Mapping[str, str]) -> bool:
        return (self.selects_pods
                and (self.pod_selector is None or self.pod_selector.matches(labels))
                and (self.namespace_selector is None
                     or self.namespace_selector.matches(ns_labels)))

    def selects_host(self, labels: Mapping[str, str]) -> bool:
        return (self.host_endpoint_selector is not None
                and self.host_endpoint_selector.matches(labels))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pod_selector is not None:
            out["podSelector"] = self.pod_selector.to_dict()
        if self.namespace_selector is not None:
            out["namespaceSelector"] = self.namespace_selector.to_dict()
        if self.host_endpoint_selector is not None:
            out["hostEndpointSelector"] = self.host_endpoint_selector.to_dict()
        return out


@dataclass(frozen=True)
class ClusterPolicy(_RuleSet):
    """A tiered, ordered, cluster-scoped policy (Calico GlobalNetworkPolicy-like)."""

    kind: ClassVar[str] = "ClusterPolicy"
    api_version: ClassVar[str] = "podnet.io/v1"

    name: str
    selector: EndpointSelector
    types: tuple[str, ...]
    ingress: tuple[ClusterRule, ...] = ()
    egress: tuple[ClusterRule, ...] = ()
    tier: str = DEFAULT_TIER
    order: int | float = DEFAULT_POLICY_ORDER
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    namespace: ClassVar[None] = None

    @property
    def key(self) -> str:
        return f"policy/clusterpolicies/{self.name}"

    @property
    def ref(self) -> str:
        return f"ClusterPolicy/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"tier": self.tier, "order": self.order,
                                "selector": self.selector.to_dict(), "types": list(self.types)}
        return _manifest(self, self._with_rules(spec))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], index: int = 0) -> ClusterPolicy:
        return _from_dict(cls, doc, index)


@dataclass(frozen=True)
class HostEndpoint(_Labelled):
    """A lab node (`node`) or plain lab host (`host`) as a policy endpoint; `ips` may be
    left to the agent, which knows the host's addresses."""

    kind: ClassVar[str] = "HostEndpoint"
    api_version: ClassVar[str] = "podnet.io/v1"

    name: str
    node: str | None = None
    host: str | None = None
    ips: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    namespace: ClassVar[None] = None

    @property
    def key(self) -> str:
        return f"policy/hostendpoints/{self.name}"

    @property
    def machine(self) -> str:
        return self.node or self.host or ""

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"node": self.node} if self.node else {"host": self.host}
        if self.ips:
            spec["ips"] = list(self.ips)
        return _manifest(self, spec)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], index: int = 0) -> HostEndpoint:
        return _from_dict(cls, doc, index)


PolicyObject = Namespace | NetworkPolicy | Tier | ClusterPolicy | HostEndpoint
KINDS: dict[str, type] = {c.kind: c for c in (Namespace, NetworkPolicy, Tier, ClusterPolicy,
                                              HostEndpoint)}


def _manifest(obj: Any, spec: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": obj.name}
    if obj.namespace is not None:
        meta["namespace"] = obj.namespace
    if obj.labels:
        meta["labels"] = dict(obj.labels)
    out: dict[str, Any] = {"apiVersion": obj.api_version, "kind": obj.kind, "metadata": meta}
    if spec is not None:
        out["spec"] = spec
    return out


def _from_dict(cls: type, doc: Mapping[str, Any], index: int) -> Any:
    obj = parse_document(doc, index)
    if not isinstance(obj, cls):
        raise PolicyError(f"document {index}: expected a {cls.kind}, got a {obj.kind}")
    return obj


# --- parsing -------------------------------------------------------------------------


def parse_documents(docs: Iterable[Mapping[str, Any] | None]) -> list[PolicyObject]:
    """Every non-empty document of a multi-document YAML file, in file order. Two
    documents with the same (kind, namespace, name) are an error: which one should win?"""
    out: list[PolicyObject] = []
    seen: dict[str, int] = {}
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        obj = parse_document(doc, index)
        if obj.key in seen:
            raise PolicyError(f"{_label(obj)}: defined twice (documents {seen[obj.key]} "
                              f"and {index})")
        seen[obj.key] = index
        out.append(obj)
    return out


def _label(obj: PolicyObject) -> str:
    return f"{obj.kind} {obj.namespace}/{obj.name}" if obj.namespace else f"{obj.kind} {obj.name}"


def parse_document(doc: Mapping[str, Any], index: int) -> PolicyObject:
    """One manifest (already loaded from YAML) into its frozen object."""
    loc = _Loc(f"document {index}")
    doc = _mapping(doc, loc, ("apiVersion", "kind", "metadata", "spec", "status"))
    kind = doc.get("kind")
    if kind not in KINDS:
        raise loc.field("kind").error(f"{kind!r} is not a policy kind",
                                      f"podnet apply knows {', '.join(KINDS)}")
    cls = KINDS[kind]
    if doc.get("apiVersion") != cls.api_version:
        raise loc.field("apiVersion").error(
            f"{doc.get('apiVersion')!r} is not the apiVersion of {kind}",
            f"use apiVersion: {cls.api_version}")
    meta = _mapping(doc.get("metadata"), loc.field("metadata"))
    namespaced = cls is NetworkPolicy
    name = _name(meta.get("name"), loc.field("metadata.name"),
                 label=cls in (Namespace, Tier))
    namespace = None
    if namespaced:
        namespace = meta.get("namespace") or "default"
        _name(namespace, loc.field("metadata.namespace"), label=True)
        loc = _Loc(f"{kind} {namespace}/{name}")
    else:
        loc = _Loc(f"{kind} {name}")
        if meta.get("namespace") is not None:
            raise loc.field("metadata.namespace").error(f"{kind} is cluster-scoped",
                                                        "remove metadata.namespace")
    labels = parse_labels(meta.get("labels"), str(loc.field("metadata.labels")))
    spec_obj = doc.get("spec")
    spec_loc = loc.field("spec")
    if cls is Namespace:
        if labels.get(K8S_NAME_LABEL, name) != name:
            raise loc.field(f"metadata.labels.{K8S_NAME_LABEL}").error(
                f"{labels[K8S_NAME_LABEL]!r} differs from the name {name!r}",
                "this label always holds the namespace name")
        return Namespace(name, labels)
    spec = _mapping({} if spec_obj is None and cls is Tier else spec_obj, spec_loc)
    if cls is NetworkPolicy:
        assert namespace is not None
        return _parse_network_policy(name, namespace, labels, spec, spec_loc)
    if cls is Tier:
        return _parse_tier(name, labels, spec, spec_loc)
    if cls is ClusterPolicy:
        return _parse_cluster_policy(name, labels, spec, spec_loc)
    return _parse_host_endpoint(name, labels, spec, spec_loc)


def _parse_network_policy(name: str, namespace: str, labels: dict[str, str],
                          spec: Mapping[str, Any], loc: _Loc) -> NetworkPolicy:
    _mapping(spec, loc, ("podSelector", "policyTypes", "ingress", "egress"))
    if spec.get("podSelector") is None:
        raise loc.field("podSelector").error("required", "{} selects every pod of the namespace")
    pod_selector = _selector(spec["podSelector"], loc.field("podSelector"))
    types = _inferred_types(spec.get("policyTypes"), spec.get("egress"), loc.field("policyTypes"))
    rules: dict[str, tuple[NetworkPolicyRule, ...]] = {}
    for key, peer_key in (("ingress", "from"), ("egress", "to")):
        items = _list(spec.get(key) or [], loc.field(key))
        rules[key] = tuple(NetworkPolicyRule.parse(r, loc.field(key).item(i), peer_key)
                           for i, r in enumerate(items))
    return NetworkPolicy(name, namespace, pod_selector, types, rules["ingress"],
                         rules["egress"], labels)


def _parse_tier(name: str, labels: dict[str, str], spec: Mapping[str, Any],
                loc: _Loc) -> Tier:
    _mapping(spec, loc, ("order",))
    if spec.get("order") is None:
        raise loc.field("order").error("required", "an integer; lower tiers are evaluated first")
    order = _int(spec["order"], loc.field("order"))
    if name == DEFAULT_TIER and order != DEFAULT_TIER_ORDER:
        raise loc.field("order").error(
            f"the built-in tier {DEFAULT_TIER!r} has order {DEFAULT_TIER_ORDER}",
            "create a tier of another name to run policies before or after it")
    return Tier(name, order, labels)


def _parse_cluster_policy(name: str, labels: dict[str, str], spec: Mapping[str, Any],
                          loc: _Loc) -> ClusterPolicy:
    _mapping(spec, loc, ("tier", "order", "selector", "types", "ingress", "egress"))
    tier = _name(spec.get("tier", DEFAULT_TIER), loc.field("tier"), label=True)
    order = _number(spec.get("order", DEFAULT_POLICY_ORDER), loc.field("order"))
    sel_loc = loc.field("selector")
    parts = ("podSelector", "namespaceSelector", "hostEndpointSelector")
    if spec.get("selector") is None:
        raise sel_loc.error("required: which endpoints the policy applies to",
                            "podSelector, namespaceSelector and/or hostEndpointSelector")
    sel_obj = _mapping(spec["selector"], sel_loc, parts)
    given = {k: _selector(sel_obj[k], sel_loc.field(k)) for k in parts
             if sel_obj.get(k) is not None}
    if not given:
        raise sel_loc.error("selects nothing: give podSelector, namespaceSelector and/or "
                            "hostEndpointSelector", "{} under one of them selects all of its kind")
    selector = EndpointSelector(given.get("podSelector"), given.get("namespaceSelector"),
                                given.get("hostEndpointSelector"))
    types = _inferred_types(spec.get("types"), spec.get("egress"), loc.field("types"))
    rules: dict[str, tuple[ClusterRule, ...]] = {}
    for key, peer_key, direction in (("ingress", "from", "Ingress"), ("egress", "to", "Egress")):
        items = _list(spec.get(key) or [], loc.field(key))
        if items and direction not in types:
            raise loc.field(key).error(f"has rules but spec.types does not list {direction}",
                                       f"add {direction} to spec.types")
        rules[key] = tuple(ClusterRule.parse(r, loc.field(key).item(i), peer_key)
                           for i, r in enumerate(items))
    return ClusterPolicy(name, selector, types, rules["ingress"], rules["egress"], tier, order,
                         labels)


def _parse_host_endpoint(name: str, labels: dict[str, str], spec: Mapping[str, Any],
                         loc: _Loc) -> HostEndpoint:
    _mapping(spec, loc, ("node", "host", "ips"))
    node, host = spec.get("node"), spec.get("host")
    if (node is None) == (host is None):
        raise loc.error("give exactly one of node (a lab node) or host (a plain lab host)")
    if node is not None:
        _name(node, loc.field("node"), label=True)
    else:
        _name(host, loc.field("host"), label=True)
    ips: list[str] = []
    for i, ip in enumerate(_list(spec.get("ips") or [], loc.field("ips"))):
        try:
            if not isinstance(ip, str):
                raise ValueError(ip)
            ips.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            raise loc.field("ips").item(i).error(f"{ip!r} is not an IP address") from None
    return HostEndpoint(name, node, host, tuple(ips), labels)
