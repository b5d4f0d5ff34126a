"""One node's service load balancer as one nftables table, rendered from a NodePlan (pure).

Modeled on kube-proxy's nftables mode: the first packet of a connection finds its
service port with one verdict-map lookup, so the hot path is O(1) in the number of
services (no rule per service is ever walked). Table `inet podnet-svc`:

    nat-prerouting, nat-output   dstnat: jump services (pods, the outside, the node itself)
    services                     ip daddr . l4proto . dport vmap @service-ips4 (ip6: ..6);
                                 NodePorts: l4proto . dport vmap @nodeports4/6 on the node's
                                 addresses (node_ips of that family, else every local one;
                                 never loopback)
    nat-postrouting              masquerade what carries MASQ_MARK (and clear that bit)
    filter-input/forward/output  priority -110: a new connection to a frontend without
                                 usable backends jumps to reject-chain (@no-endpoints4/6,
                                 @no-endpoint-nodeports4/6): refused at once (TCP reset,
                                 ICMP port unreachable), never a timeout. Not in nat: nat
                                 chains cannot reject.

Per service port `<id>` and family v (4, 6): a family is served when the port has a
cluster IP of it, with that family's backends only (no DNAT across families); external
IPs of another family are ignored, as kube-proxy's per-family proxiers do. Headless
ports (no cluster IP) render nothing. A client is external when its source is outside
cluster_cidrs.

    svc<v>-<id>   every backend: per backend `ip saddr @aff-.. goto ep-..` (ClientIP
                  affinity), then a cascade `numgen random mod N-i 0 goto ep-i` ending in a
                  plain goto (uniform; no anonymous map, since every one costs the kernel
                  a scan of the table's maps, as kube-proxy found); an outside client of a
                  cluster IP is masqueraded (its answer must come back through this node)
    loc<v>-<id>   the local backends only (internal_local, external_local)
    ext<v>-<id>   external IPs and the NodePort. Cluster policy: external clients are
                  masqueraded. external_local: pods and the node itself (masqueraded) use
                  svc, external clients use loc and keep their source address, or are
                  dropped when no backend is local (as kube-proxy does)
    ep-<id>-<h>   one backend (h: hash of ip and port): the hairpin mark when the client is
                  the backend itself, `update @aff-..`, then the DNAT
    aff-<id>-<h>  its affinity set, `flags dynamic,timeout` (h covers the timeout: a new
                  timeout is a new set, never a set redefined in place)

Names carry the port's id, so an update (render_update) touches only the changed port's
chains, sets and map elements (render_diff.py: the objects and the order of commands).
Every variable token comes from kernel/nftsyntax.py; the plan's ref reaches the script
only as a comment. Only the MASQ_MARK bit of the packet mark is ever tested or set:
other tables may use the others.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from podnet.errors import InvalidConfig
from podnet.kernel import nftsyntax as tok
from podnet.services.plan import PROTOCOLS, Backend, NodePlan, ServicePort
from podnet.services.render_diff import (
    FAMILY,
    PREFIX,
    TABLE,
    Objects,
    declare,
    diff_lines,
    element_lines,
    fill,
    script,
)

__all__ = ["FAMILY", "MASQ_MARK", "TABLE", "delete_table", "render_table", "render_update"]

FORMAT = 1  # bump when the same plan renders to a different table (agents then rebuild it)
MASQ_MARK = 0x4000
MAX_AFFINITY = 86400  # seconds: Kubernetes' limit for sessionAffinityConfig.clientIP.timeoutSeconds
FAMILIES = (4, 6)
REJECT = "reject-chain"  # "reject" is an nft keyword

_ID = re.compile(r"[a-z0-9]{1,16}")
_IP = {4: "ip", 6: "ip6"}
_ADDR = {4: "ipv4_addr", 6: "ipv6_addr"}
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1"}
_MARK = f"meta mark set meta mark | {MASQ_MARK:#x}"
_HOOKS = {
    "nat-prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "nat-output": "type nat hook output priority -100; policy accept;",
    "nat-postrouting": "type nat hook postrouting priority srcnat; policy accept;",
    "filter-input": "type filter hook input priority -110; policy accept;",
    "filter-forward": "type filter hook forward priority -110; policy accept;",
    "filter-output": "type filter hook output priority -110; policy accept;",
}


# -- validation: every token of one service port, or one InvalidConfig naming it

def _address(text: object, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(text, str):
        raise InvalidConfig(f"{what}: {text!r} is not an IP address")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidConfig(f"{what}: {text!r} is not an IP address") from None
    tok.address(addr)  # refuses a scope ID
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast:
        raise InvalidConfig(f"{what}: {text} is an unspecified, loopback or multicast address")
    return addr


def _by_family(values: Iterable[object], what: str) -> dict[int, list[str]]:
    """Address tokens of each family, sorted and without repeats."""
    found = {v: set() for v in FAMILIES}
    for value in values:
        addr = _address(value, what)
        found[addr.version].add(addr)
    return {v: [tok.address(a) for a in sorted(addrs)] for v, addrs in found.items()}


@dataclass(frozen=True)
class _Backend:
    v: int
    addr: str  # nft token
    port: str
    local: bool

    @property
    def target(self) -> str:
        return f"[{self.addr}]:{self.port}" if self.v == 6 else f"{self.addr}:{self.port}"


def _backends(values: Iterable[object]) -> list[_Backend]:
    """Backends once per ip:port (one endpoint in two slices is one backend; local wins)."""
    found: dict[tuple[int, str, str], bool] = {}
    for b in values:
        if not isinstance(b, Backend) or not isinstance(b.local, bool):
            raise InvalidConfig(f"backends: {b!r} is not a Backend")
        addr = _address(b.ip, "backends")
        key = (addr.version, tok.address(addr), tok.port(b.port))
        found[key] = found.get(key, False) or b.local
    return [_Backend(v, a, p, local) for (v, a, p), local in sorted(found.items())]


class _Port:
    """One service port's tokens, checked once."""

    def __init__(self, sp: ServicePort) -> None:
        try:
            if not isinstance(sp, ServicePort):
                raise InvalidConfig(f"{sp!r} is not a ServicePort")
            if not isinstance(sp.id, str) or not _ID.fullmatch(sp.id):
                raise InvalidConfig(f"id {sp.id!r} must be 1-16 characters of a-z 0-9")
            self.id = sp.id
            self.ref = sp.ref
            self.comment = tok.comment(sp.ref)
            self.proto = tok.keyword(sp.protocol, PROTOCOLS)
            self.port = tok.port(sp.port)
            self.node_port = None if sp.node_port is None else tok.port(sp.node_port)
            self.cluster_ips = _by_family(sp.cluster_ips, "cluster_ips")
            self.external_ips = _by_family(sp.external_ips, "external_ips")
            self.backends = _backends(sp.backends)
            self.affinity = None if sp.affinity_timeout is None else tok.integer(sp.affinity_timeout, 1, MAX_AFFINITY)
            if not isinstance(sp.external_local, bool) or not isinstance(sp.internal_local, bool):
                raise InvalidConfig("external_local and internal_local must be booleans")
            self.external_local = sp.external_local
            self.internal_local = sp.internal_local
        except InvalidConfig as exc:
            raise InvalidConfig(f"service port {getattr(sp, 'ref', sp)!r} cannot be rendered into nft: {exc.msg}",
                                exc.details) from None

    def name(self, kind: str) -> str:
        return tok.identifier(f"{kind}-{self.id}")

    def endpoint(self, b: _Backend) -> str:
        return tok.identifier(f"ep-{self.id}-{_digest(b.addr, b.port)}")

    def affinity_set(self, b: _Backend) -> str:
        return tok.identifier(f"aff-{self.id}-{_digest(b.addr, b.port, str(self.affinity))}")

    def note(self, text: str) -> str:
        return tok.comment(f"{self.ref} {text}")


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]


