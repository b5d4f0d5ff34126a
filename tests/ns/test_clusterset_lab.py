"""Two labs joined into a clusterset over a WAN (issue 17), on the real kernel.

west (vxlan, 10.244.0.0/16, services 10.96.0.0/16, cluster DNS) and east (host-gw,
10.245.0.0/16, 10.97.0.0/16), 2 nodes and 3 pods each (two clients, one `app: web`); a WAN `pn-wan-c<hex>` (podnet wan up) into which both
clusters' node0 and west's node1 are plugged as gateway candidates; `podnet cluster
join east --peer-lab east --lab west`. Shown: a pod on a node that is no gateway
reaches a pod of the other cluster behind its non-gateway node, both ways, and the far
pod sees the caller's own address (no masquerade); `cluster status` names the gateway
in charge on both sides with its tunnel's round trip; a join whose ranges overlap is refused with the ranges named
and nothing written; a Service exported by east (ServiceExport) is imported in west
(ServiceImport, ClusterSetIP), resolved as web.default.svc.clusterset.local by west's
cluster DNS and served by east's pod with the caller's address kept, and `podnet
connectivity test --clusterset` passes whole (gateways, pod to pod, the import by name
and by address); west exporting
its own is served first, and east's take over when west's endpoints are gone; a
ClusterPolicy in west denying pods labelled podnet.io/cluster=<east> (east's pods,
mirrored by west's gateway) drops east's calls, names the rule in west's `podnet
flows`, and lets west's own through; the
gateway in charge failing as a node does (its agent killed, its WAN link cut), the
other candidate takes over and the pods reach each other again (the times are printed).

Everything is torn down by name: both labs (`lab down`), then the WAN (`wan down`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_lab_cluster import HTTP

from cniharness import podnet_cli as podnet
from cniharness import wait_until
from podnet import keys
from podnet.lab.state import lab_dir, state_file
from podnet.observe import probe as probe_module
from podnet.procs import owner_alive
from podnet.store import open_store

pytestmark = pytest.mark.root

RANGES = {"west": ("10.244.0.0/16", "10.96.0.0/16"), "east": ("10.245.0.0/16", "10.97.0.0/16")}
HTTP_PORT = [{"port": 80, "protocol": "TCP", "name": "http"}]


def topology(pods: dict[str, tuple[str, str]]) -> dict:
    """Two nodes; pods name -> (node, app label), each serving the lab's echo on port 80."""
    return {"nodes": [{"name": "node0"}, {"name": "node1"}],
            "pods": [{"name": name, "namespace": "default", "node": node, "labels": {"app": app}, "ports": HTTP_PORT}
                     for name, (node, app) in pods.items()]}


TOPOLOGIES = {"west": topology({"wa": ("node0", "client"), "wb": ("node1", "client"), "wweb": ("node1", "web")}),
              "east": topology({"ea": ("node0", "client"), "eb": ("node1", "client"), "eweb": ("node1", "web")})}
# west resolves clusterset.local names; east runs another fabric (the gateways' routes
# and tunnel do not depend on it)
LAB_FLAGS = {"west": (), "east": ("--no-cluster-dns", "--fabric", "host-gw")}


class Clusterset:
    def __init__(self, names: dict[str, str], wan: str) -> None:
        self.names, self.wan = names, wan  # role -> lab name

    def state(self, role: str) -> dict:
        return json.loads(state_file(self.names[role]).read_text())

    def pod_ip(self, role: str, pod: str) -> str:
        return self.state(role)["pods"][f"default/{pod}"]["ips"][0].split("/")[0]

    def fetch(self, role: str, pod: str, url: str) -> str:
        out = podnet("lab", "exec", "--lab", self.names[role], f"default/{pod}", "--", sys.executable, "-c", HTTP,
                     url, check=False, timeout=20)
        return out.stdout.strip() if out.returncode == 0 else ""

    def status(self, role: str) -> dict:
        return json.loads(podnet("cluster", "status", "--lab", self.names[role], "-o", "json", check=False).stdout)

    def healthy(self, role: str) -> dict | None:
        status = self.status(role)
        return status if not status["problems"] and status["active"] else None


