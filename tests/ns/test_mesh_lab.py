"""The service mesh in a real lab (agent/mesh_service.py, HAProxy sidecars): two nodes,
namespace `shop` meshed with `podnet mesh enable`, namespace `plain` not.

Shown, each with real requests from inside a pod's namespace (through its sidecar):
sidecars come up for the meshed pods only; a 90/10 canary over 1000 requests, then
shifted to 50/50 under load without a failed request and without a reload; header
routing; retries hiding a 50% failing backend; a timeout firing (504); 429 above a
rate limit; the sidecar surviving its app's restart and its agent's (adopted by the next one); a meshed pod reaching an
unmeshed service; strict mTLS refusing a pod without a certificate; authorization by
identity (403 naming the policy); NetworkPolicy still deciding at L3/L4.

One lab for the module (namespaces pn-lab-ms<hex>-*), torn down by name, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cniharness import podnet_cli, topology_lab, wait_until
from podnet.lab import apps
from podnet.lab.state import NETNS_DIR, lab_dir
from podnet.lab.supervisor_client import spawn_supervised
from podnet.procs import owner_alive

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not shutil.which("haproxy") and not Path("/usr/sbin/haproxy").exists(),
                                 reason="haproxy is not installed (make deps installs it)")]

HTTP = [{"port": 80, "protocol": "TCP", "name": "http"}]
TOPOLOGY = {
    "nodes": [{"name": "node0"}, {"name": "node1"}],
    "namespaces": [{"name": "shop"}, {"name": "plain"}],
    "pods": [
        {"name": "web-v1-a", "namespace": "shop", "node": "node0", "labels": {"app": "web", "version": "v1"},
         "ports": HTTP, "ownApp": True},
        {"name": "web-v1-b", "namespace": "shop", "node": "node1", "labels": {"app": "web", "version": "v1"},
         "ports": HTTP, "ownApp": True},
        {"name": "web-v2-a", "namespace": "shop", "node": "node1", "labels": {"app": "web", "version": "v2"},
         "ports": HTTP, "ownApp": True},
        {"name": "client", "namespace": "shop", "node": "node0", "labels": {"app": "client"}, "ports": HTTP,
         "ownApp": True},
        {"name": "intruder", "namespace": "shop", "node": "node1", "labels": {"app": "intruder"}, "ports": HTTP,
         "ownApp": True},
        {"name": "other", "namespace": "plain", "node": "node1", "labels": {"app": "other"}, "ports": HTTP,
         "ownApp": True},
    ],
    "services": [
        {"metadata": {"name": name, "namespace": ns},
         "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
        for name, ns, selector in (("web", "shop", {"app": "web"}),
                                   ("web-v1", "shop", {"app": "web", "version": "v1"}),
                                   ("web-v2", "shop", {"app": "web", "version": "v2"}),
                                   ("other", "plain", {"app": "other"}))
    ],
}

# N requests on one keep-alive connection (HAProxy routes each request on its own)
LOAD = r"""
import http.client, json, sys, time
host, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
headers = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
seen, conn = [], None
for i in range(n):
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, 80, timeout=5)
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        seen.append([r.status, r.getheader("x-version") or "", body.strip()[:120]])
        if r.getheader("connection", "").lower() == "close":
            conn.close(); conn = None
    except Exception as exc:
        seen.append([0, "", repr(exc)[:120]]); conn = None
print(json.dumps(seen))
"""


# N requests at once, each on its own connection (threads started together)
PARALLEL = r"""
import http.client, json, sys, threading
host, n, out = sys.argv[1], int(sys.argv[2]), []
def one():
    try:
        c = http.client.HTTPConnection(host, 80, timeout=10); c.request("GET", "/"); r = c.getresponse(); r.read()
        out.append(r.status)
    except Exception:
        out.append(0)