# -- one service port

def port_objects(sp: ServicePort, cidr_families: frozenset[int]) -> Objects:
    """Everything one service port owns: its chains, affinity sets and map elements.
    `cidr_families`: the families in which cluster_cidrs tells pods from the outside."""
    p = _Port(sp)
    out = Objects()
    for v in FAMILIES:
        if p.cluster_ips[v]:
            _family(out, p, v, v in cidr_families)
    return out


def _family(out: Objects, p: _Port, v: int, has_cidrs: bool) -> None:
    ip = _IP[v]
    every = [b for b in p.backends if b.v == v]
    local = [b for b in every if b.local]
    svc, loc, ext = p.name(f"svc{v}"), p.name(f"loc{v}"), p.name(f"ext{v}")
    reject = f"comment {p.comment} : goto {REJECT}"
    # svc is where cluster IPs lead unless internal_local: there, outside clients are masqueraded
    svc_first = [] if p.internal_local or not has_cidrs else [
        f"{ip} daddr {tok.elements(p.cluster_ips[v])} {ip} saddr != @cluster-cidrs{v} {_MARK} "
        f"comment {p.note('outside client of a cluster IP: masquerade')}"]

    internal, to = (local, loc) if p.internal_local else (every, svc)
    for addr in p.cluster_ips[v]:
        key = f"{addr} . {p.proto} . {p.port}"
        if internal:
            out.element(f"service-ips{v}", key, f"comment {p.comment} : goto {to}", p.ref)
        else:
            out.element(f"no-endpoints{v}", key, reject, p.ref)
    if internal:
        _balance(out, p, to, internal, svc_first)

    frontends = [(f"service-ips{v}", f"no-endpoints{v}", f"{a} . {p.proto} . {p.port}")
                 for a in p.external_ips[v]]
    if p.node_port is not None:
        frontends.append((f"nodeports{v}", f"no-endpoint-nodeports{v}", f"{p.proto} . {p.node_port}"))
    for live_map, dead_map, key in frontends:
        if every:
            out.element(live_map, key, f"comment {p.comment} : goto {ext}", p.ref)
        else:
            out.element(dead_map, key, reject, p.ref)
    if not (frontends and every):
        return
    _balance(out, p, svc, every, svc_first)
    if not p.external_local:
        who = f"{ip} saddr != @cluster-cidrs{v} " if has_cidrs else ""
        out.chain(ext, [f"{who}{_MARK} comment {p.note('external client: masquerade')}", f"goto {svc}"])
        return
    rules = [f"{ip} saddr @cluster-cidrs{v} goto {svc} comment {p.note('pods: every backend')}"] if has_cidrs else []
    rules.append(f"fib saddr type local {_MARK} goto {svc} comment {p.note('the node itself: masquerade')}")
    if local:
        rules.append(f"goto {loc} comment {p.note('external client: local backends, source kept')}")
        _balance(out, p, loc, local, [])
    else:
        rules.append(f"drop comment {p.note('external client: no local backend')}")
    out.chain(ext, rules)