@contextlib.contextmanager
def labs_on_a_wan(names: dict[str, str], wan: str, work: Path, ranges: dict[str, tuple[str, str]],
                  topologies: dict[str, dict], flags: dict[str, tuple[str, ...]]) -> Iterator[None]:
    """A WAN and one lab per role (its ranges, topology and `lab up` flags), all torn
    down by name afterwards, whatever happened; then no namespace of theirs is left."""
    try:
        podnet("wan", "up", wan)
        for role, (pods, services) in ranges.items():
            path = work / f"{role}.yaml"
            path.write_text(yaml.safe_dump(topologies[role]))
            podnet("lab", "up", "--lab", names[role], "-f", str(path), "--cluster-cidr", pods,
                   "--service-cidr", services, *flags[role])
        yield
    finally:
        for name in names.values():
            if state_file(name).exists():
                podnet("lab", "down", "--lab", name)
        podnet("wan", "down", wan)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(f"-{n}-" in listed for n in names.values()) and f"pn-wan-{wan}" not in listed


def healthy_everywhere(built: Clusterset) -> None:
    for role in built.names:
        wait_until(lambda r=role: built.healthy(r), f"{role}'s clusterset healthy", timeout=30)


@pytest.fixture(scope="module")
def cset(tmp_path_factory) -> Iterator[Clusterset]:
    tag = secrets.token_hex(2)
    names, wan = {"west": f"w{tag}", "east": f"e{tag}"}, f"c{tag}"
    with labs_on_a_wan(names, wan, tmp_path_factory.mktemp("clusterset"), RANGES, TOPOLOGIES, LAB_FLAGS):
        built = Clusterset(names, wan)
        for role, node in (("west", "node0"), ("east", "node0"), ("west", "node1")):
            podnet("cluster", "gateway", "add", node, "--wan", wan, "--lab", names[role])
        podnet("cluster", "join", names["east"], "--peer-lab", names["east"], "--lab", names["west"])
        healthy_everywhere(built)
        yield built


def test_pods_behind_non_gateway_nodes_reach_each_other_with_their_own_addresses(cset: Clusterset) -> None:
    west, east = cset.pod_ip("west", "wb"), cset.pod_ip("east", "eb")
    assert west.startswith("10.244.") and east.startswith("10.245.")
    assert cset.fetch("west", "wb", f"http://{east}/peer") == west  # the far pod saw our pod, not a node
    assert cset.fetch("east", "eb", f"http://{west}/peer") == east
    assert cset.fetch("east", "ea", f"http://{cset.pod_ip('west', 'wa')}/peer") == cset.pod_ip("east", "ea")


def test_status_names_the_gateway_in_charge_and_the_peer_on_both_sides(cset: Clusterset) -> None:
    for role, other in (("west", "east"), ("east", "west")):
        status = cset.status(role)
        assert status["cluster"]["name"] == cset.names[role]
        assert [p["name"] for p in status["peers"]] == [cset.names[other]]
        assert status["active"]["node"] in {c["node"] for c in status["candidates"]}
        roles = {n["node"]: n["role"] for n in status["nodes"]}
        assert roles[status["active"]["node"]] == "gateway" and sorted(roles.values()).count("gateway") == 1
        tunnel = next(n for n in status["nodes"] if n["role"] == "gateway")["tunnels"][cset.names[other]]
        assert tunnel["rtt_ms"] > 0 and tunnel["gateway"] == cset.status(other)["active"]["node"], tunnel


