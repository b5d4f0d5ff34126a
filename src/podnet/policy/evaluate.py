"""The reference semantics of podnet policy: is this one flow allowed, and why.

`decide` is deliberately a slow, obvious interpreter over the parsed objects. It answers
`podnet policy explain`, and it is the oracle the nftables compiler is tested against,
so every rule below is written here once and nowhere else.

Semantics:
- A flow from an endpoint to itself is always allowed (loopback, never leaves the pod).
- Egress is judged on the source endpoint, ingress on the destination endpoint; the flow
  passes only if both allow. An address that is no known endpoint is "outside": its side
  has no policy (an outside source's egress is allowed), but it can match ipBlock and
  nets/notNets peers. An IP string that belongs to a known endpoint IS that endpoint.
- Per direction, tiers come first, in ascending (order, name). Inside a tier, the
  ClusterPolicies that select the endpoint and list the direction in spec.types, in
  ascending (order, name). Their rules run in order; the first rule whose protocol,
  ports and peer match decides:
    Allow -> allowed, final: NetworkPolicy is not consulted (Calico Allow,
             AdminNetworkPolicy Allow);
    Deny  -> denied, final;
    Pass  -> skip the rest of this tier, go on with the next tier (Calico);
    Log   -> recorded in Decision.logged, evaluation continues with the next rule.
  A tier where no rule matched falls through to the next tier (AdminNetworkPolicy
  style): there is no implicit end-of-tier drop, so adding a tier never denies by
  itself; a tier that wants a default deny ends with an explicit Deny rule.
- After the tiers: NetworkPolicy, for pods only (host endpoints are never selected by
  NetworkPolicy, and are allowed when no ClusterPolicy decided). A pod no NetworkPolicy
  of the direction selects is not isolated: allowed. Otherwise the flow is allowed iff
  some rule of some selecting policy matches (policies are a union; the reason names the
  first match in (namespace, name, rule index) order), else denied: "default deny
  (isolated by NetworkPolicy ns/name, ...)".
- Peers: podSelector/namespaceSelector match only pods, hostEndpointSelector only host
  endpoints; ipBlock/nets/notNets match the other side's address (ipBlock: cidr minus
  except). `from`/`to` missing or empty match any peer; `ports` missing or empty match
  any port (Kubernetes API docs).
- Ports: a number, a range port..endPort, or a NAMED port, resolved against the
  destination's named ports in both directions (ingress: the selected pod itself; egress:
  the destination, which must be a known pod, else the named port does not match; with
  an ipBlock peer that is a pod address inside the block, as Calico's named-port sets).
  Name and protocol must both match, as in Kubernetes.
- The flow's address family is the one of an explicit IP argument, else the first
  family (IPv4 before IPv6) both endpoints have; each endpoint side uses its first
  address of that family for ipBlock/nets matching.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from operator import attrgetter
from types import MappingProxyType

from podnet.errors import ObjectError
from podnet.policy.objects import (
    DEFAULT_TIER,
    DEFAULT_TIER_OBJECT,
    DEFAULT_TIER_ORDER,
    K8S_NAME_LABEL,
    ClusterPolicy,
    HostEndpoint,
    Namespace,
    NetworkPolicy,
    PolicyObject,
    Tier,
)
from podnet.policy.rules import (
    NP_PROTOCOLS,
    ClusterRule,
    NetworkPolicyPort,
    NetworkPolicyRule,
    Peer,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP")
ENDPOINT_KINDS = ("pod", "host")


@dataclass(frozen=True)
class NamedPort:
    """A container port with a name (what a named port in a NetworkPolicy refers to)."""

    name: str
    port: int
    protocol: str = "TCP"

    def __post_init__(self) -> None:
        if self.protocol not in NP_PROTOCOLS:
            raise ObjectError(f"named port {self.name}: {self.protocol!r} is not TCP, UDP or SCTP")


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespaced) or a host endpoint (namespace None), as policy sees it."""

    kind: str
    name: str
    namespace: str | None = None
    ips: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[NamedPort, ...] = ()
    node: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENDPOINT_KINDS:
            raise ObjectError(f"endpoint {self.name}: kind {self.kind!r} is not pod or host")
        if (self.kind == "pod") != (self.namespace is not None):
            raise ObjectError(f"endpoint {self.name}: a pod has a namespace, a host has none")
        try:
            ips = tuple(str(ipaddress.ip_address(ip)) for ip in self.ips)
        except ValueError as err:
            raise ObjectError(f"endpoint {self.ref}: {err}") from None
        object.__setattr__(self, "ips", ips)
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "labels", MappingProxyType(dict(sorted(self.labels.items()))))

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace or "", self.name)

    @property
    def ref(self) -> str:
        return f"pod {self.namespace}/{self.name}" if self.kind == "pod" else f"host {self.name}"

    def address(self, version: int | None) -> IPAddress | None:
        for ip in self.ips:
            addr = ipaddress.ip_address(ip)
            if addr.version == version:
                return addr
        return None


