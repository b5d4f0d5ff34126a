"""Services in a lab, on the real kernel: ClusterIP and NodePort from pods on every node
and from the outside world, the spread over backends, ClientIP affinity and its
timeout, readiness taking a backend out cluster-wide and back, `Local` keeping the
client's address, an empty service refusing at once, UDP after a backend change, and
cluster DNS (names, SRV, headless following readiness, DNS under egress policy).

One lab for the whole module (2 nodes, 3 backends, 2 clients), torn down by name.
"""

from __future__ import annotations

import collections
import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_fabric_cluster import eventually

from cniharness import podnet_cli as podnet
from podnet.lab.state import state_file
from podnet.observe import probe as probe_module

pytestmark = pytest.mark.root

WEB_PORTS = [{"port": 80, "protocol": "TCP", "name": "http"}, {"port": 80, "protocol": "UDP", "name": "echo"}]
PROBE = {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "failureThreshold": 1}
TOPOLOGY = {
    "nodes": [{"name": "node0"}, {"name": "node1"}],
    "pods": [
        {"name": "web-0", "node": "node0", "labels": {"app": "web"}, "ports": WEB_PORTS, "readinessProbe": PROBE},
        {"name": "web-1", "node": "node1", "labels": {"app": "web"}, "ports": WEB_PORTS, "readinessProbe": PROBE},
        {"name": "web-2", "node": "node1", "labels": {"app": "web"}, "ports": WEB_PORTS, "readinessProbe": PROBE},
        {"name": "cl-0", "node": "node0", "labels": {"app": "client"}},
        {"name": "cl-1", "node": "node1", "labels": {"app": "client"}},
    ],
    "services": [
        {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 8080, "targetPort": "http"},
            {"name": "echo", "port": 5353, "protocol": "UDP", "targetPort": "echo"}]}},
        {"metadata": {"name": "web-np"}, "spec": {"type": "NodePort", "selector": {"app": "web"},
                                                  "ports": [{"port": 80, "targetPort": "http", "nodePort": 30080}]}},
        {"metadata": {"name": "web-local"}, "spec": {
            "type": "NodePort", "externalTrafficPolicy": "Local", "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": "http", "nodePort": 30081}]}},
        {"metadata": {"name": "sticky"}, "spec": {
            "selector": {"app": "web"}, "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 2}}, "ports": [{"port": 80, "targetPort": "http"}]}},
        {"metadata": {"name": "empty"}, "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]}},
    ],
}
NODE_IPS = {"node0": "172.31.0.10", "node1": "172.31.0.11"}

# N TCP connections to ip:port; prints {"<echo name>": count}
SPREAD = """
import collections, json, socket, sys
seen = collections.Counter()
for _ in range(int(sys.argv[3])):
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.sendall(b"x\\n")
        seen[s.makefile().readline().split()[0]] += 1
print(json.dumps(seen))
"""
# one TCP connect: prints the errno name, or "connected"
CONNECT = """
import socket, sys, time
start = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close(); print("connected")
except OSError as exc:
    print(type(exc).__name__, round(time.monotonic() - start, 3))
"""
PEER = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())"
# UDP datagrams from ONE socket (one conntrack flow): prints who answered each
UDP_FLOW = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1); s.bind(("", 40000))
out = []
for _ in range(int(sys.argv[3])):
    s.sendto(b"hi", (sys.argv[1], int(sys.argv[2])))
    try:
        out.append(s.recv(100).decode())
    except TimeoutError:
        out.append("timeout")
    time.sleep(0.05)
