"""The rule parts of NetworkPolicy and ClusterPolicy: peers, ports and rules.

Parsed from the manifest with the field path in every error (schema/fields.py) into
frozen values that `to_dict` renders back to the same manifest. The semantics of
matching them live in policy/evaluate.py; these are only their shapes and checks.
Pure, standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from podnet.policy.selectors import LabelSelector
from podnet.schema import fields
from podnet.schema.fields import IPAddress, IPNetwork, Loc

DIRECTIONS = ("Ingress", "Egress")
NP_PROTOCOLS = ("TCP", "UDP", "SCTP")
CP_PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP")
ACTIONS = ("Allow", "Deny", "Pass", "Log")


def selector(obj: Any, loc: Loc) -> LabelSelector:
    return LabelSelector.parse(obj, str(loc))


def directions(obj: Any, loc: Loc) -> tuple[str, ...]:
    out: list[str] = []
    for i, t in enumerate(fields.items(obj, loc)):
        if t not in DIRECTIONS:
            raise loc.item(i).error(f"{t!r} is not Ingress or Egress")
        if t in out:
            raise loc.item(i).error(f"{t} is listed twice")
        out.append(t)
    return tuple(sorted(out, key=DIRECTIONS.index))


def inferred_types(given: Any, egress: Any, loc: Loc) -> tuple[str, ...]:
    """Kubernetes' default (SetDefaults_NetworkPolicy): an absent or empty policyTypes
    means ["Ingress"], plus "Egress" when the egress rule list is non-empty. So
    `egress: []` without policyTypes does NOT isolate egress, exactly as in Kubernetes."""
    if given is not None and fields.items(given, loc):
        return directions(given, loc)
    return ("Ingress", "Egress") if egress else ("Ingress",)




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
    def parse(obj: Any, loc: Loc) -> IPBlock:
        obj = fields.mapping(obj, loc, ("cidr", "except"))
        if "cidr" not in obj:
            raise loc.field("cidr").error("required")
        cidr = fields.cidr(obj["cidr"], loc.field("cidr"))
        excepts = []
        ex_loc = loc.field("except")
        for i, e in enumerate(fields.items(obj.get("except") or [], ex_loc)):
            net = fields.cidr(e, ex_loc.item(i))
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
    def parse(obj: Any, loc: Loc, *, cluster: bool) -> Peer:
        allowed = ["podSelector", "namespaceSelector", "ipBlock"]
        if cluster:
            allowed += ["hostEndpointSelector", "nets", "notNets"]
        obj = fields.mapping(obj, loc, allowed)
        if not obj:
            raise loc.error("a peer needs at least one of " + ", ".join(allowed))

        def sel(key: str) -> LabelSelector | None:
            return None if obj.get(key) is None else selector(obj[key], loc.field(key))

        def nets(key: str) -> tuple[IPNetwork, ...]:
            if obj.get(key) is None:
                return ()
            listed = fields.items(obj[key], loc.field(key))
            if not listed:
                raise loc.field(key).error("must not be empty (leave it out instead)")
            return tuple(fields.cidr(n, loc.field(key).item(i), bare_ip=True)
                         for i, n in enumerate(listed))

        ip_block = None if obj.get("ipBlock") is None else IPBlock.parse(obj["ipBlock"],
                                                                         loc.field("ipBlock"))
        peer = Peer(sel("podSelector"), sel("namespaceSelector"), ip_block,
                    sel("hostEndpointSelector"), nets("nets"), nets("notNets"))
        others = [k for k in allowed if k != "ipBlock" and obj.get(k) is not None]
        if ip_block is not None and others:
            raise loc.error(f"ipBlock cannot be combined with {others[0]}",
                            "use two peers (they are ORed)")
        if peer.host_endpoint_selector is not None and (
                peer.pod_selector is not None or peer.namespace_selector is not None):
            raise loc.error("hostEndpointSelector cannot be combined with podSelector or "
                            "namespaceSelector (no endpoint is both)", "use two peers")
        if all(obj.get(k) is None for k in allowed):
            raise loc.error("a peer needs at least one of " + ", ".join(allowed))
        return peer


def _peers(obj: Any, loc: Loc, *, cluster: bool) -> tuple[Peer, ...] | None:
    if obj is None:
        return None
    return tuple(Peer.parse(p, loc.item(i), cluster=cluster)
                 for i, p in enumerate(fields.items(obj, loc)))


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
    def parse(obj: Any, loc: Loc) -> NetworkPolicyPort:
        obj = fields.mapping(obj, loc, ("protocol", "port", "endPort"))
        proto = obj.get("protocol", "TCP")
        if proto not in NP_PROTOCOLS:
            raise loc.field("protocol").error(f"{proto!r} is not one of {', '.join(NP_PROTOCOLS)}")
        port = obj.get("port")
        if isinstance(port, str):
            if not fields.is_port_name(port):
                raise loc.field("port").error(
                    f"{port!r} is neither a port number nor a port name",
                    "a named port has at most 15 lowercase alphanumerics or '-' with at "
                    "least one letter (IANA_SVC_NAME)")
        elif port is not None:
            port = fields.port_number(port, loc.field("port"))
        end = obj.get("endPort")
        if end is not None:
            end = fields.port_number(end, loc.field("endPort"))
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
    def parse(obj: Any, loc: Loc, peer_key: str) -> NetworkPolicyRule:
        obj = fields.mapping(obj, loc, (peer_key, "ports"))
        ports = None
        if obj.get("ports") is not None:
            ports = tuple(NetworkPolicyPort.parse(p, loc.field("ports").item(i))
                          for i, p in enumerate(fields.items(obj["ports"], loc.field("ports"))))
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
    def parse(obj: Any, loc: Loc) -> PortRange:
        if isinstance(obj, str):
            lo_s, sep, hi_s = obj.partition("-")
            if not (lo_s.strip().isdigit() and (not sep or hi_s.strip().isdigit())):
                raise loc.error(f"{obj!r} is not a port or a 'lo-hi' range")
            lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
        else:
            lo = hi = fields.integer(obj, loc)
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
    def parse(obj: Any, loc: Loc, peer_key: str) -> ClusterRule:
        obj = fields.mapping(obj, loc, ("action", "name", "protocol", "ports", peer_key))
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
            items = fields.items(obj["ports"], loc.field("ports"))
            if not items:
                raise loc.field("ports").error("must not be empty (leave it out for any port)")
            ports = tuple(PortRange.parse(p, loc.field("ports").item(i))
                          for i, p in enumerate(items))
        peers = _peers(obj.get(peer_key), loc.field(peer_key), cluster=True)
        return ClusterRule(action, name, proto, ports, peers)