def _balance(out: Objects, p: _Port, name: str, backends: list[_Backend], first: list[str]) -> None:
    """A chain choosing one of `backends`: the client's affinity first, else at random."""
    ip = _IP[backends[0].v]
    rules = list(first)
    if p.affinity is not None:
        rules.extend(f"{ip} saddr @{p.affinity_set(b)} goto {p.endpoint(b)}" for b in backends)
    # A cascade, not one `numgen ... vmap`: rule i takes its backend with probability
    # 1/(n-i) of what reaches it, so each of n gets 1/n; an anonymous vmap per service
    # made a 10,000-service table take 50 s to load instead of 2.7 s.
    for i, b in enumerate(backends[:-1]):
        rules.append(f"numgen random mod {len(backends) - i} 0 goto {p.endpoint(b)} comment {p.comment}")
    rules.append(f"goto {p.endpoint(backends[-1])} comment {p.comment}")
    out.chain(name, rules)
    for b in backends:
        _endpoint(out, p, b)


def _endpoint(out: Objects, p: _Port, b: _Backend) -> None:
    ip = _IP[b.v]
    rules = [f"{ip} saddr {b.addr} {_MARK} comment {p.note('hairpin: masquerade')}"]
    if p.affinity is not None:
        aff = p.affinity_set(b)
        out.sets[aff] = ("set", f"type {_ADDR[b.v]}; flags dynamic,timeout; timeout {p.affinity}s;")
        rules.append(f"update @{aff} {{ {ip} saddr }}")
    rules.append(f"meta l4proto {p.proto} dnat {ip} to {b.target} comment {p.note('-> ' + b.target)}")
    out.chain(p.endpoint(b), rules)


# -- the table's skeleton: what does not depend on the services

def _networks(values: Iterable[object]) -> dict[int, list[str]]:
    """cluster_cidrs as network tokens of each family, overlaps merged (nft refuses them)."""
    found: dict[int, list] = {v: [] for v in FAMILIES}
    for value in values:
        try:
            if not isinstance(value, str):
                raise ValueError
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise InvalidConfig(f"cluster_cidrs: {value!r} is not an IP network") from None
        if "%" in str(net):
            raise InvalidConfig(f"cluster_cidrs: {value!r} carries a scope ID")
        found[net.version].append(net)
    return {v: [tok.network(n) for n in ipaddress.collapse_addresses(nets)] for v, nets in found.items()}


def _set_body(v: int, interval: bool, members: list[str]) -> str:
    elems = f" elements = {tok.elements(members)};" if members else ""
    return f"type {_ADDR[v]};{' flags interval;' if interval else ''}{elems}"