print(json.dumps(out))
"""


class Lab:
    def __init__(self, name: str) -> None:
        self.name = name

    def py(self, target: str, code: str, *args: str) -> str:
        proc = podnet("lab", "exec", "--lab", self.name, target, "--", sys.executable, "-c", code, *args)
        return proc.stdout.strip()

    def sh(self, target: str, *cmd: str) -> None:
        podnet("lab", "exec", "--lab", self.name, target, "--", *cmd)

    def cluster_ip(self, service: str) -> str:
        docs = json.loads(podnet("get", "--lab", self.name, "svc", "-o", "json").stdout)
        return next(d["spec"]["clusterIP"] for d in docs if d["metadata"]["name"] == service)

    def spread(self, target: str, ip: str, port: int, n: int) -> collections.Counter:
        return collections.Counter(json.loads(self.py(target, SPREAD, ip, str(port), str(n))))

    def readiness(self) -> dict[str, bool]:
        out = podnet("lab", "exec", "--lab", self.name, "node0", "--", sys.executable, "-c",
                     "from podnet.store import open_store; from podnet import keys; import json, sys;"
                     "s = open_store(sys.argv[1]);"
                     "print(json.dumps({e.key.rsplit('/', 1)[1]: e.json()['ready'] for e in s.list(keys.READINESS)}))",
                     json.loads(state_file(self.name).read_text())["store_url"]).stdout
        return json.loads(out)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    name = f"s{secrets.token_hex(2)}"
    path = tmp_path_factory.mktemp("svc") / "topology.yaml"
    path.write_text(yaml.safe_dump(TOPOLOGY))
    try:
        podnet("lab", "up", "--lab", name, "-f", str(path), "--fabric", "host-gw")
        built = Lab(name)
        assert eventually(lambda: built.readiness() == {"web-0": True, "web-1": True, "web-2": True},
                          timeout=20), built.readiness()
        yield built
    finally:
        if state_file(name).exists():
            podnet("lab", "down", "--lab", name)


def test_cluster_ip_spreads_over_every_backend_from_both_nodes(lab):
    ip = lab.cluster_ip("web")
    for client in ("default/cl-0", "default/cl-1"):
        seen = lab.spread(client, ip, 8080, 300)
        assert set(seen) == {"web-0", "web-1", "web-2"}, seen
        assert all(0.20 <= count / 300 <= 0.47 for count in seen.values()), seen


def test_node_port_answers_on_every_node_from_outside_and_from_pods(lab):
    for node_ip in NODE_IPS.values():
        assert sum(lab.spread("out", node_ip, 30080, 30).values()) == 30
        assert sum(lab.spread("default/cl-0", node_ip, 30080, 10).values()) == 10


def test_an_empty_service_refuses_at_once(lab):
    answer = lab.py("default/cl-0", CONNECT, lab.cluster_ip("empty"), "80", "5").split()
    assert answer[0] == "ConnectionRefusedError", answer  # refused, not a 5 s timeout


def test_affinity_holds_a_client_then_lets_go_after_the_timeout(lab):
    ip = lab.cluster_ip("sticky")
    first = lab.spread("default/cl-0", ip, 80, 20)
    assert len(first) == 1, first  # 20 connections, one backend
    others = set()
    for _ in range(8):  # after the 2 s timeout the choice is random again: 1/3 to keep the same
        time.sleep(2.5)
        others |= set(lab.spread("default/cl-0", ip, 80, 1))
        if others - set(first):
            break
    assert others - set(first), (first, others)


def test_local_policy_keeps_the_client_address_and_uses_local_backends(lab):
    outside = lab.py("out", PEER, f"http://{NODE_IPS['node1']}:30081/peer")
    assert outside == "172.31.0.254"  # the outside world's own address, not the node's
    seen = lab.spread("out", NODE_IPS["node1"], 30081, 30)
    assert set(seen) <= {"web-1", "web-2"}, seen  # node1's own backends only
    masqueraded = lab.py("out", PEER, f"http://{NODE_IPS['node0']}:30080/peer")
    assert masqueraded != "172.31.0.254"  # Cluster policy: the node masquerades


def test_readiness_takes_a_backend_out_everywhere_and_back(lab):
    ip = lab.cluster_ip("web")
    block = ("nft", "add table inet t; add chain inet t in { type filter hook input priority 0; }; "
             "add rule inet t in tcp dport 80 reject with tcp reset")
    lab.sh("default/web-2", *block)
    try:
        assert eventually(lambda: lab.readiness().get("web-2") is False)
        time.sleep(1.0)  # every node's table follows the store within a second
        for client in ("default/cl-0", "default/cl-1"):
            seen = lab.spread(client, ip, 8080, 60)
            assert set(seen) == {"web-0", "web-1"}, seen
    finally:
        lab.sh("default/web-2", "nft", "delete table inet t")
    assert eventually(lambda: lab.readiness().get("web-2") is True)
    assert eventually(lambda: "web-2" in lab.spread("default/cl-0", ip, 8080, 30))


def test_udp_flow_moves_when_its_backend_goes(lab):
    ip = lab.cluster_ip("web")
    first = json.loads(lab.py("default/cl-0", UDP_FLOW, ip, "5353", "5"))
    backend = first[0]
    assert first == [backend] * 5, first  # one flow, one backend
    lab.sh(f"default/{backend}", "nft", "add table inet t; add chain inet t in { type filter hook input "
           "priority 0; }; add rule inet t in tcp dport 80 reject with tcp reset")
    try:
        assert eventually(lambda: lab.readiness().get(backend) is False)
        time.sleep(1.0)
        after = json.loads(lab.py("default/cl-0", UDP_FLOW, ip, "5353", "5"))
        assert backend not in after and "timeout" not in after, after  # the old conntrack entry is gone
    finally:
        lab.sh(f"default/{backend}", "nft", "delete table inet t")
    assert eventually(lambda: lab.readiness().get(backend) is True)


DENY_WEB = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
"""