@dataclass(frozen=True)
class World:
    """Everything a decision looks at, sorted in evaluation order. Build it with
    `World.build`, which validates the references between objects."""

    namespaces: Mapping[str, Mapping[str, str]]
    endpoints: tuple[Endpoint, ...]
    tiers: tuple[Tier, ...]
    cluster_policies: tuple[ClusterPolicy, ...]
    network_policies: tuple[NetworkPolicy, ...]
    _by_ip: Mapping[IPAddress, Endpoint] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_ip: dict[IPAddress, Endpoint] = {}
        for ep in self.endpoints:
            for ip in ep.ips:
                addr = ipaddress.ip_address(ip)
                if addr in by_ip and by_ip[addr].identity != ep.identity:
                    raise ObjectError(f"{by_ip[addr].ref} and {ep.ref} both have address {addr}")
                by_ip[addr] = ep
        object.__setattr__(self, "_by_ip", MappingProxyType(by_ip))

    @classmethod
    def build(cls, objects: Iterable[PolicyObject], endpoints: Iterable[Endpoint] = ()) -> World:
        """Sort the objects into evaluation order. HostEndpoint objects become host
        endpoints; an explicit host Endpoint of the same name replaces one (the agent
        passes hosts with their resolved addresses). Namespaces that pods use but no
        Namespace object declares exist with only the kubernetes.io/metadata.name label."""
        namespaces: dict[str, Mapping[str, str]] = {}
        tiers: dict[str, Tier] = {DEFAULT_TIER: DEFAULT_TIER_OBJECT}
        cps: list[ClusterPolicy] = []
        nps: list[NetworkPolicy] = []
        eps: dict[tuple[str, str, str], Endpoint] = {}
        seen: set[tuple] = set()
        for obj in objects:  # NetworkPolicy first: there may be 10k of them
            key = (obj.kind, obj.namespace, obj.name)
            if key in seen:
                raise ObjectError(f"{obj.kind} {obj.name}: defined twice")
            seen.add(key)
            if isinstance(obj, NetworkPolicy):
                nps.append(obj)
            elif isinstance(obj, Namespace):
                namespaces[obj.name] = obj.labels
            elif isinstance(obj, Tier):
                if obj.name == DEFAULT_TIER and obj.order != DEFAULT_TIER_ORDER:
                    raise ObjectError(f"Tier {DEFAULT_TIER}: the built-in tier has order "
                                      f"{DEFAULT_TIER_ORDER}")
                tiers[obj.name] = obj
            elif isinstance(obj, ClusterPolicy):
                cps.append(obj)
            elif isinstance(obj, HostEndpoint):
                ep = Endpoint("host", obj.name, None, obj.ips, obj.labels, (), obj.machine)
                eps[ep.identity] = ep
        explicit: set[tuple[str, str, str]] = set()
        for ep in endpoints:
            if ep.identity in explicit:
                raise ObjectError(f"{ep.ref}: given twice")
            explicit.add(ep.identity)
            eps[ep.identity] = ep
            if ep.namespace is not None and ep.namespace not in namespaces:
                namespaces[ep.namespace] = MappingProxyType({K8S_NAME_LABEL: ep.namespace})
        for cp in cps:
            if cp.tier not in tiers:
                raise ObjectError(f"ClusterPolicy {cp.name}: spec.tier: tier {cp.tier!r} does "
                                  "not exist", "apply a Tier of that name first")
        tier_list = sorted(tiers.values(), key=lambda t: (t.order, t.name))
        rank = {t.name: i for i, t in enumerate(tier_list)}
        return cls(
            namespaces=MappingProxyType(dict(sorted(namespaces.items()))),
            endpoints=tuple(sorted(eps.values(), key=lambda e: e.identity)),
            tiers=tuple(tier_list),
            cluster_policies=tuple(sorted(cps, key=lambda p: (rank[p.tier], p.order, p.name))),
            network_policies=tuple(sorted(nps, key=attrgetter("namespace", "name"))),
        )

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return self.namespaces.get(namespace) or {K8S_NAME_LABEL: namespace}

    def endpoint_at(self, address: IPAddress) -> Endpoint | None:
        return self._by_ip.get(address)

    def endpoint(self, ref: str) -> Endpoint:
        """An endpoint by `ns/name` (pod) or `name` (host), for CLI use."""
        for ep in self.endpoints:
            if ref in (f"{ep.namespace}/{ep.name}" if ep.namespace else ep.name, ep.ref):
                return ep
        raise ObjectError(f"no endpoint {ref!r}", "pods are ns/name, host endpoints name")


