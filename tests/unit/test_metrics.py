"""The agent's metrics registry (agent/metrics.py), read back with prometheus_client's
own parser: what the CNI path, the IPAM gauge and a fabric pass record."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from podnet import keys
from podnet.agent.metrics import AgentMetrics, error_code, parse_addr, peer_verdict
from podnet.errors import StoreError


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


def test_a_failing_nft_drops_the_policy_counters_not_the_scrape():
    def broken() -> dict:
        raise StoreError("nft: cannot list table")

    metrics = AgentMetrics()
    metrics.watch_policy(broken)
    text = metrics.render()
    assert "podnet_policy_rule_packets" not in text and "podnet_cni_request_duration_seconds" in text
