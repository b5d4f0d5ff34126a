"""Capability keys read the way the reference plugins read them (Go's encoding/json).

containerd's CNI library (go-cni) sends runtimeConfig.portMappings entries from a Go
struct without JSON tags: {"HostPort": 39611, "ContainerPort": 8080, "Protocol": "tcp",
"HostIP": ""}. The reference portmap plugin takes them, because encoding/json matches a
key to a struct field case-insensitively; podnet must take them too, for every
capability it claims (issue 10, item 10).
"""

from __future__ import annotations

import ipaddress

import pytest

from podnet.cni.config import parse_conf, requested_ips
from podnet.errors import InvalidConfig
from podnet.kernel.nat.parse import PortMapping, parse_port_mappings
from podnet.kernel.nat.render import render_add

BASE = {"cniVersion": "1.0.0", "name": "n1", "type": "podnet", "ipam": {"type": "podnet-ipam"}}
# Byte for byte what containerd 1.6's CRI sends for a hostPort (go-cni's PortMapping).
CONTAINERD = {"HostPort": 39611, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}
EXPECTED = PortMapping(39611, 8080, "tcp", None)


def test_containerd_port_mapping_entry() -> None:
    assert parse_port_mappings([CONTAINERD]) == [EXPECTED]


@pytest.mark.parametrize("spelling", [
    {"hostport": 39611, "CONTAINERPORT": 8080, "protocol": "TCP"},
    {"hOsTpOrT": 39611, "containerPort": 8080},
    # Unicode simple folding maps two non-ASCII letters onto ASCII ones, and Go honours
    # them: U+017F (long s) matches s, U+212A (Kelvin sign) matches k.
    {"ho\u017ftPort": 39611, "containerPort": 8080},
])
def test_any_case_of_the_entry_keys(spelling: dict) -> None:
    assert parse_port_mappings([spelling]) == [EXPECTED]


def test_host_ip_in_any_case() -> None:
    (pm,) = parse_port_mappings([{**CONTAINERD, "HostIP": "127.0.0.1"}])
    assert pm.host_ip == ipaddress.ip_address("127.0.0.1")
    (pm,) = parse_port_mappings([{**CONTAINERD, "HostIP": None, "hostip": "10.0.0.1"}])
    assert pm.host_ip == ipaddress.ip_address("10.0.0.1")


def test_other_keys_are_not_folded_into_a_field() -> None:
    """Only case differs: a near miss is an unknown key (ignored), so the port is missing."""
    for near_miss in ({"host_port": 39611}, {"hostPorts": 39611}, {"h\u00f8stPort": 39611}):
        with pytest.raises(InvalidConfig, match="hostPort"):
            parse_port_mappings([{**near_miss, "containerPort": 8080}])


def test_last_spelling_in_the_document_wins() -> None:
    """As Go: every key that folds to the field's name sets it, in document order."""
    (pm,) = parse_port_mappings([{"hostPort": 1, "HostPort": 39611, "containerPort": 8080}])
    assert pm.host_port == 39611
    (pm,) = parse_port_mappings([{"HostPort": 1, "hostPort": 39611, "containerPort": 8080}])
    assert pm.host_port == 39611


def test_bad_values_still_refused_in_any_spelling() -> None:
    with pytest.raises(InvalidConfig, match="hostPort must be an integer"):
        parse_port_mappings([{**CONTAINERD, "HostPort": 0}])
    with pytest.raises(InvalidConfig, match="protocol"):
        parse_port_mappings([{**CONTAINERD, "PROTOCOL": "icmp"}])
    with pytest.raises(InvalidConfig, match="hostIP"):
        parse_port_mappings([{**CONTAINERD, "HostIP": "10.0.0.300"}])


def test_parse_conf_reads_runtime_config_in_any_case() -> None:
    for runtime_key, caps_key in (("runtimeConfig", "portMappings"), ("RuntimeConfig", "PortMappings"),
                                  ("runtimeconfig", "portmappings")):
        conf = parse_conf({**BASE, runtime_key: {caps_key: [CONTAINERD]}})
        assert parse_port_mappings(conf.port_mappings) == [EXPECTED], (runtime_key, caps_key)
        assert conf.hairpin_mode  # published ports turn hairpin on, whatever the spelling


def test_requested_ips_in_any_case() -> None:
    for runtime_key, caps_key in (("runtimeConfig", "ips"), ("RuntimeConfig", "IPs"), ("runtimeConfig", "Ips")):
        assert requested_ips({}, {**BASE, runtime_key: {caps_key: ["10.1.0.9"]}}) == ("10.1.0.9",)
    with pytest.raises(InvalidConfig, match="runtimeConfig.ips"):
        requested_ips({}, {**BASE, "runtimeConfig": {"IPS": "10.1.0.9"}})


def test_containerd_mapping_renders_its_dnat() -> None:
    conf = parse_conf({**BASE, "runtimeConfig": {"portMappings": [CONTAINERD]}})
    script = render_add("n1", "0123456789ab", [ipaddress.ip_interface("10.88.0.5/16")],
                        list(conf.port_mappings), False)
    assert "tcp dport 39611" in script and "dnat to 10.88.0.5:8080" in script


# ---------------------------------------------------------------- the helper itself


def test_go_fold_matches_like_encoding_json() -> None:
    from podnet.cni.gokeys import go_equal_fold

    assert go_equal_fold("HostPort", "hostPort") and go_equal_fold("IPS", "ips")
    assert go_equal_fold("\u212aey", "key") and go_equal_fold("\u017f", "S")
    assert not go_equal_fold("hostPort", "hostPort ") and not go_equal_fold("h\u00f8stPort", "hostPort")
    assert not go_equal_fold("stra\u00dfe", "strasse")  # full case folding is not Go's


def test_field_lookup() -> None:
    from podnet.cni.gokeys import go_field as field

    assert field({"A": 1}, "a") == 1 and field({}, "a", 7) == 7 and field({"b": 1}, "a") is None
    assert field({"a": 1, "A": 2}, "a") == 2 and field({"A": 2, "a": 1}, "a") == 1


def test_capabilities_claimed_are_the_ones_read() -> None:
    """Every conflist podnet writes claims exactly the capabilities its plugin reads:
    a claimed one it ignored would be silently lost, an unclaimed one never arrives
    (libcni filters runtimeConfig by the conflist's exact capability names)."""
    from podnet.agent.node_conflist import render_conflist
    from podnet.cni.gokeys import CAPABILITIES
    from podnet.install.cni import default_conflist

    docs = [default_conflist("podnet", "10.88.0.0/16", "podnet0"),
            render_conflist("10.244.1.0/24", "10.244.0.0/16", 1500, "/run/podnet/agent.sock", "/tmp/x.db")]
    for doc in docs:
        for plugin in doc["plugins"]:
            assert set(plugin["capabilities"]) == set(CAPABILITIES)
            assert all(plugin["capabilities"].values())
