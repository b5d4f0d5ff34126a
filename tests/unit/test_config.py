"""The podnet plugin's config: reference field names, defaults and clear errors."""

from __future__ import annotations

import pytest

from podnet.cni.config import parse_conf, store_path_for
from podnet.errors import DecodingFailure, InvalidConfig

BASE = {"cniVersion": "1.0.0", "name": "n1", "type": "podnet", "ipam": {"type": "podnet-ipam"}}


def test_defaults_are_bridge():
    conf = parse_conf(BASE)
    assert conf.mode == "bridge" and conf.bridge == "podnet0" and conf.is_gateway
    assert conf.mtu is None and conf.builtin_ipam and not conf.port_mappings
    assert not conf.hairpin_mode  # only needed (and paid for) with published ports


def test_hairpin_follows_port_mappings_unless_configured():
    pm = {"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "tcp"}]}}
    assert parse_conf({**BASE, **pm}).hairpin_mode
    assert not parse_conf({**BASE, **pm, "hairpinMode": False}).hairpin_mode
    assert parse_conf({**BASE, "hairpinMode": True}).hairpin_mode


def test_reference_bridge_fields():
    conf = parse_conf({**BASE, "bridge": "cni5", "isGateway": False, "isDefaultGateway": True,
                       "ipMasq": True, "mtu": 1400, "hairpinMode": False})
    assert (conf.bridge, conf.is_default_gateway, conf.ip_masq, conf.mtu, conf.hairpin_mode) == (
        "cni5", True, True, 1400, False)
    assert conf.is_gateway  # isDefaultGateway implies isGateway, as in the reference


def test_reference_macvlan_fields():
    conf = parse_conf({**BASE, "master": "eth1", "mode": "private", "mtu": 1500})
    assert (conf.mode, conf.master, conf.macvlan_mode) == ("macvlan", "eth1", "private")
    conf = parse_conf({**BASE, "mode": "macvlan", "master": "eth1"})
    assert (conf.mode, conf.macvlan_mode) == ("macvlan", "bridge")


def test_port_mappings_from_runtime_config():
    pm = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    conf = parse_conf({**BASE, "runtimeConfig": {"portMappings": pm}})
    assert list(conf.port_mappings) == pm


def test_valid_attachments():
    conf = parse_conf({**BASE, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]})
    assert conf.valid_attachments == (("a", "eth0"),)
    with pytest.raises(DecodingFailure):
        parse_conf({**BASE, "cni.dev/valid-attachments": [{"ifname": "eth0"}]})


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "ipvlan"},
        {"mtu": 10},
        {"mtu": "1500"},
        {"isGateway": "yes"},
        {"bridge": "this-name-is-far-too-long"},
        {"master": "eth1", "mode": "macvlan", "macvlanMode": "weird"},
        {"ipam": {"dataDir": "/x"}},
    ],
)
def test_invalid_config(bad):
    with pytest.raises(InvalidConfig):
        parse_conf({**BASE, **bad})


def test_store_path_rule():
    assert store_path_for({"ipam": {"dataDir": "/tmp/x"}}) == "/tmp/x/podnet.db"
    assert store_path_for({"dataDir": "/tmp/y"}) == "/tmp/y/podnet.db"
    assert store_path_for({}, default="/d.db") == "/d.db"
    with pytest.raises(InvalidConfig):
        store_path_for({"dataDir": "relative"})


def test_ip_masq_exclude_parsed_and_validated():
    import pytest as _pytest

    from podnet.cni.config import parse_conf as _parse
    from podnet.errors import InvalidConfig as _Invalid

    base = {"cniVersion": "1.0.0", "name": "n", "type": "podnet", "ipMasq": True}
    assert _parse(base).ip_masq_exclude == ()
    assert _parse({**base, "ipMasqExclude": ["10.244.0.0/16", "fd00::/48"]}).ip_masq_exclude == (
        "10.244.0.0/16", "fd00::/48")
    for bad in ("10.244.0.0/16", ["10.244.0.1/16"], ["nope"], [1]):
        with _pytest.raises(_Invalid, match="ipMasqExclude"):
            _parse({**base, "ipMasqExclude": bad})
