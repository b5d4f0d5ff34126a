"""`podnet trace`, the pure parts: nft monitor trace lines, the service table's DNAT
candidates, rule comments and counters, conntrack lines, the hops in order and where a
packet died (observe/trace_parse.py, observe/trace_hops.py); and run_trace against a
memory store with fake agents (observe/trace.py)."""

from __future__ import annotations

import json

import pytest

from podnet.observe import trace_hops as th
from podnet.observe.trace_parse import (
    conntrack_reply_source,
    dnat_candidates,
    dnat_choice,
    dropped_by,
    first_packet,
    isolating_policies,
    longest_match,
    parse_trace,
    parse_trace_line,
    rule_comment,
)
from podnet.policy.table import COMMENT_MAX

MONITOR = """\
add table inet pntrace-0a1b2c3d
trace id cb8b71a7 inet pntrace-0a1b2c3d pre packet: iif "pncl0" ether saddr 02:f3:e0:78:3e:3d ip saddr 10.244.0.3 ip daddr 10.96.200.218 ip protocol tcp tcp sport 45678 tcp dport 8080 tcp flags == syn
trace id cb8b71a7 inet pntrace-0a1b2c3d pre rule ip saddr 10.244.0.3 tcp sport 45678 meta nftrace set 1 (verdict continue)
trace id cb8b71a7 inet pntrace-0a1b2c3d pre policy accept
trace id cb8b71a7 inet podnet-svc services rule ip daddr . meta l4proto . th dport vmap @service-ips4 (verdict goto svc4-bb9c)
trace id cb8b71a7 inet podnet-svc svc4-bb9c rule meta l4proto tcp dnat ip to 10.244.1.3:80 comment "x/web:http -> 10.244.1.3:80" (verdict accept)
trace id 38e80434 inet podnet-policy forward packet: iif "pncl0" oif "pnvx0" ip saddr 10.244.0.3 ip daddr 10.244.1.3 tcp sport 45678 tcp dport 80
trace id 38e80434 inet podnet-policy in_fd1e rule counter packets 3 bytes 180 log prefix "D isolated:x/db ingress " group 100 drop comment "default deny ingress x/db (isolated by x/db)" (verdict drop)
trace id ca25472c inet pntrace-0a1b2c3d pre packet: iif "pncl0" ip saddr 10.244.0.3 ip daddr 10.96.200.218 tcp sport 45678 tcp dport 8080 tcp flags == ack
"""

SVC_TABLE = {"nftables": [
    {"map": {"family": "inet", "name": "service-ips4", "table": "podnet-svc", "map": "verdict", "elem": [
        [{"elem": {"val": {"concat": ["10.96.200.218", "tcp", 8080]}, "comment": "x/web:http"}},
         {"goto": {"target": "svc4-bb9c"}}],
        [{"elem": {"val": {"concat": ["10.96.0.9", "udp", 53]}, "comment": "x/dns:dns"}},
         {"goto": {"target": "svc4-other"}}]]}},
    {"rule": {"chain": "svc4-bb9c", "comment": "x/web:http -> 10.244.0.2:80", "expr": [
        {"match": {"left": {"numgen": {"mode": "random", "mod": 2}}, "right": 0}}, {"dnat": {"addr": "10.244.0.2",
                                                                                          "port": 80}}]}},
    {"rule": {"chain": "svc4-bb9c", "comment": "x/web:http -> 10.244.1.3:80", "expr": [
        {"dnat": {"addr": "10.244.1.3", "port": 80}}]}},
    {"rule": {"chain": "svc4-other", "expr": [{"dnat": {"addr": "10.244.9.9", "port": 53}}]}},
]}


def test_trace_lines_parse_into_events():
    events = parse_trace(MONITOR.splitlines())
    assert len(events) == 8  # "add table" is no trace line
    packet = events[0]
    assert (packet.table, packet.chain, packet.kind) == ("inet pntrace-0a1b2c3d", "pre", "packet")
    assert (packet.iif, packet.saddr, packet.daddr, packet.sport, packet.dport) == \
        ("pncl0", "10.244.0.3", "10.96.200.218", 45678, 8080)
    goto = events[3]
    assert (goto.verdict, goto.target) == ("goto", "svc4-bb9c")
    assert events[2].kind == "policy" and events[2].verdict == "accept"
    assert parse_trace_line("add table inet x") is None


def test_the_first_packet_ends_where_the_next_one_starts_and_names_its_dnat_and_drop():
    events = first_packet(parse_trace(MONITOR.splitlines()))
    assert len(events) == 7 and events[-1].verdict == "drop"
    assert dnat_choice(events) == "10.244.1.3:80"
    drop = dropped_by(events)
    assert drop is not None and drop.comment == "default deny ingress x/db (isolated by x/db)"
    assert drop.table == "inet podnet-policy" and drop.chain == "in_fd1e"
    assert events[5].oif == "pnvx0" and events[5].daddr == "10.244.1.3"


