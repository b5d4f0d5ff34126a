"""services/render.py and render_diff.py: the shape of the service table's script (pure, no root).

The kernel's view (nft accepts it, traffic is balanced) is tests/ns/test_services_nft_ns.py."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict

import pytest

from podnet.errors import InvalidConfig
from podnet.services.plan import Backend, NodePlan, ServicePort
from podnet.services.render import (
    MASQ_MARK,
    TABLE,
    delete_table,
    render_full,
    render_table,
    render_update,
    shared_counts,
)

P = f"inet {TABLE}"
B0, B1, B2 = Backend("10.244.1.10", 8080, local=True), Backend("10.244.2.11", 8080), Backend("10.244.3.12", 8080)
B6 = Backend("fd00:244::10", 8080, local=True)
CIDRS = ("10.244.0.0/16", "fd00:244::/56")
ELEMENT = re.compile(r'(\S+ \. (?:tcp|udp) \. \d+|(?:tcp|udp) \. \d+) comment "[^"]*" : goto ([\w-]+)')
MARK = f"meta mark set meta mark | {MASQ_MARK:#x}"
SETS = ("hairpin", "cluster-masq")  # plain sets with elements (the others are maps)


def port(id: str = "web", **kw) -> ServicePort:
    base = dict(ref=f"default/{id}:80", protocol="tcp", port=80, cluster_ips=("10.96.0.10",), backends=(B0, B1, B2))
    return ServicePort(id=id, **{**base, **kw})


def plan(*ports: ServicePort, node_ips: tuple[str, ...] = ("192.168.50.1",)) -> NodePlan:
    return NodePlan(node_ips=node_ips, cluster_cidrs=CIDRS, services=ports)


@dataclasses.dataclass
class Parsed:
    chains: dict[str, list[str]]
    sets: dict[str, str]
    elements: dict[str, dict[str, str]]  # map -> key -> target chain
    deleted: list[str]  # "chain NAME", "set NAME", "element MAP KEY"
    flushed: list[str]
    members: dict[str, set[str]]  # plain set -> its elements added (hairpin4, cluster-masq4...)

    def ep_targets(self, chain: str) -> set[str]:
        """The DNAT targets a balancing chain can choose (its cascade of choices, ending
        in a plain one)."""
        rules = self.chains[chain]
        assert "numgen" not in rules[-1] and " dnat " in rules[-1], rules[-1]
        return {re.search(r" dnat ip6? to (\S+)", r).group(1) for r in rules if " dnat " in r}


def parse(script: str) -> Parsed:
    out = Parsed(defaultdict(list), {}, defaultdict(dict), [], [], defaultdict(set))
    for line in script.splitlines():
        if m := re.fullmatch(rf"add rule {P} (\S+) (.*)", line):
            out.chains[m[1]].append(m[2])
        elif m := re.fullmatch(rf"add chain {P} (\S+)( .*)?", line):
            out.chains.setdefault(m[1], [])
        elif m := re.fullmatch(rf"add (?:set|map|counter) {P} (\S+) \{{ (.*) \}}", line):
            out.sets[m[1]] = m[2]
        elif (m := re.fullmatch(rf"add element {P} (\S+) \{{ (.*) \}}", line)) and m[1].startswith(SETS):
            out.members[m[1]] |= {item.split(" comment ")[0] for item in m[2].split(", ")}
        elif m := re.fullmatch(rf"add element {P} (\S+) \{{ (.*) \}}", line):
            for key, target in ELEMENT.findall(m[2]):
                assert key not in out.elements[m[1]], line
                out.elements[m[1]][key] = target
        elif m := re.fullmatch(rf"delete element {P} (\S+) \{{ (.*) \}}", line):
            out.deleted.extend(f"element {m[1]} {key}" for key in m[2].split(", "))
        elif m := re.fullmatch(rf"delete (chain|set|counter) {P} (\S+)", line):
            out.deleted.append(f"{m[1]} {m[2]}")
        elif m := re.fullmatch(rf"flush chain {P} (\S+)", line):
            out.flushed.append(m[1])
        else:
            assert line in (f"add table {P}", f"delete table {P}"), line
    return out


def test_every_frontend_is_one_element_of_its_map():
    sp = port(cluster_ips=("10.96.0.10", "fd00:96::10"), external_ips=("192.0.2.10", "2001:db8::10"),
              node_port=30080, backends=(B0, B1, B6))
    t = parse(render_table(plan(sp)))
    assert t.elements["service-ips4"] == {"10.96.0.10 . tcp . 80": "svc4-web", "192.0.2.10 . tcp . 80": "ext4-web"}
    assert t.elements["service-ips6"] == {"fd00:96::10 . tcp . 80": "svc6-web", "2001:db8::10 . tcp . 80": "ext6-web"}
    assert t.elements["nodeports4"] == {"tcp . 30080": "ext4-web"}
    assert t.elements["nodeports6"] == {"tcp . 30080": "ext6-web"}
    assert not any(t.elements[m] for m in ("no-endpoints4", "no-endpoints6", "no-endpoint-nodeports4"))
    # each family balances over its own backends only
    assert t.ep_targets("svc4-web") == {"10.244.1.10:8080", "10.244.2.11:8080"}
    assert t.ep_targets("svc6-web") == {"[fd00:244::10]:8080"}
    # the services chain looks each packet up once per map or set: no rule per service
    assert len(t.chains["services"]) == 6 and all(re.search(r" (vmap )?@", r) for r in t.chains["services"])


def test_the_hot_path_does_not_grow_with_the_services():
    many = parse(render_table(plan(*(port(f"s{i}", cluster_ips=(f"10.96.1.{i}",)) for i in range(50)))))
    one = parse(render_table(plan(port())))
    for chain in ("services", "nat-prerouting", "nat-output", "filter-input", "filter-forward", "endpoints-check"):
        assert many.chains[chain] == one.chains[chain]
    assert len(many.elements["service-ips4"]) == 50


def test_numgen_cascade_is_uniform_and_each_backend_dnats():
    for backends in ((B0, B1), (B0, B1, B2)):
        t = parse(render_table(plan(port(backends=backends))))
        rules = [r for r in t.chains["svc4-web"] if "numgen" in r]
        n = len(backends)
        # choice i takes 1/(n-i) of what reaches it: each backend gets 1/n
        mods = [int(re.search(r"numgen random mod (\d+) 0 ", r)[1]) for r in rules]
        assert mods == list(range(n, 1, -1))
        assert "vmap" not in " ".join(t.chains["svc4-web"]) and "goto" not in " ".join(t.chains["svc4-web"])
        assert t.ep_targets("svc4-web") == {f"{b.ip}:{b.port}" for b in backends}
    # one backend: a plain choice (no anonymous map, which costs the kernel a scan of every map)
    single = parse(render_table(plan(port(backends=(B0,))))).chains["svc4-web"]
    assert single == [f'meta l4proto tcp counter name hits-web-57e4a715 dnat ip to {B0.ip}:8080 comment "default/web:80 -> {B0.ip}:8080"']


def test_a_client_sent_to_itself_is_masqueraded_after_the_dnat():
    """Hairpin: one set of `B . B` for every backend B, looked up in nat-postrouting (saddr
    is daddr after a DNAT), so choosing a backend stays one rule. A backend of several
    ports is one element, there until its last port lets it go."""
    t = parse(render_table(plan(port(backends=(B0, B1, B6), cluster_ips=("10.96.0.10", "fd00:96::10")),
                                port("two", cluster_ips=("10.96.0.11",), backends=(B0,)))))
    assert t.members["hairpin4"] == {f"{b.ip} . {b.ip}" for b in (B0, B1)}
    assert t.members["hairpin6"] == {f"{B6.ip} . {B6.ip}"}
    post = t.chains["nat-postrouting"]
    assert post[1:] == ["ip saddr . ip daddr @hairpin4 ct status dnat masquerade",
                        "ip6 saddr . ip6 daddr @hairpin6 ct status dnat masquerade"]
    assert not any(MARK in r for r in t.chains["svc4-web"])  # nothing per backend in the balancer
    both = plan(port(backends=(B0, B1)), port("two", cluster_ips=("10.96.0.11",), backends=(B0,)))
    u = parse(render_update(both, plan(port(backends=(B1,)), port("two", cluster_ips=("10.96.0.11",), backends=(B0,)))))
    assert not any("hairpin" in d for d in u.deleted) and not u.members  # "two" still sends to B0
    u = parse(render_update(both, plan(port(backends=(B1,)), port("two", cluster_ips=("10.96.0.11",), backends=()))))
    assert [d for d in u.deleted if "hairpin" in d] == [f"element hairpin4 {B0.ip} . {B0.ip}"]
    u = parse(render_update(plan(), both))
    assert u.members["hairpin4"] == {f"{B0.ip} . {B0.ip}", f"{B1.ip} . {B1.ip}"}


def test_affinity_sets_only_with_affinity():
    t = parse(render_table(plan(port())))
    assert not [s for s in t.sets if s.startswith("aff-")]
    assert not any("update @" in r or "saddr @aff" in r for rules in t.chains.values() for r in rules)
    t = parse(render_table(plan(port(affinity_timeout=7, cluster_ips=("10.96.0.10", "fd00:96::10"),
                                     backends=(B0, B1, B6)))))
    sets = {n: body for n, body in t.sets.items() if n.startswith("aff-")}
    assert len(sets) == 3
    assert all("flags dynamic,timeout; timeout 7s;" in body for body in sets.values())
    assert sorted(body.split(";")[0] for body in sets.values()) == ["type ipv4_addr"] * 2 + ["type ipv6_addr"]
    # the balancing chain sends a known client to its backend before choosing at random
    rules = t.chains["svc4-web"]
    checks = [r for r in rules if re.match(r"ip saddr @aff-web-\w+ ", r)]
    assert len(checks) == 2 and rules.index(checks[-1]) < min(i for i, r in enumerate(rules) if "numgen" in r)
    for rule in rules:  # every choice refreshes the affinity of the backend it takes
        aff = re.search(r"update @(\S+) \{ ip saddr \} counter name hits-web-57e4a715 dnat ip to (\S+) ", rule)
        assert aff and aff[1] in sets and ("saddr @" not in rule or f"saddr @{aff[1]} " in rule), rule
    # a new timeout is a new set: nothing is ever redefined in place
    t2 = parse(render_table(plan(port(affinity_timeout=8, cluster_ips=("10.96.0.10", "fd00:96::10"),
                                      backends=(B0, B1, B6)))))
    assert not set(sets) & {n for n in t2.sets if n.startswith("aff-")}


def test_internal_local_uses_local_backends_and_rejects_without_one():
    t = parse(render_table(plan(port(internal_local=True))))
    assert t.elements["service-ips4"] == {"10.96.0.10 . tcp . 80": "loc4-web"}
    assert t.ep_targets("loc4-web") == {"10.244.1.10:8080"}
    t = parse(render_table(plan(port(internal_local=True, backends=(B1, B2)))))
    assert t.elements["no-endpoints4"] == {"10.96.0.10 . tcp . 80": "reject-chain"}
    assert "service-ips4" not in t.elements and "svc4-web" not in t.chains


def test_external_local_keeps_the_source_and_drops_without_a_local_backend():
    t = parse(render_table(plan(port(external_local=True, node_port=30080, external_ips=("192.0.2.10",)))))
    ext = t.chains["ext4-web"]
    assert ext[0].startswith("ip saddr @cluster-cidrs4 goto svc4-web")  # pods: every backend
    assert ext[1].startswith(f"fib saddr type local {MARK} goto svc4-web")  # the node itself
    assert ext[2].startswith("goto loc4-web") and MARK not in ext[2]  # external clients: source kept
    assert t.ep_targets("loc4-web") == {"10.244.1.10:8080"}
    assert t.ep_targets("svc4-web") == {"10.244.1.10:8080", "10.244.2.11:8080", "10.244.3.12:8080"}
    assert t.elements["nodeports4"] == {"tcp . 30080": "ext4-web"}
    t = parse(render_table(plan(port(external_local=True, node_port=30080, backends=(B1, B2)))))
    assert t.chains["ext4-web"][-1].startswith("drop")
    assert "loc4-web" not in t.chains
    assert t.elements["service-ips4"] == {"10.96.0.10 . tcp . 80": "svc4-web"}  # cluster IP: every backend


def test_cluster_policy_masquerades_external_clients_only():
    t = parse(render_table(plan(port(node_port=30080))))
    assert t.chains["ext4-web"] == [
        f'ip saddr != @cluster-cidrs4 {MARK} comment "default/web:80 external client: masquerade"', "goto svc4-web"]
    # and outside clients of the cluster IP (their answer must come back through this node):
    # its frontend is in a set the services chain looks up, so the balancer stays one rule per choice
    assert f"ip saddr != @cluster-cidrs4 ip daddr . meta l4proto . th dport @cluster-masq4 {MARK}" in t.chains[
        "services"]
    assert t.members["cluster-masq4"] == {"10.96.0.10 . tcp . 80"}
    post = t.chains["nat-postrouting"]
    assert post[0] == (f"meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark ^ {MASQ_MARK:#x} "
                       "masquerade")
    # not for a Local internal policy (the client keeps its address), nor without cluster CIDRs
    assert not parse(render_table(plan(port(internal_local=True)))).members["cluster-masq4"]
    bare = parse(render_table(NodePlan(node_ips=(), cluster_cidrs=(), services=(port(),))))
    assert not bare.members["cluster-masq4"] and not any("cluster-masq" in r for r in bare.chains["services"])


def test_the_reject_maps_hold_the_empty_services():
    sp = port(backends=(), node_port=30099, external_ips=("192.0.2.10",), protocol="udp", port=53)
    t = parse(render_table(plan(sp, port("ok", cluster_ips=("10.96.0.11",)))))
    assert t.elements["no-endpoints4"] == {"10.96.0.10 . udp . 53": "reject-chain",
                                           "192.0.2.10 . udp . 53": "reject-chain"}
    assert t.elements["no-endpoint-nodeports4"] == {"udp . 30099": "reject-chain"}
    assert t.elements["service-ips4"] == {"10.96.0.11 . tcp . 80": "svc4-ok"}
    assert not [c for c in t.chains if c.endswith("-web")]
    assert t.chains["reject-chain"] == ["meta l4proto tcp reject with tcp reset", "reject with icmpx port-unreachable"]
    for hook in ("filter-input", "filter-forward", "filter-output"):
        assert "ct state new jump endpoints-check" in t.chains[hook]
    assert "ct state new jump nodeports-check" in t.chains["filter-input"]
    # a port with backends of the other family only rejects too
    t = parse(render_table(plan(port(backends=(B6,)))))
    assert t.elements["no-endpoints4"] == {"10.96.0.10 . tcp . 80": "reject-chain"}


def test_nodeports_answer_on_the_node_addresses_never_on_loopback():
    t = parse(render_table(plan(port(node_port=30080), node_ips=("192.168.50.1",))))
    assert "fib daddr type local ip daddr @node-ips4 meta l4proto . th dport vmap @nodeports4" in t.chains["services"]
    assert "fib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @nodeports6" in t.chains["services"]
    assert "elements = { 192.168.50.1 }" in t.sets["node-ips4"]
    t = parse(render_table(plan(port(node_port=30080), node_ips=())))
    assert ("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @nodeports4"
            in t.chains["services"])
    for loopback in ("127.0.0.1", "::1"):
        with pytest.raises(InvalidConfig, match="node_ips"):
            render_table(plan(port(), node_ips=(loopback,)))


def test_headless_ports_render_nothing():
    headless = port(cluster_ips=(), node_port=30080, external_ips=("192.0.2.10",))
    assert render_table(plan(headless)) == render_table(plan())
    assert render_update(plan(), plan(headless)) == ""


def test_the_script_replaces_the_table_and_delete_is_idempotent():
    lines = render_table(plan(port())).splitlines()
    assert lines[:3] == [f"add table {P}", f"delete table {P}", f"add table {P}"]
    assert delete_table() == f"add table {P}\ndelete table {P}\n"


@pytest.mark.parametrize("change", [
    {"ref": 'default/x"; flush ruleset'},
    {"ref": "default/x\nflush ruleset"},
    {"id": "Web"}, {"id": "a" * 17}, {"id": "a-b"}, {"id": ""},
    {"protocol": "sctp"}, {"protocol": "tcp;"},
    {"port": 0}, {"port": 65536}, {"node_port": True},
    {"cluster_ips": ("fe80::1%eth0",)}, {"cluster_ips": ("fe80::1%x;flush ruleset",)}, {"cluster_ips": ("10.96.0",)},
    {"cluster_ips": ("127.0.0.1",)}, {"external_ips": ("0.0.0.0",)}, {"external_ips": ("224.0.0.1",)},
    {"backends": (Backend("fd00::1%eth0", 80),)}, {"backends": (Backend("10.0.0.1", 0),)},
    {"backends": (("10.0.0.1", 80),)}, {"backends": (Backend("10.0.0.1", 80, local="yes"),)},
    {"affinity_timeout": 0}, {"affinity_timeout": 86401}, {"external_local": 1},
])
def test_what_cannot_be_one_token_is_refused_naming_the_port(change):
    with pytest.raises(InvalidConfig, match="cannot be rendered into nft"):
        render_table(plan(port(**change)))


def test_bad_plans_are_refused():
    with pytest.raises(InvalidConfig, match="share the id"):
        render_table(plan(port(), port(cluster_ips=("10.96.0.11",))))
    with pytest.raises(InvalidConfig, match=r"both claim 10\.96\.0\.10 \. tcp \. 80"):
        render_table(plan(port(), port("other")))
    with pytest.raises(InvalidConfig, match="both claim tcp . 30080"):
        render_table(plan(port(node_port=30080), port("other", cluster_ips=("10.96.0.11",), node_port=30080)))
    with pytest.raises(InvalidConfig, match="cluster_cidrs"):
        render_table(NodePlan(node_ips=(), cluster_cidrs=("10.244.0.0/33",)))
    for bad in ("fe80::%x;y/64", 7, ("10.0.0.0", 8), None):
        with pytest.raises(InvalidConfig, match="cluster_cidrs"):
            render_table(NodePlan(node_ips=(), cluster_cidrs=(bad,)))
    for bad in (167772161, None, "10.0.0.1/32"):
        with pytest.raises(InvalidConfig, match="node_ips"):
            render_table(NodePlan(node_ips=(bad,), cluster_cidrs=()))


def test_one_backend_change_touches_only_its_own_port():
    ports = [port(f"s{i}", cluster_ips=(f"10.96.1.{i}",), node_port=30000 + i, affinity_timeout=60 if i % 2 else None)
             for i in range(50)]
    old = plan(*ports)
    ports[17] = dataclasses.replace(ports[17], backends=(B0, B1, Backend("10.244.4.13", 8080)))
    new = plan(*ports)
    script = render_update(old, new)
    names = set(re.findall(r"\b((?:svc|loc|ext)[46]-\w+|aff-\w+-\w+)", script))
    assert names and all(re.fullmatch(r"(?:svc4|aff)-s17(?:-\w+)?", n) for n in names), names
    u = parse(script)
    assert u.flushed == ["svc4-s17"]  # the balancer alone
    assert [d.split()[0] for d in u.deleted] == ["set"]  # the affinity set of the backend gone
    assert not u.elements and not u.deleted[1:]  # its frontends did not change
    assert u.members == {"hairpin4": {"10.244.4.13 . 10.244.4.13"}}  # the one backend new to the table
    assert set(u.chains) == {"svc4-s17"}
    assert parse(render_table(new)).ep_targets("svc4-s17") == {"10.244.1.10:8080", "10.244.2.11:8080",
                                                               "10.244.4.13:8080"}
    assert render_update(new, new) == ""


def test_update_moves_elements_and_orders_commands_for_the_kernel():
    old = plan(port(backends=()), port("gone", cluster_ips=("10.96.0.20",)))
    new = plan(port(backends=(B0,)), port("moved", cluster_ips=("10.96.0.20",)))
    script = render_update(old, new)
    u = parse(script)
    assert u.elements["service-ips4"] == {"10.96.0.10 . tcp . 80": "svc4-web", "10.96.0.20 . tcp . 80": "svc4-moved"}
    assert "element no-endpoints4 10.96.0.10 . tcp . 80" in u.deleted
    assert "element service-ips4 10.96.0.20 . tcp . 80" in u.deleted
    assert "chain svc4-gone" in u.deleted
    lines = script.splitlines()

    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    def last(prefix: str) -> int:
        return max(i for i, line in enumerate(lines) if line.startswith(prefix))

    # declare, delete elements, flush, rules, add elements, delete chains: nothing refers to
    # what is not there yet, nothing is deleted while something still refers to it
    assert last("add chain") < first("delete element") < first("flush chain") < first("add rule")
    assert last("add rule") < first("add element") < first("delete chain")


def test_node_or_cidr_changes_rerender_the_table():
    old = plan(port())
    assert render_update(old, plan(port(), node_ips=("192.168.50.2",))) == render_table(
        plan(port(), node_ips=("192.168.50.2",)))
    new = NodePlan(node_ips=old.node_ips, cluster_cidrs=("10.244.0.0/16",), services=old.services)
    assert render_update(old, new) == render_table(new)


def test_backends_are_deduplicated_and_shared_endpoint_chains_agree():
    t = parse(render_table(plan(port(backends=(B0, B0, dataclasses.replace(B0, local=False), B1),
                                     internal_local=True, external_local=True, node_port=30080)))
              )
    assert t.ep_targets("loc4-web") == {"10.244.1.10:8080"}
    assert t.ep_targets("svc4-web") == {"10.244.1.10:8080", "10.244.2.11:8080"}
    assert Counter(c.split("-")[0] for c in t.chains if c.endswith("web") or "-web-" in c) == {
        "svc4": 1, "loc4": 1, "ext4": 1}


def test_shared_counts_are_what_the_full_render_counts():
    ports = (port(backends=(B0, B0, dataclasses.replace(B0, local=False), B1, B6), cluster_ips=("10.96.0.10",)),
             port("dual", cluster_ips=("10.96.0.11", "fd00:96::11"), backends=(B0, B6, Backend(B0.ip, 9090))),
             port("empty", cluster_ips=("10.96.0.12",), backends=()), port("headless", cluster_ips=(), backends=(B1,)))
    counts = shared_counts(ports)
    assert counts == render_full(plan(*ports))[1]
    assert counts[("hairpin4", f"{B0.ip} . {B0.ip}")] == 3  # web, and dual twice (two ports of B0)
