"""Validation, subnet allocation and overlap detection of `network create` (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.errors import InvalidConfig
from podnet.model.network import NetworkRecord, Subnet, check_name
from podnet.networks.errors import NetworkExists
from podnet.networks.plan import NetworkRequest, plan_network
from podnet.networks.subnets import allocate, plan_subnets

ID = "ab" * 32
NOW = 1000.0


def net(name: str, *cidrs: str, internal: bool = False, driver: str = "bridge") -> NetworkRecord:
    subnets = tuple(
        Subnet(ipaddress.ip_network(c), next(ipaddress.ip_network(c).hosts())) for c in cidrs
    )
    bridge = "pnb" + name.ljust(10, "0")[:10] if driver == "bridge" else None
    return NetworkRecord(name, name.ljust(64, "0"), driver, subnets, internal=internal, bridge=bridge)


def plan(name: str = "n1", existing=(), **kw) -> NetworkRecord:
    return plan_network(NetworkRequest(name=name, **kw), list(existing), ID, NOW)


# -- names


@pytest.mark.parametrize("name", ["a", "A1", "web_net", "my.net-2", "0", "x" * 64])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", "_a", ".a", "a/b", "a b", "ä", "a:b", "../x", "x" * 65, "host", "none"]
)
def test_bad_names(name):
    with pytest.raises(InvalidConfig) as err:
        check_name(name)
    assert repr(name) in err.value.msg


def test_name_in_use():
    with pytest.raises(NetworkExists, match="'n1' is already in use"):
        plan("n1", [net("n1", "10.1.0.0/24")])


# -- the default subnet


def test_default_subnet_is_first_free_24():
    assert plan().subnets == (Subnet(ipaddress.ip_network("10.89.0.0/24"), ipaddress.ip_address("10.89.0.1")),)


def test_default_subnet_skips_overlaps():
    existing = [net("a", "10.89.0.0/24"), net("b", "10.89.1.0/25"), net("c", "10.89.2.0/23")]
    assert str(allocate(existing)) == "10.89.4.0/24"


def test_default_subnet_ignores_ipv6_networks():
    assert str(allocate([net("v6", "fd00::/8")])) == "10.89.0.0/24"


def test_pool_exhausted():
    with pytest.raises(InvalidConfig, match="no free /24 left in 10.89.0.0/16"):
        allocate([net("all", "10.89.0.0/16")])


def test_small_pool_is_a_parameter():
    pool = ipaddress.ip_network("10.0.0.0/23")
    assert str(allocate([net("a", "10.0.0.0/24")], pool)) == "10.0.1.0/24"


# -- explicit subnets


def test_dual_stack_with_gateways_and_ranges():
    subnets = plan_subnets(
        ["10.1.0.0/16", "fd00:1::/64"], ["fd00:1::fe", "10.1.255.254"], ["10.1.2.0/24"], []
    )
    assert [s.to_json() for s in subnets] == [
        {"subnet": "10.1.0.0/16", "gateway": "10.1.255.254", "ip_range": "10.1.2.0/24"},
        {"subnet": "fd00:1::/64", "gateway": "fd00:1::fe", "ip_range": None},
    ]


def test_gateway_applies_to_first_subnet_of_its_family():
    subnets = plan_subnets(["10.1.0.0/24", "10.2.0.0/24"], ["10.1.0.9"], [], [])
    assert [str(s.gateway) for s in subnets] == ["10.1.0.9", "10.2.0.1"]


@pytest.mark.parametrize(
    ("subnets", "gateways", "ranges", "message"),
    [
        (["10.1.0.0/24"], ["10.2.0.1"], [], "gateway 10.2.0.1 is outside subnet 10.1.0.0/24"),
        (["10.1.0.0/24"], ["10.1.0.0"], [], "gateway 10.1.0.0 is the network or broadcast address"),
        (["10.1.0.0/24"], ["10.1.0.255"], [], "is the network or broadcast address"),
        (["10.1.0.0/24"], ["fd00::1"], [], "gateway fd00::1 has no IPv6 --subnet"),
        (["10.1.0.0/24"], ["10.1.0.2", "10.1.0.3"], [], "more than one IPv4 gateway"),
        (["10.1.0.0/24"], ["nope"], [], "invalid gateway 'nope': not an IP address"),
        (["10.1.0.0/24"], [], ["10.2.0.0/25"], "ip-range 10.2.0.0/25 is outside subnet 10.1.0.0/24"),
        (["10.1.0.0/24"], [], ["10.0.0.0/8"], "ip-range 10.0.0.0/8 is outside subnet"),
        (["10.1.0.0/24"], [], ["10.1.0.0/32"], "holds no assignable address"),
        (["10.1.0.0/24"], [], ["10.1.0.7/24"], "host bits are set"),
        ([], ["10.1.0.1"], [], "need an explicit --subnet"),
        ([], [], ["10.89.0.0/25"], "need an explicit --subnet"),
        (["10.1.0.0/33"], [], [], "invalid subnet '10.1.0.0/33': not a CIDR"),
        (["garbage"], [], [], "invalid subnet 'garbage': not a CIDR"),
        (["10.1.0.5/24"], [], [], "host bits are set"),
        (["10.1.0.0/31"], [], [], "subnet 10.1.0.0/31 is too small"),
        (["fd00::/127"], [], [], "subnet fd00::/127 is too small"),
        (["10.1.0.0/16", "10.1.2.0/24"], [], [], "overlaps subnet 10.1.0.0/16 of the same request"),
    ],
)
def test_subnet_errors(subnets, gateways, ranges, message):
    with pytest.raises(InvalidConfig) as err:
        plan_subnets(subnets, gateways, ranges, [])
    assert message in err.value.msg


def test_host_bits_error_suggests_the_fix():
    with pytest.raises(InvalidConfig) as err:
        plan_subnets(["10.1.0.5/24"], [], [], [])
    assert "did you mean 10.1.0.0/24?" in err.value.details


@pytest.mark.parametrize(
    ("cidr", "other"),
    [("10.1.0.0/24", "10.1.0.0/24"), ("10.1.0.0/16", "10.1.200.0/24"), ("10.1.3.0/24", "10.0.0.0/8"),
     ("fd00:1::/64", "fd00::/16")],
)
def test_overlap_names_the_other_network(cidr, other):
    with pytest.raises(InvalidConfig) as err:
        plan_subnets([cidr], [], [], [net("first", "10.250.0.0/24"), net("other", other)])
    assert err.value.msg == f"subnet {cidr} overlaps subnet {other} of network 'other'"


def test_no_overlap_across_families_or_neighbours():
    existing = [net("a", "10.1.0.0/24"), net("b", "fd00::/64")]
    subnets = plan_subnets(["10.1.1.0/24", "fd00:0:0:1::/64"], [], [], existing)
    assert len(subnets) == 2


# -- the rest of the request


def test_bridge_network_record():
    network = plan("web", labels={"team": "a"})
    assert network.to_json() == {
        "name": "web", "id": ID, "driver": "bridge",
        "subnets": [{"subnet": "10.89.0.0/24", "gateway": "10.89.0.1", "ip_range": None}],
        "parent": None, "mtu": None, "internal": False, "bridge": "pnb" + ID[:10],
        "created": NOW, "labels": {"team": "a"},
    }
    assert NetworkRecord.from_json(network.to_json()) == network


def test_macvlan_record_has_parent_and_no_bridge():
    network = plan("mv", driver="macvlan", parent="eth0", subnets=["192.168.5.0/24"])
    assert (network.driver, network.parent, network.bridge) == ("macvlan", "eth0", None)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"driver": "overlay"}, "unknown driver 'overlay'"),
        ({"driver": "macvlan"}, "macvlan networks need --parent"),
        ({"driver": "macvlan", "parent": "a/b"}, "invalid --parent 'a/b'"),
        ({"driver": "macvlan", "parent": "x" * 16}, "invalid --parent"),
        ({"parent": "eth0"}, "--parent is only for macvlan networks"),
        ({"mtu": 67}, "invalid --mtu 67"),
        ({"mtu": 65536}, "invalid --mtu 65536"),
        ({"mtu": 0}, "invalid --mtu 0"),
        ({"mtu": 1279, "subnets": ["fd00::/64"]}, "invalid --mtu 1279"),
        ({"labels": {"": "x"}}, "invalid label key ''"),
    ],
)
def test_request_errors(kw, message):
    with pytest.raises(InvalidConfig) as err:
        plan(**kw)
    assert message in err.value.msg


def test_ipv6_mtu_hint():
    with pytest.raises(InvalidConfig) as err:
        plan(mtu=1000, subnets=["fd00::/64"])
    assert "1280" in err.value.details and "IPv6" in err.value.details


def test_mtu_bounds_accepted():
    assert plan(mtu=68).mtu == 68
    assert plan(mtu=1280, subnets=["fd00::/64"]).mtu == 1280


def test_bad_id_refused():
    with pytest.raises(InvalidConfig, match="64 hex"):
        plan_network(NetworkRequest(name="x"), [], "xyz", NOW)
