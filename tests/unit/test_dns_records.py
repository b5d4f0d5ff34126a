"""dns/records.py: which names a network's DNS server answers (pure, no root)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from podnet.dns.records import (
    build_zone,
    build_zones,
    container_labels,
    reverse_address,
    valid_name,
)
from podnet.model.container import ContainerRecord
from podnet.model.network import NetworkRecord, Subnet


def network(name: str, *subnets: tuple[str, str]) -> NetworkRecord:
    """A bridge network; subnets as (subnet, gateway) pairs."""
    return NetworkRecord(name, f"{name:0<64}"[:64], "bridge", tuple(
        Subnet(ipaddress.ip_network(subnet), ipaddress.ip_address(gateway)) for subnet, gateway in subnets))


def container(name: str, ips: list[str], network: str = "AppNet", aliases: Sequence[str] = (),
              **changes) -> ContainerRecord:
    """A running bridge container of `network`."""
    return ContainerRecord(name, f"{name:0<64}"[:64], "bridge", state="running", network=network, ips=tuple(ips),
                           aliases=tuple(aliases), hostname=name).but(**changes)


V4 = ("10.89.1.0/24", "10.89.1.1")
V6 = ("fd00:89::/64", "fd00:89::1")
NET = network("AppNet", V4, V6)
OTHER = network("other", ("10.89.2.0/24", "10.89.2.1"))
WEB = container("web", ["10.89.1.2/24", "fd00:89::2/64"], aliases=["www", "Front"])
DB = container("db", ["10.89.1.3/24"])


def zone(*containers: ContainerRecord, net: NetworkRecord = NET):
    return build_zone(net, containers)


def test_name_alias_and_qualified_name_resolve_to_the_containers_addresses() -> None:
    z = zone(WEB, DB)
    assert z.lookup("web", "A") == ["10.89.1.2"]
    assert z.lookup("web", "AAAA") == ["fd00:89::2"]
    assert z.lookup("www", "A") == ["10.89.1.2"]
    assert z.lookup("web.appnet", "A") == ["10.89.1.2"]
    assert z.lookup("www.AppNet.", "AAAA") == ["fd00:89::2"]
    assert z.lookup("db", "A") == ["10.89.1.3"]
    assert z.lookup("web", "ANY") == ["10.89.1.2", "fd00:89::2"]


def test_names_are_case_insensitive_and_the_trailing_dot_is_optional() -> None:
    z = zone(WEB)
    for name in ("WEB", "Web.", "FRONT", "front.APPNET.", "wEb.aPpNeT"):
        assert z.lookup(name, "A") == ["10.89.1.2"], name


def test_short_id_is_an_alias_as_in_docker() -> None:
    z = zone(WEB)
    assert z.lookup(WEB.id[:12], "A") == ["10.89.1.2"]
    assert WEB.id[:12] in container_labels(WEB)


def test_unknown_name_is_none_and_known_name_without_that_type_is_nodata() -> None:
    z = zone(WEB, DB)
    assert z.lookup("nope", "A") is None
    assert z.lookup("db", "AAAA") == []  # exists, IPv4 only
    assert z.lookup("db", "MX") == []
    assert z.lookup("db", "PTR") == []


def test_containers_of_other_networks_and_not_running_ones_are_invisible() -> None:
    stranger = container("stranger", ["10.89.2.5/24"], network="other")
    exited = container("gone", ["10.89.1.9/24"], state="exited")
    created = container("new", ["10.89.1.10/24"], state="created")
    host = container("hostnet", ["10.89.1.11/24"], network_mode="host")
    joined = container("joiner", ["10.89.1.2/24"], network_mode="container")
    z = zone(WEB, stranger, exited, created, host, joined)
    for name in ("stranger", "gone", "new", "hostnet", "joiner"):
        assert z.lookup(name, "A") is None, name
    zones = build_zones([NET, OTHER], [WEB, stranger])
    assert zones["other"].lookup("stranger", "A") == ["10.89.2.5"]
    assert zones["other"].lookup("web", "A") is None
    assert zones["AppNet"].lookup("stranger", "A") is None


def test_shared_alias_answers_every_holder_in_a_stable_order() -> None:
    a = container("a", ["10.89.1.20/24"], aliases=["db"])
    b = container("b", ["10.89.1.7/24"], aliases=["DB"])
    assert zone(b, a).lookup("db", "A") == ["10.89.1.7", "10.89.1.20"]


def test_addresses_outside_the_networks_subnets_are_not_published() -> None:
    leaky = container("leaky", ["10.89.1.4/24", "192.168.7.7/24", "garbage", "10.89.1.4"])
    assert zone(leaky).lookup("leaky", "A") == ["10.89.1.4"]


def test_reverse_lookup_gives_name_dot_network() -> None:
    z = zone(WEB)
    v4 = ipaddress.ip_address("10.89.1.2").reverse_pointer
    v6 = ipaddress.ip_address("fd00:89::2").reverse_pointer
    assert z.lookup(v4, "PTR") == ["web.appnet"]
    assert z.lookup(v6.upper() + ".", "PTR") == ["web.appnet"]
    assert z.lookup(v4, "A") == []  # the reverse name exists, but has no address
    assert z.lookup("9.1.89.10.in-addr.arpa", "PTR") is None


def test_is_local_covers_bare_names_the_network_domain_and_its_reverse_names() -> None:
    z = zone(WEB)
    assert z.is_local("anything")
    assert z.is_local("nope.appnet.")
    assert z.is_local("APPNET")
    assert z.is_local("77.1.89.10.in-addr.arpa")
    assert not z.is_local("example.com")
    assert not z.is_local("web.other")
    assert not z.is_local("1.1.168.192.in-addr.arpa")
    assert not z.is_local("1.89.10.in-addr.arpa")  # partial reverse name
    assert not z.is_local("")


def test_allows_only_clients_inside_the_networks_subnets() -> None:
    z = zone()
    assert z.allows("10.89.1.99")
    assert z.allows("fd00:89::99")
    assert z.allows("::ffff:10.89.1.99")
    assert not z.allows("10.89.2.5")
    assert not z.allows("127.0.0.1")
    assert not z.allows("not an address")


def test_the_server_listens_on_the_first_ipv4_gateway_else_the_first_ipv6_one() -> None:
    assert NET.nameserver() == "10.89.1.1"
    assert network("n", V6, V4).nameserver() == "10.89.1.1"
    assert network("n", V6, ("fd00:90::/64", "fd00:90::1")).nameserver() == "fd00:89::1"
    assert network("n").nameserver() is None


def test_reverse_address_parses_only_full_reverse_names() -> None:
    assert str(reverse_address("4.3.2.1.in-addr.arpa.")) == "1.2.3.4"
    six = ipaddress.ip_address("fd00::1")
    assert reverse_address(six.reverse_pointer) == six
    assert reverse_address("3.2.1.in-addr.arpa") is None
    assert reverse_address("300.3.2.1.in-addr.arpa") is None
    assert reverse_address("+." * 32 + "ip6.arpa") is None
    assert reverse_address("example.com") is None


def test_invalid_names_are_skipped() -> None:
    assert not valid_name("")
    assert not valid_name("a" * 64)
    assert not valid_name("a..b")
    assert not valid_name("we b")
    assert not valid_name("wéb")
    weird = container("ok", ["10.89.1.30/24"], aliases=["bad name", "", "x" * 64, "a..b", "fine"])
    assert container_labels(weird)[:2] == ["ok", "fine"]
    assert zone(weird).lookup("fine", "A") == ["10.89.1.30"]


def test_names_lists_every_forward_name() -> None:
    assert "www.appnet" in zone(WEB).names()
    assert zone().names() == []