def test_policy_sees_the_backend_pod_behind_the_service(lab, tmp_path):
    """Service translation comes first (nat prerouting), so a NetworkPolicy judges the
    backend pod as destination, as in Kubernetes."""
    ip = lab.cluster_ip("web")
    path = tmp_path / "deny.yaml"
    path.write_text(DENY_WEB)
    podnet("apply", "--lab", lab.name, "-f", str(path))
    try:
        time.sleep(1.0)  # every node's policy table follows
        assert lab.py("default/cl-0", CONNECT, ip, "8080", "1.5").split()[0] == "TimeoutError"
    finally:
        podnet("delete", "--lab", lab.name, "-f", str(path))
    assert eventually(lambda: lab.py("default/cl-0", CONNECT, ip, "8080", "1.5") == "connected")


def test_probe_shows_which_backends_answer_a_service(lab):
    out = json.loads(podnet("probe", "--lab", lab.name, "--to", "svc/default/web", "--from", "app=client",
                            "--count", "30", "-o", "json").stdout)
    assert out["service"] == "default/web" and set(out["from"]) == {"default/cl-0", "default/cl-1"}
    ip = lab.cluster_ip("web")
    for row in out["from"].values():
        assert set(row) == {f"{ip}:8080/tcp", f"{ip}:5353/udp"}
        assert set(row[f"{ip}:8080/tcp"]) == {"web-0", "web-1", "web-2"}, row
        assert sum(row[f"{ip}:5353/udp"].values()) == 30 and set(row[f"{ip}:5353/udp"]) <= {"web-0", "web-1", "web-2"}
    empty = json.loads(podnet("probe", "--lab", lab.name, "--to", f"{lab.cluster_ip('empty')}:80",
                              "--from", "namespace=default,app=client", "--count", "3", "-o", "json").stdout)
    assert all(row == {f"{lab.cluster_ip('empty')}:80/tcp": {"refused": 3}} for row in empty["from"].values()), empty
    missing = podnet("probe", "--lab", lab.name, "--to", "svc/default/nope", check=False)
    assert missing.returncode != 0 and "service default/nope not found" in missing.stderr
    table = podnet("probe", "--lab", lab.name, "--to", "svc/web", "--from", "app=client", "--count", "3").stdout
    assert "service default/web: who answered" in table


