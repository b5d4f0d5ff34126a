"""`podnet network create --driver macvlan --vlan N` (and Docker's `--parent IF.N`):
the option's checks, the record (a network without a VLAN keeps the bytes older
releases wrote), the conflist's `vlan`, and the CLI in process (no root: the parent
is `lo`, which every namespace has)."""

from __future__ import annotations

import json

import pytest

from podnet.cli import main
from podnet.cni.config import parse_conf
from podnet.errors import InvalidConfig
from podnet.model.base import CorruptRecord
from podnet.model.network import NetworkRecord
from podnet.networks import conflist
from podnet.networks.plan import NetworkRequest, plan_network, split_parent
from podnet.runtime.libcni import plugin_config
from podnet.state import StatePaths
from podnet.store import open_store

ID = "0123456789" + "b" * 54


def plan(**kw) -> NetworkRecord:
    return plan_network(NetworkRequest(name="mv", driver=kw.pop("driver", "macvlan"), **kw), [], ID, 1.0)


@pytest.mark.parametrize(("parent", "vlan", "want"), [
    ("eth0", 10, ("eth0", 10)),
    ("eth0.10", None, ("eth0", 10)),
    ("eth0.10", 10, ("eth0", 10)),
    ("eth0", None, ("eth0", None)),
    ("bond0.4094", None, ("bond0", 4094)),
    ("eth0.x", None, ("eth0.x", None)),  # no numeric suffix: a plain interface name
])
def test_docker_parent_form_splits_into_parent_and_vlan(parent, vlan, want):
    assert split_parent(parent, vlan) == want


def test_vlan_lands_in_record_and_conflist():
    record = plan(parent="eth0.10", subnets=["192.168.10.0/24"])
    assert (record.parent, record.vlan) == ("eth0", 10)
    doc = conflist.render(record, "/run/podnet/t.sock", "/var/lib/t")
    plugin = doc["plugins"][0]
    assert (plugin["mode"], plugin["master"], plugin["vlan"]) == ("macvlan", "eth0", 10)
    conflist.validate(doc)
    assert parse_conf(plugin_config(doc, plugin, None)).vlan == 10  # what the plugin sees at ADD


@pytest.mark.parametrize(("kw", "message"), [
    ({"parent": "eth0", "vlan": 0}, "invalid --vlan 0"),
    ({"parent": "eth0", "vlan": 4095}, "invalid --vlan 4095"),
    ({"parent": "eth0.4095"}, "invalid --vlan 4095"),
    ({"parent": "eth0.0"}, "invalid --vlan 0"),
    ({"parent": "eth0.10", "vlan": 20}, "--parent eth0.10 names VLAN 10 but --vlan is 20"),
    ({"driver": "bridge", "vlan": 10}, "--vlan is only for macvlan networks"),
    ({"vlan": 10}, "macvlan networks need --parent"),
    ({"parent": "enp0s31f6abcd", "vlan": 100}, "would be named enp0s31f6abcd.100, longer than 15 bytes"),
])
def test_bad_vlan_requests_name_the_option(kw, message):
    with pytest.raises(InvalidConfig) as err:
        plan(**kw)
    assert message in err.value.msg


def test_record_without_vlan_keeps_its_bytes():
    record = plan(parent="eth0", subnets=["192.168.10.0/24"])
    assert record.vlan is None and '"vlan"' not in record.encode()
    assert NetworkRecord.from_json(json.loads(record.encode())).encode() == record.encode()


def test_record_with_vlan_roundtrips_with_vlan_after_parent():
    record = plan(parent="eth0", vlan=300, subnets=["192.168.10.0/24"])
    raw = record.to_json()
    assert list(raw)[list(raw).index("parent") + 1] == "vlan" and raw["vlan"] == 300
    assert NetworkRecord.from_json(raw) == record
    assert NetworkRecord.from_json(json.loads(record.encode())).encode() == record.encode()


@pytest.mark.parametrize(("change", "message"), [
    ({"vlan": 5000}, "field 'vlan' must be between 1 and 4094"),
    ({"vlan": "10"}, "field 'vlan' must be an integer"),
    ({"driver": "bridge", "parent": None}, "field 'vlan' applies to macvlan networks only"),
])
def test_stored_record_with_a_bad_vlan_is_refused(change, message):
    raw = {**plan(parent="eth0", vlan=10, subnets=["192.168.10.0/24"]).to_json(), **change}
    with pytest.raises(CorruptRecord) as err:
        NetworkRecord.from_json(raw)
    assert message in str(err.value)


def cli(tmp_path, *args: str) -> int:
    return main(["network", "create", "--state-dir", str(tmp_path / "state"), "--socket",
                 str(tmp_path / "none.sock"), *args])


def test_cli_stores_and_renders_the_vlan(tmp_path, capsys):
    assert cli(tmp_path, "mv", "-d", "macvlan", "--parent", "lo.42", "--subnet", "192.168.42.0/24",
               "-o", "json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["parent"], shown["vlan"]) == ("lo", 42)
    paths = StatePaths(tmp_path / "state")
    with open_store(str(paths.store)) as store:
        assert store.get_json("networks/mv")["vlan"] == 42
    plugin = json.loads((paths.net_d / "mv.conflist").read_text())["plugins"][0]
    assert (plugin["master"], plugin["vlan"]) == ("lo", 42)


@pytest.mark.parametrize(("args", "message"), [
    (["--parent", "lo", "--vlan", "4095"], "invalid --vlan 4095"),
    (["--parent", "lo.7", "--vlan", "8"], "names VLAN 7 but --vlan is 8"),
])
def test_cli_refuses_a_bad_vlan_and_writes_nothing(tmp_path, capsys, args, message):
    assert cli(tmp_path, "mv", "-d", "macvlan", *args) != 0
    assert message in capsys.readouterr().err
    assert not (StatePaths(tmp_path / "state").net_d / "mv.conflist").exists()
