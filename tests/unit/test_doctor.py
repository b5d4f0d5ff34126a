"""agent/doctor.py's judgements (pure): each fault named with its fix, and only what the
node can repair marked fixable."""

from __future__ import annotations

from podnet.agent.doctor import (
    bgp_findings,
    conntrack_findings,
    fabric_findings,
    leak_findings,
    link_mtu_findings,
    mtu_findings,
    orphan_findings,
)
from podnet.cli.doctor import mtu_mismatches


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


def test_an_underlay_changed_since_start_and_own_devices_off_the_pod_mtu_are_named():
    healthy = {"eth0": 1500, "pnvx0": 1450, "pncl0": 1450, "lo": 65536}
    assert link_mtu_findings(healthy, "eth0", 1500, 1450, ["pnvx0", "pncl0"]) == []
    found = link_mtu_findings({**healthy, "eth0": 1400, "pnvx0": 1400}, "eth0", 1500, 1450, ["pnvx0", "pncl0"])
    assert [f.problem.split(":")[0] for f in found] == [
        "underlay eth0 has MTU 1400, the agent sized the pod network (1450) for 1500", "pnvx0 has MTU 1400, the pod "
        "network's is 1450"]
    assert "dropped" in found[0].problem and not any(f.fixable for f in found)
    assert "follows the underlay within a pass" in found[0].fix and "podnet status" in found[0].fix
    assert link_mtu_findings({"eth0": 1500}, "eth0", 1500, 1500, ["pncl0"]) == []  # a device not there: no claim


def test_pods_sending_more_than_another_node_carries_are_named_per_sender():
    def node(name, pods, carried):
        return {"node": name, "findings": [], "fixed": [], "mtu": {"pods": pods, "carried": carried}}

    assert mtu_mismatches([node("a", 1450, 1450), node("b", 1450, 1450), {"node": "c", "error": "down"}]) == []
    found = mtu_mismatches([node("a", 1450, 1450), node("b", 1450, 1350), node("c", 1350, 1350)])
    assert [f["problem"].split(",")[0] for f in found] == ["pods on a send packets up to 1450 bytes",
                                                           "pods on b send packets up to 1450 bytes"]
    assert "limited to b 1350, c 1350" in found[0]["problem"] and "limited to c 1350" in found[1]["problem"]
    assert not found[0]["fixable"] and "same MTU" in found[0]["fix"]


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


# -- nft tables (agent/doctor_tables.py): the outline of what the agent applied vs the live table

def compiled_table():
    from podnet.policy.table import Compiled, NftSet

    return Compiled(
        sets={"owned4": NftSet("ipv4_addr", False, ("10.244.0.2", "10.244.0.3")),
              "nets": NftSet("ipv4_addr", True, ("10.0.0.0/8",))},
        maps={"in4": ("ipv4_addr", ("10.244.0.2 : jump in_a",))},
        chains={"ingress": ("type filter hook forward priority 0; policy accept;", "ct state established,related accept",
                            'ip daddr @owned4 counter log prefix "D x " group 100 drop comment "unowned"'),
                "in_a": ('counter drop comment "default deny ingress default/a"',)})