threads = [threading.Thread(target=one) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


class Lab:
    def __init__(self, state: dict, workdir: Path) -> None:
        self.state, self.name, self.workdir = state, state["name"], workdir

    def netns(self, pod: str) -> str:
        return str(NETNS_DIR / self.state["pods"][pod]["netns"])

    def load(self, pod: str, host: str, n: int, path: str = "/", headers: dict | None = None) -> list:
        out = subprocess.run(["nsenter", f"--net={self.netns(pod)}", sys.executable, "-c", LOAD, host, path, str(n),
                              json.dumps(headers or {})], capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout)

    def cluster_ip(self, ns: str, name: str) -> str:
        out = podnet_cli("get", "svc", "-n", ns, "-o", "json", "--lab", self.name).stdout
        items = json.loads(out)
        items = items.get("items", items) if isinstance(items, dict) else items
        return next(i["spec"]["clusterIP"] for i in items if i["metadata"]["name"] == name)

    def apply(self, *docs: dict) -> None:
        path = self.workdir / "apply.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        podnet_cli("apply", "-f", str(path), "--lab", self.name)

    def delete(self, *docs: dict) -> None:
        path = self.workdir / "delete.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        podnet_cli("delete", "-f", str(path), "--lab", self.name)

    def status(self) -> dict:
        out = podnet_cli("mesh", "status", "--lab", self.name, "-o", "json", check=False).stdout
        return json.loads(out)

    def sidecars(self) -> dict[str, dict]:
        return {p["pod"]: p for node in self.status()["nodes"] for p in node.get("pods", [])}

    def routes_in_force(self, route: str) -> bool:
        return all(route in " ".join(p["routes"]) for p in self.sidecars().values() if p["pod"] == "shop/client")


def traffic_policy(service: str, spec: dict) -> dict:
    """A MeshTrafficPolicy named after the shop service it targets."""
    return {"apiVersion": "mesh.podnet.io/v1", "kind": "MeshTrafficPolicy",
            "metadata": {"name": service, "namespace": "shop"},
            "spec": {"targetRef": {"kind": "Service", "name": service}, **spec}}


def route(name: str, rules: list[dict]) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"parentRefs": [{"kind": "Service", "name": "web", "port": 80}], "rules": rules}}


def split(v1: int, v2: int) -> dict:
    return route("web-split", [{"backendRefs": [{"name": "web-v1", "port": 80, "weight": v1},
                                               {"name": "web-v2", "port": 80, "weight": v2}]}])


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("mesh")
    # certificates of 9 s: every sidecar rotates (at 6 s) again and again under the tests' load
    with topology_lab("ms", TOPOLOGY, work, "--no-cluster-dns", "--mesh-cert-lifetime", "9") as state:
        built = Lab(state, work)
        podnet_cli("mesh", "enable", "shop", "--lab", built.name)
        wait_until(lambda: {p for p, s in built.sidecars().items() if s["alive"]} >=
                   {"shop/web-v1-a", "shop/web-v1-b", "shop/web-v2-a", "shop/client", "shop/intruder"},
                   "every shop pod's sidecar", timeout=30)
        yield built
    assert f"pn-lab-{state['name']}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                             text=True, check=True).stdout


def test_only_the_meshed_namespace_gets_sidecars_and_interception(lab: Lab) -> None:
    cars = lab.sidecars()
    assert "plain/other" not in cars
    assert all(car["identity"] and car["identity"].startswith("spiffe://cluster.local/ns/shop/sa/")
               for car in cars.values())
    tables = subprocess.run(["nsenter", f"--net={lab.netns('plain/other')}", "nft", "list", "tables"],
                            capture_output=True, text=True, check=True).stdout
    assert "podnet-mesh" not in tables
    assert "podnet-mesh" in subprocess.run(["nsenter", f"--net={lab.netns('shop/client')}", "nft", "list",
                                            "tables"], capture_output=True, text=True, check=True).stdout


def test_a_meshed_pod_reaches_an_unmeshed_service(lab: Lab) -> None:
    seen = lab.load("shop/client", lab.cluster_ip("plain", "other"), 5)
    assert [s[0] for s in seen] == [200] * 5 and all(s[2].startswith("other ") for s in seen)


