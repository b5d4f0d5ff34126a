"""Policy for one node -> one nftables table (`inet podnet-policy`), as a model that can
be rendered whole or as the difference to the previous one (pure).

Layout (evaluate.py is the semantics; this is how the kernel does the same):

    table inet podnet-policy
      chain egress   hook forward prio -5   ct established,related accept; IPv6 neighbour
                                            discovery accept; unowned source
                                            drop; vmap saddr -> out_<ep>
      chain ingress  hook forward prio  0   ct established,related accept; neighbour
                                            discovery accept; unowned
                                            destination drop; vmap daddr -> in_<ep>
      set owned4/6   the addresses of this node's pods (the unowned check's allow list)
      chain host_in  hook input  / host_out hook output: the node's own host endpoint
      map out4/in4 (ipv4_addr : verdict), out6/in6: one element per local endpoint address
      chain in_<ep>       jump in_<ep>_t<k> per tier that has policies for it, then the
                          NetworkPolicy allow lines, then the named default deny (or nothing:
                          not isolated, the base chain accepts)
      chain in_<ep>_t<k>  the tier's ClusterPolicy rules in order: Allow accept, Deny drop,
                          Pass return (to the next tier), Log log and continue
      set p<hash>         the addresses a peer selects (selector members), deduplicated by
                          content; nets/ipBlock as interval sets; named ports of egress rules
                          as ip . port concatenations

Why this shape:
- Two base chains on the forward hook: `accept` ends only its own base chain, so an
  egress Allow on the source still lets the destination's ingress judge the packet on
  the same node; `drop` is final everywhere.
- Per-packet cost does not grow with the number of policies: a new flow does one map
  lookup per direction and walks only the rules of the policies selecting that endpoint;
  selector members are set lookups. Established and related packets take the conntrack
  fast path before anything else. Same-node pod traffic is bridged; br_netfilter (on in
  the node's namespace) hands it to the same forward hook.
- Every line carries a counter and a comment naming its rule; drops (and allows when
  asked, and Log rules) go to NFLOG group LOG_GROUP with a prefix that names the rule,
  so `podnet flows` can say which rule decided (kernel/nflog.py).
- Chain and set names derive from content (endpoint identity, member set), so an
  unchanged part keeps its name and `diff` touches only what changed.
- Fail closed on addresses nobody owns: an address of this node's own pod block
  that no local pod record names (a pod created while the agent was down and not
  compiled yet, one its orchestrator has not registered, a recycled address two
  records claim: policy/world.py leaves it out) is dropped in both directions, as
  Calico and Cilium drop traffic of workloads they do not know. Without it such an
  address would fall through the verdict maps to accept, or run a former pod's
  chain. Other nodes' blocks are judged by their nodes; established flows keep
  going, as after any policy change. The check exists only while the table does
  (some NetworkPolicy or ClusterPolicy exists): without policy every flow is allowed.
- Host endpoint chains start with failsafe accepts (the store, VXLAN), as Calico's
  failsafe ports: a deny-all on a node must not cut the node from its own cluster.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from podnet.policy.evaluate import (
    Endpoint,
    World,
    peer_selects_endpoint,
    selects,
)
from podnet.policy.np_parts import Entry, NpPart
from podnet.policy.objects import ClusterPolicy, NetworkPolicy
from podnet.policy.rules import ClusterRule, NetworkPolicyPort, NetworkPolicyRule, Peer
from podnet.policy.table import (
    COMMENT_MAX,
    FAMILY,
    GENERATION_SET,
    LOG_GROUP,
    PREFIX_MAX,
    TABLE,
    Compiled,
    NftSet,
    cluster_rule_what,
    isolation_what,
    nft_text,
    np_rule_what,
)
from podnet.policy.table import short_hash as _hash

__all__ = ["FAMILY", "GENERATION_SET", "LOG_GROUP", "TABLE", "CompileCache", "Compiled", "compile_node"]

FAILSAFE_TCP = (2379, 2380)  # etcd: the node's store
FAILSAFE_UDP = (8472,)  # VXLAN between nodes
IN, OUT = "Ingress", "Egress"
_FIELD = {IN: "saddr", OUT: "daddr"}  # the *other* side's address, per direction
_IPFAM = {4: "ip", 6: "ip6"}
_L4 = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
_BY_REF = attrgetter("namespace", "name")


Match = tuple[int | None, str]  # (address family, or None for either; an nft match fragment)


def _combine(left: Sequence[Match], right: Sequence[Match]) -> list[Match]:
    """Every pair of fragments that can hold together (ANDed): an IPv4 peer set never
    meets an IPv6 named-port set."""
    return [(fa or fb, " ".join(p for p in (a, b) if p)) for fa, a in left for fb, b in right
            if fa is None or fb is None or fa == fb]


def log_prefix(verdict: str, what: str) -> str:
    """The NFLOG prefix naming a rule (policy/table.py: bytes, ASCII, unique)."""
    return nft_text(f"{verdict} {what}", PREFIX_MAX)


# IPv6's ARP: neighbour and router discovery are never policy's to judge (ARP never
# reaches these hooks; without these a pod with an ingress policy stops answering its
# neighbours' solicitations, and a dual-stack pod loses its IPv6 peers minutes later)
NEIGHBOUR_DISCOVERY = ("icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
                       "nd-neighbor-advert } accept")


@dataclass
class CompileCache:
    """What one node's compiles reuse, so one changed policy among 10k costs little.
    Keys use object identity: the policy service's parse cache hands out the *same*
    policy object while its store entry is unchanged (each entry keeps a reference to
    the object, so an id is never reused while it is cached)."""

    policies: set[int] = field(default_factory=set)  # ids of the last compile's policies
    network_policies: tuple[NetworkPolicy, ...] | None = None  # ... themselves (keeping those ids)
    isolating: dict[tuple, list[NetworkPolicy]] = field(default_factory=dict)
    parts: dict[tuple, NpPart] = field(default_factory=dict)  # (endpoint, direction, topology) -> part


class ChainBuilder:
    def __init__(self, world: World, node: str, log_allowed: bool,
                 cache: CompileCache | None = None, pod_nets: Sequence[str] = ()) -> None:
        self.world = world
        self.node = node
        self.log_allowed = log_allowed
        self.pod_nets = [ipaddress.ip_network(net) for net in pod_nets]
        self.out = Compiled()
        self.cache = cache or CompileCache()
        # everything a policy's lines depend on besides the policy itself
        self.topology = hash((log_allowed, tuple(
            (e.identity, tuple(e.labels.items()), e.ips, e.ports, e.node) for e in world.endpoints),
            tuple((n, tuple(labels.items())) for n, labels in world.namespaces.items())))
        self.added: list[NetworkPolicy] = []
        self.removed: set[int] = set()
        if world.network_policies is not self.cache.network_policies:  # (load_world keeps an unchanged tuple)
            current = set(map(id, world.network_policies))
            self.removed = self.cache.policies - current
            new = current - self.cache.policies
            self.added = [p for p in world.network_policies if id(p) in new] if new else []
            # (ids stay unique while the world's tuple, kept here, holds their objects)
            self.cache.policies, self.cache.network_policies = current, world.network_policies
        self.used_parts: set[tuple] = set()
        self.used_isolating: set[tuple] = set()
        # address families in use: no IPv6 lines in an IPv4 cluster (and vice versa)
        self.families = sorted({ipaddress.ip_address(ip).version for ep in world.endpoints
                                for ip in ep.ips}) or [4]

    # -- sets ------------------------------------------------------------------------

    def _set(self, key: tuple, kind: str, elements: Iterable[str], interval: bool = False) -> str:
        """A named set for one part of one peer of one rule: named by that identity,
        not by its members, so a label change only rewrites the set's elements."""
        elems = tuple(sorted(set(elements)))
        name = "p" + _hash(kind, interval, *key)
        self.out.sets[name] = NftSet(kind, interval, elems)
        return name

    def _addresses(self, key: tuple, family: int, addrs: Iterable[str]) -> str:
        return self._set(key, f"ipv{family}_addr", addrs)

    def _nets(self, key: tuple, family: int,
              nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
        """A match operand for address prefixes: one prefix inline (an ipBlock without
        except, the common case), more in a named interval set. Why not always a set:
        nft 1.0.6 reads every element of every interval set before any element
        command (policy/table.py `stamp`), so each one makes pod churn dearer."""
        nets = list(nets)
        if len(nets) == 1:
            return str(nets[0])
        return "@" + self._set(key, f"ipv{family}_addr", (str(n) for n in nets), interval=True)

    # -- peers -----------------------------------------------------------------------

    def _members(self, peer: Peer, policy_ns: str | None) -> list[Endpoint]:
        return [ep for ep in self.world.endpoints if peer_selects_endpoint(self.world, peer, ep, policy_ns)]

    def peer_matches(self, peer: Peer | None, direction: str, policy_ns: str | None,
                     key: tuple = ()) -> list[Match]:
        """nft match fragments, one per address family the peer can match ((None, "")
        = any address). An empty list: the peer cannot match anything. `key` names the
        peer (policy, direction, rule, peer index) for its sets."""
        fld = _FIELD[direction]
        if peer is None:
            return [(None, "")]
        out = []
        for family in (4, 6):
            ipf = _IPFAM[family]
            parts: list[str] = []
            in_use = family in self.families
            if peer.ip_block is not None:
                block = peer.ip_block
                if block.cidr.version != family:
                    continue
                remaining = [block.cidr]
                for ex in block.except_:
                    remaining = [piece for net in remaining
                                 for piece in ((net,) if not ex.subnet_of(net) else net.address_exclude(ex))]
                parts.append(f"{ipf} {fld} {self._nets((*key, 'block', family), family, remaining)}")
            has_selector = any(s is not None for s in (peer.pod_selector, peer.namespace_selector,
                                                       peer.host_endpoint_selector))
            if has_selector and not in_use:
                continue
            if has_selector:
                addrs = [ip for ep in self._members(peer, policy_ns) for ip in ep.ips
                         if ipaddress.ip_address(ip).version == family]
                parts.append(f"{ipf} {fld} @{self._addresses((*key, 'sel', family), family, addrs)}")
            nets = [n for n in peer.nets if n.version == family]
            if peer.nets and not nets:
                continue  # address filters of the other family only: no match here
            if nets:
                parts.append(f"{ipf} {fld} {self._nets((*key, 'nets', family), family, nets)}")
            not_nets = [n for n in peer.not_nets if n.version == family]
            if not_nets:
                parts.append(f"{ipf} {fld} != {self._nets((*key, 'notnets', family), family, not_nets)}")
            if not parts:
                parts.append(f"meta nfproto ipv{family}")
            out.append((family, " ".join(parts)))
        return out

    def _destination_pods(self, peer: Peer | None, policy_ns: str) -> list[tuple[Endpoint, str]]:
        """(pod, address) pairs an egress peer reaches, for its named ports: the pods it
        selects, the pod addresses inside its ipBlock (minus except: a named port is the
        destination pod's own, as Calico's named-port sets; an address that is no pod
        has none), any pod when the rule has no peers."""
        if peer is None or peer.ip_block is not None:
            block = peer.ip_block if peer is not None else None
            return [(ep, ip) for ep in self.world.endpoints if ep.kind == "pod" for ip in ep.ips
                    if block is None or block.contains(ipaddress.ip_address(ip))]
        return [(ep, ip) for ep in self._members(peer, policy_ns) if ep.kind == "pod" for ip in ep.ips]

    # -- ports -----------------------------------------------------------------------

    @staticmethod
    def _port_text(lo: int, hi: int) -> str:
        return str(lo) if lo == hi else f"{lo}-{hi}"

    def np_port_matches(self, port: NetworkPolicyPort, direction: str, local: Endpoint,
                        peer: Peer | None, policy_ns: str, key: tuple = ()) -> list[Match]:
        """Fragments for one NetworkPolicy port; named ports resolve against the
        destination: the local pod (ingress) or each destination pod (egress)."""
        l4 = _L4[port.protocol]
        if port.port is None:
            return [(None, f"meta l4proto {l4}")]
        if isinstance(port.port, int):
            hi = port.end_port if port.end_port is not None else port.port
            return [(None, f"meta l4proto {l4} th dport {self._port_text(port.port, hi)}")]
        if direction == IN:
            numbers = sorted({n.port for n in local.ports if n.name == port.port and n.protocol == port.protocol})
            return [(None, f"meta l4proto {l4} th dport {{ {', '.join(map(str, numbers))} }}")] if numbers else []
        # egress to a named port: (destination address . port) pairs of the pods the peer
        # can reach that name that port; no line when there are none
        dests = self._destination_pods(peer, policy_ns)
        out = []
        for family in (4, 6):
            pairs = [f"{ip} . {n.port}" for ep, ip in dests for n in ep.ports
                     if n.name == port.port and n.protocol == port.protocol
                     and ipaddress.ip_address(ip).version == family]
            if pairs:
                name = self._set((*key, "named", port.port, port.protocol, family),
                                 f"ipv{family}_addr . inet_service", pairs)
                out.append((family, f"meta l4proto {l4} {_IPFAM[family]} daddr . th dport @{name}"))
        return out

    # -- chains ----------------------------------------------------------------------

    def rule_line(self, match: str, verdict: str, prefix: str, what: str, log: bool) -> str:
        self.out.rules[prefix] = what
        logging = f'log prefix "{prefix} " group {LOG_GROUP} ' if log else ""
        text = " ".join(p for p in (match, "counter", logging.strip(), verdict) if p)
        return f'{text} comment "{nft_text(what, COMMENT_MAX)}"'

    def cluster_rule_lines(self, cp: ClusterPolicy, i: int, rule: ClusterRule, direction: str) -> list[str]:
        what = cluster_rule_what(cp.tier, cp.name, direction, i, rule.name)
        verdict = {"Allow": "accept", "Deny": "drop", "Pass": "return", "Log": ""}[rule.action]
        letter = {"Allow": "A", "Deny": "D", "Pass": "P", "Log": "L"}[rule.action]
        log = rule.action in ("Deny", "Log") or (rule.action == "Allow" and self.log_allowed)
        prefix = log_prefix(letter, f"cp:{what}")
        protocols: list[str] = []
        if rule.protocol is None:
            protocols = [""]
        elif rule.protocol == "ICMP":
            protocols = ["meta l4proto { icmp, ipv6-icmp }"]
        else:
            l4 = _L4[rule.protocol]
            ports = ", ".join(self._port_text(r.lo, r.hi) for r in rule.ports or ())
            protocols = [f"meta l4proto {l4}" + (f" th dport {{ {ports} }}" if ports else "")]
        lines = []
        for j, peer in enumerate(rule.peers or (None,)):
            for _family, match in _combine(self.peer_matches(peer, direction, None, (cp.ref, direction, i, j)),
                                           [(None, p) for p in protocols]):
                lines.append(self.rule_line(match, verdict, prefix, f"ClusterPolicy {what}", log))
        return lines

    def np_rule_lines(self, np: NetworkPolicy, i: int, rule: NetworkPolicyRule, direction: str,
                      local: Endpoint) -> list[str]:
        what = np_rule_what(f"{np.namespace}/{np.name}", direction, i)
        prefix = log_prefix("A", f"np:{what}")
        lines = []
        for j, peer in enumerate(rule.peers or (None,)):
            key = (f"np:{np.namespace}/{np.name}", direction, i, j)
            ports: list[Match] = [(None, "")]
            if rule.ports:
                ports = [m for p in rule.ports
                         for m in self.np_port_matches(p, direction, local, peer, np.namespace, key)]
            for _family, match in _combine(self.peer_matches(peer, direction, np.namespace, key), ports):
                lines.append(self.rule_line(match, "accept", prefix, f"NetworkPolicy {what}", self.log_allowed))
        return lines

    def endpoint_chain(self, ep: Endpoint, direction: str) -> str | None:
        """The chain judging `direction` for local endpoint `ep`; None: nothing applies."""
        d = "in" if direction == IN else "out"
        name = f"{d}_{_hash(*ep.identity)}"
        lines: list[str] = []
        for k, tier in enumerate(self.world.tiers):
            tier_lines: list[str] = []
            for cp in self.world.cluster_policies:
                if cp.tier == tier.name and direction in cp.types and selects(self.world, cp, ep):
                    for i, rule in enumerate(cp.rules(direction)):
                        tier_lines += self.cluster_rule_lines(cp, i, rule, direction)
            if tier_lines:
                tier_chain = f"{name}_t{k}"
                self.out.chains[tier_chain] = tuple(tier_lines)
                lines.append(f'jump {tier_chain} comment "{nft_text(f"tier {tier.name}", COMMENT_MAX)}"')
        if ep.kind == "pod":
            isolating = self.isolating(ep, direction)
            if isolating:
                part = self.np_part(ep, direction, isolating)
                self.out.chains.update(part.chains)
                self.out.sets.update(part.sets)
                self.out.rules.update(part.rules)
                lines.extend(part.jumps)
                names = part.refs
                what = isolation_what(direction, f"{ep.namespace}/{ep.name}", names)
                lines.append(self.rule_line("", "drop", log_prefix("D", f"isolated:{names} {direction.lower()}"),
                                        what, True))
        if not lines:
            return None
        self.out.chains[name] = tuple(lines)
        return name

    def isolating(self, ep: Endpoint, direction: str) -> list[NetworkPolicy]:
        """The NetworkPolicies isolating `ep` for `direction`, in (namespace, name)
        order; updated from the last compile by the policies added and removed."""

        def selects_ep(p: NetworkPolicy) -> bool:
            return p.namespace == ep.namespace and direction in p.policy_types and p.pod_selector.matches(ep.labels)

        key = (ep.identity, tuple(ep.labels.items()), direction)
        self.used_isolating.add(key)
        known = self.cache.isolating.get(key)
        if known is None:
            found = [p for p in self.world.network_policies if selects_ep(p)]
        else:  # the same list while none of it left and nothing new selects it (np_part reuses its part)
            new = [p for p in self.added if selects_ep(p)]
            found = known
            if new or not self.removed.isdisjoint(map(id, known)):
                found = [p for p in known if id(p) not in self.removed]
                for p in new:
                    bisect.insort(found, p, key=_BY_REF)
        self.cache.isolating[key] = found
        return found

    def np_part(self, ep: Endpoint, direction: str, isolating: list[NetworkPolicy]) -> NpPart:
        """The allow chains of the policies isolating `ep` (policy/np_parts.py): the
        last compile's while `isolating` is the same list and nothing they read
        changed (`topology`), else updated by the policies that left and joined."""
        key = (ep.identity, direction, self.topology)
        self.used_parts.add(key)
        part = self.cache.parts.get(key)
        if part is None or part.isolating is not isolating:
            part = (part or NpPart()).updated(isolating, lambda np: self.np_entry(np, direction, ep))
            self.cache.parts[key] = part
        return part

    def np_entry(self, np: NetworkPolicy, direction: str, ep: Endpoint) -> Entry:
        """One NetworkPolicy's allow lines for one local endpoint, in a chain of their
        own: editing that policy rewrites only this chain."""
        sets, rules = self.out.sets, self.out.rules
        self.out.sets, self.out.rules = {}, {}
        try:
            lines = tuple(line for i, rule in enumerate(np.rules(direction))
                          for line in self.np_rule_lines(np, i, rule, direction, ep))
            name = f"np_{_hash(*ep.identity, np.namespace, np.name, direction)}" if lines else None
            return Entry(np, name, lines, self.out.sets, self.out.rules)
        finally:
            self.out.sets, self.out.rules = sets, rules

    def unowned(self, pods: Sequence[Endpoint], direction: str) -> list[str]:
        """Drop lines for the addresses of this node's pod block that no local pod owns
        (a pod not registered yet, a recycled address), before the verdict maps: such
        an address never falls through to accept, nor runs a former pod's chain."""
        fld = "saddr" if direction == OUT else "daddr"
        lines = []
        for net in self.pod_nets:
            ipf, owned = _IPFAM[net.version], f"owned{net.version}"
            self.out.sets[owned] = NftSet(f"ipv{net.version}_addr", False, tuple(sorted(
                {ip for ep in pods for ip in ep.ips if ipaddress.ip_address(ip).version == net.version})))
            lines.append(self.rule_line(f"{ipf} {fld} {net} {ipf} {fld} != @{owned}", "drop",
                                    log_prefix("D", f"unowned {direction.lower()}"),
                                    f"unowned address of block {net}", True))
        return lines

    def prune(self) -> None:
        for memo, used in ((self.cache.parts, self.used_parts), (self.cache.isolating, self.used_isolating)):
            for key in memo.keys() - used:
                del memo[key]

    def build(self) -> Compiled:
        local = [ep for ep in self.world.endpoints if ep.node == self.node]
        pods = [ep for ep in local if ep.kind == "pod"]
        hosts = [ep for ep in local if ep.kind == "host"]
        base: dict[str, tuple[str, ...]] = {}
        maps: dict[str, list[str]] = {"in4": [], "in6": [], "out4": [], "out6": []}
        chains_first = dict(self.out.chains)
        self.out.chains = {}
        for ep in pods:
            for direction, d in ((IN, "in"), (OUT, "out")):
                chain = self.endpoint_chain(ep, direction)
                if chain:
                    for ip in ep.ips:
                        maps[f"{d}{ipaddress.ip_address(ip).version}"].append(f"{ip} : jump {chain}")
        est = "ct state established,related accept"
        base["egress"] = ("type filter hook forward priority -5; policy accept;", est, NEIGHBOUR_DISCOVERY,
                          *self.unowned(pods, OUT), "ip saddr vmap @out4", "ip6 saddr vmap @out6")
        base["ingress"] = ("type filter hook forward priority 0; policy accept;", est, NEIGHBOUR_DISCOVERY,
                           *self.unowned(pods, IN), "ip daddr vmap @in4", "ip6 daddr vmap @in6")
        for ep in hosts:
            failsafe = [f"tcp dport {{ {', '.join(map(str, FAILSAFE_TCP))} }} accept",
                        f"tcp sport {{ {', '.join(map(str, FAILSAFE_TCP))} }} accept",
                        f"udp dport {{ {', '.join(map(str, FAILSAFE_UDP))} }} accept"]
            for direction, hook, key in ((IN, "input", "host_in"), (OUT, "output", "host_out")):
                chain = self.endpoint_chain(ep, direction)
                if chain:
                    base[key] = (f"type filter hook {hook} priority 0; policy accept;", est,
                                 'meta iifname "lo" accept' if hook == "input" else 'meta oifname "lo" accept',
                                 NEIGHBOUR_DISCOVERY, *failsafe, f"jump {chain}")
        self.out.maps = {
            name: (("ipv4_addr" if name.endswith("4") else "ipv6_addr"), tuple(sorted(elems)))
            for name, elems in maps.items()
        }
        self.out.chains = {**base, **chains_first, **self.out.chains}
        return self.out


def compile_node(world: World, node: str, log_allowed: bool = False,
                 cache: CompileCache | None = None, pod_nets: Sequence[str] = ()) -> Compiled:
    """The table enforcing `world`'s policy for the endpoints on `node`; `cache` (kept
    by the caller between compiles) makes a recompile cost what changed. `pod_nets`:
    the node's own pod block(s), whose addresses no local pod owns are dropped."""
    builder = ChainBuilder(world, node, log_allowed, cache, pod_nets)
    compiled = builder.build()
    builder.prune()
    return compiled
