"""The nftables compiler (policy/compile.py), pure: structure and golden fragments."""

from __future__ import annotations

import json

import yaml

from podnet.objects.registry import parse_documents
from podnet.policy.compile import LOG_GROUP, NEIGHBOUR_DISCOVERY, compile_node
from podnet.policy.evaluate import Endpoint, NamedPort, World

PORTS = tuple(NamedPort(f"serve-{p}-{pr.lower()}", p, pr) for p in (80, 81) for pr in ("TCP", "UDP"))


def world(text: str) -> World:
    eps = [Endpoint("pod", pod, ns, (f"10.244.{i}.{j + 2}",), {"pod": pod}, PORTS, f"node{i}")
           for i, ns in enumerate("xyz") for j, pod in enumerate("abc")]
    eps.append(Endpoint("host", "node0", None, ("172.31.0.10",), {"role": "node"}, (), "node0"))
    ns = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"ns": n}}} for n in "xyz"]
    return World.build(parse_documents([*ns, *(d for d in yaml.safe_load_all(text) if d)]), eps)


DENY_X = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: serve-81-tcp}]}]
"""


def test_no_policy_no_endpoint_chains():
    c = compile_node(world(""), "node0")
    assert set(c.chains) == {"egress", "ingress"} and not c.sets
    assert c.maps["in4"] == ("ipv4_addr", ())
    text = c.render()
    assert text.startswith("table inet podnet-policy\ndelete table inet podnet-policy\n")
    assert "ct state established,related accept" in text


def test_isolated_pod_gets_allow_lines_and_a_named_default_deny():
    c = compile_node(world(DENY_X), "node0")
    (chain,) = [n for n in c.chains if n.startswith("in_")]
    (policy_chain,) = [n for n in c.chains if n.startswith("np_")]  # each policy in a chain of its own
    lines = c.chains[chain]
    members = [n for n, s in c.sets.items() if s.elements == ("10.244.1.2", "10.244.1.3", "10.244.1.4")]
    assert members, c.sets
    assert c.chains[policy_chain] == (f"ip saddr @{members[0]} meta l4proto tcp th dport {{ 81 }} counter accept "
                                      'comment "NetworkPolicy x/allow-y ingress[0]"',)
    assert lines == (f"jump {policy_chain}",
                     f'counter log prefix "D isolated:x/allow-y ingress " group {LOG_GROUP} drop '
                     'comment "default deny ingress x/a (isolated by x/allow-y)"')
    assert c.maps["in4"][1] == (f"10.244.0.2 : jump {chain}",)
    assert compile_node(world(DENY_X), "node1").maps["in4"][1] == ()  # x/a is not on node1


def relabelled(w: World, ns: str, name: str, labels: dict) -> World:
    eps = [Endpoint(e.kind, e.name, e.namespace, e.ips, labels if (e.namespace, e.name) == (ns, name)
                    else e.labels, e.ports, e.node) for e in w.endpoints]
    ns_objs = parse_documents([{"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": n, "labels": dict(w.namespaces[n])}} for n in "xyz"])
    return World.build([*ns_objs, *w.network_policies, *w.cluster_policies], eps)


def test_a_label_change_only_rewrites_a_member_set():
    """Incremental: sets are named by the rule they serve, so a pod leaving a selector
    changes set elements only; the chains stay as they are."""
    w = world(DENY_X)
    before = compile_node(w, "node0")
    after = compile_node(relabelled(w, "y", "c", {"pod": "c", "extra": "1"}), "node0")
    assert after.diff(before) == ""  # y/c still in ns y: nothing to do
    moved = World.build([*parse_documents([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y", "labels": {"ns": "other"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "z", "labels": {"ns": "z"}}}]),
        *w.network_policies], w.endpoints)
    diff = compile_node(moved, "node0").diff(before)
    lines = diff.strip().split("\n")
    assert lines[0].startswith("flush set inet podnet-policy p") and len(lines) == 1, diff  # now empty


def test_tiers_and_actions_compile_in_order():
    text = """
