"""The reference semantics, on the upstream netpol e2e world: namespaces x, y, z (label
ns=<name>), pods a, b, c in each (label pod=<name>), serving 80 and 81 over TCP and UDP
with named ports serve-80-tcp, serve-81-tcp, serve-80-udp, serve-81-udp."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.errors import ObjectError
from podnet.objects.registry import parse_document
from podnet.policy.evaluate import (
    Decision,
    Endpoint,
    NamedPort,
    RuleRef,
    World,
    decide,
    explain_text,
)

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
SERVE = tuple(NamedPort(f"serve-{p}-{proto.lower()}", p, proto)
              for p in (80, 81) for proto in ("TCP", "UDP"))
OUTSIDE = "192.0.2.10"
HOST_IP = "10.9.0.1"


def pod(ns: str, name: str) -> Endpoint:
    i, j = NAMESPACES.index(ns) + 1, PODS.index(name) + 1
    return Endpoint("pod", name, ns, (f"10.0.{i}.{j}", f"fd00::{i}:{j}"), {"pod": name}, SERVE,
                    node="node1")


ALL = [pod(ns, p) for ns in NAMESPACES for p in PODS]
NS_DOCS = [{"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"ns": ns}}} for ns in NAMESPACES]
HOST_DOC = {"apiVersion": "podnet.io/v1", "kind": "HostEndpoint",
            "metadata": {"name": "node1", "labels": {"role": "node"}},
            "spec": {"node": "node1", "ips": [HOST_IP]}}


def world(*docs: dict, endpoints=ALL) -> World:
    objs = [parse_document(d, i) for i, d in enumerate([*NS_DOCS, HOST_DOC, *docs])]
    return World.build(objs, endpoints)


def netpol(name: str, spec: dict, ns: str = "x") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def cluster(name: str, spec: dict) -> dict:
    return {"apiVersion": "podnet.io/v1", "kind": "ClusterPolicy", "metadata": {"name": name},
            "spec": spec}


def tier(name: str, order: int) -> dict:
    return {"apiVersion": "podnet.io/v1", "kind": "Tier", "metadata": {"name": name},
            "spec": {"order": order}}


def ok(w: World, src, dst, port: int = 80, proto: str = "TCP") -> bool:
    return decide(w, _ep(src), _ep(dst), port, proto).allowed


def _ep(x):
    if isinstance(x, str) and "/" in x and ":" not in x:
        ns, name = x.split("/")
        return pod(ns, name)
    return x


def denied(w: World, port: int = 80, proto: str = "TCP") -> set[str]:
    """The reachability matrix as the set of denied 'src->dst' pod pairs."""
    return {f"{s.namespace}/{s.name}->{d.namespace}/{d.name}"
            for s in ALL for d in ALL if not decide(w, s, d, port, proto).allowed}


def into(*targets: str, sources=None) -> set[str]:
    srcs = sources or [f"{e.namespace}/{e.name}" for e in ALL]
    return {f"{s}->{t}" for s in srcs for t in targets if s != t}


X_PODS = ("x/a", "x/b", "x/c")
DENY_ALL_INGRESS = netpol("deny-all", {"podSelector": {}})


# --- NetworkPolicy ---------------------------------------------------------------------


def test_no_policy_allows_everything():
    assert denied(world()) == set()
    assert ok(world(), OUTSIDE, "x/a") and ok(world(), "x/a", OUTSIDE, 443)


def test_default_deny_ingress():
    w = world(DENY_ALL_INGRESS)
    assert denied(w) == into(*X_PODS)  # every other pod (and x's own) is cut off from x
    assert not ok(w, OUTSIDE, "x/a")
    assert ok(w, "x/a", "y/a") and ok(w, "x/a", OUTSIDE)  # egress is not isolated
    d = decide(w, pod("y", "a"), pod("x", "a"), 80, "TCP")
    assert d.ingress.reason == "default deny (isolated by NetworkPolicy x/deny-all)"
    assert d.ingress.rule is None and d.egress.allowed


def test_traffic_to_itself_is_always_allowed():
    w = world(DENY_ALL_INGRESS, netpol("deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]}))
    d = decide(w, pod("x", "a"), "10.0.1.1", 80, "TCP")
    assert d.allowed and d.ingress.reason == "loopback, never leaves the pod"


def test_default_deny_egress():
    w = world(netpol("deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]}))
    everyone = [f"{e.namespace}/{e.name}" for e in ALL]
    assert denied(w) == {f"{s}->{d}" for s in X_PODS for d in everyone if s != d}
    assert ok(w, "y/a", "x/a") and not ok(w, "x/a", OUTSIDE)


def test_policy_selects_only_matching_pods():
    w = world(netpol("deny-a", {"podSelector": {"matchLabels": {"pod": "a"}}}))
    assert denied(w) == into("x/a")
    assert ok(w, "y/b", "x/b")


def test_allow_ingress_from_namespace_with_label():
    w = world(netpol("from-y", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))
    assert denied(w) == into(*X_PODS, sources=[*X_PODS, "z/a", "z/b", "z/c"])
    assert ok(w, "y/c", "x/a")
    d = decide(w, pod("y", "c"), pod("x", "a"), 80, "TCP")
    assert d.ingress.rule == RuleRef(None, "NetworkPolicy x/from-y", "Ingress", 0, "Allow")


def test_namespace_selected_by_its_name_label():
    w = world(netpol("from-z", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}))
    assert ok(w, "z/a", "x/a") and not ok(w, "y/a", "x/a")


def test_peer_pod_selector_alone_means_own_namespace():
    w = world(netpol("from-b", {"podSelector": {}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert ok(w, "x/b", "x/a") and not ok(w, "y/b", "x/a") and not ok(w, "x/c", "x/a")


def test_combined_selectors_in_one_peer_versus_two_peers():
    both = {"podSelector": {"matchLabels": {"pod": "b"}},
            "namespaceSelector": {"matchLabels": {"ns": "y"}}}
    w_and = world(netpol("and", {"podSelector": {}, "ingress": [{"from": [both]}]}))
    assert ok(w_and, "y/b", "x/a")
    assert not ok(w_and, "y/a", "x/a") and not ok(w_and, "x/b", "x/a")
    two = [{"podSelector": both["podSelector"]}, {"namespaceSelector": both["namespaceSelector"]}]
    w_or = world(netpol("or", {"podSelector": {}, "ingress": [{"from": two}]}))
    assert ok(w_or, "y/a", "x/a") and ok(w_or, "x/b", "x/a")  # y's pods OR x/b
    assert not ok(w_or, "z/b", "x/a") and not ok(w_or, "x/c", "x/a")


def test_namespace_selector_with_empty_pod_selector_means_all_pods_there():
    w = world(netpol("all-y", {"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {}, "namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))
    assert all(ok(w, f"y/{p}", "x/a") for p in PODS) and not ok(w, "x/b", "x/a")


def test_empty_versus_missing_from_and_empty_ingress():
    # `from: []` and a missing `from` both mean all sources (Kubernetes API docs)...
    for rule in ({}, {"from": []}, {"ports": []}):
        w = world(netpol("p", {"podSelector": {}, "ingress": [rule]}))
        assert denied(w) == set() and ok(w, OUTSIDE, "x/a"), rule
    # ...while an empty rule list isolates: deny all ingress.
    assert denied(world(netpol("p", {"podSelector": {}, "ingress": []}))) == into(*X_PODS)


def test_policy_types_inferred_from_egress_section():
    spec = {"podSelector": {"matchLabels": {"pod": "a"}},
            "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    w = world(netpol("egress-to-b", spec))
    assert ok(w, "x/a", "x/b") and not ok(w, "x/a", "x/c") and not ok(w, "x/a", "y/b")
    assert not ok(w, "x/b", "x/a")  # Ingress is inferred too: x/a is isolated for ingress
    # an explicit policyTypes [Egress] leaves ingress open
    w = world(netpol("egress-only", spec | {"policyTypes": ["Egress"]}))
    assert ok(w, "x/b", "x/a") and not ok(w, "x/a", "x/c")


def test_egress_to_specific_pods_in_another_namespace():
    w = world(netpol("to-y-c", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                 "podSelector": {"matchLabels": {"pod": "c"}}}],
         "ports": [{"port": 80}]}]}))
    assert ok(w, "x/a", "y/c") and not ok(w, "x/a", "y/c", 81) and not ok(w, "x/a", "y/b")
    assert not ok(w, "x/a", "y/c", 80, "UDP")


def test_multiple_policies_are_a_union():
    from_b = netpol("from-b", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    from_c = netpol("from-c", {"podSelector": {}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}], "ports": [{"port": 81}]}]})
    w = world(from_b, from_c)
    assert ok(w, "x/b", "x/a") and ok(w, "x/c", "x/a", 81) and not ok(w, "x/c", "x/a", 80)
    d = decide(w, pod("y", "a"), pod("x", "a"), 80, "TCP")
    assert d.ingress.reason == "default deny (isolated by NetworkPolicy x/from-b, x/from-c)"
    # adding a deny-all policy never takes an allow away
    w = world(from_b, from_c, DENY_ALL_INGRESS)
    assert ok(w, "x/b", "x/a") and ok(w, "x/c", "x/a", 81)


def test_ports_and_protocols():
    w = world(netpol("udp-81", {"podSelector": {}, "ingress": [
        {"ports": [{"protocol": "UDP", "port": 81}, {"protocol": "SCTP"}]}]}))
    assert ok(w, "y/a", "x/a", 81, "UDP") and not ok(w, "y/a", "x/a", 81, "TCP")
    assert not ok(w, "y/a", "x/a", 80, "UDP")
    assert ok(w, "y/a", "x/a", 9999, "SCTP")  # no port: every port of the protocol
    assert not ok(w, "y/a", "x/a", 0, "ICMP")  # a rule with ports never matches ICMP
    assert ok(world(netpol("any", {"podSelector": {}, "ingress": [{}]})), "y/a", "x/a", 0, "ICMP")


def test_end_port_range():
    w = world(netpol("range", {"podSelector": {}, "ingress": [
        {"ports": [{"port": 80, "endPort": 81}]}]}))
    assert ok(w, "y/a", "x/a", 80) and ok(w, "y/a", "x/a", 81) and not ok(w, "y/a", "x/a", 82)
    assert not ok(w, "y/a", "x/a", 79)


def test_named_port_ingress_resolves_against_the_destination_pod():
    w = world(netpol("named", {"podSelector": {}, "ingress": [{"ports": [{"port": "serve-80-tcp"}]}]}))
    assert ok(w, "y/a", "x/a", 80) and not ok(w, "y/a", "x/a", 81)
    assert not ok(w, "y/a", "x/a", 80, "UDP")
    # name and protocol must both match: serve-80-udp is no TCP port
    w = world(netpol("named", {"podSelector": {}, "ingress": [{"ports": [{"port": "serve-80-udp"}]}]}))
    assert not ok(w, "y/a", "x/a", 80, "TCP") and not ok(w, "y/a", "x/a", 80, "UDP")
    w = world(netpol("named", {"podSelector": {}, "ingress": [
        {"ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]}))
    assert ok(w, "y/a", "x/a", 80, "UDP")


def test_named_port_egress_needs_a_known_destination_pod():
    w = world(netpol("named-out", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"ports": [{"port": "serve-81-tcp"}]}]}))
    assert ok(w, "x/a", "y/b", 81) and not ok(w, "x/a", "y/b", 80)
    assert not ok(w, "x/a", OUTSIDE, 81)  # an outside address has no named ports
    assert not ok(w, "x/a", HOST_IP, 81)  # nor has a host endpoint


def test_named_port_egress_to_an_ipblock_resolves_against_the_pods_inside():
    """A named port is the destination pod's own (Kubernetes; Calico's named-port sets):
    an ipBlock holding pod addresses reaches those pods on their port of that name and
    protocol; an address that is no pod, or a pod in `except`, has none."""
    w = world(netpol("blk", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                             "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.3.0/24"]}},
                                                {"ipBlock": {"cidr": "10.9.0.0/24"}}],
                                         "ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}))
    assert ok(w, "x/a", "y/b", 81, "UDP") and ok(w, "x/a", "10.0.1.3", 81, "UDP")
    assert not ok(w, "x/a", "y/b", 80, "UDP") and not ok(w, "x/a", "y/b", 81, "TCP")
    assert not ok(w, "x/a", "z/b", 81, "UDP")  # z is 10.0.3.0/24: in except
    assert not ok(w, "x/a", "10.0.2.200", 81, "UDP")  # inside the block, but no pod
    assert not ok(w, "x/a", HOST_IP, 81, "UDP")  # a host endpoint has no named ports
    assert not ok(w, "x/a", "fd00::2:2", 81, "UDP")  # y/b's IPv6 address is outside an IPv4 block
    assert ok(w, "x/b", OUTSIDE, 81, "UDP")  # x/b is not selected
    w = world(netpol("none", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": "serve-81-tcp"}]}]}))
    assert not ok(w, "x/a", OUTSIDE, 81) and not ok(w, "x/a", "y/b", 81)  # no pod in the block


def test_named_port_ingress_from_an_ipblock_is_the_selected_pods_own():
    w = world(netpol("blk-in", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.0.2.0/24"}}], "ports": [{"port": "serve-80-tcp"}]}]}))
    assert ok(w, "y/b", "x/a", 80) and ok(w, "10.0.2.200", "x/a", 80)  # any source in the block
    assert not ok(w, "y/b", "x/a", 81) and not ok(w, "z/b", "x/a", 80)


def test_ipblock_with_except():
    w = world(netpol("cidr", {"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}]}))
    assert ok(w, "z/a", "x/a") and ok(w, "x/b", "x/a")  # pods match by address too
    assert not ok(w, "y/a", "x/a")  # inside except
    assert not ok(w, OUTSIDE, "x/a")
    assert ok(w, "10.0.200.7", "x/a")  # an outside address inside the block


def test_ipblock_egress_to_outside_and_ipv6():
    w = world(netpol("out", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}, {"ipBlock": {"cidr": "fd00::2:0/112"}}]}]}))
    assert ok(w, "x/a", OUTSIDE) and not ok(w, "x/a", "198.51.100.1")
    assert ok(w, "x/a", "fd00::2:3")  # y/c by its IPv6 address
    assert not ok(w, "x/a", "y/c")  # as an endpoint the flow is IPv4: 10.0.2.3
    assert not ok(w, "x/a", "10.0.2.3")


def test_outside_source_and_ip_strings():
    w = world(DENY_ALL_INGRESS)
    d = decide(w, OUTSIDE, "10.0.1.2", 80, "tcp")  # an IP of a pod is that pod
    assert not d.allowed and d.dst == "pod x/b (10.0.1.2)" and d.src == "192.0.2.10 (outside)"
    assert d.egress.allowed and "outside" in d.egress.reason
    assert decide(w, "10.0.1.1", OUTSIDE, 80, "TCP").allowed


# --- ClusterPolicy ---------------------------------------------------------------------


DENY_Y_TO_X = cluster("deny-y-to-x", {
    "selector": {"namespaceSelector": {"matchLabels": {"ns": "x"}}},
    "ingress": [{"action": "Deny", "name": "no-y",
                 "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})


def test_cluster_deny_overrides_network_policy_allow():
    allow_all = netpol("allow-all", {"podSelector": {}, "ingress": [{}]})
    w = world(allow_all, DENY_Y_TO_X)
    assert denied(w) == into(*X_PODS, sources=["y/a", "y/b", "y/c"])
    d = decide(w, pod("y", "a"), pod("x", "b"), 80, "TCP")
    assert d.ingress.rule == RuleRef("default", "ClusterPolicy/deny-y-to-x", "Ingress", 0,
                                     "Deny", "no-y")


def test_cluster_allow_overrides_network_policy_isolation():
    allow = cluster("allow-z", {"selector": {"podSelector": {}}, "ingress": [
        {"action": "Allow", "from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]})
    w = world(DENY_ALL_INGRESS, allow)
    assert ok(w, "z/a", "x/a") and not ok(w, "y/a", "x/a")
    assert decide(w, pod("z", "a"), pod("x", "a"), 80, "TCP").ingress.rule.policy == \
        "ClusterPolicy/allow-z"


def test_tiers_run_in_order():
    allow = cluster("allow-y", {"tier": "early", "selector": {"podSelector": {}}, "ingress": [
        {"action": "Allow", "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})
    assert ok(world(tier("early", 100), allow, DENY_Y_TO_X), "y/a", "x/a")
    assert not ok(world(tier("early", 2000), allow, DENY_Y_TO_X), "y/a", "x/a")
    # same order: tiers are ordered by name ("default" < "early")
    assert not ok(world(tier("early", 1000), allow, DENY_Y_TO_X), "y/a", "x/a")


def test_policies_in_a_tier_by_order_then_name():
    def allow(name, order=None):
        spec = {"selector": {"podSelector": {}}, "ingress": [{"action": "Allow"}]}
        return cluster(name, spec | ({"order": order} if order is not None else {}))
    w = world(DENY_Y_TO_X, allow("z-allow", 5))  # lower order first
    assert ok(w, "y/a", "x/a")
    w = world(DENY_Y_TO_X, allow("a-allow"))  # same order 1000: by name
    assert ok(w, "y/a", "x/a")
    w = world(DENY_Y_TO_X, allow("z-allow"))
    assert not ok(w, "y/a", "x/a")


def test_pass_skips_the_rest_of_the_tier():
    pass_y = cluster("a-pass", {"selector": {"podSelector": {}}, "ingress": [
        {"action": "Pass", "from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]})
    w = world(pass_y, DENY_Y_TO_X)
    assert ok(w, "y/a", "x/a")  # passed over the Deny, nothing else isolates x/a
    assert not ok(w, "y/b", "x/a")
    d = decide(w, pod("y", "a"), pod("x", "a"), 80, "TCP")
    assert d.ingress.passed == (RuleRef("default", "ClusterPolicy/a-pass", "Ingress", 0, "Pass"),)
    # after Pass the next tier and then NetworkPolicy still apply
    assert not ok(world(pass_y, DENY_Y_TO_X, DENY_ALL_INGRESS), "y/a", "x/a")
    deny_later = cluster("later", {"tier": "late", "selector": {"podSelector": {}},
                                   "ingress": [{"action": "Deny"}]})
    assert not ok(world(tier("late", 2000), pass_y, deny_later), "y/a", "x/a")


def test_log_is_recorded_and_evaluation_continues():
    log = cluster("log-all", {"tier": "audit", "selector": {"namespaceSelector": {}},
                              "types": ["Ingress", "Egress"],
                              "ingress": [{"action": "Log", "name": "in"}],
                              "egress": [{"action": "Log"}, {"action": "Log", "protocol": "UDP"}]})
    w = world(tier("audit", 1), log, DENY_Y_TO_X)
    d = decide(w, pod("y", "a"), pod("x", "a"), 80, "TCP")
    assert not d.allowed and d.ingress.rule.action == "Deny"
    assert d.logged == (RuleRef("audit", "ClusterPolicy/log-all", "Egress", 0, "Log"),
                        RuleRef("audit", "ClusterPolicy/log-all", "Ingress", 0, "Log", "in"))


def test_no_match_in_a_tier_falls_through():
    only_udp = cluster("udp-deny", {"tier": "early", "selector": {"podSelector": {}},
                                    "ingress": [{"action": "Deny", "protocol": "UDP"}]})
    w = world(tier("early", 1), only_udp)
    assert ok(w, "y/a", "x/a", 80, "TCP") and not ok(w, "y/a", "x/a", 80, "UDP")
    assert ok(w, "y/a", "x/a", 0, "ICMP")  # ICMP is not UDP: falls through


def test_cluster_selector_parts_are_anded():
    cp = cluster("deny-xa", {"selector": {"podSelector": {"matchLabels": {"pod": "a"}},
                                          "namespaceSelector": {"matchLabels": {"ns": "x"}}},
                             "ingress": [{"action": "Deny"}]})
    assert denied(world(cp)) == into("x/a")


def test_cluster_peer_pod_selector_spans_namespaces_and_ports_ranges():
    cp = cluster("deny-b", {"selector": {"podSelector": {}}, "egress": [
        {"action": "Deny", "protocol": "TCP", "ports": ["80-81"],
         "to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    w = world(cp)
    assert denied(w) == into("x/b", "y/b", "z/b")
    assert denied(w, 82) == set() and denied(w, 80, "UDP") == set()


def test_nets_and_not_nets():
    cp = cluster("egress-nets", {"selector": {"podSelector": {}}, "egress": [
        {"action": "Allow", "to": [{"nets": ["192.0.2.0/24"], "notNets": ["192.0.2.128/25"]}]},
        {"action": "Deny", "to": [{"notNets": ["10.0.0.0/8"]}]}]})
    w = world(cp)
    assert ok(w, "x/a", OUTSIDE)
    assert not ok(w, "x/a", "192.0.2.200")  # excluded by notNets, then Deny (not 10/8)
    assert not ok(w, "x/a", "198.51.100.1")
    assert ok(w, "x/a", "y/a")  # inside 10/8: no rule matches, not isolated


# --- host endpoints ----------------------------------------------------------------------


def test_host_endpoints_without_cluster_policy_are_allowed():
    w = world(DENY_ALL_INGRESS, netpol("deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]}))
    d = decide(w, pod("y", "a"), HOST_IP, 22, "TCP")
    assert d.allowed and d.dst == "host node1 (10.9.0.1)" and "NetworkPolicy never" in d.ingress.reason
    assert not ok(w, HOST_IP, "x/a")  # the pod's NetworkPolicy still isolates it
    assert not ok(w, "x/a", HOST_IP)  # and its egress policy too


def test_network_policy_peers_never_match_host_endpoints_but_ipblock_does():
    w = world(netpol("from-all-pods", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {}}]}]}))
    assert ok(w, "z/c", "x/a") and not ok(w, HOST_IP, "x/a")
    w = world(netpol("from-node", {"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.9.0.0/24"}}]}]}))
    assert ok(w, HOST_IP, "x/a")


def test_host_endpoint_selector_in_selector_and_peer():
    protect = cluster("protect-nodes", {"selector": {"hostEndpointSelector": {
        "matchLabels": {"role": "node"}}}, "ingress": [
        {"action": "Allow", "protocol": "TCP", "ports": [22],
         "from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]},
        {"action": "Deny"}]})
    w = world(protect)
    assert ok(w, "y/a", HOST_IP, 22) and not ok(w, "y/b", HOST_IP, 22)
    assert not ok(w, OUTSIDE, HOST_IP, 22)
    assert denied(w) == set()  # pods are not selected by a hostEndpointSelector
    node_only = cluster("node-only", {"selector": {"podSelector": {}}, "ingress": [
        {"action": "Allow", "from": [{"hostEndpointSelector": {}}]}, {"action": "Deny"}]})
    w = world(node_only)
    assert ok(w, HOST_IP, "x/a") and not ok(w, "y/a", "x/a") and not ok(w, OUTSIDE, "x/a")


def test_explicit_host_endpoint_replaces_the_object():
    host = Endpoint("host", "node1", None, ("10.9.0.2",), {"role": "node"}, node="node1")
    w = world(endpoints=[*ALL, host])
    assert w.endpoint("node1").ips == ("10.9.0.2",)
    assert w.endpoint_at(ipaddress.ip_address(HOST_IP)) is None


# --- world and errors -------------------------------------------------------------------


def test_world_build_sorts_and_fills_namespaces():
    extra = Endpoint("pod", "d", "w", ("10.0.9.1",), {"pod": "d"})
    objs = [parse_document(d, i) for i, d in enumerate(
        [tier("b", 5), tier("a", 5), cluster("z", {"selector": {"podSelector": {}}}),
         cluster("y", {"tier": "a", "selector": {"podSelector": {}}}), NS_DOCS[0]])]
    w = World.build(objs, [extra, pod("x", "a")])
    assert [t.name for t in w.tiers] == ["a", "b", "default"]
    assert [p.name for p in w.cluster_policies] == ["y", "z"]
    assert dict(w.namespaces["w"]) == {"kubernetes.io/metadata.name": "w"}
    assert [e.ref for e in w.endpoints] == ["pod w/d", "pod x/a"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: world(cluster("c", {"tier": "nope", "selector": {"podSelector": {}}})),
         "ClusterPolicy c: spec.tier: tier 'nope' does not exist"),
        (lambda: world(endpoints=[pod("x", "a"), Endpoint("pod", "b", "x", ("10.0.1.1",))]),
         "both have address 10.0.1.1"),
        (lambda: world(endpoints=[pod("x", "a"), pod("x", "a")]), "pod x/a: given twice"),
        (lambda: decide(world(), pod("x", "a"), pod("x", "b"), 80, "GRE"), "protocol 'GRE'"),
        (lambda: decide(world(), pod("x", "a"), pod("x", "b"), 0, "TCP"), "0 is not a port"),
        (lambda: decide(world(), "x/a", pod("x", "b"), 80, "TCP"), "'x/a' is neither"),
        (lambda: decide(world(), "10.0.1.1", "fd00::1", 80, "TCP"), "same address family"),
        (lambda: Endpoint("vm", "a"), "kind 'vm' is not pod or host"),
        (lambda: Endpoint("pod", "a"), "a pod has a namespace"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ObjectError) as err:
        call()
    assert message in str(err.value)


def test_explain_text():
    w = world(tier("audit", 1), DENY_Y_TO_X, cluster("log", {
        "tier": "audit", "selector": {"podSelector": {}}, "ingress": [{"action": "Log"}]}))
    d: Decision = decide(w, pod("y", "a"), pod("x", "a"), 80, "TCP")
    text = explain_text(d)
    assert text.splitlines()[0] == "pod y/a (10.0.2.1) -> pod x/a (10.0.1.1), TCP port 80: DENIED"
    assert "ingress: denied  - denied by ClusterPolicy/deny-y-to-x ingress rule 0 'no-y'" in text
    assert "logged: ClusterPolicy/log ingress rule 0 (tier audit, Log)" in text
    assert "egress : allowed - not isolated" in text
