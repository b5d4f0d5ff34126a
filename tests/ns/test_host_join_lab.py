"""`podnet host join` in a lab, on the real kernel: a plain host (a VM-like namespace,
no agent of the fabric) joined with `lab host add --join` reaches a pod on every node
from its podnet address, pods reach it there, `get hosts` shows it, a selectorless
Service whose only endpoint is the host (an EndpointSlice by address) is reached
through its ClusterIP, a second join changes nothing, and `host leave` undoes it all.

One lab per fabric (vxlan, host-gw, bgp: 2 nodes, 1 pod each; macvlan in
test_macvlan_fabric_lab.py), torn down by name. Each node's agent routes the host's
podnet address back via its underlay (hostjoin/routes.py `node_routes`): the fixture
waits for those routes.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest
from test_fabric_cluster import eventually
from test_lab_cluster import HTTP, TCP

from cniharness import podnet_cli as podnet
from cniharness import wait_until
from podnet import keys
from podnet.lab.state import state_file
from podnet.store import open_store

pytestmark = pytest.mark.root

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: vm, namespace: default}
spec:
  ports: [{name: http, port: 8080, targetPort: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: vm-1, namespace: default, labels: {kubernetes.io/service-name: vm}}
addressType: IPv4
endpoints: [{addresses: ["%s"]}]
ports: [{name: http, port: 80}]
"""


class Lab:
    def __init__(self, name: str) -> None:
        self.name = name
        self.state = json.loads(state_file(name).read_text())
        self.store_url = self.state["store_url"]
        self.vm_ip = ""  # the host's podnet address, once joined

    def exec(self, target: str, *cmd: str) -> subprocess.CompletedProcess:
        return podnet("lab", "exec", "--lab", self.name, target, "--", *cmd)

    def py(self, target: str, code: str, *args: str) -> str:
        return self.exec(target, sys.executable, "-c", code, *args).stdout.strip()

    def pod_ip(self, pod: str) -> str:
        state = json.loads(state_file(self.name).read_text())
        return state["pods"][f"default/{pod}"]["ips"][0].split("/")[0]

    def in_host(self, *args: str) -> subprocess.CompletedProcess:
        return self.exec("vm1", sys.executable, "-m", "podnet.cli", *args, "--store", self.store_url)

    def ip(self, target: str, *args: str) -> str:
        return self.exec(target, "ip", *args).stdout

    def routes_back(self) -> bool:
        """Every node's agent routes the host's podnet address via its underlay (node_routes)."""
        return all(f"via {self.vm_underlay}" in self.ip(node, "route", "show", f"{self.vm_ip}/32")
                   for node in ("node0", "node1"))


@pytest.fixture(scope="module", params=["vxlan", "host-gw", "bgp"])
def lab(request) -> Iterator[Lab]:
    name = f"j{secrets.token_hex(2)}"
    try:
        podnet("lab", "up", "--lab", name, "--nodes", "2", "--pods-per-node", "1", "--fabric", request.param)
        out = podnet("lab", "host", "add", "--lab", name, "vm1", "--join", "-o", "json").stdout
        built = Lab(name)
        built.vm_ip = json.loads(out)["pod_ip"]
        built.vm_underlay = json.loads(state_file(name).read_text())["hosts"]["vm1"]["underlay"]
        assert wait_until(built.routes_back, "the nodes' routes back to vm1", timeout=15)
        yield built
    finally:
        if state_file(name).exists():
            podnet("lab", "down", "--lab", name)


def test_the_host_reaches_a_pod_on_every_node_from_its_podnet_address(lab):
    assert ipaddress.IPv4Address(lab.vm_ip) in CLUSTER
    for pod in ("p0-0", "p1-0"):
        seen = lab.py("vm1", HTTP, f"http://{lab.pod_ip(pod)}/peer")
        assert seen == lab.vm_ip, (pod, seen)  # the pod saw the podnet address, not 172.31.0.190


def test_pods_reach_the_host_at_its_podnet_address(lab):
    for pod in ("p0-0", "p1-0"):
        assert lab.py(f"default/{pod}", TCP, lab.vm_ip, "80") == "vm1 hello"
        assert lab.py(f"default/{pod}", HTTP, f"http://{lab.vm_ip}/peer") == lab.pod_ip(pod)  # not masqueraded


def test_get_hosts_shows_the_joined_host(lab):
    docs = json.loads(podnet("get", "hosts", "--lab", lab.name, "-o", "json").stdout)
    vm1 = next(d for d in docs if d["metadata"]["name"] == "vm1")
    assert vm1["spec"] == {"underlayIP": "172.31.0.190", "podIP": lab.vm_ip, "rack": 0, "joined": True}


def test_a_service_whose_only_endpoint_is_the_host(lab, tmp_path):
    path = tmp_path / "svc.yaml"
    path.write_text(SERVICE % lab.vm_ip)
    podnet("apply", "--lab", lab.name, "-f", str(path))
    svc = json.loads(podnet("get", "svc", "--lab", lab.name, "-o", "json").stdout)
    cluster_ip = next(d["spec"]["clusterIP"] for d in svc if d["metadata"]["name"] == "vm")
    def answer() -> str:
        proc = podnet("lab", "exec", "--lab", lab.name, "default/p1-0", "--", sys.executable, "-c", TCP,
                      cluster_ip, "8080", check=False)
        return proc.stdout.strip()

    assert eventually(lambda: answer() == "vm1 hello", timeout=10), answer()


def test_a_second_join_changes_nothing(lab):
    before = (lab.ip("vm1", "-4", "addr", "show", "dev", "eth0"), lab.ip("vm1", "route", "show", "proto", "79"))
    out = json.loads(lab.in_host("host", "join", "vm1", "--apply", "-o", "json").stdout)
    assert out["reused"] and out["applied"] == [] and out["record"]["pod_ip"] == lab.vm_ip
    assert (lab.ip("vm1", "-4", "addr", "show", "dev", "eth0"), lab.ip("vm1", "route", "show", "proto", "79")) == before
    assert len(out["routes"]) == 2 and before[1].count("src " + lab.vm_ip) == 2  # one route per node's block


def test_leave_removes_the_address_the_routes_and_the_record(lab):
    lab.in_host("host", "leave", "vm1", "--apply")
    assert lab.vm_ip not in lab.ip("vm1", "-4", "addr", "show", "dev", "eth0")
    assert lab.ip("vm1", "route", "show", "proto", "79").strip() == ""
    docs = json.loads(podnet("get", "hosts", "--lab", lab.name, "-o", "json").stdout)
    assert all(d["metadata"]["name"] != "vm1" for d in docs)
    with open_store(lab.store_url, create=False) as store:
        assert lab.vm_ip not in {e.key.rsplit("/", 1)[1] for e in store.list(keys.ipam_addresses("cluster"))}
