"""agent/doctor.py's judgements (pure): each fault named with its fix, and only what the
node can repair marked fixable."""

from __future__ import annotations

from podnet.agent.doctor import (
    bgp_findings,
    conntrack_findings,
    fabric_findings,
    leak_findings,
    mtu_findings,
    orphan_findings,
)


def test_fabric_drift_is_fixable_and_says_missing_or_stale():
    found = fabric_findings(["route 10.244.1.0/24 via 172.31.0.12 dev eth0"], ["route 10.244.9.0/24"])
    assert [f.problem for f in found] == ["missing route 10.244.1.0/24 via 172.31.0.12 dev eth0",
                                          "stale route 10.244.9.0/24 (no lease wants it)"]
    assert all(f.fixable and f.check == "fabric" and "repair pass" in f.fix for f in found)
    assert fabric_findings([], []) == []


def test_only_veths_off_the_pod_mtu_are_named():
    found = mtu_findings({"pn0123456789a": 1450, "pn0123456789b": 1400}, 1450)
    assert len(found) == 1 and "pn0123456789b has MTU 1400, the pod network's is 1450" in found[0].problem
    assert not found[0].fixable


def test_conntrack_pressure_from_80_percent():
    assert conntrack_findings(790, 1000) == [] and conntrack_findings(None, 1000) == []
    found = conntrack_findings(800, 1000)
    assert len(found) == 1 and "800/1000 (80%)" in found[0].problem


def test_a_session_not_established_is_named_with_its_error():
    sessions = [{"name": "pn_node_n1", "neighbor": "172.31.0.11", "state": "Established"},
                {"name": "pn_node_n2", "neighbor": "172.31.0.12", "state": "Active", "last_error": "Socket: Connection refused"}]
    found = bgp_findings(sessions)
    assert len(found) == 1 and "pn_node_n2 with 172.31.0.12 is Active (Socket: Connection refused)" in found[0].problem


def test_orphans_are_veths_no_record_claims_and_nothing_when_a_store_was_unreadable():
    found = orphan_findings({"pn0123456789a", "pn0123456789b"}, {"pn0123456789a"})
    assert [(f.problem, f.target, f.fixable) for f in found] == [
        ("host veth pn0123456789b belongs to no endpoint", ("pn0123456789b",), True)]
    assert orphan_findings({"pn0123456789b"}, None) == []  # cannot judge: never a deletion


def test_leaks_are_reservations_without_an_endpoint():
    held = [("10.244.0.5", "c1", "eth0"), ("10.244.0.6", "c2", "eth0")]
    found = leak_findings(held, {("c1", "eth0")})
    assert len(found) == 1 and found[0].target == ("c2", "eth0") and "10.244.0.6" in found[0].problem