def test_canary_90_10_then_50_50_under_load_without_a_failure_or_a_reload(lab: Lab) -> None:
    web = lab.cluster_ip("shop", "web")
    lab.apply(split(90, 10))
    wait_until(lambda: lab.routes_in_force("shop/web-split#0"), "the split in the client's sidecar", timeout=20)
    seen = lab.load("shop/client", web, 1000)
    counts = Counter(s[1] for s in seen if s[0] == 200)
    assert sum(counts.values()) == 1000, Counter(s[0] for s in seen)
    assert 50 <= counts["v2"] <= 150, counts  # 10% +- 5 points
    reloads = lab.sidecars()["shop/client"]["reloads"]
    during: list = []
    runner = threading.Thread(target=lambda: during.extend(lab.load("shop/client", web, 1500)))
    runner.start()
    lab.apply(split(50, 50))
    runner.join()
    assert all(s[0] == 200 for s in during), Counter(s[0] for s in during)
    after = Counter(s[1] for s in lab.load("shop/client", web, 400))
    assert 150 <= after["v2"] <= 250, after
    car = lab.sidecars()["shop/client"]
    assert car["reloads"] == reloads and car["weight_updates"] >= 1
    lab.delete(split(50, 50))


def test_header_routing(lab: Lab) -> None:
    web = lab.cluster_ip("shop", "web")
    header = route("web-header", [
        {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
         "backendRefs": [{"name": "web-v2", "port": 80}]},
        {"backendRefs": [{"name": "web-v1", "port": 80}]}])
    lab.apply(header)
    wait_until(lambda: lab.routes_in_force("shop/web-header#1"), "the header route", timeout=20)
    seen = lab.load("shop/client", web, 30, headers={"x-canary": "yes"})
    assert {s[1] for s in seen} == {"v2"}, seen
    assert {s[1] for s in lab.load("shop/client", web, 30)} == {"v1"}
    lab.delete(header)


def test_retries_hide_a_half_failing_backend_and_a_timeout_fires(lab: Lab) -> None:
    v1 = lab.cluster_ip("shop", "web-v1")
    policy = traffic_policy("web-v1", {"retries": {"attempts": 3, "retryOn": ["5xx"]}, "timeout": "300ms"})
    for pod in ("shop/web-v1-a", "shop/web-v1-b"):
        apps.control(lab.name, pod, {"fail_percent": 50, "fail_status": 503})
    try:
        without = Counter(s[0] for s in lab.load("shop/client", v1, 100))
        assert 30 <= without[503] <= 70, without  # the failure is real
        lab.apply(policy)
        wait_until(lambda: "retries 3" in _config(lab, "shop/client"), "the retry policy", timeout=20)
        reloads = {pod: car["reloads"] for pod, car in lab.sidecars().items()}
        seen = lab.load("shop/client", v1, 200)
        hidden = Counter(s[0] for s in seen)
        assert hidden == {200: 200}, (hidden, [s[2] for s in seen if s[0] != 200][:3], "sidecar reloads meanwhile:",
                                      {pod: car["reloads"] - reloads.get(pod, 0) for pod, car in lab.sidecars().items()
                                       if car["reloads"] != reloads.get(pod, 0)})
        for pod in ("shop/web-v1-a", "shop/web-v1-b"):
            apps.control(lab.name, pod, {"delay_ms": 1000})
        slow = Counter(s[0] for s in lab.load("shop/client", v1, 3))
        assert slow == {504: 3}, slow
    finally:
        for pod in ("shop/web-v1-a", "shop/web-v1-b"):
            apps.control(lab.name, pod, {})
        lab.delete(policy)


def test_rate_limit_answers_429(lab: Lab) -> None:
    v2 = lab.cluster_ip("shop", "web-v2")
    policy = traffic_policy("web-v2", {"rateLimit": {"requestsPerSecond": 5}})
    lab.apply(policy)
    try:
        wait_until(lambda: "rl_80" in _config(lab, "shop/web-v2-a"), "the rate limit", timeout=20)
        statuses = Counter(s[0] for s in lab.load("shop/client", v2, 40))
        assert statuses[429] >= 20 and statuses[200] >= 5, statuses
    finally:
        lab.delete(policy)