def test_a_join_of_overlapping_ranges_is_refused_and_writes_nothing(cset: Clusterset, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    open_store(str(other)).close()  # another cluster's store (podnet makes none where not told to)
    podnet("cluster", "init", "north", "--cluster-cidr", "10.244.128.0/17", "--service-cidr", "10.98.0.0/16",
           "--store", str(other))
    refused = podnet("cluster", "join", "north", "--endpoint", str(other), "--lab", cset.names["west"], check=False)
    assert refused.returncode != 0
    assert "north clusterCIDR 10.244.128.0/17 overlaps" in refused.stderr and "--global-cidr" in refused.stderr
    with open_store(str(other), create=False) as store:
        assert store.list(keys.CLUSTERSET_PEERS) == []
    assert [p["name"] for p in cset.status("west")["peers"]] == [cset.names["east"]]


def web(selector: str) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{selector: {{app: {selector}}}, ports: [{{name: http, port: 80, targetPort: 80}}]}}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {{name: web, namespace: default}}
"""


def test_an_exported_service_is_imported_resolved_and_served_local_first(cset: Clusterset, tmp_path: Path) -> None:
    def apply(role: str, text: str, verb: str = "apply") -> None:
        path = tmp_path / f"{role}-{verb}.yaml"
        path.write_text(text)
        podnet(verb, "-f", str(path), "--lab", cset.names[role])

    def imported() -> dict | None:
        out = podnet("get", "serviceimports", "-n", "default", "-o", "json", "--lab", cset.names["west"]).stdout
        items = json.loads(out)
        items = items.get("items", items) if isinstance(items, dict) else items
        found = [i for i in items if i["metadata"]["name"] == "web" and i["spec"]["ips"]]
        return found[0] if found else None

    def answered_by() -> str:
        return cset.fetch("west", "wb", f"http://{ip}/")

    started = time.monotonic()
    apply("east", web("web"))
    ip = wait_until(imported, "west's ServiceImport of web", timeout=20)["spec"]["ips"][0]
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(RANGES["west"][1])  # a ClusterSetIP of west's own
    name = "web.default.svc.clusterset.local"
    wait_until(lambda: dns(cset, "default/wb", name) == f"answer {ip}", "the clusterset name in west", timeout=20)
    print(f"\nServiceExport in east -> {name} resolvable in west: {time.monotonic() - started:.1f} s")
    assert wait_until(lambda: answered_by() == "eweb", "east's endpoint behind the import", timeout=20)
    assert cset.fetch("west", "wb", f"http://{ip}/peer") == cset.pod_ip("west", "wb")  # no masquerade on the way
    out = podnet("connectivity", "test", "--lab", cset.names["west"], "--clusterset", "-o", "json", check=False)
    results = json.loads(out.stdout)
    assert out.returncode == 0 and all(r["ok"] for r in results), results
    assert {r["check"] for r in results} == {"multicluster/gateway", "multicluster/pod-to-pod", "multicluster/import-dns",
                                             "multicluster/import"}
    try:
        apply("west", web("web"))  # west exports its own: local first
        wait_until(lambda: imported()["status"]["serving"] == [cset.names["west"]], "west serving its own", timeout=20)
        assert wait_until(lambda: answered_by() == "wweb", "west's own endpoint", timeout=20)
        assert {c["cluster"] for c in imported()["status"]["clusters"]} == set(cset.names.values())
        apply("west", web("nothing"))  # west's export has no endpoint left: east's take over
        assert wait_until(lambda: answered_by() == "eweb", "east's endpoint again", timeout=20)
    finally:
        apply("west", web("web"), "delete")
        apply("east", web("web"), "delete")
    wait_until(lambda: imported() is None, "the import gone with the exports", timeout=20)
    assert dns(cset, "default/wb", name) == "NXDOMAIN"


@contextlib.contextmanager
def cluster_denied(built: Clusterset, where: str, denied: str, rule: str, tmp_path: Path) -> Iterator[float]:
    """A ClusterPolicy in `where` denying pods labelled podnet.io/cluster=<the cluster of
    role `denied`> to reach `app: web` pods, under `rule`; yields when it was applied,
    deletes it afterwards."""
    cluster = built.names[denied]
    policy = tmp_path / "deny.yaml"
    policy.write_text(f"""
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {{name: web-not-from-{cluster}}}
spec:
  selector: {{podSelector: {{matchLabels: {{app: web}}}}}}
  types: [Ingress]
  ingress: [{{action: Deny, name: {rule}, from: [{{podSelector: {{matchLabels: {{podnet.io/cluster: {cluster}}}}}}}]}}]
