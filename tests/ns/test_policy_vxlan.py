"""The same enforcement over the vxlan fabric (test_policy_lab.py runs every case over
host-gw): a representative set of the netpol cases, each checked over the full probe
matrix against the reference semantics, ingress and egress, same node and across
nodes (every namespace has a pod on every node)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from policyharness import CASES, Lab, check, netpol_lab

pytestmark = pytest.mark.root

OVER_VXLAN = ["default-deny-both", "pod-and-namespace-one-peer", "named-port-81-tcp", "egress-to-y-only",
              "egress-named-port", "cp-deny-over-np-allow", "cp-pass-to-np", "cp-ports-range-and-nets"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with netpol_lab("vxlan", "pv") as built:
        yield built


@pytest.mark.parametrize("case", OVER_VXLAN)
def test_truth_table_over_vxlan(lab, case):
    got = check(lab, CASES[case])
    if case == "default-deny-both":  # the oracle checked by hand once more
        for cell, rows in got.items():
            for src, row in rows.items():
                for dst, ok in row.items():
                    assert ok is ((not src.startswith("x/") and not dst.startswith("x/")) or src == dst), (cell, src, dst)
