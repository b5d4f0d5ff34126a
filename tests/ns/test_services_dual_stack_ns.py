"""A dual-stack Service's table in a real kernel (issue 18): nft takes the rules of both
families from one plan, and the table holds each family's frontends and DNATs to that
family's backends only. A namespace of its own (pnt-ds-<pid>), deleted at the end."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cniharness import needs_root
from podnet.model.policy import PodRecord
from podnet.objects.registry import parse_documents
from podnet.services.planner import node_plan
from podnet.services.render import TABLE, render_table

pytestmark = pytest.mark.root

PODS = [PodRecord("default", "a", "n0", ("10.244.0.2", "fd00:10:244::2"), {"app": "web"}),
        PodRecord("default", "b", "n1", ("10.244.1.2", "fd00:10:244:1::2"), {"app": "web"})]
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"],
                    "clusterIPs": ["fd00:10:96::20", "10.96.0.20"], "selector": {"app": "web"},
                    "type": "NodePort", "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}}


def test_nft_takes_both_families_of_a_dual_stack_service() -> None:
    needs_root()
    ns = f"pnt-ds-{os.getpid()}"
    plan = node_plan(parse_documents([SERVICE]), PODS, [], {}, "n0", (), ("10.244.0.0/16", "fd00:10:244::/56"))
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=render_table(plan), text=True,
                       check=True, capture_output=True)
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", TABLE],
                                check=True, capture_output=True, text=True).stdout
        text = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", TABLE],
                              check=True, capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert json.loads(listed)["nftables"]
    assert "fd00:10:96::20 . tcp . 80" in text and "10.96.0.20 . tcp . 80" in text
    v4 = [line for line in text.splitlines() if "dnat ip to" in line]
    v6 = [line for line in text.splitlines() if "dnat ip6 to" in line]
    assert {line.split("dnat ip to ")[1].split()[0] for line in v4} == {"10.244.0.2:8080", "10.244.1.2:8080"}
    assert {line.split("dnat ip6 to ")[1].split()[0] for line in v6} == {"[fd00:10:244::2]:8080",
                                                                         "[fd00:10:244:1::2]:8080"}
