"""The WAN's pure parts (lab/wan.py): names, its range, leg names and leg addresses;
and the CLI's refusals that need no kernel."""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess

import pytest

from podnet.cli import main
from podnet.errors import PodnetError
from podnet.lab import wan


@pytest.mark.parametrize("name", ["wan", "a", "east-west", "t0123abcd", "abcdefghijkl", "0"])
def test_good_wan_names(name):
    assert wan.check_wan_name(name) == name
    assert wan.wan_netns(name) == f"pn-wan-{name}"


@pytest.mark.parametrize("name", ["", "abcdefghijklm", "East", "a_b", "-a", "a-", "a.b", "../x", "a b"])
def test_bad_wan_names(name):
    with pytest.raises(PodnetError, match="NAME: .* is not a valid WAN name"):
        wan.check_wan_name(name)


@pytest.mark.parametrize("cidr", ["100.64.0.0/24", "10.99.0.0/16", "192.168.7.8/29", "100.64.0.0/28"])
def test_good_cidrs(cidr):
    assert wan.check_cidr(cidr) == ipaddress.IPv4Network(cidr)


@pytest.mark.parametrize("cidr, why", [
    ("100.64.0.1/24", "not an IPv4 network"),  # host bits set
    ("fd00::/64", "not an IPv4 network"),
    ("wan", "not an IPv4 network"),
    ("10.0.0.0/8", "/16 to /29"),
    ("100.64.0.0/30", "/16 to /29"),
    ("100.64.0.1", "/16 to /29"),
    ("127.1.0.0/16", "loopback"),
])
def test_bad_cidrs_name_the_flag(cidr, why):
    with pytest.raises(PodnetError, match=f"--cidr: .*{why}"):
        wan.check_cidr(cidr)


def test_the_wan_owns_the_first_host():
    assert wan.own_address(ipaddress.IPv4Network("100.64.0.0/24")) == "100.64.0.1/24"
    assert wan.own_address(ipaddress.IPv4Network("10.7.0.0/16")) == "10.7.0.1/16"


def test_legs_start_at_dot_ten_and_take_the_lowest_free_host():
    net = ipaddress.IPv4Network("100.64.0.0/24")
    assert wan.leg_address(net, []) == "100.64.0.10/24"
    assert wan.leg_address(net, ["100.64.0.10/24", "100.64.0.11/24"]) == "100.64.0.12/24"
    # a hole left by an unplugged leg is filled first
    assert wan.leg_address(net, ["100.64.0.10/24", "100.64.0.12/24"]) == "100.64.0.11/24"


def test_a_small_network_fills_up_with_a_clear_error():
    net = ipaddress.IPv4Network("100.64.0.0/28")  # hosts .1 .. .14: legs .10 .. .14
    taken: list[str] = []
    for _ in range(5):
        taken.append(wan.leg_address(net, taken))
    assert taken == [f"100.64.0.{host}/28" for host in range(10, 15)]
    with pytest.raises(PodnetError, match="no free address"):
        wan.leg_address(net, taken)


def test_a_slash_29_has_no_dot_ten_and_starts_after_the_wan():
    net = ipaddress.IPv4Network("100.64.0.8/29")  # hosts .9 .. .14; the WAN is .9
    taken: list[str] = []
    for _ in range(5):
        taken.append(wan.leg_address(net, taken))
    assert taken == [f"100.64.0.{host}/29" for host in range(10, 15)]
    assert wan.own_address(net) not in taken


def test_leg_names_are_short_stable_and_distinct():
    peer = wan.leg_peer("east/node0")
    assert peer == "w" + hashlib.sha256(b"east/node0").hexdigest()[:8]
    assert len(peer) <= 15  # IFNAMSIZ
    assert wan.leg_peer("east/node1") != peer
    assert wan.leg_peer("west/node0") != peer


def test_state_lives_beside_the_labs():
    assert str(wan.state_path("east")) == "/run/podnet/wan-east.json"


@pytest.mark.parametrize("argv, message", [
    (["wan", "up", "Bad"], "NAME: 'Bad' is not a valid WAN name"),
    (["wan", "up", "x", "--cidr", "10.0.0.0/8"], "--cidr: '10.0.0.0/8' must be a /16 to /29"),
    (["wan", "up", "x", "--cidr", "127.0.0.0/24"], "--cidr: 127.0.0.0/24 overlaps the loopback"),
    (["wan", "plug", "x", "--lab", "Bad!", "--node", "n"], "--lab: invalid lab name"),
    (["wan", "down", "../etc"], "NAME: '../etc' is not a valid WAN name"),
])
def test_cli_refuses_bad_input_naming_the_flag(argv, message, capsys):
    assert main(argv) == 1
    assert message in capsys.readouterr().err


class FakeIp:
    """`ip -n NS link show/del` against a set of links; `vanish` drops a link just
    before a delete reaches it, as the kernel's cleanup of a deleted namespace does to
    the far end of its veth pairs."""

    def __init__(self, links: set[str], vanish: bool = False, refuse: bool = False) -> None:
        self.links, self.vanish, self.refuse, self.calls = links, vanish, refuse, []

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        self.calls.append(args)
        verb, name = args[3], args[-1]
        if verb == "del" and self.vanish:
            self.links.discard(name)
        if name not in self.links:
            return subprocess.CompletedProcess(args, 1, "", f'Cannot find device "{name}"\n')
        if verb == "del":
            if self.refuse:
                return subprocess.CompletedProcess(args, 2, "", "RTNETLINK answers: Operation not permitted\n")
            self.links.discard(name)
        return subprocess.CompletedProcess(args, 0, "", "")


@pytest.mark.parametrize("fake, deleted", [
    (FakeIp({"wa1"}), True),                # there: deleted
    (FakeIp(set()), False),                 # already gone: nothing to do
    (FakeIp({"wa1"}, vanish=True), True),   # gone between the look and the delete: still no problem
])
def test_a_leg_that_is_gone_afterwards_is_no_problem(monkeypatch, fake, deleted):
    monkeypatch.setattr(wan, "ip", fake)
    assert wan._delete_leg("pn-wan-x", "wa1") is None
    assert "wa1" not in fake.links
    assert any(call[3] == "del" for call in fake.calls) is deleted


def test_a_leg_the_kernel_keeps_is_reported_with_its_error(monkeypatch):
    fake = FakeIp({"wa1"}, refuse=True)
    monkeypatch.setattr(wan, "ip", fake)
    assert wan._delete_leg("pn-wan-x", "wa1") == "ip link del wa1: RTNETLINK answers: Operation not permitted"
    assert "wa1" in fake.links
