"""`podnet doctor` on a real lab with cluster DNS, a NetworkPolicy and a Service (2
host-gw nodes): healthy says so, twice (the table check does not flap); a flushed
policy table and a deleted service table are found, named and re-applied by `--fix`;
DNS servers that stop answering are found and explained; a block still routed after
its lease expired is found and removed by `--fix`; an agent killed by its recorded PID
is named, and all is healthy once it is started again.

One lab for the module (namespaces pn-lab-dt<hex>-*), torn down by name; the agent this
module restarts is stopped by the PID it started. Faults are made only inside the lab's
namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from test_fabric_cluster import eventually

from cniharness import podnet_cli, topology_lab
from podnet.lab.sandbox import stop_process
from podnet.lab.state import lab_dir, owner_alive

pytestmark = pytest.mark.root

TOPOLOGY = {"nodes": [{"name": "node0"}, {"name": "node1"}],
            "pods": [{"name": "a", "node": "node0", "labels": {"app": "web"}},
                     {"name": "b", "node": "node1", "labels": {"app": "web"}}]}
OBJECTS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{protocol: TCP, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 80}]
"""
GHOST_BLOCK = "10.244.200.0/24"  # the lab leases blocks from 10.244.0.0/24 up


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp("doctor-tables")
    with topology_lab("dt", TOPOLOGY, workdir, "--fabric", "host-gw") as built:
        built["started"] = []
        try:
            (workdir / "objects.yaml").write_text(OBJECTS)
            podnet_cli("apply", "--lab", built["name"], "-f", str(workdir / "objects.yaml"))
            for node in built["nodes"].values():  # both tables in place before the first look
                assert eventually(lambda n=node: nft(n["netns"], "list", "tables").count("podnet-") >= 2, 10)
            yield built
        finally:
            for proc in built["started"]:  # by the PID this module started, never by name
                stop_process(proc)


def doctor(lab: dict, *flags: str) -> tuple[int, dict[str, dict]]:
    out = podnet_cli("doctor", "--lab", lab["name"], "-o", "json", *flags, check=False, timeout=90)
    return out.returncode, {n["node"]: n for n in json.loads(out.stdout)}


def nft(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", *argv], capture_output=True, text=True, check=True,
                          timeout=10).stdout


