"""One node's service load balancer as one nftables table, rendered from a NodePlan (pure).

Modeled on kube-proxy's nftables mode: the first packet of a connection finds its
service port with one verdict-map lookup, so the hot path is O(1) in the number of
services (no rule per service is ever walked). Table `inet podnet-svc`:

    nat-prerouting, nat-output   dstnat: jump services (pods, the outside, the node itself)
    services                     an outside client (saddr not in cluster_cidrs) of a frontend
                                 in @cluster-masq4/6 (cluster IPs of `Cluster` internal
                                 policy) gets MASQ_MARK: its answer must come back through
                                 this node; then ip daddr . l4proto . dport vmap
                                 @service-ips4 (ip6: ..6); NodePorts: l4proto . dport vmap
                                 @nodeports4/6 on the node's addresses (node_ips of that
                                 family, else every local one; never loopback)
    nat-postrouting              masquerade what carries MASQ_MARK (and clear that bit), and
                                 hairpin: a DNATed packet whose saddr . daddr is in
                                 @hairpin4/6 (`B . B` for every backend B: a pod sent to
                                 itself through a service, whose answer would otherwise
                                 come from its own address)
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

    svc<v>-<id>   every backend, one rule each, that DNATs itself: per backend its
                  ClientIP affinity first (`ip saddr @aff-..`), then a cascade where rule
                  i takes backend i with `numgen random mod N-i 0` (uniform; no anonymous
                  map, since every one costs the kernel a scan of the table's maps, as
                  kube-proxy found), the last one plainly
    loc<v>-<id>   the local backends only (internal_local, external_local)
    ext<v>-<id>   external IPs and the NodePort. Cluster policy: external clients are
                  masqueraded. external_local: pods and the node itself (masqueraded) use
                  svc, external clients use loc and keep their source address, or are
                  dropped when no backend is local (as kube-proxy does)
    hits-<id>-<h> a named counter that every DNAT rule of the port's chains counts into
                  (comment: the port's ref; h: the ref's hash): the NAT hits the agent's
                  metrics read with `nft list counters` (services_service.counters), not
                  the whole table; an object, so a backend change (chains rewritten) keeps it
    aff-<id>-<h>  a backend's affinity set (h: hash of its ip, port and the timeout),
                  `flags dynamic,timeout`: a new timeout is a new set, never a set
                  redefined in place

Why one rule per backend, not a chain per backend with its hairpin test (as kube-proxy
has) and the outside-client test in every service's chain: a transaction that adds a
rule makes the kernel check the whole table again, once from each nat hook, and nft
1.0.6 lists every chain of the ruleset before each change. With 10,000 services one
backend change took 110 ms (libnftables) with a chain per backend, 49 ms with those
chains folded into two rules per backend, and 17 ms as it is: the two tests are set
look-ups in the shared chains (bench/services_lb.py, tests/ns/test_services_nft_ns.py).

Names carry the port's id, so an update (render_update) touches only the changed port's
chains, sets and map elements (render_diff.py: the objects and the order of commands).
Every variable token comes from kernel/nftsyntax.py; the plan's ref reaches the script
only as a comment. Only the MASQ_MARK bit of the packet mark is ever tested or set:
other tables may use the others.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping

from podnet.errors import InvalidConfig
from podnet.kernel import nftsyntax as tok
from podnet.services.plan import NodePlan, ServicePort
from podnet.services.port_tokens import (
    FAMILIES,
    BackendTokens,
    PortTokens,
    backend_tokens,
    by_family,
)
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
    shared_change,
    shared_lines,
)

__all__ = ["FAMILY", "MASQ_MARK", "TABLE", "delete_table", "render_changes", "render_full", "render_table",
           "render_update", "shared_counts"]

FORMAT = 3  # bump when the same plan renders to a different table (agents then rebuild it)
MASQ_MARK = 0x4000
REJECT = "reject-chain"  # "reject" is an nft keyword

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


# -- one service port

def port_objects(sp: ServicePort, cidr_families: frozenset[int]) -> Objects:
    """Everything one service port owns: its chains, affinity sets and map elements.
    `cidr_families`: the families in which cluster_cidrs tells pods from the outside."""
    p = PortTokens(sp)
    out = Objects()
    for v in FAMILIES:
        if p.cluster_ips[v]:
            _family(out, p, v, v in cidr_families)
    return out


def _family(out: Objects, p: PortTokens, v: int, has_cidrs: bool) -> None:
    ip = _IP[v]
    every = [b for b in p.backends if b.v == v]
    local = [b for b in every if b.local]
    svc, loc, ext = p.name(f"svc{v}"), p.name(f"loc{v}"), p.name(f"ext{v}")
    reject = f"comment {p.comment} : goto {REJECT}"
    for b in every:  # a client that is the backend it is sent to: masqueraded (nat-postrouting)
        out.share(f"hairpin{v}", f"{b.addr} . {b.addr}")

    internal, to = (local, loc) if p.internal_local else (every, svc)
    for addr in p.cluster_ips[v]:
        key = f"{addr} . {p.proto} . {p.port}"
        if internal:
            out.element(f"service-ips{v}", key, f"comment {p.comment} : goto {to}", p.ref)
            if to == svc and has_cidrs:  # outside clients of the cluster IP are masqueraded
                out.element(f"cluster-masq{v}", key, f"comment {p.comment}", p.ref)
        else:
            out.element(f"no-endpoints{v}", key, reject, p.ref)
    if internal:
        _balance(out, p, to, internal)

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
    _balance(out, p, svc, every)
    if not p.external_local:
        who = f"{ip} saddr != @cluster-cidrs{v} " if has_cidrs else ""
        out.chain(ext, [f"{who}{_MARK} comment {p.note('external client: masquerade')}", f"goto {svc}"])
        return
    rules = [f"{ip} saddr @cluster-cidrs{v} goto {svc} comment {p.note('pods: every backend')}"] if has_cidrs else []
    rules.append(f"fib saddr type local {_MARK} goto {svc} comment {p.note('the node itself: masquerade')}")
    if local:
        rules.append(f"goto {loc} comment {p.note('external client: local backends, source kept')}")
        _balance(out, p, loc, local)
    else:
        rules.append(f"drop comment {p.note('external client: no local backend')}")
    out.chain(ext, rules)


def _balance(out: Objects, p: PortTokens, name: str, backends: list[BackendTokens]) -> None:
    """A chain choosing one of `backends`: the client's affinity first, else at random."""
    out.sets[_hits(p)] = ("counter", f"comment {p.comment};")  # its DNATs, read by the metrics
    rules = []
    if p.affinity is not None:
        for b in backends:
            out.sets[p.affinity_set(b)] = ("set", f"type {_ADDR[b.v]}; flags dynamic,timeout; timeout {p.affinity}s;")
            rules.append(_pick(p, b, f"{_IP[b.v]} saddr @{p.affinity_set(b)} "))
    # A cascade, not one `numgen ... vmap`: rule i takes its backend with probability
    # 1/(n-i) of what reaches it, so each of n gets 1/n; an anonymous vmap per service
    # made a 10,000-service table take 50 s to load instead of 2.7 s.
    for i, b in enumerate(backends):
        rules.append(_pick(p, b, f"numgen random mod {len(backends) - i} 0 " if i < len(backends) - 1 else ""))
    out.chain(name, rules)