# --- the verdict -----------------------------------------------------------------


@dataclass(frozen=True)
class RuleRef:
    """The rule that decided (or was logged/passed). tier None = NetworkPolicy, which
    comes after every tier."""

    tier: str | None
    policy: str  # "ClusterPolicy/deny-db" or "NetworkPolicy x/allow-a"
    direction: str  # "Ingress" | "Egress"
    index: int
    action: str
    name: str | None = None

    def __str__(self) -> str:
        text = f"{self.policy} {self.direction.lower()} rule {self.index}"
        if self.name:
            text += f" {self.name!r}"
        if self.tier is not None:
            text += f" (tier {self.tier}, {self.action})"
        return text


@dataclass(frozen=True)
class DirectionVerdict:
    allowed: bool
    reason: str
    rule: RuleRef | None = None
    passed: tuple[RuleRef, ...] = ()  # Pass rules met on the way, for explanations


@dataclass(frozen=True)
class Decision:
    allowed: bool
    egress: DirectionVerdict
    ingress: DirectionVerdict
    logged: tuple[RuleRef, ...] = ()
    src: str = ""
    dst: str = ""
    port: int = 0
    protocol: str = "TCP"


@dataclass(frozen=True)
class _Side:
    endpoint: Endpoint | None
    address: IPAddress | None

    def describe(self) -> str:
        if self.endpoint is None:
            return f"{self.address} (outside)"
        return self.endpoint.ref + (f" ({self.address})" if self.address else "")


@dataclass(frozen=True)
class _Flow:
    src: _Side
    dst: _Side
    port: int
    protocol: str

    def subject(self, direction: str) -> _Side:
        return self.src if direction == "Egress" else self.dst

    def other(self, direction: str) -> _Side:
        return self.dst if direction == "Egress" else self.src


def decide(world: World, src: Endpoint | str, dst: Endpoint | str, port: int,
           protocol: str) -> Decision:
    """Is `protocol` traffic from src to dst port `port` allowed, and by what."""
    proto = str(protocol).upper()
    if proto not in PROTOCOLS:
        raise ObjectError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if isinstance(port, bool) or not isinstance(port, int) or not (
            proto == "ICMP" or 1 <= port <= 65535):
        raise ObjectError(f"{port!r} is not a port (1-65535)")
    flow = _flow(world, src, dst, port, proto)
    head = {"src": flow.src.describe(), "dst": flow.dst.describe(), "port": port,
            "protocol": proto}
    s, d = flow.src.endpoint, flow.dst.endpoint
    if s is not None and d is not None and s.identity == d.identity:
        same = DirectionVerdict(True, "loopback, never leaves the pod")
        return Decision(True, same, same, **head)
    logged: list[RuleRef] = []
    egress = _judge(world, flow, "Egress", logged)
    ingress = _judge(world, flow, "Ingress", logged)
    return Decision(egress.allowed and ingress.allowed, egress, ingress, tuple(logged), **head)