def test_the_sidecar_survives_its_apps_restart(lab: Lab) -> None:
    before = lab.sidecars()["shop/web-v2-a"]["pid"]
    apps.restart(lab.name, "shop/web-v2-a")
    seen = lab.load("shop/client", lab.cluster_ip("shop", "web-v2"), 5)
    assert [s[0] for s in seen] == [200] * 5
    assert lab.sidecars()["shop/web-v2-a"]["pid"] == before


def _config(lab: Lab, pod: str) -> str:
    node = lab.state["pods"][pod]["node"]
    ns, name = pod.split("/")
    return (Path(lab.state["nodes"][node]["state_dir"]) / "mesh" / f"{ns}_{name}" / "applied.cfg").read_text()


def test_golden_signals_and_one_request_id_across_two_hops(lab: Lab) -> None:
    v2 = lab.cluster_ip("shop", "web-v2")
    hop = lab.load("shop/client", lab.cluster_ip("shop", "web-v1"), 1, path=f"/call?url=http://{v2}/",
                   headers={"x-request-id": "follow-me-42"})
    assert hop[0][0] == 200 and "[follow-me-42] web-v2-a v2" in hop[0][2], hop  # client -> web-v1 -> web-v2
    lab.load("shop/client", v2, 50)
    out = podnet_cli("mesh", "top", "--lab", lab.name, "-o", "json", check=False).stdout
    rows = [r for r in json.loads(out)["routes"] if r["service"] == "shop/web-v2:80" and r["direction"] == "outbound"]
    assert rows and rows[0]["requests"] >= 50, out
    assert 0 < rows[0]["p50_ms"] <= rows[0]["p90_ms"] <= rows[0]["p99_ms"], rows[0]


def test_authorization_by_identity_answers_403_naming_the_policy(lab: Lab) -> None:
    v2 = lab.cluster_ip("shop", "web-v2")
    policy = {"apiVersion": "mesh.podnet.io/v1", "kind": "MeshAuthorizationPolicy",
              "metadata": {"name": "only-client", "namespace": "shop"},
              "spec": {"targetRef": {"kind": "Service", "name": "web-v2"}, "action": "ALLOW",
                       "from": [{"serviceAccount": "client", "namespace": "shop"}]}}
    lab.apply(policy)
    try:
        wait_until(lambda: "only-client" in _config(lab, "shop/web-v2-a"), "the authorization policy", timeout=20)
        assert {s[0] for s in lab.load("shop/client", v2, 10)} == {200}
        denied = lab.load("shop/intruder", v2, 3)
        assert {s[0] for s in denied} == {403}, denied
        assert "denied by MeshAuthorizationPolicy shop/only-client: intruder.shop may not call shop/web-v2" \
            in denied[0][2], denied
        listed = wait_until(lambda: [r for r in json.loads(podnet_cli(
            "flows", "--mesh", "denied", "--lab", lab.name, "-o", "json").stdout)
            if r["peer"] == "intruder.shop" and r["status"] == 403], "the denials in podnet flows --mesh", timeout=10)
        assert listed[0]["pod"] == "shop/web-v2-a" and listed[0]["request_id"], listed[0]
    finally:
        lab.delete(policy)


def test_strict_mtls_refuses_a_pod_without_a_certificate(lab: Lab) -> None:
    target = lab.state["pods"]["shop/web-v1-a"]["ips"][0].split("/")[0]
    strict = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "default", "namespace": "shop"}, "spec": {"mtls": {"mode": "STRICT"}}}
    assert {s[0] for s in lab.load("plain/other", target, 3)} == {200}  # permissive: plain text passes
    lab.apply(strict)
    try:
        wait_until(lambda: "bind :15006 ssl" in _config(lab, "shop/web-v1-a"), "strict mTLS",
                   timeout=20)
        refused = lab.load("plain/other", target, 3)
        assert {s[0] for s in refused} == {0}, refused  # the connection is closed: no certificate, no entry
        assert {s[0] for s in lab.load("shop/client", lab.cluster_ip("shop", "web-v1"), 10)} == {200}
    finally:
        lab.delete(strict)