def ip(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", netns, *argv], capture_output=True, text=True, check=True, timeout=10).stdout


def found(node: dict, check: str) -> list[dict]:
    return [f for f in node["findings"] if f["check"] == check]


def test_a_healthy_lab_with_policy_services_and_dns_has_no_fault_twice(lab):
    for _ in range(2):
        code, nodes = doctor(lab)
        assert code == 0 and set(nodes) == set(lab["nodes"]), nodes
        assert all(not n["findings"] and not n.get("error") for n in nodes.values()), nodes


def test_a_flushed_policy_table_is_found_and_fix_re_applies_it(lab):
    netns = lab["nodes"]["node0"]["netns"]
    nft(netns, "flush", "table", "inet", "podnet-policy")  # its generation stamp survives: the agent never notices
    code, nodes = doctor(lab)
    tables = found(nodes["node0"], "nft")
    assert code == 1 and len(tables) == 1 and tables[0]["target"] == ["inet podnet-policy", "policy"], nodes
    assert "differs from what the agent applied" in tables[0]["problem"] and "rules in chain" in tables[0]["problem"]
    assert tables[0]["fixable"] and not found(nodes["node1"], "nft")
    code, nodes = doctor(lab, "--fix")
    assert code == 0 and not nodes["node0"]["findings"], nodes
    assert [f["target"] for f in nodes["node0"]["fixed"]] == [["inet podnet-policy", "policy"]]
    assert 'comment "NetworkPolicy default/web-in ingress[0]"' in nft(netns, "list", "table", "inet", "podnet-policy")


def test_a_deleted_service_table_is_found_and_fix_re_applies_it(lab):
    netns = lab["nodes"]["node1"]["netns"]
    nft(netns, "delete", "table", "inet", "podnet-svc")
    code, nodes = doctor(lab)
    tables = found(nodes["node1"], "nft")
    assert code == 1 and [f["problem"] for f in tables] == ["table inet podnet-svc is missing"], nodes
    code, nodes = doctor(lab, "--fix")
    assert code == 0 and not nodes["node1"]["findings"], nodes
    assert [f["target"] for f in nodes["node1"]["fixed"]] == [["inet podnet-svc", "services"]]
    assert "default/web:http" in nft(netns, "list", "table", "inet", "podnet-svc")


def test_dns_servers_that_do_not_answer_are_found_and_explained(lab):
    pods = lab["cluster_dns"]["pods"]
    for pod in pods.values():  # a table of the test's own, inside the lab's DNS pods: their port 53 goes silent
        nft(pod["netns"], "add table inet doctortest; add chain inet doctortest input "
                          "{ type filter hook input priority 0; }; add rule inet doctortest input udp dport 53 drop")
    try:
        code, nodes = doctor(lab, "--fix")
    finally:
        for pod in pods.values():
            nft(pod["netns"], "delete", "table", "inet", "doctortest")
    dns = found(nodes["node0"], "dns")
    problems = " | ".join(f["problem"] for f in dns)
    assert code == 1 and len(dns) == 2, nodes
    assert f"DNS pod (/run/netns/{pods['node0']['netns']}) does not answer" in problems
    assert f"at {lab['cluster_dns']['ip']} (the address pods are given) does not answer" in problems
    assert not any(f["fixable"] for f in dns) and not nodes["node0"]["fixed"]
    assert doctor(lab)[0] == 0


def test_a_block_still_routed_after_its_lease_expired_is_found_and_fix_removes_it(lab):
    from podnet.model.cluster import BlockClaim, NodeLease
    from podnet.store import open_store

    netns, via = lab["nodes"]["node0"]["netns"], lab["nodes"]["node1"]["underlay"]
    ghost = NodeLease("ghost", GHOST_BLOCK, via, "eth0", "host-gw", {}, time.time(), {})
    claim = BlockClaim("ghost", GHOST_BLOCK)
    with open_store(lab["store_url"]) as store:  # a node that leases a block, then dies
        store.put(claim.key, claim.encode(), 2.0)
        store.put(ghost.key, ghost.encode(), 2.0)
    assert eventually(lambda: GHOST_BLOCK in ip(netns, "route", "show", "proto", "77"), 5)
    assert eventually(lambda: GHOST_BLOCK not in ip(netns, "route", "show", "proto", "77"), 10)  # the fabric drops it
    leases = []
    for _ in range(3):  # left behind (as by a stuck node loop); its own repair pass (every 3 s) may win the race
        ip(netns, "route", "replace", GHOST_BLOCK, "via", via, "proto", "77")
        code, nodes = doctor(lab)
        leases = found(nodes["node0"], "leases")
        if leases:
            break
    assert leases and code == 1 and leases[0]["target"] == [GHOST_BLOCK] and leases[0]["fixable"], nodes
    assert f"block {GHOST_BLOCK} is still routed via {via} (podnet), but no live lease holds it" in leases[0]["problem"]
    assert not found(nodes["node0"], "fabric")  # named once, as the expired lease
    ip(netns, "route", "replace", GHOST_BLOCK, "via", via, "proto", "77")
    code, nodes = doctor(lab, "--fix")
    assert code == 0 and not nodes["node0"]["findings"], nodes
    assert GHOST_BLOCK not in ip(netns, "route", "show", "proto", "77")


def test_a_killed_agent_is_named_and_healthy_again_after_its_restart(lab):
    entry = json.loads((lab_dir(lab["name"]) / "procs.json").read_text())["agent/node1"]
    assert owner_alive(entry["owner"])
    os.kill(entry["pid"], signal.SIGKILL)  # by its recorded pid
    assert eventually(lambda: not owner_alive(entry["owner"]), 5)
    code, nodes = doctor(lab)
    assert code == 1 and "no podnet agent answers" in nodes["node1"]["error"], nodes
    assert "node0" in nodes and not nodes["node0"].get("error")
    table = podnet_cli("doctor", "--lab", lab["name"], check=False, timeout=90)
    assert table.returncode == 1 and "node1" in table.stdout
    with open(lab_dir(lab["name"]) / "logs" / "agent_node1.doctor-test.log", "ab") as log:
        lab["started"].append(subprocess.Popen(entry["argv"], stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))
    assert eventually(lambda: doctor(lab)[0] == 0, 30), doctor(lab)
