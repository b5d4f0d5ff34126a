"""Two labs joined into a clusterset over a WAN (issue 17), on the real kernel.

west (10.244.0.0/16, services 10.96.0.0/16) and east (10.245.0.0/16, 10.97.0.0/16),
2 nodes and 1 pod each, vxlan; a WAN `pn-wan-c<hex>` (podnet wan up) into which both
clusters' node0 and west's node1 are plugged as gateway candidates; `podnet cluster
join east --peer-lab east --lab west`. Shown: a pod on a node that is no gateway
reaches a pod of the other cluster behind its non-gateway node, both ways, and the far
pod sees the caller's own address (no masquerade); `cluster status` names the gateway
in charge on both sides; a join whose ranges overlap is refused with the ranges named
and nothing written; the gateway's agent killed, the other candidate takes over and
the pods reach each other again (the time it took is printed).

Everything is torn down by name: both labs (`lab down`), then the WAN (`wan down`).
"""

from __future__ import annotations

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
from test_lab_cluster import HTTP

from cniharness import podnet_cli as podnet
from cniharness import wait_until
from podnet import keys
from podnet.lab.state import lab_dir, state_file
from podnet.procs import owner_alive
from podnet.store import open_store

pytestmark = pytest.mark.root

RANGES = {"west": ("10.244.0.0/16", "10.96.0.0/16"), "east": ("10.245.0.0/16", "10.97.0.0/16")}


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


@pytest.fixture(scope="module")
def cset(tmp_path_factory) -> Iterator[Clusterset]:
    tag = secrets.token_hex(2)
    names, wan = {"west": f"w{tag}", "east": f"e{tag}"}, f"c{tag}"
    try:
        podnet("wan", "up", wan)
        for role, (pods, services) in RANGES.items():
            podnet("lab", "up", "--lab", names[role], "--nodes", "2", "--pods-per-node", "1",
                   "--cluster-cidr", pods, "--service-cidr", services, "--no-cluster-dns")
        built = Clusterset(names, wan)
        for role, node in (("west", "node0"), ("east", "node0"), ("west", "node1")):
            podnet("cluster", "gateway", "add", node, "--wan", wan, "--lab", names[role])
        podnet("cluster", "join", names["east"], "--peer-lab", names["east"], "--lab", names["west"])
        for role in names:
            wait_until(lambda r=role: built.healthy(r), f"{role}'s clusterset healthy", timeout=30)
        yield built
    finally:
        for name in names.values():
            if state_file(name).exists():
                podnet("lab", "down", "--lab", name)
        podnet("wan", "down", wan)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(f"-{n}-" in listed for n in names.values()) and f"pn-wan-{wan}" not in listed


def test_pods_behind_non_gateway_nodes_reach_each_other_with_their_own_addresses(cset: Clusterset) -> None:
    west, east = cset.pod_ip("west", "p1-0"), cset.pod_ip("east", "p1-0")
    assert west.startswith("10.244.") and east.startswith("10.245.")
    assert cset.fetch("west", "p1-0", f"http://{east}/peer") == west  # the far pod saw our pod, not a node
    assert cset.fetch("east", "p1-0", f"http://{west}/peer") == east
    assert cset.fetch("east", "p0-0", f"http://{cset.pod_ip('west', 'p0-0')}/peer") == cset.pod_ip("east", "p0-0")


def test_status_names_the_gateway_in_charge_and_the_peer_on_both_sides(cset: Clusterset) -> None:
    for role, other in (("west", "east"), ("east", "west")):
        status = cset.status(role)
        assert status["cluster"]["name"] == cset.names[role]
        assert [p["name"] for p in status["peers"]] == [cset.names[other]]
        assert status["active"]["node"] in {c["node"] for c in status["candidates"]}
        roles = {n["node"]: n["role"] for n in status["nodes"]}
        assert roles[status["active"]["node"]] == "gateway" and sorted(roles.values()).count("gateway") == 1


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


def test_the_other_candidate_takes_over_when_the_gateways_agent_dies(cset: Clusterset) -> None:
    """Last: west's gateway in charge loses its agent for good."""
    west, east = cset.pod_ip("west", "p1-0"), cset.pod_ip("east", "p1-0")
    gone = cset.status("west")["active"]["node"]
    entry = json.loads((lab_dir(cset.names["west"]) / "procs.json").read_text())[f"agent/{gone}"]
    os.kill(entry["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not owner_alive(entry["owner"]), "the agent's end", timeout=10)
    taken = wait_until(lambda: (a := cset.status("west")["active"]) and a["node"] != gone and a,
                       "another gateway in charge", timeout=20)
    wait_until(lambda: cset.fetch("east", "p1-0", f"http://{west}/peer") == east, "east reaching west again",
               timeout=20)
    print(f"\ngateway failover {gone} -> {taken['node']}: traffic again after {time.monotonic() - killed:.1f} s")
    assert cset.fetch("west", "p1-0", f"http://{east}/peer") == west