""")
    since = time.time()
    podnet("apply", "-f", str(policy), "--lab", built.names[where])
    try:
        yield since
    finally:
        podnet("delete", "-f", str(policy), "--lab", built.names[where])


def denials(built: Clusterset, where: str, since: float, src: str, rule: str) -> list[dict]:
    """The drops of `src` by `rule` in `where`'s `podnet flows` since `since` (a time:
    `--since` takes an age, reaching a minute further back for the CLI's start-up)."""
    out = podnet("flows", "--lab", built.names[where], "--verdict", "deny", "--since", str(time.time() - since + 60),
                 "-o", "json", check=False).stdout
    return [f for f in json.loads(out or "[]") if f["src"] == src and rule in f["rule"] and f["time"] >= since]


def test_a_cross_cluster_deny_is_enforced_and_named_in_flows(cset: Clusterset, tmp_path: Path) -> None:
    target, caller = cset.pod_ip("west", "wweb"), cset.pod_ip("east", "eb")
    assert cset.fetch("east", "eb", f"http://{target}/peer") == caller  # open before
    with cluster_denied(cset, "west", "east", "no-east", tmp_path) as since:
        wait_until(lambda: cset.fetch("east", "eb", f"http://{target}/peer") == "", "the deny in force", timeout=20)
        assert cset.fetch("west", "wb", f"http://{target}/peer") == cset.pod_ip("west", "wb")  # our own pass
        drops = wait_until(lambda: denials(cset, "west", since, caller, "no-east"), "the drop named in west's flows",
                           timeout=15)
        assert drops[0]["dst"] == target
    assert wait_until(lambda: cset.fetch("east", "eb", f"http://{target}/peer") == caller, "open again", timeout=20)


def dns(cset: Clusterset, client: str, name: str) -> str:
    """What west's cluster DNS told `client` (observe/probe.py's dns check)."""
    spec = {"kind": "dns", "dst": "10.96.0.10", "port": 53, "name": name, "qtype": "A", "tcp": False, "timeout": 2.0}
    proc = podnet("lab", "exec", "--lab", cset.names["west"], client, "--", sys.executable, "-I", "-S",
                  str(Path(probe_module.__file__)), json.dumps(spec), check=False)
    try:
        return json.loads(proc.stdout)["detail"]
    except ValueError:
        return proc.stderr.strip()[-200:]


def test_the_other_candidate_takes_over_when_the_gateway_node_fails(cset: Clusterset) -> None:
    """Last: west's gateway in charge fails as a node does: its agent killed (SIGKILL)
    and its WAN link gone (`wan unplug`). Its kernel state alone would keep carrying
    traffic after an agent's death (the data plane outlives the agent); a node that is
    gone carries nothing. The caller in west is a pod on the node that stays."""
    gone = cset.status("west")["active"]["node"]
    caller = "wa" if gone == "node1" else "wb"
    west, east = cset.pod_ip("west", caller), cset.pod_ip("east", "eb")
    assert cset.fetch("east", "eb", f"http://{west}/peer") == east
    entry = json.loads((lab_dir(cset.names["west"]) / "procs.json").read_text())[f"agent/{gone}"]
    os.kill(entry["pid"], signal.SIGKILL)
    podnet("wan", "unplug", cset.wan, "--lab", cset.names["west"], "--node", gone)
    failed = time.monotonic()
    wait_until(lambda: not owner_alive(entry["owner"]), "the agent's end", timeout=10)
    taken = wait_until(lambda: (a := cset.status("west")["active"]) and a["node"] != gone and a,
                       "another gateway in charge", timeout=20)
    wait_until(lambda: cset.fetch("east", "eb", f"http://{west}/peer") == east, "east reaching west again",
               timeout=20)
    print(f"\ngateway failover {gone} -> {taken['node']}: traffic again after {time.monotonic() - failed:.1f} s")
    assert cset.fetch("west", caller, f"http://{east}/peer") == west
