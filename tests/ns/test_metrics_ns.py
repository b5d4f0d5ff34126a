"""A real agent's metrics: CNI requests move the histogram and the error counter, the
IPAM gauge follows the store, `podnet metrics` prints what prometheus_client parses,
and `--metrics-addr` serves the same families over HTTP (inside the agent's namespace,
on its own loopback, so any port is free there). In a lab: fabric peers and drift
repairs, policy rule counters, service endpoints and NAT hits, store latency."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_fabric_cluster import eventually

from cniharness import Cni, bridge_config, podnet_cli, topology_lab
from podnet.lab.sandbox import wait_for_path

pytestmark = pytest.mark.root

METRICS_ADDR = "127.0.0.1:9464"  # the agent's namespace is new: nothing else listens there


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(socket_path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse(podnet_cli("metrics", "--socket", socket_path).stdout)


def add_count(got: dict) -> float:
    return got.get(("podnet_cni_request_duration_seconds_count", (("command", "ADD"),)), 0)


@pytest.fixture
def metered(sandbox, host_ns, socket_path, data_dir):
    """An agent with --metrics-addr whose own store is the network's (so the IPAM
    gauge sees the network's reservations)."""
    argv = [sys.executable, "-m", "podnet.cli", "agent", "--socket", socket_path, "--store",
            f"{data_dir}/podnet.db", "--init", "--metrics-addr", METRICS_ADDR]
    proc = sandbox.spawn(host_ns, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_path(socket_path, timeout=20, proc=proc)
    return proc


def test_cni_requests_move_the_metrics(metered, sandbox, host_ns, cni_bin, data_dir, socket_path):
    cni = Cni(cni_bin, host_ns, bridge_config("t-net", data_dir, agentSocket=socket_path), sandbox)
    before = scrape(socket_path)
    assert add_count(before) == 0
    c1 = sandbox.netns("c1")
    cni.add(c1, "c1")
    failed = cni.call("ADD", sandbox.netns("c2"), "c2", ifname="x" * 16)  # longer than 15 bytes
    assert not failed.ok and failed.output["code"] == 4
    after = scrape(socket_path)
    assert add_count(after) == 2
    assert after[("podnet_cni_errors_total", (("code", "4"), ("command", "ADD")))] == 1
    assert ("podnet_cni_errors_total", (("code", "4"), ("command", "DEL"))) not in after
    assert after[("podnet_ipam_addresses_reserved", (("network", "t-net"),))] == 1
    cni.delete(c1, "c1")
    final = scrape(socket_path)
    assert final[("podnet_cni_request_duration_seconds_count", (("command", "DEL"),))] == 1
    assert final.get(("podnet_ipam_addresses_reserved", (("network", "t-net"),)), 0) == 0


def test_metrics_addr_serves_the_same_families_over_http(metered, sandbox, host_ns, socket_path):
    get = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
           f"'http://{METRICS_ADDR}/metrics', timeout=10).read().decode())")
    http = sandbox.exec(host_ns, [sys.executable, "-c", get]).stdout
    over_http = {f.name for f in text_string_to_metric_families(http)}
    over_socket = {f.name for f in text_string_to_metric_families(podnet_cli("metrics", "--socket",
                                                                             socket_path).stdout)}
    assert {"podnet_cni_request_duration_seconds", "podnet_cni_errors", "podnet_fabric_converge_duration_seconds"} \
        <= over_http
    assert over_http == over_socket


def test_an_address_it_cannot_listen_on_exits_2(sandbox, host_ns, socket_path, tmp_path):
    argv = [sys.executable, "-m", "podnet.cli", "agent", "--socket", socket_path, "--store",
            str(tmp_path / "agent.db"), "--init", "--metrics-addr", "192.0.2.1:9464"]  # not an address here
    proc = sandbox.exec(host_ns, argv, check=False, timeout=60)
    assert proc.returncode == 2
    assert "--metrics-addr 192.0.2.1:9464: cannot listen there" in proc.stdout + proc.stderr


# -- a lab: every node's agent through `podnet metrics`, fabric peers and drift repairs

