"""The node's mesh service without a kernel: what a converge pass decides from the
store (agent/mesh_service.py), with a fake agent and a memory store."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from podnet import keys
from podnet.agent.jitter import SHARE
from podnet.agent.mesh_service import RESYNC_SECONDS, MeshService
from podnet.cluster.options import NodeOptions
from podnet.model.policy import PodRecord
from podnet.state import StatePaths
from podnet.store.memory import MemoryStore


def agent(tmp_path: Path, store: MemoryStore) -> SimpleNamespace:
    return SimpleNamespace(node_options=NodeOptions("node0"), state=StatePaths(tmp_path), store_path="mem",
                           service=SimpleNamespace(store=lambda _path: store), metrics=None)


def namespace(store: MemoryStore, name: str, labels: dict[str, str]) -> None:
    store.put(keys.object_key(keys.NAMESPACES, name),
              json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}))


def test_nothing_meshed_costs_one_listing_and_builds_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    namespace(store, "shop", {})
    pod = PodRecord("shop", "web", "node0", ("10.244.0.5",), {"app": "web"})
    store.put(pod.key, pod.encode())
    service = MeshService(agent(tmp_path, store))
    service.converge()
    assert service.sidecars == {} and service.passes == 1 and service.problems == {}
    assert store.get(keys.MESH_CA) is None  # no CA made while nothing is meshed


def test_a_meshed_pod_not_attached_here_yet_is_waited_for(tmp_path: Path) -> None:
    store = MemoryStore()
    namespace(store, "shop", {"podnet.io/mesh": "enabled"})
    pod = PodRecord("shop", "web", "node0", ("10.244.0.5",), {"app": "web"},
                    ({"name": "http", "port": 80, "protocol": "TCP"},))
    store.put(pod.key, pod.encode())
    service = MeshService(agent(tmp_path, store))
    service.converge()
    assert service.sidecars == {}  # no endpoint record on node0 names its namespace yet
    assert store.get(keys.MESH_CA) is not None  # a meshed pod on this node: the CA exists
    assert (tmp_path / "mesh" / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_the_periodic_pass_is_drawn_within_its_jitter_each_time(tmp_path: Path) -> None:
    """At a fixed 5 s, a 50-node lab's agents listed every pod in step after the first
    ADD woke them all at once (the ADDs of those moments took twice their median)."""
    service = MeshService(agent(tmp_path, MemoryStore()))
    shortest, longest = RESYNC_SECONDS * (1 - SHARE), RESYNC_SECONDS * (1 + SHARE)
    service.spread = lambda: 0.0
    assert service.next_pass_time(100.0) == 100.0 + shortest
    service.spread = lambda: 0.5
    assert service.next_pass_time(100.0) == 100.0 + RESYNC_SECONDS
    service2 = MeshService(agent(tmp_path, MemoryStore()))  # the real draw: each agent, each pass
    drawn = {service2.next_pass_time(0.0) for _ in range(50)}
    assert len(drawn) > 25 and all(shortest <= d < longest for d in drawn)
