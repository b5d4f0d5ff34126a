"""ChangeWait (agent/service_thread.py): a loop's sleep that ends at a change under its
prefix, and the readiness and clusterset loops built on it. An idle 50-node etcd lab's agents read a
revision and listed pods and clusterset records every second (160 reads a second at
the server, 70 without them)."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from podnet import keys
from podnet.agent.clusterset_service import ClustersetService
from podnet.agent.readiness_service import ReadinessService
from podnet.agent.service_thread import ChangeWait
from podnet.clusterset.model import ClusterInfo
from podnet.model.policy import PodRecord
from podnet.model.probe import parse_probe
from podnet.store import open_store
from podnet.store.base import Store


@pytest.fixture
def stores(tmp_path):
    path = str(tmp_path / "s.db")
    with open_store(path) as store, open_store(path) as writer:  # writer: another process, as far as it knows
        yield store, writer


def _later(seconds: float, fn) -> threading.Timer:
    timer = threading.Timer(seconds, fn)
    timer.start()
    return timer


def test_a_quiet_wait_lasts_its_timeout(stores) -> None:
    store, _ = stores
    changes = ChangeWait("policy/pods/")
    changes.mark(store.revision())
    started = time.monotonic()
    assert changes.wait(store, 0.4, threading.Event()) is False
    assert time.monotonic() - started >= 0.3


def test_a_change_under_the_prefix_ends_the_wait_and_one_elsewhere_does_not(stores) -> None:
    store, writer = stores
    changes = ChangeWait("policy/pods/")
    changes.mark(store.revision())
    timer = _later(0.1, lambda: writer.put("ipam/x", "1"))
    started = time.monotonic()
    assert changes.wait(store, 0.6, threading.Event()) is False
    assert time.monotonic() - started >= 0.5  # not woken by it
    timer.join()
    timer = _later(0.1, lambda: writer.put("policy/pods/default/a", "{}"))
    started = time.monotonic()
    assert changes.wait(store, 5, threading.Event()) is True
    assert time.monotonic() - started < 4
    timer.join()
    assert changes.wait(store, 0.2, threading.Event()) is False  # it moved past what it saw


def test_without_a_mark_it_asks_for_a_read(stores) -> None:
    store, _ = stores
    assert ChangeWait("x/").wait(store, 0.05, threading.Event()) is True


class _Counting:
    """The store the readiness loop reads, counting what it asks."""

    def __init__(self, inner: Store) -> None:
        self.inner, self.calls = inner, {"revision": 0, "list": 0, "snapshot": 0}

    def revision(self) -> int:
        self.calls["revision"] += 1
        return self.inner.revision()

    def list(self, prefix: str) -> Any:
        self.calls["list"] += 1
        return self.inner.list(prefix)

    def snapshot(self, prefix: str) -> Any:
        self.calls["snapshot"] += 1
        return self.inner.snapshot(prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _agent(counting: _Counting) -> Any:
    """What a loop needs of its agent: the node's name and its store."""
    return SimpleNamespace(node_options=SimpleNamespace(node="n1"), store_path="s",
                           service=SimpleNamespace(store=lambda _path: counting))


def _reads_while_idle(counting: _Counting) -> tuple[dict[str, int], dict[str, int]]:
    """The store calls before and after 2.5 s of nothing happening (past its first pass)."""
    time.sleep(0.5)
    before = dict(counting.calls)
    time.sleep(2.5)
    return before, dict(counting.calls)


def _until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)


def _new_probed_pod(writer: Store) -> None:
    pod = PodRecord("default", "a", "n1", ("127.0.0.1",), {}, ({"name": "http", "port": 1, "protocol": "TCP"},),
                    readiness=parse_probe({"tcpSocket": {"port": "http"}, "initialDelaySeconds": 60}))
    writer.put(pod.key, pod.encode())


def _clusterset_self(writer: Store) -> None:
    writer.put(keys.CLUSTERSET_SELF, json.dumps(ClusterInfo("west", "10.244.0.0/16", "10.96.0.0/16").to_json()))


@pytest.mark.parametrize(("loop", "change", "seen"), [
    # readiness: was a revision a second (and a listing when it moved); the new pod is tracked
    (ReadinessService, _new_probed_pod, lambda s: [p["pod"] for p in s.status()["pods"]] == ["default/a"]),
    # clusterset, none set up: was a listing a second; a pass reads the new record (no peers: still quiet)
    (ClustersetService, _clusterset_self, lambda s: s.status().get("me") == "west"),
], ids=["readiness", "clusterset"])
def test_a_loop_reads_nothing_while_nothing_changes_and_follows_a_change(stores, loop, change, seen) -> None:
    store, writer = stores
    counting = _Counting(store)
    service = loop(_agent(counting))
    service.start()
    try:
        before, after = _reads_while_idle(counting)
        assert after == before
        change(writer)
        _until(lambda: seen(service))
        assert seen(service)
    finally:
        service.stop()
