"""Containers on several networks, the pure parts: repeated --network, interface
names, the secondary conflist (no default route), records old and new, and DNS
zones of a dual-homed container (no root)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from podnet.containers import spec
from podnet.containers.network import secondary_conflist
from podnet.containers.spec import BadSpec, RunRequest
from podnet.dns.records import build_zones
from podnet.model.base import CorruptRecord
from podnet.model.container import Attachment, ContainerRecord
from podnet.model.network import NetworkRecord, Subnet

CID = "c" * 64


def test_parse_networks_first_is_primary_the_rest_are_extra():
    choice, extras = spec.parse_networks(["a", "b", "c"])
    assert (choice.mode, choice.network, extras) == ("bridge", "a", ("b", "c"))
    assert spec.parse_networks(None) == (spec.parse_network(None), ())
    assert spec.parse_networks(["none"])[1] == ()


@pytest.mark.parametrize(("values", "message"), [
    (["a", "a"], "--network a is given twice"),
    (["a", "b", "b"], "--network b is given twice"),
    (["host", "a"], "--network host cannot be combined"),
    (["container:x", "a"], "cannot be combined"),
    (["a", "none"], "--network none can only be the sole"),
    (["a", "container:x"], "can only be the sole"),
    (["a", "bad name"], "invalid network name 'bad name'"),
])
def test_parse_networks_refuses(values, message):
    with pytest.raises(BadSpec, match=message):
        spec.parse_networks(values)


def test_next_ifname_takes_the_lowest_free():
    assert spec.next_ifname(["eth0"]) == "eth1"
    assert spec.next_ifname(["eth0", "eth2"]) == "eth1"
    assert spec.next_ifname(["eth0", "eth1", "eth2"]) == "eth3"


def test_new_record_plans_one_attachment_per_network():
    choice, extras = spec.parse_networks(["a", "b"])
    req = RunRequest("web", choice, ("true",), extra_networks=extras)
    record = spec.new_record(req, CID, "/run/netns/pnc-x", "web", "1:2")
    assert record.network == "a" and record.networks == ("a", "b")
    assert [a.ifname for a in record.network_attachments] == ["eth0", "eth1"]
    assert spec.network_label(record) == "a,b"


def test_secondary_conflist_drops_default_routes_only():
    conf = {"cniVersion": "1.0.0", "name": "b", "plugins": [{
        "type": "podnet", "isGateway": True, "isDefaultGateway": True,
        "ipam": {"type": "podnet-ipam", "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"},
                                                    {"dst": "192.168.5.0/24"}]},
    }, {"type": "portmap"}]}
    before = json.dumps(conf)
    out = secondary_conflist(conf)
    plugin = out["plugins"][0]
    assert plugin["isDefaultGateway"] is False and plugin["isGateway"] is True
    assert plugin["ipam"]["routes"] == [{"dst": "192.168.5.0/24"}]
    assert out["plugins"][1] == {"type": "portmap"}  # no isDefaultGateway added where there was none
    assert json.dumps(conf) == before  # the input is left alone


def old_record(**fields) -> dict:
    """A record as podnet wrote it before multi-network containers."""
    return {"name": "web", "id": CID, "network_mode": "bridge", "network": "a", "ifname": "eth0",
            "ips": ["10.89.1.5/24"], "mac": "02:00:00:00:00:01", "state": "running", **fields}


def test_an_old_record_is_on_its_one_network():
    record = ContainerRecord.from_json(old_record())
    assert record.network_attachments == (Attachment("a", "eth0", ("10.89.1.5/24",), "02:00:00:00:00:01"),)
    assert record.attachment("a") is not None and record.attachment("b") is None
    assert "attachments" not in json.loads(record.encode())  # one network: stored as before
    again = ContainerRecord.from_json(json.loads(record.encode()))
    assert again.network_attachments == record.network_attachments
    none = ContainerRecord.from_json({"name": "n", "id": CID, "network_mode": "none"})
    assert none.networks == ()


def test_with_attachments_keeps_the_legacy_fields_in_step():
    record = ContainerRecord.from_json(old_record())
    two = record.with_attachments((*record.network_attachments, Attachment("b", "eth1", ("10.89.2.7/24",))))
    assert two.ips == ("10.89.1.5/24", "10.89.2.7/24") and two.network == "a" and two.mac == record.mac
    decoded = ContainerRecord.from_json(json.loads(two.encode()))
    assert decoded.networks == ("a", "b") and decoded.attachment("b").ifname == "eth1"
    assert "attachments" in json.loads(two.encode())
    back = decoded.with_attachments(decoded.network_attachments[:1])
    assert back.ips == ("10.89.1.5/24",) and back.networks == ("a",)
    assert json.loads(back.encode()) == json.loads(record.encode())  # as if never connected


@pytest.mark.parametrize(("attachments", "field"), [
    ({"network": "a"}, "'attachments' must be a list"),
    ([{"network": "a", "ifname": "eth0", "ips": []}, {"network": "a", "ifname": "eth1", "ips": []}],
     "'attachments' names a network or an interface twice"),
    ([{"network": "a", "ifname": "eth 0", "ips": []}], "attachments\\[0\\]: field 'ifname'"),
    ([{"network": 5, "ifname": "eth0"}], "attachments\\[0\\]: field 'network'"),
])
def test_bad_attachments_name_the_field(attachments, field):
    with pytest.raises(CorruptRecord, match=field):
        ContainerRecord.from_json(old_record(attachments=attachments))


def test_a_dual_homed_container_answers_in_both_zones_with_each_networks_address():
    nets = [NetworkRecord(name, name * 32, "bridge", (Subnet(ipaddress.ip_network(sub), ipaddress.ip_address(gw)),))
            for name, sub, gw in (("a", "10.89.1.0/24", "10.89.1.1"), ("b", "10.89.2.0/24", "10.89.2.1"))]
    record = ContainerRecord.from_json(old_record()).with_attachments((
        Attachment("a", "eth0", ("10.89.1.5/24",)), Attachment("b", "eth1", ("10.89.2.7/24",))))
    zones = build_zones(nets, [record])
    assert zones["a"].lookup("web", "A") == ["10.89.1.5"]
    assert zones["b"].lookup("web.b", "A") == ["10.89.2.7"]
