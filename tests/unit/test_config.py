"""The podnet plugin's config: reference field names, defaults and clear errors."""

from __future__ import annotations

import pytest

from podnet.cni.config import names_store, parse_conf, store_path_for
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
        {"gsoMaxSize": 1500},
        {"gsoMaxSize": 600000},
        {"gsoMaxSize": "196608"},
        {"gsoMaxSize": True},
    ],
)
def test_invalid_config(bad):
    with pytest.raises(InvalidConfig):
        parse_conf({**BASE, **bad})


def test_gso_max_size_is_optional_and_explicit():
    assert parse_conf(BASE).gso_max_size is None  # detected from the uplink
    assert parse_conf({**BASE, "gsoMaxSize": 0}).gso_max_size is None
    assert parse_conf({**BASE, "gsoMaxSize": 196608}).gso_max_size == 196608


def test_store_path_rule():
    assert store_path_for({"ipam": {"dataDir": "/tmp/x"}}) == "/tmp/x/podnet.db"
    assert store_path_for({"dataDir": "/tmp/y"}) == "/tmp/y/podnet.db"
    assert store_path_for({}, default="/d.db") == "/d.db"
    with pytest.raises(InvalidConfig):
        store_path_for({"dataDir": "relative"})


def test_store_path_explicit_store_wins():
    """`ipam.store` (else `store`) names the store verbatim: the cluster network's
    shared SQLite file or etcd URL, ahead of any dataDir."""
    url = "etcd://10.0.0.1:2379,10.0.0.2:2379/podnet-x"
    assert store_path_for({"ipam": {"store": "/c/cluster.db", "dataDir": "/tmp/x"}}) == "/c/cluster.db"
    assert store_path_for({"store": url, "dataDir": "/tmp/y"}) == url
    assert store_path_for({"ipam": {"store": "sqlite:///c/x.db"}, "store": "/other.db"}) == "sqlite:///c/x.db"
    for bad in ("relative.db", "memory://", "http://x", 7):
        with pytest.raises(InvalidConfig):
            store_path_for({"ipam": {"store": bad}})
    assert names_store({"ipam": {"store": "/c.db"}}) and names_store({"store": url})
    assert not names_store({"ipam": {"dataDir": "/x"}}) and not names_store({})


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


def test_podnet_ipam_refuses_an_etcd_store_clearly(tmp_path):
    """podnet-ipam is standard library only: an etcd store is refused with a reason
    (the podnet plugin serves the same IPAM from the agent, which has the client)."""
    import io
    import json

    from podnet.cni import ipam_plugin, skel

    conf = {"cniVersion": "1.0.0", "name": "cluster",
            "ipam": {"type": "podnet-ipam", "subnet": "10.244.0.0/24", "store": "etcd://10.0.0.1:2379/x"}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(tmp_path)}
    out = io.StringIO()
    assert skel.run(ipam_plugin.handle, env, json.dumps(conf).encode(), out) != 0
    error = json.loads(out.getvalue())
    assert "cannot use the etcd store" in error["msg"] and "podnet plugin" in error["details"]