TOPOLOGY = {"nodes": [{"name": "node0"}, {"name": "node1"}],
            "pods": [{"name": "a", "node": "node0"},
                     {"name": "b", "node": "node1", "labels": {"pod": "b", "app": "web"},
                      "ports": [{"port": 80, "protocol": "TCP", "name": "http"}]}],
            "services": [{"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "http", "port": 8080, "targetPort": "http"}]}}]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    """Two host-gw nodes with a pod each, shared by the lab tests."""
    with topology_lab("tm", TOPOLOGY, tmp_path_factory.mktemp("metrics"), "--fabric", "host-gw",
                      "--no-cluster-dns") as built:
        yield built


def blocks(text: str) -> dict[str, str]:
    """`podnet metrics --lab` output -> node -> its text (split at `# node NAME`)."""
    out: dict[str, str] = {}
    node = None
    for line in text.splitlines(keepends=True):
        if line.startswith("# node "):
            node = line.removeprefix("# node ").strip()
            out[node] = ""
        elif node is not None:
            out[node] += line
    return out


def test_every_lab_node_is_read_and_sees_its_peer(lab):
    every = blocks(podnet_cli("metrics", "--lab", lab["name"]).stdout)
    assert sorted(every) == sorted(lab["nodes"])
    for node, text in every.items():
        got = parse(text)
        assert got[("podnet_fabric_peers", (("state", "ok"),))] == 1, node
        assert got[("podnet_fabric_peers", (("state", "refused"),))] == 0, node
        assert got[("podnet_fabric_converge_duration_seconds_count", (("pass", "repair"),))] >= 1, node
        assert got[("podnet_ipam_addresses_reserved", (("network", "cluster"),))] >= len(lab["nodes"]), node
    node = sorted(lab["nodes"])[0]
    one = podnet_cli("metrics", node, "--lab", lab["name"]).stdout
    assert "# node" not in one and parse(one)[("podnet_fabric_peers", (("state", "ok"),))] == 1
    wrong = podnet_cli("metrics", "nosuchnode", "--lab", lab["name"], check=False)
    assert wrong.returncode == 2 and "no node 'nosuchnode' in the lab" in wrong.stderr


def test_a_deleted_route_is_counted_as_a_drift_repair(lab):
    node, peer = sorted(lab["nodes"])
    info = lab["nodes"][node]
    key = ("podnet_fabric_drift_repairs_total", (("action", "added"), ("kind", "route")))
    before = parse(podnet_cli("metrics", node, "--lab", lab["name"]).stdout).get(key, 0)
    routes = subprocess.run(["ip", "-n", info["netns"], "-j", "route", "show", "proto", "77"], capture_output=True,
                            text=True, check=True, timeout=10).stdout
    peer_route = next(r["dst"] for r in json.loads(routes) if r.get("gateway") == lab["nodes"][peer]["underlay"])
    subprocess.run(["ip", "-n", info["netns"], "route", "del", peer_route], check=True, timeout=10)
    deadline = time.monotonic() + 30  # the repair pass runs every 3 s
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.5)
        after = parse(podnet_cli("metrics", node, "--lab", lab["name"]).stdout).get(key, 0)
    assert after == before + 1


DENY_B = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: default}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
"""
CONNECT = """
import socket, sys
s = socket.socket(); s.settimeout(1.0)
try:
    s.connect((sys.argv[1], 80)); print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


def test_policy_verdicts_are_counted_by_rule(lab, tmp_path):
    """A denied connection moves the denying rule's packet counter on the node that judged it."""
    pods = lab["pods"]
    target = pods["default/b"]
    path = tmp_path / "deny.yaml"
    path.write_text(DENY_B)
    podnet_cli("apply", "--lab", lab["name"], "-f", str(path))
    try:
        def denied() -> bool:
            out = subprocess.run(["ip", "netns", "exec", pods["default/a"]["netns"], sys.executable, "-c", CONNECT,
                                  target["ips"][0].split("/")[0]], capture_output=True, text=True, timeout=10).stdout
            return out.strip() == "TimeoutError"

        assert eventually(denied, 10)
        got = parse(podnet_cli("metrics", target["node"], "--lab", lab["name"]).stdout)
        counted = {labels: value for (name, labels), value in got.items() if name == "podnet_policy_rule_packets_total"}
        assert any("deny-b" in dict(labels)["rule"] and value > 0 for labels, value in counted.items()), counted
    finally:
        podnet_cli("delete", "--lab", lab["name"], "-f", str(path))


# -- services: ready endpoints and NAT hits; the store's latency

CONNECTS = """
import socket, sys
ok = 0
for _ in range(int(sys.argv[3])):
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3):
        ok += 1
print(ok)
"""
EXTRA = """
apiVersion: v1
kind: Service
metadata: {name: extra, namespace: default}
spec:
  selector: {pod: b}
  ports: [{port: 81, targetPort: 80}]
"""


def node_metrics(lab: dict, node: str) -> dict:
    return parse(podnet_cli("metrics", node, "--lab", lab["name"]).stdout)


def labelled(got: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (sample, labels), value in got.items() if sample == name}


def test_service_endpoints_follow_the_ready_pods_and_nat_hits_the_connections(lab, tmp_path):
    pods = lab["pods"]
    ready = sum(1 for pod in pods.values() if pod["labels"].get("app") == "web")  # no probe: ready at once
    client_node, server_node = pods["default/a"]["node"], pods["default/b"]["node"]
    assert client_node != server_node
    assert eventually(lambda: all(labelled(node_metrics(lab, n), "podnet_service_endpoints", "service")
                                  .get("default/web") == ready for n in lab["nodes"]), 20)
    svcs = json.loads(podnet_cli("get", "--lab", lab["name"], "svc", "-o", "json").stdout)
    cluster_ip = next(d["spec"]["clusterIP"] for d in svcs if d["metadata"]["name"] == "web")
    hits = "podnet_service_nat_packets_total"
    before = {n: labelled(node_metrics(lab, n), hits, "service").get("default/web", 0) for n in lab["nodes"]}
    made = subprocess.run(["ip", "netns", "exec", pods["default/a"]["netns"], sys.executable, "-c", CONNECTS,
                           cluster_ip, "8080", "5"], capture_output=True, text=True, timeout=30, check=True)
    assert made.stdout.strip() == "5"
    client, server = node_metrics(lab, client_node), node_metrics(lab, server_node)
    # the client's node DNATs each new connection once (its first packet); the backend's
    # node sees them already DNATed
    assert labelled(client, hits, "service")["default/web"] >= before[client_node] + 5
    assert labelled(client, "podnet_service_nat_bytes_total", "service")["default/web"] > 0
    assert labelled(server, hits, "service")["default/web"] == before[server_node]
    # a Service applied now appears with its endpoints, and goes with it
    path = tmp_path / "extra.yaml"
    path.write_text(EXTRA)
    podnet_cli("apply", "--lab", lab["name"], "-f", str(path))
    try:
        assert eventually(lambda: labelled(node_metrics(lab, client_node), "podnet_service_endpoints", "service")
                          .get("default/extra") == 1, 20)
    finally:
        podnet_cli("delete", "--lab", lab["name"], "-f", str(path))
    assert eventually(lambda: "default/extra" not in labelled(node_metrics(lab, client_node),
                                                              "podnet_service_endpoints", "service"), 20)


def test_store_calls_are_timed_per_op(lab, tmp_path):
    node = sorted(lab["nodes"])[0]
    count = "podnet_store_request_duration_seconds_count"
    first = labelled(node_metrics(lab, node), count, "op")
    assert first["watch"] >= 1  # the services' and policy's long polls, under their own label
    path = tmp_path / "timed.yaml"
    path.write_text(EXTRA.replace("extra", "timed"))
    podnet_cli("apply", "--lab", lab["name"], "-f", str(path))
    try:
        def grew() -> bool:
            now = labelled(node_metrics(lab, node), count, "op")
            return sum(v for op, v in now.items() if op != "watch") > sum(v for op, v in first.items() if op != "watch")

        assert eventually(grew, 20)
    finally:
        podnet_cli("delete", "--lab", lab["name"], "-f", str(path))
    errors = labelled(node_metrics(lab, node), "podnet_store_errors_total", "op")
    assert sum(errors.values()) == 0, errors  # a healthy lab: no store call failed
