"""`podnet trace` on real labs: across nodes over vxlan (FDB, VNI, underlay addresses),
through a service (the endpoint a live probe's conntrack chose is the one that answered),
into a denying NetworkPolicy (died at the default deny that `podnet flows` names and
`podnet probe` sees blocked), and the fabric hop of host-gw (via the peer's underlay
address) and bgp (a BIRD route to the peer). Labs torn down by name."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator

import pytest

from cniharness import podnet_cli, topology_lab

pytestmark = pytest.mark.root

HTTP = [{"port": 80, "protocol": "TCP", "name": "http"}]
TOPOLOGY = {
    "nodes": [{"name": "node0"}, {"name": "node1"}],
    "namespaces": [{"name": "x"}],
    "pods": [{"name": "a", "namespace": "x", "node": "node0", "labels": {"app": "client"}},
             {"name": "w0", "namespace": "x", "node": "node0", "labels": {"app": "web"}, "ports": HTTP},
             {"name": "w1", "namespace": "x", "node": "node1", "labels": {"app": "web"}, "ports": HTTP},
             {"name": "db", "namespace": "x", "node": "node1", "labels": {"app": "db"}, "ports": HTTP}],
    "services": [{"metadata": {"name": "web", "namespace": "x"},
                  "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}}],
}
DENY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"""
SMALL = {"nodes": [{"name": "node0"}, {"name": "node1"}],
         "pods": [{"name": "p0", "node": "node0", "ports": HTTP}, {"name": "p1", "node": "node1", "ports": HTTP}]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp("trace")
    with topology_lab("tr", TOPOLOGY, workdir, "--fabric", "vxlan", "--no-cluster-dns") as built:
        (workdir / "deny.yaml").write_text(DENY)
        podnet_cli("apply", "--lab", built["name"], "-f", str(workdir / "deny.yaml"))
        yield built


def trace(lab: dict, *args: str) -> tuple[int, dict]:
    out = podnet_cli("trace", "--lab", lab["name"], *args, "-o", "json", check=False, timeout=60)
    assert out.returncode in (0, 1) and out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def kinds(result: dict) -> list[str]:
    return [h["kind"] for h in result["hops"]]


def test_across_nodes_over_vxlan_names_fdb_vni_and_underlay(lab):
    code, result = trace(lab, "x/a", "x/w1")
    assert code == 0 and result["verdict"] == "delivered", result
    assert result["src"]["node"] == "node0" and result["dst"]["node"] == "node1"
    assert kinds(result) == ["route", "veth", "bridge", "policy", "route", "neigh", "fdb", "encap", "route",
                             "policy", "deliver"]
    node1 = lab["nodes"]["node1"]["underlay"]
    fdb, encap = result["hops"][6], result["hops"][7]
    assert fdb["detail"].endswith(f"dst {node1}") and "pnvx0" in fdb["where"]
    assert "VNI 1" in encap["detail"] and f"{lab['nodes']['node0']['underlay']} -> {node1}" in encap["detail"]
    assert result["hops"][-1]["node"] == "node1" and "x/w1" in result["hops"][-1]["where"]


def test_live_confirms_every_hop_across_nodes(lab):
    code, result = trace(lab, "x/a", "x/w1", "--live")
    assert code == 0 and result["live"] and all(h["confirmed"] for h in result["hops"]), result
    assert "answered by w1" in result["reason"]


def test_through_a_service_the_chosen_endpoint_is_the_one_that_answered(lab):
    code, result = trace(lab, "x/a", "svc/x/web")
    assert code == 0 and result["service"]["name"] == "x/web" and result["service"]["port"] == 8080
    assert sorted(e.split()[0] for e in result["service"]["endpoints"]) == ["x/w0", "x/w1"]
    dnat = next(h for h in result["hops"] if h["kind"] == "dnat")
    assert "one of 2" in dnat["detail"]
    for _ in range(3):
        code, result = trace(lab, "x/a", result["service"]["ip"], "--live")
        assert code == 0 and result["verdict"] == "delivered", result
        answered = result["reason"].rsplit("answered by ", 1)[1]
        assert result["dst"]["name"] == f"x/{answered}"  # the path followed is the backend that answered
    seen = json.loads(podnet_cli("probe", "--lab", lab["name"], "--from", "app=client", "--to", "svc/x/web",
                                 "--count", "6", "-o", "json").stdout)
    answers = set(seen["from"]["x/a"][f"{result['service']['ip']}:8080/tcp"])
    assert answers <= {"w0", "w1"} and answers  # probe reaches the same endpoints trace lists


def test_into_a_denying_policy_it_dies_at_the_rule_flows_names(lab):
    code, result = trace(lab, "x/a", "x/db")
    assert code == 1 and result["verdict"] == "dropped"
    died = result["hops"][result["died_at"]]
    assert died["kind"] == "drop" and died["node"] == "node1" and "x/db-from-web" in died["detail"]
    code, live = trace(lab, "x/a", "x/db", "--live")
    assert code == 1 and live["verdict"] == "dropped", live
    died = live["hops"][live["died_at"]]
    assert died["confirmed"] and died["node"] == "node1" and "nftrace, verdict drop" in died["detail"]
    assert "default deny ingress x/db (isolated by x/db-from-web)" in died["detail"]
    flows = json.loads(podnet_cli("flows", "--lab", lab["name"], "--verdict", "deny", "-o", "json").stdout)
    mine = [f for f in flows if f["src"] == live["src"]["ip"] and f["dst"] == live["dst"]["ip"]]
    assert mine and {f["node"] for f in mine} == {"node1"} and all("x/db-from-web" in f["rule"] for f in mine)
    seen = json.loads(podnet_cli("probe", "--lab", lab["name"], "--from", "app=client", "--to", "app=db",
                                 "--protocol", "tcp", "-o", "json").stdout)
    assert seen["x/a"]["x/db"] is False


def test_bad_input_exits_2(lab):
    out = podnet_cli("trace", "--lab", lab["name"], "x/a", "x/nope", check=False)
    assert out.returncode == 2 and "DST 'x/nope'" in out.stderr
    out = podnet_cli("trace", "--lab", lab["name"], "x/a", "svc/x/web", "--port", "9999", check=False)
    assert out.returncode == 2 and "8080/tcp" in out.stderr


@pytest.mark.parametrize("fabric", ["host-gw", "bgp"])
def test_the_fabric_hop_of_host_gw_and_bgp(fabric, tmp_path):
    if fabric == "bgp" and not shutil.which("bird"):
        pytest.skip("bird2 is not installed (make deps installs it)")
    with topology_lab("tf", SMALL, tmp_path, "--fabric", fabric, "--no-cluster-dns") as built:
        peer = built["nodes"]["node1"]["underlay"]
        code, result = None, {}
        for _ in range(20):  # BIRD needs a moment to learn the peer's block
            code, result = trace(built, "default/p0", "default/p1", "--live")
            if code == 0:
                break
            time.sleep(0.5)
        assert code == 0 and all(h["confirmed"] for h in result["hops"]), result
        route = next(h for h in result["hops"] if h["where"] == "node0 route")
        assert route["node"] == "node0" and f"via {peer}" in route["detail"]
        if fabric == "bgp":
            assert route["kind"] == "bgp" and "proto bird" in route["detail"]
        else:
            assert route["kind"] == "route" and "proto podnet" in route["detail"]
        assert "fdb" not in kinds(result) and "encap" not in kinds(result)