def test_dnat_candidates_follow_the_frontend_map_to_its_chain():
    found = dnat_candidates(SVC_TABLE, "10.96.200.218", "tcp", 8080)
    assert found == {"chain": "svc4-bb9c", "frontend": "x/web:http", "targets": ["10.244.0.2:80", "10.244.1.3:80"]}
    assert dnat_candidates(SVC_TABLE, "10.96.200.218", "udp", 8080) is None
    assert dnat_candidates(None, "10.96.200.218", "tcp", 8080) is None


def test_rule_comments_are_the_compiler_s():
    np = {"tier": None, "policy": "NetworkPolicy x/allow-a", "direction": "Ingress", "index": 1, "action": "Allow",
          "name": None}
    cp = {"tier": "security", "policy": "ClusterPolicy/deny-out", "direction": "Egress", "index": 0,
          "action": "Deny", "name": "no-outside"}
    assert rule_comment(np, "ingress", "x/a", "") == "NetworkPolicy x/allow-a ingress[1]"
    assert rule_comment(cp, "egress", "x/a", "") == "ClusterPolicy security/deny-out egress[0] no-outside"
    assert rule_comment(None, "ingress", "x/db", "x/p,x/q") == "default deny ingress x/db (isolated by x/p,x/q)"
    assert rule_comment(None, "ingress", "x/db", "") is None
    assert len(rule_comment(None, "ingress", "x/" + "d" * 200, "x/p") or "") <= COMMENT_MAX
    assert isolating_policies("default deny (isolated by NetworkPolicy x/p, x/q)") == "x/p,x/q"


def test_conntrack_reply_source_is_the_dnat_target():
    line = ("tcp 6 119 TIME_WAIT src=10.244.0.3 dst=10.96.200.218 sport=45678 dport=8080 src=10.244.1.3 "
            "dst=10.244.0.3 sport=80 dport=45678 [ASSURED] mark=0 use=1")
    assert conntrack_reply_source(line) == "10.244.1.3:80"
    assert conntrack_reply_source("conntrack v1.4.7: 0 flow entries have been shown.") is None


def test_longest_match_prefers_the_longer_prefix():
    routes = [{"dst": "0.0.0.0/0", "proto": 3}, {"dst": "10.244.0.0/16", "proto": 2},
              {"dst": "10.244.1.0/24", "proto": 12}]
    assert longest_match(routes, "10.244.1.7")["proto"] == 12  # type: ignore[index]
    assert longest_match(routes, "8.8.8.8")["dst"] == "0.0.0.0/0"  # type: ignore[index]
    assert longest_match(routes[1:], "8.8.8.8") is None


# -- the hops


SRC_FACTS = {"pod": {"netns": "/run/netns/p", "veth": "pnaaa", "bridge": "pncl0",
                     "route": {"dev": "eth0", "gateway": "10.244.0.1", "prefix": "0.0.0.0/0", "proto": "boot"}},
             "route": {"dev": "pnvx0", "gateway": "10.244.1.0", "prefix": "10.244.1.0/24", "proto": "podnet",
                       "onlink": True},
             "neigh": {"ip": "10.244.1.0", "dev": "pnvx0", "lladdr": "c2:21:78:e7:27:e5", "state": "permanent"},
             "vxlan": {"dev": "pnvx0", "vni": 1, "local": "172.31.0.10", "port": 8472, "underlay": "eth0"},
             "fdb": {"mac": "c2:21:78:e7:27:e5", "dev": "pnvx0", "dst": "172.31.0.11"}}


def test_vxlan_hops_name_the_vni_and_both_underlay_addresses():
    hops = th.source_hops("n0", "x/a", "10.244.1.3", SRC_FACTS) + th.fabric_hops("n0", SRC_FACTS, "172.31.0.11")
    assert [h["kind"] for h in hops] == ["route", "veth", "bridge", "route", "neigh", "fdb", "encap"]
    assert all(h["ok"] for h in hops)
    assert "VNI 1" in hops[-1]["detail"] and "172.31.0.10 -> 172.31.0.11" in hops[-1]["detail"]
    wrong = th.fabric_hops("n0", SRC_FACTS, "172.31.0.99")
    assert not wrong[2]["ok"] and "172.31.0.99" in wrong[2]["detail"]


def test_a_bird_route_is_a_bgp_hop_and_a_host_gw_route_must_go_via_the_peer():
    bgp = {"route": {"dev": "eth0", "gateway": "172.31.0.11", "prefix": "10.244.1.0/24", "proto": "bird"}}
    hops = th.fabric_hops("n0", bgp, "172.31.0.11")
    assert hops[0]["kind"] == "bgp" and hops[0]["ok"] and "proto bird" in hops[0]["detail"]
    hostgw = {"route": {"dev": "eth0", "gateway": "172.31.0.12", "prefix": "10.244.1.0/24", "proto": "podnet"}}
    assert not th.fabric_hops("n0", hostgw, "172.31.0.11")[0]["ok"]


