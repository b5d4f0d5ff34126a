"""macvlan's `vlan` field: an 802.1Q id on a macvlan network, checked with the config;
the sub-interface's name `<master>.<vlan>` must fit an interface name."""

from __future__ import annotations

import pytest

from podnet.cni.config import parse_conf
from podnet.errors import InvalidConfig
from podnet.kernel.vlan import vlan_ifname

MACVLAN = {"cniVersion": "1.1.0", "name": "n1", "type": "podnet", "master": "eth1", "mode": "vepa",
           "ipam": {"type": "podnet-ipam"}}


@pytest.mark.parametrize("vlan", [1, 100, 4094])
def test_a_vlan_id_in_range_is_kept(vlan):
    conf = parse_conf({**MACVLAN, "vlan": vlan})
    assert (conf.mode, conf.macvlan_mode, conf.vlan) == ("macvlan", "vepa", vlan)


def test_no_vlan_by_default():
    assert parse_conf(MACVLAN).vlan is None


@pytest.mark.parametrize("vlan", [0, 4095, -1, 5000, "100", 1.5, True])
def test_a_vlan_id_out_of_range_or_not_an_integer_is_invalid_config(vlan):
    with pytest.raises(InvalidConfig) as err:
        parse_conf({**MACVLAN, "vlan": vlan})
    answer = err.value.to_cni("1.1.0")
    assert answer["code"] == 7
    assert "'vlan'" in answer["msg"] and "1 and 4094" in answer["msg"] and repr(vlan) in answer["msg"]


def test_vlan_on_a_bridge_network_is_invalid_config():
    bridge = {k: v for k, v in MACVLAN.items() if k not in ("master", "mode")}
    with pytest.raises(InvalidConfig, match="'vlan' applies to macvlan networks only.*'bridge'"):
        parse_conf({**bridge, "vlan": 100})


def test_the_sub_interface_is_named_parent_dot_id():
    assert vlan_ifname("eth1", 100) == "eth1.100"
    assert vlan_ifname("enp3s0f1", 4094) == "enp3s0f1.4094"  # 13 bytes


def test_a_sub_interface_name_longer_than_15_bytes_is_invalid_config():
    with pytest.raises(InvalidConfig, match=r"'enp3s0f1np1\.4094'.*longer than 15 bytes"):
        vlan_ifname("enp3s0f1np1", 4094)