def _flow(world: World, src: Endpoint | str, dst: Endpoint | str, port: int,
          proto: str) -> _Flow:
    (s_ep, s_ip), (d_ep, d_ip) = _resolve(world, src), _resolve(world, dst)
    if s_ip and d_ip and s_ip.version != d_ip.version:
        raise ObjectError(f"{s_ip} and {d_ip} are not of the same address family")
    version = (s_ip or d_ip).version if (s_ip or d_ip) else None
    if version is None:
        fams = [{ipaddress.ip_address(ip).version for ip in ep.ips} for ep in (s_ep, d_ep) if ep]
        common = set.intersection(*fams) if fams else set()
        version = min(common) if common else None
    s_ip = s_ip or (s_ep.address(version) if s_ep else None)
    d_ip = d_ip or (d_ep.address(version) if d_ep else None)
    return _Flow(_Side(s_ep, s_ip), _Side(d_ep, d_ip), port, proto)


def _resolve(world: World, x: Endpoint | str) -> tuple[Endpoint | None, IPAddress | None]:
    if isinstance(x, Endpoint):
        return x, None
    try:
        addr = ipaddress.ip_address(x)
    except ValueError:
        raise ObjectError(f"{x!r} is neither an endpoint nor an IP address") from None
    return world.endpoint_at(addr), addr


def _judge(world: World, flow: _Flow, direction: str, logged: list[RuleRef]) -> DirectionVerdict:
    side = flow.subject(direction)
    ep = side.endpoint
    if ep is None:
        return DirectionVerdict(True, f"{side.address} is outside: no {direction.lower()} "
                                      "policy applies to it")
    passed: list[RuleRef] = []
    for tier in world.tiers:
        verdict = _tier(world, tier, ep, flow, direction, logged, passed)
        if verdict is not None:
            return verdict
    if ep.kind == "host":
        return DirectionVerdict(True, "no ClusterPolicy decided (NetworkPolicy never selects "
                                      "host endpoints)", None, tuple(passed))
    return _network_policies(world, ep, flow, direction, tuple(passed))


def _tier(world: World, tier: Tier, ep: Endpoint, flow: _Flow, direction: str,
          logged: list[RuleRef], passed: list[RuleRef]) -> DirectionVerdict | None:
    """The tier's verdict, or None to go on with the next tier (Pass, or no match)."""
    for cp in world.cluster_policies:
        if cp.tier != tier.name or direction not in cp.types or not _selects(world, cp, ep):
            continue
        for i, rule in enumerate(cp.rules(direction)):
            if not _cluster_rule_matches(world, rule, flow, direction):
                continue
            ref = RuleRef(tier.name, cp.ref, direction, i, rule.action, rule.name)
            if rule.action == "Log":
                logged.append(ref)
            elif rule.action == "Pass":
                passed.append(ref)
                return None
            else:
                allowed = rule.action == "Allow"
                return DirectionVerdict(allowed, f"{'allowed' if allowed else 'denied'} by {ref}",
                                        ref, tuple(passed))
    return None


def _network_policies(world: World, ep: Endpoint, flow: _Flow, direction: str,
                      passed: tuple[RuleRef, ...]) -> DirectionVerdict:
    isolating = [p for p in world.network_policies
                 if p.namespace == ep.namespace and direction in p.policy_types
                 and p.pod_selector.matches(ep.labels)]
    if not isolating:
        return DirectionVerdict(True, f"not isolated: no NetworkPolicy selects {ep.ref} for "
                                      f"{direction.lower()}", None, passed)
    for p in isolating:
        for i, rule in enumerate(p.rules(direction)):
            if _np_rule_matches(world, p, rule, flow, direction):
                ref = RuleRef(None, f"NetworkPolicy {p.ref}", direction, i, "Allow")
                return DirectionVerdict(True, f"allowed by {ref}", ref, passed)
    names = ", ".join(p.ref for p in isolating)
    return DirectionVerdict(False, f"default deny (isolated by NetworkPolicy {names})", None,
                            passed)


# --- matching ------------------------------------------------------------------------


def _selects(world: World, cp: ClusterPolicy, ep: Endpoint) -> bool:
    if ep.kind == "host":
        return cp.selector.selects_host(ep.labels)
    assert ep.namespace is not None
    return cp.selector.selects_pod(ep.labels, world.namespace_labels(ep.namespace))