def listing(*, flushed: str = "", elements: dict | None = None, shuffle: bool = False) -> dict:
    """An `nft -j list table` of compiled_table() as the kernel prints it: handles,
    counter values, the generation stamp, interval elements in its own words."""
    elements = {"generation": [12345], "owned4": ["10.244.0.2", "10.244.0.3"],
                "nets": [{"prefix": {"addr": "10.0.0.0", "len": 8}}], **(elements or {})}
    items = [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "podnet-policy", "handle": 7}}]
    items += [{"set": {"name": n, "handle": i, "elem": e}} for i, (n, e) in enumerate(elements.items())]
    items += [{"map": {"name": "in4", "handle": 20, "elem": [["10.244.0.2", {"jump": {"target": "in_a"}}]]}},
              {"chain": {"name": "ingress", "handle": 30}}, {"chain": {"name": "in_a", "handle": 31}}]
    rules = [{"rule": {"chain": "ingress", "handle": 40, "expr": [{"accept": None}]}},
             {"rule": {"chain": "ingress", "handle": 41, "comment": "unowned",
                       "expr": [{"counter": {"packets": 9, "bytes": 900}}, {"drop": None}]}},
             {"rule": {"chain": "in_a", "handle": 42, "comment": "default deny ingress default/a",
                       "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"drop": None}]}}]
    rules = [r for r in rules if r["rule"]["chain"] != flushed]
    # shuffled: objects in another order (a chain's rules keep theirs: that order is the chain's)
    return {"nftables": rules + items[::-1] if shuffle else items + rules}


def test_the_live_outline_matches_the_applied_one_whatever_handles_counters_and_listing_order():
    from podnet.agent.doctor_tables import differences, live_shape, policy_shape

    want = policy_shape(compiled_table())
    assert want.chains == {"ingress": (None, "unowned"), "in_a": ("default deny ingress default/a",)}
    assert want.sets == {"generation": None, "owned4": 2, "nets": None, "in4": 1}
    assert differences(want, live_shape(listing())) == []
    assert differences(want, live_shape(listing(shuffle=True))) == []
    assert differences(want, live_shape(listing(elements={"nets": []}))) == []  # interval sets: nft's own words


def test_a_flushed_chain_a_missing_table_and_changed_elements_are_named():
    from podnet.agent.doctor_tables import differences, live_shape, policy_shape, table_finding

    want = policy_shape(compiled_table())
    assert differences(want, live_shape(listing(flushed="in_a"))) == ["rules in chain: in_a (0 of 1)"]
    assert differences(want, live_shape(None)) == ["the table is missing"]
    assert differences(want, live_shape({"nftables": [{"metainfo": {}}]})) == ["the table is missing"]
    assert differences(want, live_shape(listing(elements={"owned4": ["10.244.0.2"]}))) == [
        "elements in: owned4 (1 of 2)"]
    doc = listing()
    doc["nftables"][-1]["rule"]["comment"] = "someone else's rule"
    doc["nftables"].append({"chain": {"name": "extra", "handle": 99}})
    assert differences(want, live_shape(doc)) == ["chain the agent did not apply: extra",
                                                  "other rules (by comment) in chain: in_a"]
    found = table_finding("inet podnet-policy", "policy", ["the table is missing"])
    assert found.problem == "table inet podnet-policy is missing" and found.fixable
    assert found.target == ("inet podnet-policy", "policy") and "re-applies its whole table" in found.fix


def test_the_service_outline_counts_elements_but_not_counters_intervals_or_affinity():
    from podnet.agent.doctor_tables import services_shape
    from podnet.services.plan import Backend, NodePlan, ServicePort
    from podnet.services.render import table_objects

    backends = (Backend("10.244.1.10", 8080), Backend("10.244.2.11", 8080))
    web = ServicePort(id="web", ref="default/web:80", protocol="tcp", port=80, cluster_ips=("10.96.0.10",),
                      backends=backends, affinity_timeout=60)
    shape = services_shape(table_objects(NodePlan(("192.168.50.1",), ("10.244.0.0/16",), (web,))), "generation")
    assert shape.sets["service-ips4"] == 1 and shape.sets["hairpin4"] == 2 and shape.sets["node-ips4"] == 1
    assert shape.sets["cluster-cidrs4"] is None and shape.sets["generation"] is None
    assert not any(name.startswith("hits") for name in shape.sets)
    affinity = [name for name in shape.sets if name.startswith("aff")]
    assert affinity and all(shape.sets[name] is None for name in affinity)
    assert shape.chains["nat-prerouting"] == (None,)


# -- expired leases and DNS (agent/doctor_cluster.py)

def test_a_routed_block_no_live_lease_holds_is_named_with_its_last_owner():
    from podnet.agent.doctor_cluster import expired_lease_findings

    routes = [("10.244.5.0/24", "172.31.0.12", "podnet"), ("10.244.1.0/24", "172.31.0.11", "podnet"),
              ("10.244.0.0/24", "", "bird"), ("10.244.7.5/32", "172.31.0.13", "bird"),
              ("10.99.0.0/24", "172.31.0.12", "podnet"), ("10.244.6.0/24", "172.31.0.13", "bird")]
    found = expired_lease_findings(routes, {"10.244.1.0/24": "node1"}, ["10.244.0.0/24"], "10.244.0.0/16", 24,
                                   {"10.244.5.0/24": "node9"})
    assert [f.target for f in found] == [("10.244.5.0/24",), ("10.244.6.0/24",)]
    assert "via 172.31.0.12 (podnet)" in found[0].problem and "node node9's lease expired" in found[0].problem
    assert "(its lease expired" in found[1].problem and "BIRD" in found[1].fix
    assert all(f.fixable and f.check == "leases" and "repair pass" in f.fix for f in found)


def test_an_ipv6_block_routed_without_a_live_lease_is_judged_by_its_ipv4_twins_claim():
    from podnet.agent.doctor_cluster import expired_lease_findings

    routes = [("fd00:10:244:5::/64", "fd00:172:31::12", "podnet"), ("fd00:10:244:1::/64", "fd00:172:31::11", "bird"),
              ("fd00:10:244::/64", "", "podnet"), ("fd00:99::/64", "fd00:172:31::12", "podnet")]
    found = expired_lease_findings(routes, {"10.244.1.0/24": "node1"}, ["10.244.0.0/24"], "10.244.0.0/16", 24,
                                   {"10.244.5.0/24": "node9"}, "fd00:10:244::/56")
    assert [f.target for f in found] == [("fd00:10:244:5::/64",)]
    assert "block fd00:10:244:5::/64 is still routed via fd00:172:31::12" in found[0].problem
    assert "node node9's lease expired" in found[0].problem
    assert expired_lease_findings(routes, {}, [], "10.244.0.0/16", 24, {}) == []  # single stack: IPv6 is not judged


def test_only_a_dns_server_that_did_not_answer_is_named_and_never_as_fixable():
    from podnet.agent.doctor_cluster import dns_findings

    found = dns_findings([("in the pod", "fix a", None), ("at 10.96.0.10", "fix b", "no answer within 1 s")],
                         "kube-dns.kube-system.svc.cluster.local")
    assert len(found) == 1 and not found[0].fixable and found[0].fix == "fix b"
    assert found[0].problem.startswith("the cluster DNS server at 10.96.0.10 does not answer (no answer within 1 s")
