"""Container records, finishing and the agent's sweep decisions, over the in-memory
store and temporary paths (no root, no namespaces)."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network

import pytest

from podnet import keys
from podnet.containers import lifecycle, spec
from podnet.containers.network import ContainerNetwork, load_network
from podnet.containers.records import Records
from podnet.containers.spec import ContainerError, NameInUse, NetworkChoice
from podnet.model.base import CorruptRecord
from podnet.model.container import ContainerRecord
from podnet.model.network import NetworkRecord, Subnet
from podnet.state import StatePaths
from podnet.store.memory import MemoryStore


@pytest.fixture
def host(tmp_path) -> lifecycle.Host:
    return lifecycle.Host(StatePaths(tmp_path), MemoryStore(), str(tmp_path / "no.sock"))


def _record(name: str = "c", mode: str = "none", **kw) -> ContainerRecord:
    cid = spec.new_id()
    req = spec.RunRequest(name=name, choice=NetworkChoice(mode), cmd=("true",))
    return spec.new_record(req, cid, str(spec.netns_path(cid)) if mode == "none" else None, name, "1:1").but(**kw)


def test_names_are_unique_and_updates_are_keyed_by_id(host):
    records = Records(host.store)
    first = _record()
    records.create(first)
    with pytest.raises(NameInUse, match="already in use"):
        records.create(_record())
    assert records.get("c") == first and records.list() == [first]
    assert records.patch("c", "other-id", state="running") is None
    assert records.patch("c", first.id, state="running").state == "running"
    assert records.get("c").state == "running"
    assert records.update("c", first.id, lambda rec: None) is None
    assert not records.delete("c", "other-id")
    assert records.delete("c", first.id) and records.get("c") is None
    with pytest.raises(ContainerError, match="no such container"):
        records.require("c")


def test_new_record_is_stored_as_release_0_1_0_wrote_it(host):
    record = _record()
    host.records.create(record)
    assert json.loads(host.store.get(record.key).value) == {
        "name": "c", "id": record.id, "network_mode": "none", "network": None, "joined": None,
        "netns": record.netns, "ifname": "eth0", "ips": [], "mac": None, "aliases": [], "hostname": "c",
        "ports": [], "cmd": ["true"], "pid": None, "process": None, "supervisor": "1:1", "state": "created",
        "exit_code": None, "detached": False, "auto_remove": False, "created": record.created, "started": None,
        "finished": None,
    }


def test_a_corrupt_record_is_skipped_by_list_and_named_by_get(host, caplog):
    good = _record("good")
    host.records.create(good)
    host.store.put(keys.container("bad"), json.dumps({"name": "bad", "id": "x", "state": "lost"}))
    host.store.put(keys.container("junk"), "{not json")
    assert host.records.list() == [good]
    assert host.records.list() == [good]
    bad, junk = keys.container("bad"), keys.container("junk")
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping {bad}: field 'state' must be one of created, running, exited, got 'lost'",
        f"skipping {junk}: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
    ]  # once each, however often the sweep lists
    with pytest.raises(CorruptRecord, match=f"{bad}: field 'state'"):
        host.records.require("bad")


def test_finish_claims_once(host, tmp_path):
    record = _record(state="running", pid=1)
    host.records.create(record)
    host.files(record.id).root.mkdir(parents=True)
    done = lifecycle.finish(host, "c", record.id, 3)
    assert done.state == "exited" and done.exit_code == 3 and done.finished
    assert lifecycle.finish(host, "c", record.id, 9) is None  # already finished
    assert host.records.get("c").exit_code == 3


def test_finish_auto_remove_purges(host):
    record = _record(state="running", auto_remove=True)
    host.records.create(record)
    host.files(record.id).root.mkdir(parents=True)
    lifecycle.finish(host, "c", record.id, 0)
    assert host.records.get("c") is None and not host.files(record.id).root.exists()


def test_remove_refuses_running_without_force(host):
    host.records.create(_record(state="running", process="1:1"))
    with pytest.raises(ContainerError, match="is running"):
        lifecycle.remove(host, "c", force=False)


@pytest.mark.parametrize(("state", "process_alive", "supervisor_alive", "mine", "expected"), [
    ("running", False, False, False, True),   # orphan of a dead agent/CLI whose process died
    ("running", False, True, False, False),   # its live CLI/agent will finish it
    ("running", True, False, False, False),   # still running (orphan): keep polling
    ("running", False, False, True, False),   # ours: the reaper finishes it
    ("created", False, False, False, True),   # a `run` that crashed mid-way
    ("created", False, True, False, False),   # a `run` in progress
    ("exited", False, False, False, False),
])
def test_stale(state, process_alive, supervisor_alive, mine, expected):
    record = ContainerRecord("c", "i", "none", state=state, process="p", supervisor="s")
    alive = {"p": process_alive, "s": supervisor_alive}.get
    assert lifecycle.stale(record, {"i"} if mine else set(), alive) is expected


def _network(host, name="net") -> None:
    record = NetworkRecord(name, "0" * 64, "bridge", (
        Subnet(ip_network("fd00::/64"), ip_address("fd00::1")),
        Subnet(ip_network("10.9.0.0/24"), ip_address("10.9.0.1"))))
    host.store.put(record.key, record.encode())
    host.paths.net_d.mkdir(parents=True, exist_ok=True)
    conflist = {"cniVersion": "1.0.0", "name": name,
                "plugins": [{"type": "podnet", "capabilities": {"portMappings": True}}]}
    (host.paths.net_d / f"{name}.conflist").write_text(json.dumps(conflist))


def test_load_network_and_checks(host):
    with pytest.raises(ContainerError, match="network nope not found"):
        load_network(host.store, host.paths, NetworkChoice("bridge", "nope"))
    with pytest.raises(ContainerError, match="default network 'podnet' does not exist") as err:
        load_network(host.store, host.paths, spec.parse_network(None))
    assert "podnet network create podnet" in err.value.details
    _network(host)
    net = load_network(host.store, host.paths, NetworkChoice("bridge", "net"))
    assert isinstance(net, ContainerNetwork) and net.nameserver() == "10.9.0.1"
    net.check_request(None, ({"hostPort": 1},))
    with pytest.raises(ContainerError, match="outside network net"):
        net.check_request("10.10.0.5", ())
    with pytest.raises(ContainerError, match="does not take --ip"):
        net.check_request("10.9.0.5", ())


def test_load_network_without_conflist(host):
    host.store.put(keys.network("net"), NetworkRecord("net", "0" * 64, "bridge", ()).encode())
    with pytest.raises(ContainerError, match="has no conflist"):
        load_network(host.store, host.paths, NetworkChoice("bridge", "net"))