def _cluster_rule_matches(world: World, rule: ClusterRule, flow: _Flow, direction: str) -> bool:
    if rule.protocol is not None and rule.protocol != flow.protocol:
        return False
    if rule.ports is not None and not any(flow.port in r for r in rule.ports):
        return False
    other = flow.other(direction)
    return not rule.peers or any(_peer_matches(world, p, other, None) for p in rule.peers)


def _np_rule_matches(world: World, policy: NetworkPolicy, rule: NetworkPolicyRule,
                     flow: _Flow, direction: str) -> bool:
    # Empty and missing lists both mean "any" (Kubernetes API docs), hence `not`.
    if rule.ports and not any(_np_port_matches(p, flow) for p in rule.ports):
        return False
    other = flow.other(direction)
    return not rule.peers or any(_peer_matches(world, p, other, policy.namespace)
                                 for p in rule.peers)


def _np_port_matches(p: NetworkPolicyPort, flow: _Flow) -> bool:
    if p.protocol != flow.protocol:
        return False
    if p.port is None:
        return True
    if isinstance(p.port, int):
        return p.port <= flow.port <= (p.end_port if p.end_port is not None else p.port)
    dst = flow.dst.endpoint  # ingress: the selected pod; egress: the destination
    return dst is not None and dst.kind == "pod" and any(
        n.name == p.port and n.protocol == p.protocol and n.port == flow.port for n in dst.ports)


def _peer_matches(world: World, peer: Peer, other: _Side, policy_ns: str | None) -> bool:
    """policy_ns: the NetworkPolicy's namespace (a lone podSelector stays inside it);
    None for a ClusterPolicy (a lone podSelector matches pods of every namespace)."""
    addr, ep = other.address, other.endpoint
    if peer.ip_block is not None:
        return addr is not None and peer.ip_block.contains(addr)
    if peer.host_endpoint_selector is not None and (
            ep is None or ep.kind != "host" or not peer.host_endpoint_selector.matches(ep.labels)):
        return False
    if peer.pod_selector is not None or peer.namespace_selector is not None:
        if ep is None or ep.kind != "pod" or ep.namespace is None:
            return False
        if peer.namespace_selector is not None:
            if not peer.namespace_selector.matches(world.namespace_labels(ep.namespace)):
                return False
        elif policy_ns is not None and ep.namespace != policy_ns:
            return False
        if peer.pod_selector is not None and not peer.pod_selector.matches(ep.labels):
            return False
    if peer.nets and (addr is None or not any(addr in n for n in peer.nets)):
        return False
    return not peer.not_nets or (addr is not None and not any(addr in n for n in peer.not_nets))


def selects(world: World, cp: ClusterPolicy, ep: Endpoint) -> bool:
    """Does ClusterPolicy `cp` apply to endpoint `ep` (for the compiler)."""
    return _selects(world, cp, ep)


def peer_selects_endpoint(world: World, peer: Peer, ep: Endpoint, policy_ns: str | None) -> bool:
    """The selector part of `peer` (pod, namespace, host endpoint selectors; not its
    address filters) against endpoint `ep`: the compiler's set members. A peer with no
    selector selects no endpoint through this (its address filters say it all)."""
    if peer.ip_block is not None or (peer.pod_selector is None and peer.namespace_selector is None
                                     and peer.host_endpoint_selector is None):
        return False
    bare = replace(peer, nets=(), not_nets=())
    return _peer_matches(world, bare, _Side(ep, None), policy_ns)


# --- for people ----------------------------------------------------------------------


def explain_text(decision: Decision) -> str:
    """A few lines for `podnet policy explain`."""
    what = decision.protocol if decision.protocol == "ICMP" else (
        f"{decision.protocol} port {decision.port}")
    lines = [f"{decision.src} -> {decision.dst}, {what}: "
             f"{'ALLOWED' if decision.allowed else 'DENIED'}"]
    for label, v in (("egress ", decision.egress), ("ingress", decision.ingress)):
        lines.append(f"  {label}: {'allowed' if v.allowed else 'denied '} - {v.reason}")
        lines += [f"           passed {ref}" for ref in v.passed]
    lines += [f"  logged: {ref}" for ref in decision.logged]
    return "\n".join(lines)
