"""The netpol world over IPv6: the upstream-style policy cases of test_policy_lab.py,
run again in a dual-stack lab (`lab up --ipv6`, vxlan) and probed over the pods' IPv6
addresses with the real `podnet probe --family 6`, every cell compared with the
reference semantics (policy/evaluate.py) for those addresses. The cases' IPv4 ranges
(ipBlock, ClusterPolicy nets) become their IPv6 counterparts (policyharness.over_ipv6),
so the compiler's IPv6 path (ip6 sets, ip6 saddr/daddr matches) decides for real.

A few cases also probe both families at once: a policy written for one family must
not open or close the other. The lab is `p6<hex>`, torn down by recorded names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from test_fabric_cluster import eventually

from podnet.lab.sandbox import stop_process
from policyharness import (
    CASES,
    NODE0_HOST,
    Lab,
    check,
    mismatches,
    netpol_lab,
    np,
    over_ipv6,
    tcp_from,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with netpol_lab("vxlan", "p6", ipv6=True) as built:
        yield built


@pytest.mark.parametrize("case", sorted(CASES))
def test_truth_table_over_ipv6_matches_the_reference(lab, case):
    check(lab, over_ipv6(CASES[case]), family=6)


def test_ipblock_with_except_over_ipv6(lab):
    """Allow x/a from the whole IPv6 pool except y/b's IPv6 address."""
    text = np("p", "x", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: "
              f"{{cidr: 'fd00:10:244::/56', except: ['{lab.ip('y/b', 6)}/128']}}}}]}}]\n")
    got = check(lab, text, family=6)
    assert got[(80, "TCP")]["y/b"]["x/a"] is False and got[(80, "TCP")]["y/a"]["x/a"] is True


def test_an_ipv4_ipblock_opens_ipv4_only(lab):
    """x/a admits only the IPv4 pool: the same pods reach it over IPv4, never over IPv6
    (an ipBlock of one family matches no address of the other), in one policy state."""
    objects = lab.apply(np("p", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                                     "  ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16}}]}]\n"))
    try:
        for family in (4, 6):
            got, want = lab.probe(family), lab.expected(family)
            assert not mismatches(got, want), f"IPv{family}:\n" + "\n".join(mismatches(got, want)[:20])
            reached = got[(80, "TCP")]["y/b"]["x/a"]
            assert reached is (family == 4), f"IPv{family}: y/b -> x/a is {reached}"
    finally:
        lab.delete(objects)


def test_default_deny_closes_both_families(lab):
    objects = lab.apply(np("deny", "x", "  podSelector: {}\n"))
    try:
        for family in (4, 6):
            got = lab.probe(family)
            assert not any(got[(80, "TCP")][src][dst] for src in got[(80, "TCP")] for dst in ("x/a", "x/b", "x/c")
                           if src.split("/")[0] != "x" or src != dst), f"IPv{family} still reaches namespace x"
            assert got[(80, "TCP")]["y/a"]["y/b"], f"IPv{family}: namespace y is not denied"
    finally:
        lab.delete(objects)


NODE0 = NODE0_HOST + """---
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: z-not-to-nodes}
spec:
  selector: {namespaceSelector: {matchLabels: {ns: z}}}
  types: [Egress]
  egress: [{action: Deny, to: [{hostEndpointSelector: {matchLabels: {role: node}}}]}]
"""


def test_a_node_host_endpoint_is_protected_on_its_ipv6_address_too(lab):
    """node0 as a HostEndpoint: its ingress policy (no x pod on 7777) and the z pods'
    egress policy toward it hold on its IPv6 underlay address as on its IPv4 one.
    x/a, y/c live on node0, z/c on node1 (netpol.yaml): a pod's egress is judged where
    it is forwarded, so z/c's leaving node1."""
    node = lab.data["nodes"]["node0"]
    listener = subprocess.Popen(["nsenter", f"--net=/run/netns/{node['netns']}", sys.executable, "-m",
                                 "podnet.lab.echo", "--name", "node0", "--tcp", "7777"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    objects = []
    try:
        for address in (node["underlay"], node["underlay6"]):  # the echo server is dual stack
            assert eventually(lambda a=address: tcp_from(lab, "x/a", a, 7777) == "node0", 10)
        objects = lab.apply(NODE0)
        for address in (node["underlay"], node["underlay6"]):
            assert tcp_from(lab, "x/a", address, 7777) == "blocked", address
            assert tcp_from(lab, "y/c", address, 7777) == "node0", address
            assert tcp_from(lab, "z/c", address, 7777) == "blocked", address  # judged leaving node1
    finally:
        stop_process(listener)
        lab.delete(objects)