def _pick(p: PortTokens, b: BackendTokens, choice: str) -> str:
    """The rule sending a client to `b` when `choice` holds (and refreshing its affinity)."""
    ip = _IP[b.v]
    update = f"update @{p.affinity_set(b)} {{ {ip} saddr }} " if p.affinity is not None else ""
    return (f"{choice}meta l4proto {p.proto} {update}counter name {_hits(p)} dnat {ip} to {b.target} "
            f"comment {p.note('-> ' + b.target)}")


def _hits(p: PortTokens) -> str:
    """The port's named counter; its ref's hash in the name, as the comment holds the
    ref and an object is never redefined in place (a renamed port gets a new counter)."""
    return tok.identifier(f"hits-{p.id}-{hashlib.sha256(p.ref.encode()).hexdigest()[:8]}")


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
    node_ips = by_family(plan.node_ips, "node_ips")  # refuses loopback: NodePorts never answer there
    out = Objects(hooks=dict(_HOOKS))
    services, endpoints_check, nodeports_check = [], [], []
    for v in FAMILIES:
        ip = _IP[v]
        out.sets[f"cluster-cidrs{v}"] = ("set", _set_body(v, True, cidrs[v]))
        out.sets[f"node-ips{v}"] = ("set", _set_body(v, False, node_ips[v]))
        for kind in ("service-ips", "no-endpoints"):
            out.sets[f"{kind}{v}"] = ("map", f"type {_ADDR[v]} . inet_proto . inet_service : verdict;")
        out.sets[f"cluster-masq{v}"] = ("set", f"type {_ADDR[v]} . inet_proto . inet_service;")
        out.sets[f"hairpin{v}"] = ("set", f"type {_ADDR[v]} . {_ADDR[v]};")
        for kind in ("nodeports", "no-endpoint-nodeports"):
            out.sets[f"{kind}{v}"] = ("map", "type inet_proto . inet_service : verdict;")
        # NodePorts answer on the node's addresses of this family when the plan names
        # some, else on every local address; never on loopback.
        node = f"@node-ips{v}" if node_ips[v] else f"!= {_LOOPBACK[v]}"
        on_node = f"fib daddr type local {ip} daddr {node} meta l4proto . th dport"
        if cidrs[v]:  # outside clients of a cluster IP (only then: an empty set matches nothing)
            services.append(f"{ip} saddr != @cluster-cidrs{v} {ip} daddr . meta l4proto . th dport @cluster-masq{v} "
                            f"{_MARK}")
        services.append(f"{ip} daddr . meta l4proto . th dport vmap @service-ips{v}")
        services.append(f"{on_node} vmap @nodeports{v}")
        endpoints_check.append(f"{ip} daddr . meta l4proto . th dport vmap @no-endpoints{v}")
        nodeports_check.append(f"{on_node} vmap @no-endpoint-nodeports{v}")
    out.chains.update({
        "nat-prerouting": ("jump services",),
        "nat-output": ("jump services",),
        "nat-postrouting": (f"meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark ^ {MASQ_MARK:#x} "
                            "masquerade",
                            # hairpin: saddr == daddr after the DNAT (every backend is one element)
                            "ip saddr . ip daddr @hairpin4 ct status dnat masquerade",
                            "ip6 saddr . ip6 daddr @hairpin6 ct status dnat masquerade"),
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
    return _cidr_families(plan.cluster_cidrs)


def _cidr_families(cluster_cidrs: Iterable[str]) -> frozenset[int]:
    cidrs = _networks(cluster_cidrs)
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


def shared_counts(ports: Iterable[ServicePort]) -> Counter[tuple[str, str]]:
    """How many of `ports` hold each shared element, as render_full counts them, without
    rendering the ports (an agent restarted on its own table needs only this)."""
    out: Counter[tuple[str, str]] = Counter()
    for sp in ports:
        served = {v for v, addrs in by_family(sp.cluster_ips, "cluster_ips").items() if addrs}
        out.update((f"hairpin{b.v}", f"{b.addr} . {b.addr}") for b in backend_tokens(sp.backends) if b.v in served)
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
    return render_full(plan)[0]


def render_full(plan: NodePlan) -> tuple[str, Counter[tuple[str, str]]]:
    """render_table, and how many ports hold each shared element (what render_changes
    is given next)."""
    objs = table_objects(plan)
    lines = [f"add table {PREFIX}", f"delete table {PREFIX}", f"add table {PREFIX}", *declare(objs),
             *fill(objs, objs.chains), *element_lines("add", objs.elements.items()),
             *shared_lines("add", objs.shared)]
    return script(lines), objs.shared


def render_update(old: NodePlan, new: NodePlan) -> str:
    """The one script taking the table rendered from `old` to the one `new` renders ("" when
    nothing changes): only the ports that changed are rendered, and only what differs is
    touched (render_diff.py). A change of node_ips or cluster_cidrs re-renders it all."""
    if (old.node_ips, old.cluster_cidrs) != (new.node_ips, new.cluster_cidrs):
        return render_table(new)
    before, after = ports_by_id(old), ports_by_id(new)
    held = shared_counts(before.values())
    return render_changes(before, after, {**before, **after}, new.cluster_cidrs, held)[0]


def render_changes(before: Mapping[str, ServicePort], after: Mapping[str, ServicePort], ids: Iterable[str],
                   cluster_cidrs: Iterable[str], held: Mapping[tuple[str, str], int],
                   ) -> tuple[str, Counter[tuple[str, str]]]:
    """The script taking the ports `before` (by id, as the table holds them) to `after`,
    looking only at `ids` (the caller knows which ports may have changed: the agent's
    incremental plan, services/cache.py); the node settings stay. `held` counts the
    ports holding each shared element before (render_full's, kept up to date with the
    change returned here, once the script is applied).

    A frontend that a changed port claims while an unchanged port holds it is not looked
    for (that would cost a pass over every service): the kernel refuses the `add element`
    ("File exists") and with it the whole transaction, so nothing changes."""
    changed = [i for i in ids if not _same(before.get(i), after.get(i))]
    if not changed:
        return "", Counter()
    families = _cidr_families(cluster_cidrs)
    was, now = Objects(), Objects()
    for i in sorted(changed):
        if i in before:
            was.merge(port_objects(before[i], families))
        if i in after:
            now.merge(port_objects(after[i], families))
    return script(diff_lines(was, now, held)), shared_change(was, now)


def _same(a: ServicePort | None, b: ServicePort | None) -> bool:
    return a is b or a == b  # identity first: a plan mostly reuses the last one's ports


def delete_table() -> str:
    """Remove the table; a no-op when it is absent."""
    return script([f"add table {PREFIX}", f"delete table {PREFIX}"])