def test_connectivity_test_checks_every_service(lab):
    proc = podnet("connectivity", "test", "--lab", lab.name, "-o", "json", check=False)
    results = json.loads(proc.stdout)
    services = [r for r in results if r["check"].startswith("service/")]
    failed = [f"{r['check']} {r['source']} -> {r['destination']}: {r['detail']}" for r in results if not r["ok"]]
    assert proc.returncode == 0 and not failed, "\n".join(failed)
    cluster = {r["destination"].split()[0] for r in services if r["check"] == "service/cluster-ip"}
    assert cluster == {"default/web:http", "default/web:echo", "default/web-np:80", "default/web-local:80",
                       "default/sticky:80", "default/empty:80"}
    assert any(r["destination"].startswith("default/empty:80") and r["detail"] == "refused" for r in services)
    dns_checks = [r for r in results if r["check"] == "dns/cluster-ip"]
    assert len(dns_checks) == 4 and all(r["detail"] == f"answer {DNS_IP}" for r in dns_checks), dns_checks
    node_ports = {r["destination"].rsplit(" ", 1)[0] for r in services if r["check"] == "service/node-port"}
    assert node_ports == {"default/web-np:80 node0", "default/web-np:80 node1",
                          "default/web-local:80 node0", "default/web-local:80 node1"}


PROBE_SCRIPT = str(Path(probe_module.__file__))
HEADLESS = """
apiVersion: v1
kind: Service
metadata: {name: web-hl, namespace: default}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""
EGRESS_DENY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients-egress-deny, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
"""
EGRESS_DNS = EGRESS_DENY.replace("clients-egress-deny", "clients-egress-dns") + """  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}},
          podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
"""
DNS_IP = "10.96.0.10"  # the lab's service CIDR's .10


def dns(lab: Lab, client: str, name: str, qtype: str = "A", tcp: bool = False, timeout: float = 2.0) -> str:
    """What the cluster DNS service told `client`: `answer a,b` or the rcode or an error."""
    spec = {"kind": "dns", "dst": DNS_IP, "port": 53, "name": name, "qtype": qtype, "tcp": tcp, "timeout": timeout}
    proc = podnet("lab", "exec", "--lab", lab.name, client, "--", sys.executable, "-I", "-S", PROBE_SCRIPT,
                  json.dumps(spec))
    return json.loads(proc.stdout)["detail"]


def test_cluster_dns_answers_services_ports_and_pods_on_every_node(lab):
    web = lab.cluster_ip("web")
    pod_ip = json.loads(state_file(lab.name).read_text())["pods"]["default/web-1"]["ips"][0].split("/")[0]
    for client in ("default/cl-0", "default/cl-1"):
        for tcp in (False, True):
            assert dns(lab, client, "web.default.svc.cluster.local", tcp=tcp) == f"answer {web}"
        assert dns(lab, client, "_http._tcp.web.default.svc.cluster.local", "SRV") == \
            "answer 0 100 8080 web.default.svc.cluster.local"
        assert dns(lab, client, "_echo._udp.web.default.svc.cluster.local", "SRV") == \
            "answer 0 100 5353 web.default.svc.cluster.local"
        assert dns(lab, client, f"{pod_ip.replace('.', '-')}.default.pod.cluster.local") == f"answer {pod_ip}"
        assert dns(lab, client, "nope.default.svc.cluster.local") == "NXDOMAIN"
        assert dns(lab, client, ".".join(reversed(web.split("."))) + ".in-addr.arpa", "PTR") == \
            "answer web.default.svc.cluster.local"
        assert dns(lab, client, "example.com") == "REFUSED"  # no upstream given: nothing leaves the lab
    # the answers come from inside each node's DNS pod (the agent's sockets live there)
    for node in ("node0", "node1"):
        spec = {"kind": "dns", "dst": "127.0.0.1", "port": 53, "name": "web.default.svc.cluster.local"}
        out = podnet("lab", "exec", "--lab", lab.name, f"kube-system/kube-dns-{node}", "--", sys.executable, "-I",
                     "-S", PROBE_SCRIPT, json.dumps(spec)).stdout
        assert json.loads(out)["detail"] == f"answer {web}"


