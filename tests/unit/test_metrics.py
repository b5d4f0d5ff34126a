"""The agent's metrics registry (agent/metrics.py), read back with prometheus_client's
own parser: what the CNI path, the IPAM gauge and a fabric pass record; the store
proxy's latency and errors (agent/store_metrics.py); the services' endpoints and NAT
hits (agent/metrics_services.py) and the named counters the service table carries."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from podnet import keys
from podnet.agent.metrics import AgentMetrics, error_code, parse_addr, peer_verdict
from podnet.agent.metrics_services import service_counters
from podnet.agent.store_metrics import TimedStore
from podnet.errors import KernelError, StoreError
from podnet.kernel.nft import FakeNft, counter_totals
from podnet.services.plan import Backend, NodePlan, ServicePort
from podnet.services.render import render_table, render_update
from podnet.store import open_store


def samples(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the text format."""
    out = {}
    for family in text_string_to_metric_families(metrics.render()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_cni_requests_count_by_command_and_errors_by_code():
    m = AgentMetrics()
    m.cni_done("ADD", 0.02, None)
    m.cni_done("ADD", 0.03, '{"cniVersion": "1.0.0", "code": 7, "msg": "bad"}\n')
    m.cni_done("DEL", 0.001, None)
    m.cni_done("BOGUS", 0.001, '{"code": 4}')
    got = samples(m)
    assert got[("podnet_cni_request_duration_seconds_count", (("command", "ADD"),))] == 2
    assert got[("podnet_cni_request_duration_seconds_sum", (("command", "ADD"),))] == pytest.approx(0.05)
    assert got[("podnet_cni_request_duration_seconds_count", (("command", "DEL"),))] == 1
    assert got[("podnet_cni_request_duration_seconds_count", (("command", "other"),))] == 1
    assert got[("podnet_cni_errors_total", (("code", "7"), ("command", "ADD")))] == 1
    assert got[("podnet_cni_errors_total", (("code", "4"), ("command", "other")))] == 1
    assert ("podnet_cni_errors_total", (("code", "7"), ("command", "DEL"))) not in got


def test_two_agents_in_one_process_count_apart():
    a, b = AgentMetrics(), AgentMetrics()
    a.cni_done("ADD", 0.01, None)
    assert samples(b)[("podnet_cni_request_duration_seconds_count", (("command", "ADD"),))] == 0


def test_error_code_of_an_unreadable_reply_is_999():
    assert error_code('{"code": 11, "msg": "try again"}') == "11"
    assert error_code("not json") == "999"
    assert error_code('{"msg": "no code"}') == "999"


def test_ipam_gauge_counts_reservations_per_network_at_scrape_time():
    stored = [keys.ipam_address("cluster", "10.244.0.2"), keys.ipam_address("cluster", "10.244.0.3"),
              keys.ipam_address("t-net", "10.80.0.2"), keys.ipam_last("cluster", 0)]
    m = AgentMetrics(lambda: list(stored))
    got = samples(m)
    assert got[("podnet_ipam_addresses_reserved", (("network", "cluster"),))] == 2
    assert got[("podnet_ipam_addresses_reserved", (("network", "t-net"),))] == 1
    stored.pop(0)  # released: the next scrape sees it
    assert samples(m)[("podnet_ipam_addresses_reserved", (("network", "cluster"),))] == 1


def test_a_store_error_drops_the_ipam_gauge_not_the_scrape():
    def broken():
        raise StoreError("database is locked")

    m = AgentMetrics(broken)
    m.cni_done("ADD", 0.01, None)
    got = samples(m)
    assert not any(name == "podnet_ipam_addresses_reserved" for name, _ in got)
    assert got[("podnet_cni_request_duration_seconds_count", (("command", "ADD"),))] == 1


def test_fabric_pass_times_counts_drift_by_kind_and_sets_peers_by_verdict():
    m = AgentMetrics()
    m.fabric_pass(0.004, True, ["route 10.244.1.0/24 via 172.31.0.2 dev eth0", "fdb aa:bb dst 172.31.0.2"],
                  ["neigh 10.244.2.0"], {"n2": "ok", "n3": "ok", "evil": "refused: block outside the cluster"})
    m.fabric_pass(0.002, False, [], [], {"n2": "ok"})
    got = samples(m)
    assert got[("podnet_fabric_converge_duration_seconds_count", (("pass", "repair"),))] == 1
    assert got[("podnet_fabric_converge_duration_seconds_count", (("pass", "change"),))] == 1
    assert got[("podnet_fabric_drift_repairs_total", (("action", "added"), ("kind", "route")))] == 1
    assert got[("podnet_fabric_drift_repairs_total", (("action", "added"), ("kind", "fdb")))] == 1
    assert got[("podnet_fabric_drift_repairs_total", (("action", "removed"), ("kind", "neigh")))] == 1
    # the gauge is the last pass's view: n3 and evil went
    assert got[("podnet_fabric_peers", (("state", "ok"),))] == 1
    assert got[("podnet_fabric_peers", (("state", "refused"),))] == 0


@pytest.mark.parametrize(("state", "label"), [("ok", "ok"), ("refused: why", "refused"), ("pending", "pending"),
                                              ("something new", "pending")])
def test_peer_verdict(state, label):
    assert peer_verdict(state) == label


@pytest.mark.parametrize(("text", "want"), [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:80", ("::1", 80)),
                                            ("localhost:1", ("localhost", 1))])
def test_parse_addr(text, want):
    assert parse_addr(text) == want


@pytest.mark.parametrize(("text", "reason"), [("9464", "HOST:PORT"), (":9464", "HOST:PORT"),
                                              ("h:port", "1 to 65535"), ("h:0", "1 to 65535"),
                                              ("h:70000", "1 to 65535")])
def test_parse_addr_refuses(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_addr(text)


def test_agent_config_file_takes_metrics_addr(tmp_path):
    from podnet.config import load

    path = tmp_path / "config.yaml"
    path.write_text("agent:\n  metricsAddr: 127.0.0.1:9464\n")
    assert load(str(path)).agent["metrics_addr"] == "127.0.0.1:9464"


def test_agent_refuses_a_bad_metrics_addr_with_exit_2(capsys):
    from podnet.cli import main

    assert main(["agent", "--metrics-addr", "nowhere"]) == 2
    assert "--metrics-addr: 'nowhere' is not HOST:PORT" in capsys.readouterr().err


def test_metrics_cli_node_name_needs_a_lab(capsys, monkeypatch):
    from podnet.cli import main

    monkeypatch.delenv("PODNET_LAB", raising=False)
    assert main(["metrics", "n1", "--socket", "/nonexistent/agent.sock"]) == 2
    assert "a node name needs a lab" in capsys.readouterr().err


def test_metrics_cli_says_when_no_agent_answers(capsys, monkeypatch):
    from podnet.cli import main

    monkeypatch.delenv("PODNET_LAB", raising=False)
    assert main(["metrics", "--socket", "/nonexistent/agent.sock"]) == 1
    assert "no podnet agent answers on /nonexistent/agent.sock" in capsys.readouterr().err


def test_policy_rules_are_counted_from_the_nodes_counters_at_scrape_time():
    rows = [{"rule": "np x/deny ingress default", "packets": 7, "bytes": 420}]
    metrics = AgentMetrics()
    metrics.watch_policy(lambda: {"node": "n0", "rules": rows})
    got = samples(metrics)
    assert got[("podnet_policy_rule_packets_total", (("rule", "np x/deny ingress default"),))] == 7
    assert got[("podnet_policy_rule_bytes_total", (("rule", "np x/deny ingress default"),))] == 420
    rows[0] = {**rows[0], "packets": 9}
    assert samples(metrics)[("podnet_policy_rule_packets_total",
                                      (("rule", "np x/deny ingress default"),))] == 9


@pytest.mark.parametrize(("watch", "family"), [("watch_policy", "podnet_policy_rule_packets"),
                                               ("watch_services", "podnet_service_endpoints")])
def test_a_failing_op_drops_its_families_not_the_scrape(watch, family):
    def broken() -> dict:
        raise StoreError("nft: cannot list table")

    metrics = AgentMetrics()
    getattr(metrics, watch)(broken)
    text = metrics.render()
    assert family not in text and "podnet_cni_request_duration_seconds" in text
    assert "podnet_store_request_duration_seconds" in text


# -- the agent's store calls (agent/store_metrics.py)

def store_samples(metrics: AgentMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples(metrics).items() if sample == name}


def test_store_calls_are_timed_per_op_and_watch_apart():
    m = AgentMetrics()
    with open_store("memory://") as inner:
        store = m.timed_store(inner)
        assert m.timed_store(store) is store  # never timed twice
        store.put("a/1", "1")
        store.put_json("a/2", 2)  # a convenience: one put underneath
        assert store.get("a/1").value == "1" and store.get_json("a/2") == 2 and store.get("a/3") is None
        assert [e.key for e in store.list("a/")] == ["a/1", "a/2"]
        assert store.compare_and_put("a/1", "x", 999) is None
        entries, revision = store.snapshot("a/")
        assert len(entries) == 2 and revision == store.revision() == inner.revision()
        assert [e.key for e in store.watch("a/", 0, 0.01)] == ["a/1", "a/2"]
        assert store.watch("a/", revision, 0.01) == []
    count = store_samples(m, "podnet_store_request_duration_seconds_count")
    assert count[(("op", "put"),)] == 2
    assert count[(("op", "get"),)] == 3
    assert count[(("op", "list"),)] == 1
    assert count[(("op", "compare_and_put"),)] == 1
    assert count[(("op", "snapshot"),)] == 1  # one call, however the backend does it
    assert count[(("op", "revision"),)] == 1
    assert count[(("op", "watch"),)] == 2  # its own label: a long poll never swamps the others
    assert count[(("op", "delete"),)] == 0
    total = store_samples(m, "podnet_store_request_duration_seconds_sum")
    assert total[(("op", "watch"),)] >= 0.01  # the empty watch waited its timeout
    assert not store_samples(m, "podnet_store_errors_total")


def test_a_store_error_is_counted_by_type_and_reraised_unchanged():
    m = AgentMetrics()
    with open_store("memory://") as inner:
        store = m.timed_store(inner)
        with pytest.raises(StoreError, match="invalid store key"):
            store.put("", "x")
        with pytest.raises(StoreError, match="invalid ttl"):
            store.refresh("k", -1)
        store.put("k", "v")

        class Boom(Exception):
            pass

        boom = Boom("the same object comes back")
        inner.delete_prefix = lambda _prefix: (_ for _ in ()).throw(boom)  # type: ignore[method-assign]
        with pytest.raises(Boom) as caught:
            store.delete_prefix("k")
        assert caught.value is boom
    errors = store_samples(m, "podnet_store_errors_total")
    assert errors[(("error", "StoreError"), ("op", "put"))] == 1
    assert errors[(("error", "StoreError"), ("op", "refresh"))] == 1
    assert errors[(("error", "Boom"), ("op", "delete_prefix"))] == 1
    count = store_samples(m, "podnet_store_request_duration_seconds_count")
    assert count[(("op", "put"),)] == 2 and count[(("op", "delete_prefix"),)] == 1  # failures are timed too


def test_a_timed_transaction_commits_and_rolls_back_as_the_backend_does():
    m = AgentMetrics()
    with open_store("memory://") as inner:
        store = m.timed_store(inner)
        with store.transaction() as tx:
            tx.put("k", "1")
            tx.put("j", "1")
        with pytest.raises(ValueError, match="the caller's"), store.transaction() as tx:
            tx.put("k", "2")
            raise ValueError("the caller's own error")
        assert inner.get("k").value == "1"  # rolled back
    count = store_samples(m, "podnet_store_request_duration_seconds_count")
    assert count[(("op", "transaction"),)] == 2 and count[(("op", "put"),)] == 3  # the calls inside count too
    assert not store_samples(m, "podnet_store_errors_total")  # the block's error is not the store's


def test_the_timed_store_passes_backend_attributes_through():
    m = AgentMetrics()
    with open_store("memory://") as inner:
        inner.label = "kept"  # type: ignore[attr-defined]
        assert m.timed_store(inner).label == "kept"


def test_the_cni_service_times_every_store_it_opens():
    from podnet.endpoints.service import CniService

    m = AgentMetrics()
    service = CniService(default_store="memory://", wrap_store=m.timed_store)
    try:
        store = service.store("memory://")
        assert isinstance(store, TimedStore) and service.store("memory://") is store
        store.get("x")
    finally:
        service.close()
    assert store_samples(m, "podnet_store_request_duration_seconds_count")[(("op", "get"),)] == 1


# -- services: endpoints and NAT hits (agent/metrics_services.py)

def svc_port(ref: str, ident: str, *ips: str) -> ServicePort:
    return ServicePort(ident, ref, "tcp", 80, ("10.96.0.10",), backends=tuple(Backend(ip, 8080) for ip in ips))


def named_counter(name: str, comment: str, packets: int, octets: int) -> dict:
    return {"counter": {"family": "inet", "table": "podnet-svc", "name": name, "comment": comment,
                        "packets": packets, "bytes": octets}}


def test_service_counters_join_endpoints_and_nat_hits_per_service():
    ports = [svc_port("default/web:http", "a1", "10.244.0.2", "10.244.1.3"),
             svc_port("default/web:https", "a2", "10.244.0.2"),  # the same pod: one endpoint
             svc_port("kube/dns:53", "b1")]
    doc = {"nftables": [{"metainfo": {}}, named_counter("hits-a1", "default/web:http", 3, 180),
                        named_counter("hits-a2", "default/web:https", 2, 120)]}
    reply = service_counters("n0", ports, lambda: doc)
    assert reply == {"node": "n0", "nat_error": None, "services": [
        {"service": "default/web", "endpoints": 2, "packets": 5, "bytes": 300},
        {"service": "kube/dns", "endpoints": 0, "packets": 0, "bytes": 0}]}


def test_a_failing_nft_keeps_the_endpoints_and_drops_the_nat_families():
    def broken() -> dict:
        raise KernelError("nft list counters table inet podnet-svc failed")

    reply = service_counters("n0", [svc_port("default/web:80", "a1", "10.244.0.2")], broken)
    assert reply["services"] == [{"service": "default/web", "endpoints": 1}] and "failed" in reply["nat_error"]
    m = AgentMetrics()
    m.watch_services(lambda: reply)
    got = samples(m)
    assert got[("podnet_service_endpoints", (("service", "default/web"),))] == 1
    assert not any(name.startswith("podnet_service_nat") for name, _ in got)


def test_services_are_scraped_from_the_op_each_time():
    rows = [{"service": "default/web", "endpoints": 2, "packets": 4, "bytes": 240}]
    m = AgentMetrics()
    m.watch_services(lambda: {"node": "n0", "services": rows, "nat_error": None})
    got = samples(m)
    assert got[("podnet_service_endpoints", (("service", "default/web"),))] == 2
    assert got[("podnet_service_nat_packets_total", (("service", "default/web"),))] == 4
    assert got[("podnet_service_nat_bytes_total", (("service", "default/web"),))] == 240
    rows[0] = {**rows[0], "endpoints": 1, "packets": 6}
    got = samples(m)
    assert got[("podnet_service_endpoints", (("service", "default/web"),))] == 1
    assert got[("podnet_service_nat_packets_total", (("service", "default/web"),))] == 6


def test_counter_totals_sum_rule_counters_and_named_counters_by_comment():
    doc = {"nftables": [
        named_counter("hits-a1", "default/web:80", 2, 100),
        {"rule": {"comment": "np x/deny", "expr": [{"match": {}}, {"counter": {"packets": 1, "bytes": 60}}]}},
        {"rule": {"comment": "np x/deny", "expr": [{"counter": {"packets": 2, "bytes": 120}}]}},
        # a rule counting into a named counter: the object counts, not the rule
        {"rule": {"comment": "default/web:80 -> 10.244.0.2:8080", "expr": [{"counter": "hits-a1"}]}},
        {"rule": {"expr": [{"counter": {"packets": 9, "bytes": 9}}]}},  # no comment: nobody's
    ]}
    assert counter_totals(doc) == {"default/web:80": (2, 100), "np x/deny": (3, 180)}
    assert counter_totals(None) == {}


def test_every_dnat_of_a_port_counts_into_its_named_counter():
    web = ServicePort("web", "default/web:80", "tcp", 80, ("10.96.0.10",), node_port=30080,
                      backends=(Backend("10.244.0.2", 8080), Backend("10.244.1.3", 8080)), affinity_timeout=60)
    script = render_table(NodePlan(("172.31.0.10",), ("10.244.0.0/16",), (web,)))
    assert 'add counter inet podnet-svc hits-web-57e4a715 { comment "default/web:80"; }' in script.splitlines()
    dnats = [line for line in script.splitlines() if " dnat ip" in line]
    assert len(dnats) == 4 and all(" counter name hits-web-57e4a715 dnat " in line for line in dnats)
    assert render_table(NodePlan(("172.31.0.10",), ("10.244.0.0/16",), (web,))) == script  # deterministic
    renamed = render_update(NodePlan(("172.31.0.10",), ("10.244.0.0/16",), (web,)),
                            NodePlan(("172.31.0.10",), ("10.244.0.0/16",), (replace(web, ref="default/web:http"),)))
    # a renamed port gets a counter of its own (an object's comment is never changed in place)
    assert 'add counter inet podnet-svc hits-web-7f26b5a6 { comment "default/web:http"; }' in renamed.splitlines()
    assert "delete counter inet podnet-svc hits-web-57e4a715" in renamed.splitlines()


def test_a_backend_change_keeps_the_counter_and_a_gone_port_deletes_it_last():
    old = svc_port("default/web:80", "web", "10.244.0.2")
    new = svc_port("default/web:80", "web", "10.244.0.2", "10.244.1.3")
    plan = lambda *ports: NodePlan(("172.31.0.10",), ("10.244.0.0/16",), ports)  # noqa: E731
    update = render_update(plan(old), plan(new)).splitlines()
    assert update and not any("counter inet podnet-svc" in line for line in update)  # its hits go on counting
    gone = render_update(plan(old), plan()).splitlines()
    assert gone[-1] == "delete counter inet podnet-svc hits-web-57e4a715"  # after its rules went
    assert any(line.startswith("delete chain inet podnet-svc svc4-web") for line in gone[:-1])


def test_the_services_op_reads_the_counters_not_the_whole_table():
    from podnet.agent.services_service import ServicesService

    web = svc_port("default/web:80", "web", "10.244.0.2")
    nft = FakeNft({("inet", "podnet-svc"): {"nftables": [
        {"table": {"family": "inet", "name": "podnet-svc"}},
        {"rule": {"chain": "svc4-web", "comment": "default/web:80 -> 10.244.0.2:8080", "expr": [{"counter": "hits-web"}]}},
        named_counter("hits-web", "default/web:80", 7, 420)]}})
    svc = ServicesService(SimpleNamespace(node_options=None), nft)  # type: ignore[arg-type]
    svc.table.replace(NodePlan((), (), (web,)), 1, Counter())
    reply = svc.ops()["services.counters"]({}, [])
    assert reply["services"] == [{"service": "default/web", "endpoints": 1, "packets": 7, "bytes": 420}]
    assert nft.list_calls == []  # `nft list counters`, never the whole table