apiVersion: podnet.io/v1
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: guard}
spec:
  tier: security
  selector: {podSelector: {matchLabels: {pod: a}}}
  types: [Ingress]
  ingress:
  - {action: Log, name: seen}
  - {action: Pass, from: [{namespaceSelector: {matchLabels: {ns: y}}}]}
  - {action: Deny, protocol: UDP, ports: [80, "81-82"]}
  - {action: Allow, protocol: ICMP}
"""
    c = compile_node(world(text), "node0")
    (tier,) = [n for n in c.chains if n.endswith("_t0")]
    verdicts = [line.split(" comment ")[0].split()[-1] for line in c.chains[tier]]
    assert verdicts == ["100", "return", "drop", "accept"]  # Log has no verdict (ends on its group)
    assert "meta l4proto udp th dport { 80, 81-82 }" in c.chains[tier][2]
    assert "meta l4proto { icmp, ipv6-icmp }" in c.chains[tier][3]
    endpoint = tier.removesuffix("_t0")
    assert c.chains[endpoint] == (f'jump {tier} comment "tier security"',)  # no NetworkPolicy: falls through


def test_host_endpoint_chains_start_with_failsafes():
    text = """
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: node}
spec:
  selector: {hostEndpointSelector: {matchLabels: {role: node}}}
  types: [Ingress]
  ingress: [{action: Deny, from: [{notNets: [172.31.0.0/16]}]}]
"""
    c = compile_node(world(text), "node0")
    host_in = c.chains["host_in"]
    assert host_in[0].startswith("type filter hook input")
    assert "tcp dport { 2379, 2380 } accept" in host_in and host_in[-1].startswith("jump in_")
    assert "host_in" not in compile_node(world(text), "node1").chains  # node1 has no host endpoint


def test_long_names_are_cut_to_the_nflog_limit():
    name = "a" * 200
    text = DENY_X.replace("allow-y", name[:63])
    c = compile_node(world(text), "node0")
    assert all(len(prefix) <= 120 for prefix in c.rules)


def test_cache_recompiles_only_what_changed():
    """With a cache, an unchanged policy object reuses its lines; an edited one (a new
    object) is compiled again, and only its chain differs."""
    from podnet.policy.compile import CompileCache

    gen = "\n---\n".join(DENY_X.replace("allow-y", f"p{i}").replace("serve-81-tcp", str(1000 + i))
                          for i in range(50))
    w = world(gen)
    cache = CompileCache()
    first = compile_node(w, "node0", cache=cache)
    (part,) = cache.parts.values()  # x/a's ingress: one part holding the 50 policies' chains
    assert len(part.chains) == 50
    again = compile_node(w, "node0", cache=cache)
    assert again.diff(first) == "" and list(cache.parts.values())[0] is part  # reused whole
    edited = world(gen.replace("port: 1007", "port: 2007"))
    # keep the other 49 policy objects: the store's parse cache would hand the same ones
    same = {p.name: p for p in w.network_policies}
    nps = [p if p.name != "p7" else next(q for q in edited.network_policies if q.name == "p7")
           for p in (same[n.name] for n in edited.network_policies)]
    w2 = World.build([*parse_documents([{"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": n, "labels": {"ns": n}}} for n in "xyz"]), *nps],
                     w.endpoints)
    diff = compile_node(w2, "node0", cache=cache).diff(first)
    assert diff.count("flush chain") == 1 and "th dport 2007 " in diff and "1007" not in diff
    assert compile_node(w2, "node0").render() == compile_node(w2, "node0", cache=cache).render()


def test_a_host_chain_added_by_diff_keeps_its_hook():
    text = """
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: node}
spec:
  selector: {hostEndpointSelector: {matchLabels: {role: node}}}
  types: [Ingress]
  ingress: [{action: Deny}]
"""
    diff = compile_node(world(text), "node0").diff(compile_node(world(""), "node0"))
    assert "add chain inet podnet-policy host_in { type filter hook input priority 0; policy accept; }" in diff


def block_policy(cidr: str, port: str, protocol: str = "TCP", except_: str = "", direction: str = "Egress") -> str:
    """x/a's policy `blk` with one rule: the ipBlock peer on the port `port`."""
    block = f"{{cidr: {cidr}" + (f", except: [{except_}]" if except_ else "") + "}"
    rule = f"{{{'to' if direction == 'Egress' else 'from'}: [{{ipBlock: {block}}}], ports: [{{port: {port}, protocol: {protocol}}}]}}"
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: blk, namespace: x}}\n"
            f"spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [{direction}]\n"
            f"  {direction.lower()}: [{rule}]\n")


