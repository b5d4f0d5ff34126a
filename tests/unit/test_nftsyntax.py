"""kernel/nftsyntax.py: each token is exactly one nft token, or InvalidConfig (no root)."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.errors import InvalidConfig
from podnet.kernel import nftsyntax as tok


def test_comment_is_quoted_and_cut_to_128_bytes():
    assert tok.comment("net a: internal") == '"net a: internal"'
    assert tok.comment("x" * 200) == '"' + "x" * 128 + '"'
    assert tok.comment("") == '""'


@pytest.mark.parametrize("text", ['a"b', "a\nb", "a;b", "a\\b", "é", "a\0b", "a\tb", "\x7f", 7, None])
def test_comment_refuses_what_could_end_it(text):
    with pytest.raises(InvalidConfig):
        tok.comment(text)


def test_ifname():
    assert tok.ifname("pnb0123456789") == '"pnb0123456789"'
    assert tok.ifname("eth0.100") == '"eth0.100"'


@pytest.mark.parametrize("name", ['pn"x', "pnb*", "a;b", "a\\b", "a b", "a\nb", "x" * 16, "", ".", "..", "a/b",
                                  "é", None])
def test_ifname_refuses_what_is_not_one_safe_string(name):
    with pytest.raises(InvalidConfig):
        tok.ifname(name)


def test_addresses_and_networks():
    assert tok.address(ipaddress.ip_address("10.0.0.1")) == "10.0.0.1"
    assert tok.address(ipaddress.ip_address("fd00::1")) == "fd00::1"
    assert tok.network(ipaddress.ip_network("10.0.0.0/8")) == "10.0.0.0/8"
    assert tok.network(ipaddress.ip_network("10.0.0.7/32")) == "10.0.0.7"  # as nft prints it back
    assert tok.network(ipaddress.ip_network("fd00::/64")) == "fd00::/64"


@pytest.mark.parametrize("value", [
    ipaddress.ip_address("fe80::1%eth0"), ipaddress.ip_address("fe80::1%x;flush ruleset"), "10.0.0.1", 167772161,
])
def test_address_refuses_scope_ids_and_non_addresses(value):
    with pytest.raises(InvalidConfig):
        tok.address(value)


@pytest.mark.parametrize("value", [ipaddress.ip_network("fe80::%x\nflush ruleset/64"), "10.0.0.0/8",
                                   ipaddress.ip_address("10.0.0.1")])
def test_network_refuses_scope_ids_and_non_networks(value):
    with pytest.raises(InvalidConfig):
        tok.network(value)


def test_integers_ports_keywords_elements():
    assert tok.port(65535) == "65535" and tok.integer(0, 0, 1) == "0"
    for bad in (0, 65536, True, "80", 80.0, None):
        with pytest.raises(InvalidConfig):
            tok.port(bad)
    assert tok.keyword("tcp", ("tcp", "udp")) == "tcp"
    for bad in ("icmp", "tcp;", None):
        with pytest.raises(InvalidConfig):
            tok.keyword(bad, ("tcp", "udp", "tcp;"))
    assert tok.elements(['"a"', '"b"']) == '{ "a", "b" }'
    with pytest.raises(InvalidConfig):
        tok.elements([])


def test_identifier():
    assert tok.identifier("svc4-abc123") == "svc4-abc123"
    assert tok.identifier("a" * 64) == "a" * 64
    for bad in ("", "4svc", "-x", "a" * 65, "a b", "a;b", 'a"', "a.b", "a/b", "a\nb", "é", None, 7):
        with pytest.raises(InvalidConfig):
            tok.identifier(bad)