def test_the_verdict_points_at_the_drop():
    hops = [th.hop("n0", "route", "r", "d"), th.hop("n1", "policy", "p", "denied", False),
            th.hop("n1", "drop", "inet podnet-policy", "dropped", False)]
    assert th.verdict(hops)[:2] == ("dropped", 2)
    assert th.verdict([th.hop("n0", "route", "r", "d"), th.hop("n1", "deliver", "v", "d")])[:2] == ("delivered", None)
    assert th.verdict([th.hop("n0", "route", "r", "no route", False)])[:2] == ("dropped", 0)
    assert th.verdict([th.hop("n0", "route", "r", "d")])[0] == "unknown"


def test_confirm_names_the_rule_the_kernel_dropped_with():
    events = first_packet(parse_trace(MONITOR.splitlines()))
    hops = [th.hop("n0", "route", "x/a (pod)", "10.244.1.3 dev eth0"), th.hop("n0", "veth", "v", "d"),
            th.hop("n0", "route", "n0 route", "dev pnvx0 via 10.244.1.0"), th.hop("n1", "route", "n1 route", "dev pncl0"),
            th.hop("n1", "policy", "p", "default deny", False), th.hop("n1", "drop", "p", "by the model", False)]
    th.confirm(hops, {"n0": events[:-1], "n1": events[-2:]}, {"result": "timeout"}, "n0")
    assert hops[0]["confirmed"] and hops[2]["confirmed"]  # pnvx0 is an output device in n0's events
    assert hops[-1]["kind"] == "drop" and hops[-1]["confirmed"] and hops[-1]["node"] == "n1"
    assert hops[-2]["kind"] == "policy" and hops[-2]["confirmed"]
    assert "default deny ingress x/db" in hops[-1]["detail"] and len([h for h in hops if h["kind"] == "drop"]) == 1


def test_confirm_without_a_drop_event_says_where_the_trail_ends():
    hops = [th.hop("n0", "route", "x/a (pod)", "d"), th.hop("n1", "deliver", "v", "d")]
    th.confirm(hops, {"n0": [], "n1": []}, {"result": "timeout"}, "n0")
    assert [h["kind"] for h in hops] == ["drop"] and hops[0]["confirmed"] is False
    assert th.verdict(hops)[:2] == ("dropped", 0)


# -- run_trace with a memory store and fake agents


@pytest.fixture()
def world_store():
    from podnet import keys
    from podnet.store.memory import MemoryStore

    store = MemoryStore()
    from podnet.model.policy import PodRecord

    for name, ip, node in (("a", "10.244.0.3", "n0"), ("b", "10.244.1.3", "n1")):
        store.put(keys.pod("x", name), PodRecord(namespace="x", name=name, node=node, ips=(ip,)).encode())
    store.put(keys.node("n1"), json.dumps({"underlay_ip": "172.31.0.11"}))
    return store


def test_run_trace_asks_the_nodes_and_orders_their_hops(world_store, monkeypatch):
    from podnet.observe import trace

    asked = []

    def fake_call(sock, op, timeout=0, **message):
        asked.append((sock, op))
        if sock == "n0.sock":
            return {**SRC_FACTS, "node": "n0"}
        return {"node": "n1", "route": {"dev": "pncl0", "prefix": "10.244.1.0/24", "proto": "kernel"},
                "deliver": {"veth": "pnbbb", "bridge": "pncl0"}}

    monkeypatch.setattr("podnet.rpc.client.call", fake_call)
    result = trace.run_trace(world_store, {"n0": "n0.sock", "n1": "n1.sock"}, "x/a", "x/b")
    json.dumps(result)
    assert result["src"] == {"name": "x/a", "ip": "10.244.0.3", "node": "n0"}
    assert result["dst"] == {"name": "x/b", "ip": "10.244.1.3", "node": "n1"}
    assert [h["kind"] for h in result["hops"]] == ["route", "veth", "bridge", "policy", "route", "neigh", "fdb",
                                                   "encap", "route", "policy", "deliver"]
    assert result["verdict"] == "delivered" and result["died_at"] is None and result["port"] == 80
    assert ("n1.sock", "trace.hops") in asked


def test_run_trace_refuses_unknown_endpoints(world_store):
    from podnet.observe.trace import TraceError, run_trace

    with pytest.raises(TraceError, match="SRC 'x/nope'"):
        run_trace(world_store, {}, "x/nope", "x/b")
    with pytest.raises(TraceError, match="DST 'nope/b'"):
        run_trace(world_store, {}, "x/a", "nope/b")
    with pytest.raises(TraceError, match="protocol"):
        run_trace(world_store, {}, "x/a", "x/b", protocol="sctp")