def test_network_policy_still_decides_at_l3_l4(lab: Lab) -> None:
    v2 = lab.cluster_ip("shop", "web-v2")
    deny = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "v2-from-intruder-only", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"version": "v2"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "intruder"}}}]}]}}
    lab.apply(deny)
    try:
        blocked = wait_until(lambda: all(s[0] in (0, 503) for s in lab.load("shop/client", v2, 3)),
                             "the NetworkPolicy to block the client", timeout=20)
        assert blocked
        assert {s[0] for s in lab.load("shop/intruder", v2, 3)} == {200}
    finally:
        lab.delete(deny)


def test_a_retry_budget_stops_retrying_a_failing_backend(lab: Lab) -> None:
    v1 = lab.cluster_ip("shop", "web-v1")
    policy = traffic_policy("web-v1", {"retries": {"attempts": 3, "retryOn": ["5xx"], "budgetPercent": 10}})
    for pod in ("shop/web-v1-a", "shop/web-v1-b"):
        apps.control(lab.name, pod, {"fail_percent": 50, "fail_status": 503})
    lab.apply(policy)
    try:
        wait_until(lambda: "disable-l7-retry" in _config(lab, "shop/client"), "the retry budget", timeout=20)
        batches = []
        for _ in range(8):  # ~4 s: the agent reads the budget from the access log about once a second
            batches.append(Counter(s[0] for s in lab.load("shop/client", v1, 40)))
            time.sleep(0.5)
        late = sum((b for b in batches[4:]), Counter())
        assert late[503] >= 0.15 * sum(late.values()), batches  # retries off: the failures show
        history = " ".join(lab.sidecars()["shop/client"]["history"])
        assert "retry budget of be_" in history and "exhausted" in history, history
    finally:
        for pod in ("shop/web-v1-a", "shop/web-v1-b"):
            apps.control(lab.name, pod, {})
        lab.delete(policy)


def test_certificates_rotate_under_load_without_a_failed_request(lab: Lab) -> None:
    before = lab.sidecars()
    seen: list = []
    deadline = time.monotonic() + 8  # more than one renewal period (6 s) of every sidecar
    while time.monotonic() < deadline:
        seen += lab.load("shop/client", lab.cluster_ip("shop", "web-v1"), 50)
    assert Counter(s[0] for s in seen) == {200: len(seen)}, Counter(s[0] for s in seen)
    after = lab.sidecars()
    for ref in ("shop/client", "shop/web-v1-a", "shop/web-v1-b"):
        assert after[ref]["rotations"] > before[ref]["rotations"], (ref, before[ref], after[ref])
        assert after[ref]["reloads"] == before[ref]["reloads"], (ref, after[ref]["history"])  # no reload


def test_a_failing_endpoint_is_ejected_and_returns(lab: Lab) -> None:
    v1 = lab.cluster_ip("shop", "web-v1")
    policy = traffic_policy("web-v1", {"outlierDetection": {"consecutive5xxErrors": 2, "interval": "500ms"}})
    lab.apply(policy)
    try:
        wait_until(lambda: "on-error mark-down" in _config(lab, "shop/client"), "outlier detection", timeout=20)
        apps.control(lab.name, "shop/web-v1-a", {"fail_percent": 100, "fail_status": 500})
        lab.load("shop/client", v1, 20)  # web-v1-a fails twice in a row: ejected
        ejected = Counter(s[2].split()[0] for s in lab.load("shop/client", v1, 30))
        assert ejected == {"web-v1-b": 30}, ejected
        apps.control(lab.name, "shop/web-v1-a", {})
        back = wait_until(lambda: "web-v1-a" in {s[2].split()[0] for s in lab.load("shop/client", v1, 10)},
                          "web-v1-a back after its health check passes", timeout=15)
        assert back
    finally:
        apps.control(lab.name, "shop/web-v1-a", {})
        lab.delete(policy)


def test_fault_injection_aborts_and_delays(lab: Lab) -> None:
    v2 = lab.cluster_ip("shop", "web-v2")
    policy = traffic_policy("web-v2", {"fault": {"abort": {"percent": 50, "httpStatus": 502},
                                                 "delay": {"percent": 100, "fixedDelay": "200ms"}}})
    lab.apply(policy)
    try:
        wait_until(lambda: "podnet_delay" in _config(lab, "shop/client"), "the fault", timeout=20)
        started = time.monotonic()
        seen = Counter(s[0] for s in lab.load("shop/client", v2, 40))
        took = time.monotonic() - started
        assert 8 <= seen[502] <= 32 and seen[200] + seen[502] == 40, seen  # 50% +- 30 points of 40
        assert took >= seen[200] * 0.2, (took, seen)  # every request that was not aborted waited 200 ms
    finally:
        lab.delete(policy)