def test_headless_dns_gives_the_ready_pods_and_follows_readiness(lab, tmp_path):
    ips = {name: entry["ips"][0].split("/")[0]
           for name, entry in json.loads(state_file(lab.name).read_text())["pods"].items()}
    every = {ips[f"default/web-{i}"] for i in range(3)}
    path = tmp_path / "headless.yaml"
    path.write_text(HEADLESS)
    podnet("apply", "--lab", lab.name, "-f", str(path))
    name = "web-hl.default.svc.cluster.local"

    def answered() -> set[str]:
        detail = dns(lab, "default/cl-1", name)
        return set(detail.removeprefix("answer ").split(",")) if detail.startswith("answer ") else {detail}

    block = ("nft", "add table inet t; add chain inet t in { type filter hook input priority 0; }; "
             "add rule inet t in tcp dport 80 reject with tcp reset")
    try:
        assert eventually(lambda: answered() == every), answered()
        lab.sh("default/web-2", *block)
        try:
            assert eventually(lambda: answered() == every - {ips["default/web-2"]}), answered()
        finally:
            lab.sh("default/web-2", "nft", "delete table inet t")
        assert eventually(lambda: answered() == every), answered()
        want = sorted(f"0 33 80 {ip.replace('.', '-')}.{name}" for ip in every)

        def srv() -> list[str]:  # from cl-0: node0's DNS, whose view of web-2's return may lag node1's
            return sorted(dns(lab, "default/cl-0", "_http._tcp." + name, "SRV").removeprefix("answer ").split(","))

        assert eventually(lambda: srv() == want), srv()
    finally:
        podnet("delete", "--lab", lab.name, "-f", str(path))
    assert eventually(lambda: answered() == {"NXDOMAIN"})


def test_dns_under_egress_default_deny_needs_a_port_53_rule(lab, tmp_path):
    """DNS is a service like any other: the packet to the ClusterIP reaches a DNS pod
    through the forward hook, where the client's egress policy applies."""
    deny, allow = tmp_path / "deny.yaml", tmp_path / "allow.yaml"
    deny.write_text(EGRESS_DENY)
    allow.write_text(EGRESS_DNS)
    name = "web.default.svc.cluster.local"
    answer = f"answer {lab.cluster_ip('web')}"
    podnet("apply", "--lab", lab.name, "-f", str(deny))
    try:
        assert eventually(lambda: dns(lab, "default/cl-0", name, timeout=0.5).startswith("timed out"))
        assert dns(lab, "default/cl-1", name, tcp=True, timeout=0.5).startswith("timed out")
        podnet("apply", "--lab", lab.name, "-f", str(allow))
        assert eventually(lambda: dns(lab, "default/cl-0", name) == answer)
        assert dns(lab, "default/cl-1", name, tcp=True) == answer
        # the rule opens DNS only: the service itself stays denied by the default-deny
        assert lab.py("default/cl-0", CONNECT, lab.cluster_ip("web"), "8080", "1").split()[0] == "TimeoutError"
    finally:
        podnet("delete", "--lab", lab.name, "-f", str(allow), check=False)
        podnet("delete", "--lab", lab.name, "-f", str(deny))
    assert eventually(lambda: lab.py("default/cl-0", CONNECT, lab.cluster_ip("web"), "8080", "1.5") == "connected")


def test_a_thousand_services_applied_at_once_reach_every_node(lab, tmp_path):
    from podnet.rpc.client import call

    docs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"bulk-{i}", "namespace": "default"},
             "spec": {"selector": {"app": "web"}, "ports": [{"port": 9000 + i % 100, "targetPort": "http"}]}}
            for i in range(1000)]
    path = tmp_path / "bulk.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    nodes = json.loads(state_file(lab.name).read_text())["nodes"]

    def ports_everywhere() -> set[int]:
        return {call(info["socket"], "services.status", timeout=5)["service_ports"] for info in nodes.values()}

    before = ports_everywhere()
    podnet("apply", "--lab", lab.name, "-f", str(path))
    try:
        assert eventually(lambda: ports_everywhere() == {max(before) + 1000}, 30), ports_everywhere()
        seen = lab.spread("default/cl-1", lab.cluster_ip("bulk-777"), 9077, 9)
        assert set(seen) <= {"web-0", "web-1", "web-2"} and sum(seen.values()) == 9, seen
    finally:
        podnet("delete", "--lab", lab.name, "-f", str(path))
    assert eventually(lambda: ports_everywhere() == before, 30), ports_everywhere()
