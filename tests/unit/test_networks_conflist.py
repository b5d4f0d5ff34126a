"""Conflist rendering of networks: the exact document (the contract with `podnet
container` and podman) and that the plugin's own parsers accept it."""

from __future__ import annotations

import pytest

from podnet.networks import conflist
from podnet.networks.plan import NetworkRequest, plan_network

ID = "0123456789" + "a" * 54
SOCK = "/run/podnet/t.sock"
DATA = "/var/lib/podnet-t"


def network(**kw):
    return plan_network(NetworkRequest(name=kw.pop("name", "web"), **kw), [], ID, 1.0)


def test_bridge_conflist_golden():
    doc = conflist.render(network(), SOCK, DATA)
    assert doc == {
        "cniVersion": "1.0.0",
        "name": "web",
        "plugins": [
            {
                "type": "podnet",
                "mode": "bridge",
                "bridge": "pnb0123456789",
                "isGateway": True,
                "isDefaultGateway": True,
                "ipMasq": True,
                "agentSocket": SOCK,
                "capabilities": {"portMappings": True, "ips": True},
                "ipam": {
                    "type": "podnet-ipam",
                    "ranges": [[{"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"}]],
                    "dataDir": DATA,
                },
            }
        ],
    }
    conflist.validate(doc)


def test_internal_dual_stack_with_range_and_mtu():
    doc = conflist.render(
        network(
            subnets=["10.5.0.0/16", "fd00:5::/64"], gateways=["10.5.0.254"],
            ip_ranges=["10.5.1.0/24", "fd00:5::100/120"], internal=True, mtu=1400,
        ),
        SOCK, DATA,
    )
    plugin = doc["plugins"][0]
    assert (plugin["isDefaultGateway"], plugin["ipMasq"], plugin["mtu"]) == (False, False, 1400)
    assert plugin["ipam"]["ranges"] == [
        [{"subnet": "10.5.0.0/16", "gateway": "10.5.0.254", "rangeStart": "10.5.1.0", "rangeEnd": "10.5.1.255"}],
        [{"subnet": "fd00:5::/64", "gateway": "fd00:5::1", "rangeStart": "fd00:5::100", "rangeEnd": "fd00:5::1ff"}],
    ]
    conflist.validate(doc)


@pytest.mark.parametrize(
    ("ip_range", "start", "end"),
    [("10.5.0.0/25", "10.5.0.1", "10.5.0.127"), ("10.5.0.128/25", "10.5.0.128", "10.5.0.254")],
)
def test_range_is_clamped_to_assignable_hosts(ip_range, start, end):
    doc = conflist.render(network(subnets=["10.5.0.0/24"], ip_ranges=[ip_range]), SOCK, DATA)
    rng = doc["plugins"][0]["ipam"]["ranges"][0][0]
    assert (rng["rangeStart"], rng["rangeEnd"]) == (start, end)
    conflist.validate(doc)


def test_macvlan_conflist():
    doc = conflist.render(network(driver="macvlan", parent="eth1", subnets=["192.168.7.0/24"]), SOCK, DATA)
    plugin = doc["plugins"][0]
    assert plugin["mode"] == "macvlan" and plugin["master"] == "eth1" and "bridge" not in plugin
    conflist.validate(doc)
    from podnet.cni.config import parse_conf
    from podnet.runtime.libcni import plugin_config

    assert parse_conf(plugin_config(doc, plugin, None)).mode == "macvlan"