def test_egress_named_port_to_an_ipblock_lists_the_pods_inside():
    """A named port is the destination pod's own: an ipBlock peer reaches the pods inside
    it (minus except) that name the port, at that port; addresses that are no pod match
    nothing (the reference semantics, evaluate.py)."""
    c = compile_node(world(block_policy("10.244.0.0/16", "serve-81-udp", "UDP", "10.244.2.0/24")), "node0")
    named = [s for s in c.sets.values() if s.type == "ipv4_addr . inet_service"]
    assert [s.elements for s in named] == [tuple(f"10.244.{i}.{j} . 81" for i in (0, 1) for j in (2, 3, 4))]
    (policy_chain,) = [n for n in c.chains if n.startswith("np_")]
    (line,) = c.chains[policy_chain]
    assert "meta l4proto udp ip daddr . th dport @p" in line and line.endswith(
        'counter accept comment "NetworkPolicy x/blk egress[0]"')
    # a block holding no pod: no allow line, the pod keeps only its default deny
    c = compile_node(world(block_policy("192.0.2.0/24", "serve-81-tcp")), "node0")
    assert not [n for n in c.chains if n.startswith("np_")]
    assert not [s for s in c.sets.values() if s.type == "ipv4_addr . inet_service"]


def test_egress_named_port_block_set_follows_the_pods():
    """A pod coming into the block only adds its (address . port) to the set."""
    w = world(block_policy("10.244.0.0/16", "serve-81-tcp"))
    before = compile_node(w, "node0")
    new = Endpoint("pod", "d", "y", ("10.244.1.9",), {"pod": "d"}, PORTS, "node1")
    w2 = World.build([*parse_documents([{"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": n, "labels": {"ns": n}}} for n in "xyz"]),
                      *w.network_policies], [*w.endpoints, new])
    lines = compile_node(w2, "node0").diff(before).strip().split("\n")
    assert len(lines) == 2 and lines[0].startswith("flush set inet podnet-policy p"), lines
    assert "10.244.1.9 . 81" in lines[1]


def test_ingress_named_port_from_an_ipblock_is_the_local_pods_own():
    text = block_policy("10.244.1.0/24", "serve-80-udp", "UDP", direction="Ingress")
    c = compile_node(world(text), "node0")
    (policy_chain,) = [n for n in c.chains if n.startswith("np_")]
    (line,) = c.chains[policy_chain]
    # one prefix inline: no interval set (nft reads every interval set's elements before
    # any element command, policy/table.py `stamp`)
    assert line.startswith("ip saddr 10.244.1.0/24 meta l4proto udp th dport { 80 } counter accept")
    assert not [s for s in c.sets.values() if s.interval]
    # an except leaves several prefixes: those go in a named interval set
    c = compile_node(world(block_policy("10.244.1.0/24", "serve-80-udp", "UDP", "10.244.1.64/26",
                                        direction="Ingress")), "node0")
    (line,) = c.chains[next(n for n in c.chains if n.startswith("np_"))]
    (block,) = [n for n, s in c.sets.items() if s.interval]
    assert c.sets[block].elements == ("10.244.1.0/26", "10.244.1.128/25") and line.startswith(f"ip saddr @{block} ")


# -- log prefixes and comments nft takes (issue 10, item 7)

RULE_NAMED = """
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: guard}
spec:
  selector: {podSelector: {matchLabels: {pod: a}}}
  types: [Ingress]
  ingress:
  - {action: Deny, name: NAME1}
  - {action: Deny, name: NAME2}
"""


def _prefixes_and_comments(c) -> tuple[list[str], list[str]]:
    import re

    lines = [line for chain in c.chains.values() for line in chain]
    prefixes = [m.group(1) for line in lines for m in re.finditer(r'log prefix "([^"]*)"', line)]
    comments = [m.group(1) for line in lines for m in re.finditer(r'comment "([^"]*)"', line)]
    return prefixes, comments