def test_circuit_breaking_refuses_what_the_endpoint_cannot_take(lab: Lab) -> None:
    v2 = lab.cluster_ip("shop", "web-v2")  # one endpoint: web-v2-a
    policy = traffic_policy("web-v2", {"circuitBreaker": {"maxConnections": 1, "maxPendingRequests": 1}})
    apps.control(lab.name, "shop/web-v2-a", {"delay_ms": 500})
    lab.apply(policy)
    try:
        wait_until(lambda: "maxconn 1 maxqueue 1" in _config(lab, "shop/client"), "the circuit breaker", timeout=20)
        out = subprocess.run(["nsenter", f"--net={lab.netns('shop/client')}", sys.executable, "-c", PARALLEL, v2, "6"],
                             capture_output=True, text=True, timeout=60, check=True)
        statuses = Counter(json.loads(out.stdout))
        assert statuses[200] >= 1 and statuses[503] >= 2, statuses  # one served, one queued, the rest refused
    finally:
        apps.control(lab.name, "shop/web-v2-a", {})
        lab.delete(policy)


def test_sidecars_outlive_an_agent_restart_and_are_adopted(lab: Lab) -> None:
    """Last in the module: node0's agent is stopped (SIGTERM, as an upgrade stops it)
    and a new one started by the lab's supervisor with the same argv."""
    web = lab.cluster_ip("shop", "web")
    pids = {ref: car["pid"] for ref, car in lab.sidecars().items()}
    entry = json.loads((lab_dir(lab.name) / "procs.json").read_text())["agent/node0"]
    done, during = threading.Event(), []

    def keep_calling() -> None:
        while not done.is_set():
            during.extend(lab.load("shop/client", web, 20))

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        os.kill(entry["pid"], signal.SIGTERM)
        wait_until(lambda: not owner_alive(entry["owner"]), "node0's agent to end", timeout=30)
        ended = len(during)
        time.sleep(1.0)
        served_alone = len(during) - ended  # answered while no agent ran on node0
        spawn_supervised(lab_dir(lab.name), "agent/node0-again", entry["argv"],
                         lab_dir(lab.name) / "logs" / "agent_node0.again.log")
        node0s = ("shop/client", "shop/web-v1-a")  # listed by node0's agent once it answers again

        def adopted() -> bool:
            cars = lab.sidecars()
            return all(ref in cars and "adopted" in " ".join(cars[ref]["history"]) for ref in node0s)

        wait_until(adopted, "node0's sidecars adopted", timeout=30)
    finally:
        done.set()
        caller.join()
    assert served_alone > 0 and during and all(s[0] == 200 for s in during), Counter(s[0] for s in during)
    cars = lab.sidecars()
    assert {ref: car["pid"] for ref, car in cars.items()} == pids  # the same processes, none started twice
    assert cars["shop/client"]["restarts"] == 0 and cars["shop/client"]["reloads"] == 0
    # the new agent drives them: a fresh certificate through the runtime API, a new route by a reload
    wait_until(lambda: lab.sidecars()["shop/client"]["rotations"] >= 1, "a certificate from the new agent", timeout=20)
    lab.apply(split(0, 100))
    try:
        wait_until(lambda: lab.routes_in_force("shop/web-split#0"), "the split in the adopted sidecar", timeout=20)
        assert {s[1] for s in lab.load("shop/client", web, 20)} == {"v2"}
        rows = wait_until(lambda: [r for r in json.loads(podnet_cli("mesh", "top", "--lab", lab.name, "-o", "json",
                                                                    check=False).stdout)["routes"]
                                   if r["route"] == "shop/web-split#0"], "the new agent's golden signals", timeout=10)
        assert rows[0]["requests"] >= 20, rows
    finally:
        lab.delete(split(0, 100))