def skeleton(plan: NodePlan) -> Objects:
    """The table without any service: hooks, the lookup chains, the maps (empty), and the
    sets of cluster CIDRs and node addresses. A change here re-renders the whole table."""
    if not isinstance(plan, NodePlan):
        raise InvalidConfig(f"{plan!r} is not a NodePlan")
    cidrs = _networks(plan.cluster_cidrs)
    node_ips = _by_family(plan.node_ips, "node_ips")  # refuses loopback: NodePorts never answer there
    out = Objects(hooks=dict(_HOOKS))
    services, endpoints_check, nodeports_check = [], [], []
    for v in FAMILIES:
        ip = _IP[v]
        out.sets[f"cluster-cidrs{v}"] = ("set", _set_body(v, True, cidrs[v]))
        out.sets[f"node-ips{v}"] = ("set", _set_body(v, False, node_ips[v]))
        for kind in ("service-ips", "no-endpoints"):
            out.sets[f"{kind}{v}"] = ("map", f"type {_ADDR[v]} . inet_proto . inet_service : verdict;")
        for kind in ("nodeports", "no-endpoint-nodeports"):
            out.sets[f"{kind}{v}"] = ("map", "type inet_proto . inet_service : verdict;")
        # NodePorts answer on the node's addresses of this family when the plan names
        # some, else on every local address; never on loopback.
        node = f"@node-ips{v}" if node_ips[v] else f"!= {_LOOPBACK[v]}"
        on_node = f"fib daddr type local {ip} daddr {node} meta l4proto . th dport"
        services.append(f"{ip} daddr . meta l4proto . th dport vmap @service-ips{v}")
        services.append(f"{on_node} vmap @nodeports{v}")
        endpoints_check.append(f"{ip} daddr . meta l4proto . th dport vmap @no-endpoints{v}")
        nodeports_check.append(f"{on_node} vmap @no-endpoint-nodeports{v}")
    out.chains.update({
        "nat-prerouting": ("jump services",),
        "nat-output": ("jump services",),
        "nat-postrouting": (f"meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark ^ {MASQ_MARK:#x} "
                            "masquerade",),
        "filter-input": ("ct state new jump endpoints-check", "ct state new jump nodeports-check"),
        "filter-forward": ("ct state new jump endpoints-check",),
        "filter-output": ("ct state new jump endpoints-check", "ct state new jump nodeports-check"),
        "services": tuple(services),
        "endpoints-check": tuple(endpoints_check),
        "nodeports-check": tuple(nodeports_check),
        REJECT: ("meta l4proto tcp reject with tcp reset", "reject with icmpx port-unreachable"),
    })
    return out


def cidr_families(plan: NodePlan) -> frozenset[int]:
    cidrs = _networks(plan.cluster_cidrs)
    return frozenset(v for v in FAMILIES if cidrs[v])


def ports_by_id(plan: NodePlan) -> dict[str, ServicePort]:
    """The plan's service ports by id; two ports with one id are refused (ids name chains)."""
    out: dict[str, ServicePort] = {}
    for sp in plan.services:
        if not isinstance(sp, ServicePort):
            raise InvalidConfig(f"{sp!r} is not a ServicePort")
        if sp.id in out:
            raise InvalidConfig(f"service ports {out[sp.id].ref!r} and {sp.ref!r} share the id {sp.id!r}")
        out[sp.id] = sp
    return out


def table_objects(plan: NodePlan) -> Objects:
    out = skeleton(plan)
    families = cidr_families(plan)
    for sp in ports_by_id(plan).values():
        out.merge(port_objects(sp, families))
    return out


def render_table(plan: NodePlan) -> str:
    """The whole table as one script that replaces it: applied with one `nft -f -`, no
    packet ever sees a half-built table (`add` first makes the delete safe when absent)."""
    objs = table_objects(plan)
    lines = [f"add table {PREFIX}", f"delete table {PREFIX}", f"add table {PREFIX}", *declare(objs),
             *fill(objs, objs.chains), *element_lines("add", objs.elements.items())]
    return script(lines)


def render_update(old: NodePlan, new: NodePlan) -> str:
    """The one script taking the table rendered from `old` to the one `new` renders ("" when
    nothing changes): only the ports that changed are rendered, and only what differs is
    touched (render_diff.py). A change of node_ips or cluster_cidrs re-renders it all.

    A frontend that a changed port claims while an unchanged port holds it is not looked
    for (that would cost a pass over every service): the kernel refuses the `add element`
    ("File exists") and with it the whole transaction, so nothing changes."""
    if (old.node_ips, old.cluster_cidrs) != (new.node_ips, new.cluster_cidrs):
        return render_table(new)
    before, after = ports_by_id(old), ports_by_id(new)
    changed = [i for i in {**before, **after} if not _same(before.get(i), after.get(i))]
    if not changed:
        return ""
    families = cidr_families(new)
    was, now = Objects(), Objects()
    for i in changed:
        if i in before:
            was.merge(port_objects(before[i], families))
        if i in after:
            now.merge(port_objects(after[i], families))
    return script(diff_lines(was, now))


def _same(a: ServicePort | None, b: ServicePort | None) -> bool:
    return a is b or a == b  # identity first: a plan mostly reuses the last one's ports


def delete_table() -> str:
    """Remove the table; a no-op when it is absent."""
    return script([f"add table {PREFIX}", f"delete table {PREFIX}"])