def _printable(text: str) -> bool:
    return all(0x20 <= ord(ch) < 0x7F for ch in text) and not set(text) & set('"\\;')


def test_non_ascii_and_long_rule_names_fit_nflog_by_bytes_and_stay_apart():
    """A non-ASCII name made a 203-byte prefix nft refused (127 bytes at most): prefixes
    and comments are printable ASCII, cut by bytes, and two names stay two."""
    cases = [("блокировать-всё-" * 8, "блокировать-всё-" * 7 + "иначе"),  # 2 bytes a character
             ("ä", "ö"),  # the same once made ASCII
             ("x" * 200 + "1", "x" * 200 + "2"),  # the same once cut
             ('say "hi"; \\ bye\n', "tab\there")]
    for first, second in cases:
        text = RULE_NAMED.replace("NAME1", json.dumps(first)).replace("NAME2", json.dumps(second))
        c = compile_node(world(text), "node0")
        prefixes, comments = _prefixes_and_comments(c)
        rule_prefixes = [p for p in prefixes if p.startswith("D cp:")]
        assert len(rule_prefixes) == 2 and len(set(rule_prefixes)) == 2, rule_prefixes
        assert all(len(p.encode()) <= 127 and _printable(p) for p in prefixes), prefixes
        rule_comments = [m for m in comments if m.startswith("ClusterPolicy")]
        assert len(set(rule_comments)) == 2, rule_comments
        assert all(len(m.encode()) <= 127 and _printable(m) for m in comments), comments
        assert set(c.rules) >= {p.rstrip() for p in rule_prefixes}


def test_plain_names_are_left_as_they_are():
    from podnet.policy.table import nft_text

    assert nft_text("NetworkPolicy x/allow-y ingress[0]", 120) == "NetworkPolicy x/allow-y ingress[0]"
    cut = nft_text("y" * 300, 120)
    assert len(cut) == 120 and cut.startswith("y" * 100) and cut != nft_text("y" * 301, 120)


# -- addresses of the node's own block that no local pod owns (issue 10, item 4)


def test_unowned_addresses_of_the_nodes_block_are_dropped_both_ways():
    """Fail closed, as Calico and Cilium: on a node enforcing policy, forwarded traffic
    from or to an address of its own pod block that no local pod owns (a pod not
    registered yet, a recycled address) is dropped, not let through."""
    c = compile_node(world(DENY_X), "node0", pod_nets=("10.244.0.0/24",))
    assert c.sets["owned4"].elements == ("10.244.0.2", "10.244.0.3", "10.244.0.4")
    egress, ingress = c.chains["egress"], c.chains["ingress"]
    assert egress[1] == "ct state established,related accept"
    assert egress[2] == ingress[2] == NEIGHBOUR_DISCOVERY  # IPv6's ARP, never judged
    assert egress[3] == (f'ip saddr 10.244.0.0/24 ip saddr != @owned4 counter log prefix "D unowned egress " '
                         f'group {LOG_GROUP} drop comment "unowned address of block 10.244.0.0/24"')
    assert ingress[3].startswith("ip daddr 10.244.0.0/24 ip daddr != @owned4 counter log prefix ")
    assert egress[4] == "ip saddr vmap @out4"  # after the check: no chain is ever inherited
    assert "owned4" not in compile_node(world(DENY_X), "node0").sets  # no block known: no check


def test_unowned_check_follows_the_block_and_the_pods_by_diff():
    w = world(DENY_X)
    before = compile_node(w, "node0", pod_nets=("10.244.0.0/24",))
    new = Endpoint("pod", "d", "x", ("10.244.0.9",), {"pod": "d"}, PORTS, "node0")
    w2 = World.build([*parse_documents([{"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": n, "labels": {"ns": n}}} for n in "xyz"]),
                      *w.network_policies], [*w.endpoints, new])
    diff = compile_node(w2, "node0", pod_nets=("10.244.0.0/24",)).diff(before)
    assert "flush set inet podnet-policy owned4" in diff and "10.244.0.9" in diff
    assert "flush chain inet podnet-policy egress" not in diff
    gone = compile_node(w, "node0").diff(before)
    assert "delete set inet podnet-policy owned4" in gone and "flush chain inet podnet-policy egress" in gone
