"""Stores written by release 0.1.0 (tests/fixtures/release-0.1.0, made by its make.sh
through the release's own CLI) read correctly with today's schema: every record
decodes, validates and encodes back to the very bytes the release stored, and the
services that read them see what the release meant."""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from podnet import keys
from podnet.cluster.leases import list_leases
from podnet.ipam.service import IpamService
from podnet.model.endpoint import EndpointRecord
from podnet.model.network import NetworkRecord
from podnet.model.records import decode
from podnet.policy.world import load_world, parse_stored
from podnet.store import open_store
from podnet.store.base import Entry, dumps

FIXTURES = Path(__file__).parents[1] / "fixtures" / "release-0.1.0"
STORES = sorted(FIXTURES.glob("store-*.db"))


def raw_entries(path: Path) -> list[Entry]:
    """The rows as the release left them (read-only: no WAL, no expiry sweep)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT key, value, revision, create_revision FROM kv ORDER BY key").fetchall()
    return [Entry(*row) for row in rows]


@pytest.fixture
def store(tmp_path, request):
    copy = tmp_path / request.param
    shutil.copy(FIXTURES / request.param, copy)
    with open_store(str(copy)) as s:
        yield s


def test_the_fixtures_cover_every_key_family():
    seen = {next(f.pattern for f in keys.FAMILIES if e.key.startswith(f.prefix)
                 and (f.prefix != keys.IPAM or ("/last/" in e.key) == ("/last/" in f.pattern)))
            for path in STORES for e in raw_entries(path)}
    assert seen == {f.pattern for f in keys.FAMILIES if f.since == "0.1.0"}  # newer ones: not in 0.1.0


@pytest.mark.parametrize("path", STORES, ids=lambda p: p.name)
def test_every_record_encodes_back_to_the_stored_bytes(path):
    for entry in raw_entries(path):
        record = decode(entry)
        if record is None:  # a policy manifest: parsed by its kind, rendered the same
            assert dumps(parse_stored(entry.key, entry.value).to_dict()) == entry.value, entry.key
        elif isinstance(record, str):  # round-robin marks and remembered store paths
            assert entry.value in (record, json.dumps(record)), entry.key
        else:
            assert record.encode() == entry.value, entry.key


@pytest.mark.parametrize("store", ["store-lab.db"], indirect=True)
def test_a_lab_store_of_the_release(store):
    leases = {lease.name: lease for lease in list_leases(store)}
    assert {n: (lease.block, lease.underlay_ip, lease.fabric) for n, lease in leases.items()} == {
        "node0": ("10.244.0.0/24", "172.31.0.10", "host-gw"),
        "node1": ("10.244.1.0/24", "172.31.0.11", "host-gw")}
    held = {r.address: r.attachment for r in IpamService(store).reservations("cluster")}
    assert held == {"10.244.0.2": ("lab-fx-default-p0-0", "eth0"), "10.244.1.2": ("lab-fx-default-p1-0", "eth0")}
    world, _ = load_world(store)
    pods = {f"{e.namespace}/{e.name}": e for e in world.endpoints if e.kind == "pod"}
    assert pods["default/p1-0"].labels["tier"] == "web" and pods["default/p1-0"].ips == ("10.244.1.2",)
    vm1 = world.endpoint("vm1")
    assert vm1.ips == ("172.31.0.190",)  # its address from the host record, as the release did
    assert [cp.name for cp in world.cluster_policies] == ["block-vm"]
    assert [t.name for t in world.tiers] == ["security", "default"]
    assert dict(world.namespaces["default"]) == {"kubernetes.io/metadata.name": "default", "team": "blue"}


@pytest.mark.parametrize("store", ["store-other.db"], indirect=True)
def test_pending_and_ready_endpoints_of_the_release(store):
    records = {keys.parse_endpoint(e.key)[1]: EndpointRecord.decode(e.value) for e in store.list(keys.endpoints())}
    assert records["fixture1"].state == "ready" and records["fixture1"].host_links == ("pn48bb96ba860",)
    assert records["fixture1"].nat is False and records["fixture1"].ips == ("10.77.0.2/24",)
    pending = records["fixture2"]
    assert pending.pending and pending.owner == "8979:17107" and pending.nat is None
    assert pending.cni_path and pending.config["name"] == "other"
    reservations = {r.address: r.state for r in IpamService(store).reservations("other")}
    assert reservations == {"10.77.0.2": "ready", "10.77.0.3": "pending"}


@pytest.mark.parametrize("store", ["store-host.db"], indirect=True)
def test_networks_and_containers_of_the_release(store):
    nets = {e.key: NetworkRecord.from_json(e.json()) for e in store.list(keys.NETWORKS)}
    web, secret = nets[keys.network("web")], nets[keys.network("secret")]
    assert web.nameserver() == "10.89.5.1" and web.labels == {"tier": "front"} and not web.internal
    assert secret.internal and str(secret.subnets[0].subnet) == "10.89.0.0/24"
    containers = {e.key: decode(e) for e in store.list(keys.CONTAINERS)}
    api = containers[keys.container("api")]
    assert (api.state, api.network, api.aliases, api.ports[0]["hostPort"]) == ("running", "web", ("backend",), 8080)
    assert containers[keys.container("once")].exit_code == 0
    stores = [json.loads(e.value) for e in store.list(keys.STORES)]
    assert any(path.endswith("/other/podnet.db") for path in stores)


@pytest.mark.parametrize("store", ["store-other.db"], indirect=True)
def test_records_of_the_release_have_no_node_and_gain_none(store):
    """A record written before nodes were recorded belongs to the namespace that wrote
    it (node ""), its owner tag names no node, and it encodes without a `node` key; one
    with a node keeps it, right after host_netns."""
    for entry in store.list(keys.endpoints()):
        record = EndpointRecord.decode(entry.value)
        assert record.node == "" and '"node"' not in record.encode()
        with_node = replace(record, node="node-b")
        text = with_node.encode()
        dev, inode = record.host_netns
        assert f'"host_netns": [{dev}, {inode}], "node": "node-b", "config"' in text
        assert EndpointRecord.decode(text) == with_node
    assert {r.node for r in IpamService(store).reservations("other")} == {""}
