"""Port-mapping rendering (golden text) and NatManager decisions against FakeNft.

No root needed: FakeNft records scripts and serves listings shaped exactly like
`nft -j list table` output of nftables 1.0.6 (the ns tests prove the real round trip).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from podnet import errors, naming
from podnet.kernel.nat.manager import NatManager
from podnet.kernel.nat.parse import InstalledRule, PortMapping, parse_port_mappings, parse_table
from podnet.kernel.nat.render import plan_rules, render_add, render_delete
from podnet.kernel.nft import FakeNft, Nft

NET = "net1"
NID = naming.net_id(NET)
A = "0123456789ab"
B = "bbbbbbbbbbbb"
C = "cccccccccccc"
V4 = ipaddress.ip_interface("10.77.0.2/24")
V6 = ipaddress.ip_interface("fd00::2/64")
TAG = f'comment "podnet:{NID}:{A}"'

LAYOUT6 = """\
add table ip6 podnet
add chain ip6 podnet prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain ip6 podnet output { type nat hook output priority -100; policy accept; }
add chain ip6 podnet postrouting { type nat hook postrouting priority srcnat; policy accept; }
"""
GUARD_COMMENT = "podnet loopback guard: 127.0.0.0/8 only from lo or DNATed"
GUARD_RULE = 'iif != "lo" ip daddr 127.0.0.0/8 ct status & dnat == 0 counter drop'
LAYOUT4 = LAYOUT6.replace(" ip6 podnet", " ip podnet") + (
    "add chain ip podnet input { type filter hook input priority filter; policy accept; }\n"
    "flush chain ip podnet input\n"
    f'add rule ip podnet input {GUARD_RULE} comment "{GUARD_COMMENT}"\n'
)


def tagged(lines: str, tag: str = TAG) -> str:
    return "".join(f"{line} {tag}\n" for line in lines.strip().splitlines())


# ---------------------------------------------------------------- naming


def test_naming_hashes() -> None:
    assert naming.net_id("net1") == hashlib.sha256(b"net1").hexdigest()[:8]
    assert naming.attach_id("n", "c", "eth0") == hashlib.sha256(b"n\0c\0eth0").hexdigest()[:12]
    assert naming.attach_id("a", "bc", "x") != naming.attach_id("ab", "c", "x")
    name = naming.host_veth_name(naming.attach_id("n", "c", "eth0"))
    assert name.startswith("pn") and len(name) == 13


# ---------------------------------------------------------------- rendering


def test_render_default_mapping_ipv4() -> None:
    got = render_add(NET, A, [V4], [{"hostPort": 8080, "containerPort": 80}], False)
    assert got == LAYOUT4 + tagged(
        """
add rule ip podnet prerouting fib daddr type local tcp dport 8080 dnat to 10.77.0.2:80
add rule ip podnet output fib daddr type local tcp dport 8080 dnat to 10.77.0.2:80
add rule ip podnet postrouting ip saddr 10.77.0.2 ip daddr 10.77.0.2 ct status dnat masquerade
add rule ip podnet postrouting ip saddr 127.0.0.0/8 ip daddr 10.77.0.2 ct status dnat masquerade
add rule ip podnet postrouting ip saddr 10.77.0.0/24 ip daddr 10.77.0.2 ct status dnat masquerade
"""
    )


def test_render_host_ip_udp_and_no_localhost_rule() -> None:
    pm = [{"hostPort": 53, "containerPort": 5353, "protocol": "UDP", "hostIP": "192.0.2.1"}]
    got = render_add(NET, A, [V4, V6], pm, False)
    assert got == LAYOUT4 + tagged(
        """
add rule ip podnet prerouting ip daddr 192.0.2.1 udp dport 53 dnat to 10.77.0.2:5353
add rule ip podnet output ip daddr 192.0.2.1 udp dport 53 dnat to 10.77.0.2:5353
add rule ip podnet postrouting ip saddr 10.77.0.2 ip daddr 10.77.0.2 ct status dnat masquerade
add rule ip podnet postrouting ip saddr 10.77.0.0/24 ip daddr 10.77.0.2 ct status dnat masquerade
"""
    )


def test_render_loopback_host_ip_keeps_localhost_rule() -> None:
    pm = [{"hostPort": 80, "containerPort": 80, "hostIP": "127.0.0.1"}]
    got = render_add(NET, A, [V4], pm, False)
    assert "ip daddr 127.0.0.1 tcp dport 80 dnat to 10.77.0.2:80" in got
    assert "ip saddr 127.0.0.0/8 ip daddr 10.77.0.2 ct status dnat masquerade" in got


def test_render_dual_stack_sctp_and_ip_masq() -> None:
    pm = [{"hostPort": 9000, "containerPort": 9, "protocol": "sctp"}]
    got = render_add(NET, A, [V4, V6], pm, True)
    assert got == (
        LAYOUT4
        + tagged(
            """
add rule ip podnet prerouting fib daddr type local sctp dport 9000 dnat to 10.77.0.2:9
add rule ip podnet output fib daddr type local sctp dport 9000 dnat to 10.77.0.2:9
add rule ip podnet postrouting ip saddr 10.77.0.2 ip daddr 10.77.0.2 ct status dnat masquerade
add rule ip podnet postrouting ip saddr 127.0.0.0/8 ip daddr 10.77.0.2 ct status dnat masquerade
add rule ip podnet postrouting ip saddr 10.77.0.0/24 ip daddr 10.77.0.2 ct status dnat masquerade
add rule ip podnet postrouting ip saddr 10.77.0.2 ip daddr != 10.77.0.0/24 ip daddr != 224.0.0.0/4 masquerade
"""
        )
        + LAYOUT6
        + tagged(
            """
add rule ip6 podnet prerouting fib daddr type local sctp dport 9000 dnat to [fd00::2]:9
add rule ip6 podnet output fib daddr type local sctp dport 9000 dnat to [fd00::2]:9
add rule ip6 podnet postrouting ip6 saddr fd00::2 ip6 daddr fd00::2 ct status dnat masquerade
add rule ip6 podnet postrouting ip6 saddr fd00::/64 ip6 daddr fd00::2 ct status dnat masquerade
add rule ip6 podnet postrouting ip6 saddr fd00::2 ip6 daddr != fd00::/64 ip6 daddr != ff00::/8 masquerade
"""
        )
    )


def test_render_ip_masq_only_every_address() -> None:
    extra = ipaddress.ip_interface("10.99.0.5/32")
    got = render_add(NET, A, [V4, extra], [], True)
    assert got == LAYOUT4 + tagged(
        """
add rule ip podnet postrouting ip saddr 10.77.0.2 ip daddr != 10.77.0.0/24 ip daddr != 224.0.0.0/4 masquerade
add rule ip podnet postrouting ip saddr 10.99.0.5 ip daddr != 10.99.0.5 ip daddr != 224.0.0.0/4 masquerade
"""
    )


def test_render_dnat_targets_first_address_and_host_route_skips_subnet_rule() -> None:
    first = ipaddress.ip_interface("10.1.0.7/32")
    got = render_add(NET, A, [first, V4], [{"hostPort": 1, "containerPort": 65535}], False)
    assert "dnat to 10.1.0.7:65535" in got and "10.77.0.2" not in got
    assert "ip saddr 10.1.0.7/32" not in got  # /32: the hairpin rule already covers it
    assert got.count("masquerade") == 2  # hairpin + localhost


def test_render_unspecified_host_ip_is_one_family() -> None:
    got = render_add(
        NET, A, [V4, V6], [{"hostPort": 80, "containerPort": 8, "hostIP": "::"}], False
    )
    assert "add table ip podnet" not in got
    assert "ip6 podnet prerouting fib daddr type local tcp dport 80 dnat to [fd00::2]:8" in got
    assert "::1" not in got  # no IPv6 localhost mapping (no route_localnet for IPv6)


@pytest.mark.parametrize(
    ("ips", "pm", "masq"),
    [
        ([V4], [], False),
        ([], [{"hostPort": 80, "containerPort": 80}], True),
        ([V4], [{"hostPort": 80, "containerPort": 80, "hostIP": "fd00::1"}], False),
    ],
)
def test_render_nothing_to_do_is_empty(ips: list, pm: list, masq: bool) -> None:
    assert render_add(NET, A, ips, pm, masq) == ""


@pytest.mark.parametrize(
    "pm",
    [
        {"hostPort": 0, "containerPort": 80},
        {"hostPort": 65536, "containerPort": 80},
        {"hostPort": 80, "containerPort": -1},
        {"hostPort": "80", "containerPort": 80},
        {"hostPort": True, "containerPort": 80},
        {"containerPort": 80},
        {"hostPort": 80, "containerPort": 80, "protocol": "icmp"},
        {"hostPort": 80, "containerPort": 80, "protocol": 6},
        {"hostPort": 80, "containerPort": 80, "hostIP": "localhost"},
        {"hostPort": 80, "containerPort": 80, "hostIP": "10.0.0.0/8"},
        {"hostPort": 80, "containerPort": 80, "hostIP": 7},
        {"hostPort": 80, "containerPort": 80, "hostIP": "fe80::1%eth0"},
        {"hostPort": 80, "containerPort": 80, "hostIP": "fe80::1%x;flush ruleset"},
        {"hostPort": 80, "containerPort": 80, "HostIP": "fe80::1%x\nflush ruleset"},
        "80:80",
    ],
)
def test_bad_port_mapping_is_invalid_config(pm: Any) -> None:
    with pytest.raises(errors.InvalidConfig):
        render_add(NET, A, [V4], [pm], False)


def test_bad_mapping_list_and_attach_id() -> None:
    with pytest.raises(errors.InvalidConfig):
        parse_port_mappings({"hostPort": 80})  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidConfig):
        render_add(NET, "not-hex", [V4], [], True)
    with pytest.raises(errors.InvalidConfig):
        render_add(NET, 'abc" ; flush', [V4], [], True)


def test_render_guards_the_hosts_loopback_wherever_it_writes_ipv4() -> None:
    """Every IPv4 table podnet writes drops 127.0.0.0/8 that did not come in on lo and
    was not DNATed (CVE-2020-8558): a bridge with route_localnet would take it. ipMasq
    alone (a cluster node's pods) gets it too; IPv6 needs none (the kernel drops ::1
    arriving on any other device)."""
    guard = f'add rule ip podnet input {GUARD_RULE} comment "{GUARD_COMMENT}"\n'
    assert guard in render_add(NET, A, [V4], PM, False)
    assert guard in render_add(NET, A, [V4], [], True)
    only6 = render_add(NET, A, [V6], PM, True)
    assert only6 and "input" not in only6 and "127.0.0.0/8" not in only6


def test_scoped_addresses_never_reach_a_script() -> None:
    """Python keeps an IPv6 scope ID (and whatever rides on it) in str(): refused."""
    with pytest.raises(errors.InvalidConfig, match="scope"):
        render_add(NET, A, [V4], [], True, ["fe80::%x;flush ruleset/64"])
    scoped = ipaddress.ip_address("fe80::1%x;flush ruleset")
    with pytest.raises(errors.InvalidConfig, match="scope"):  # a mapping built without parse_port_mappings
        plan_rules([V6], [PortMapping(80, 80, "tcp", scoped)], False)
    # an interface's .ip and .network drop the scope: harmless
    got = render_add(NET, A, [ipaddress.ip_interface("fe80::2%x;flush ruleset/64")], PM, True)
    assert "%" not in got and "flush ruleset" not in got


def test_foreign_chains_and_families_in_a_listing_are_not_podnet_rules() -> None:
    """A listing is kernel output, but a tagged rule outside podnet's chains (or a
    chain name that is no identifier) is never turned into a `delete` line."""
    odd = [_rule("ip", "x; flush ruleset", 9, A, [FIB_LOCAL], NET), _rule("inet", "prerouting", 10, A, [FIB_LOCAL], NET)]
    assert parse_table(table(*odd)) == []
    with pytest.raises(errors.InvalidConfig):
        render_delete([InstalledRule("ip", "prerouting; flush ruleset", 4, NID, A, "")])
    with pytest.raises(errors.InvalidConfig):
        render_delete([InstalledRule("ip", "prerouting", True, NID, A, "")])  # type: ignore[arg-type]
    assert render_delete([InstalledRule("ip6", "output", 7, NID, A, "")]) == "delete rule ip6 podnet output handle 7\n"


def test_duplicates_collapse_and_clashes_are_rejected() -> None:
    pm = {"hostPort": 80, "containerPort": 80}
    assert len(parse_port_mappings([pm, dict(pm), {**pm, "protocol": "TCP"}])) == 1
    assert len(parse_port_mappings([pm, {**pm, "protocol": "udp"}])) == 2
    assert len(parse_port_mappings([{**pm, "hostIP": "10.0.0.1"}, {**pm, "hostIP": "10.0.0.2"}]))
    # IPv4 and IPv6 host addresses never overlap.
    assert len(parse_port_mappings([{**pm, "hostIP": "0.0.0.0"}, {**pm, "hostIP": "::"}])) == 2
    for other in ({**pm, "containerPort": 81}, {**pm, "hostIP": "10.0.0.1"}):
        with pytest.raises(errors.InvalidConfig, match="same host port"):
            parse_port_mappings([pm, other])


# ---------------------------------------------------------------- listings like nft -j


def _payload(proto: str, fld: str, right: Any, op: str = "==") -> dict:
    return {
        "match": {"op": op, "left": {"payload": {"protocol": proto, "field": fld}}, "right": right}
    }


def _prefix(net: str) -> dict:
    addr, plen = net.split("/")
    return {"prefix": {"addr": addr, "len": int(plen)}}


FIB_LOCAL = {
    "match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}
}
CT_DNAT = {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}


def dnat_rule(
    chain: str,
    handle: int,
    attach: str,
    port: int,
    target: str,
    tport: int,
    proto: str = "tcp",
    host: str | None = None,
    net: str = NET,
    family: str = "ip",
) -> dict:
    match = _payload(family, "daddr", host) if host else FIB_LOCAL
    expr = [match, _payload(proto, "dport", port), {"dnat": {"addr": target, "port": tport}}]
    return _rule(family, chain, handle, attach, expr, net)


def masq_rule(handle: int, attach: str, saddr: Any, daddr: str, net: str = NET) -> dict:
    expr = [_payload("ip", "saddr", saddr), _payload("ip", "daddr", daddr), CT_DNAT]
    return _rule("ip", "postrouting", handle, attach, [*expr, {"masquerade": None}], net)


def _rule(family: str, chain: str, handle: int, attach: str, expr: list, net: str) -> dict:
    tag = f"podnet:{naming.net_id(net)}:{attach}"
    return {
        "rule": {
            "family": family,
            "table": "podnet",
            "chain": chain,
            "handle": handle,
            "comment": tag,
            "expr": expr,
        }
    }


GUARD_JSON = {
    "rule": {
        "family": "ip", "table": "podnet", "chain": "input", "handle": 90, "comment": GUARD_COMMENT,
        "expr": [
            {"match": {"op": "!=", "left": {"meta": {"key": "iif"}}, "right": "lo"}},
            _payload("ip", "daddr", _prefix("127.0.0.0/8")),
            {"match": {"op": "!", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"counter": {"packets": 3, "bytes": 180}},
            {"drop": None},
        ],
    }
}


def table(*rules: dict, family: str = "ip", guard: bool = True) -> dict:
    head: list[dict] = [
        {
            "metainfo": {
                "version": "1.0.6",
                "release_name": "Lester Gooch #5",
                "json_schema_version": 1,
            }
        },
        {"table": {"family": family, "name": "podnet", "handle": 1}},
    ]
    for i, (name, hook, prio) in enumerate(
        (
            ("prerouting", "prerouting", -100),
            ("output", "output", -100),
            ("postrouting", "postrouting", 100),
        ),
        start=1,
    ):
        head.append(
            {
                "chain": {
                    "family": family,
                    "table": "podnet",
                    "name": name,
                    "handle": i,
                    "type": "nat",
                    "hook": hook,
                    "prio": prio,
                    "policy": "accept",
                }
            }
        )
    if family == "ip" and guard:
        head.append({"chain": {"family": "ip", "table": "podnet", "name": "input", "handle": 4, "type": "filter",
                               "hook": "input", "prio": 0, "policy": "accept"}})
        head.append(GUARD_JSON)
    return {"nftables": head + list(rules)}


def attachment_a(handle0: int = 4, attach: str = A, net: str = NET, port: int = 8080) -> list[dict]:
    """The 5 rules render_add writes for 10.77.0.2/24, tcp port->80, no hostIP."""
    return [
        dnat_rule("prerouting", handle0, attach, port, "10.77.0.2", 80, net=net),
        dnat_rule("output", handle0 + 1, attach, port, "10.77.0.2", 80, net=net),
        masq_rule(handle0 + 2, attach, "10.77.0.2", "10.77.0.2", net=net),
        masq_rule(handle0 + 3, attach, _prefix("127.0.0.0/8"), "10.77.0.2", net=net),
        masq_rule(handle0 + 4, attach, _prefix("10.77.0.0/24"), "10.77.0.2", net=net),
    ]


def manager(tmp_path: Path, *rules: dict, v6: dict | None = None) -> tuple[NatManager, FakeNft]:
    fake = FakeNft()
    if rules:
        fake.tables[("ip", "podnet")] = table(*rules)
    if v6 is not None:
        fake.tables[("ip6", "podnet")] = v6
    mgr = NatManager(fake, lock_path=str(tmp_path / "lock" / "nft.lock"), proc_sys=str(tmp_path))
    return mgr, fake


PM = [{"hostPort": 8080, "containerPort": 80}]


# ---------------------------------------------------------------- manager


def test_add_on_empty_tables_is_one_transaction(tmp_path: Path) -> None:
    mgr, fake = manager(tmp_path)
    mgr.add(NET, A, [V4], PM)
    assert fake.scripts == [render_add(NET, A, [V4], PM, False)]
    assert fake.list_calls == [("ip", "podnet"), ("ip6", "podnet")]
    assert (tmp_path / "lock" / "nft.lock").exists()


def test_add_with_nothing_to_do_applies_nothing(tmp_path: Path) -> None:
    mgr, fake = manager(tmp_path)
    mgr.add(NET, A, [V4], [], ip_masq=False)
    assert fake.scripts == []


def test_readd_replaces_own_rules_in_the_same_transaction(tmp_path: Path) -> None:
    mgr, fake = manager(tmp_path, *attachment_a(), *attachment_a(20, B, port=9090))
    mgr.add(NET, A, [V4], PM)  # same host port as before: its own rules, no conflict
    (script,) = fake.scripts
    deletes = [line for line in script.splitlines() if line.startswith("delete")]
    assert deletes == [
        "delete rule ip podnet prerouting handle 4",
        "delete rule ip podnet output handle 5",
        "delete rule ip podnet postrouting handle 6",
        "delete rule ip podnet postrouting handle 7",
        "delete rule ip podnet postrouting handle 8",
    ]
    assert script.endswith(render_add(NET, A, [V4], PM, False))


@pytest.mark.parametrize(
    ("existing", "wanted"),
    [
        (dnat_rule("prerouting", 4, B, 8080, "10.77.0.3", 80), PM),
        (dnat_rule("prerouting", 4, B, 8080, "10.77.0.3", 80, host="10.0.0.1"), PM),
        (
            dnat_rule("prerouting", 4, B, 8080, "10.77.0.3", 80),
            [{**PM[0], "hostIP": "10.0.0.1"}],
        ),
        (dnat_rule("prerouting", 4, B, 8080, "10.77.0.3", 1, net="other"), PM),
        (
            dnat_rule("prerouting", 4, B, 8080, "10.77.0.3", 80, proto="udp"),
            [{**PM[0], "protocol": "udp", "hostIP": "0.0.0.0"}],
        ),
    ],
)
def test_conflicting_host_port_raises_port_in_use(
    tmp_path: Path, existing: dict, wanted: list
) -> None:
    mgr, fake = manager(tmp_path, existing)
    with pytest.raises(errors.PortInUse) as info:
        mgr.add(NET, A, [V4], wanted)
    assert info.value.code == 104
    assert B in info.value.msg and "8080" in info.value.msg
    assert fake.scripts == []


@pytest.mark.parametrize(
    ("existing", "wanted"),
    [
        (dnat_rule("prerouting", 4, B, 8080, "10.77.0.3", 80, proto="udp"), PM),
        (dnat_rule("prerouting", 4, B, 8081, "10.77.0.3", 80), PM),
        (
            dnat_rule("prerouting", 4, B, 8080, "10.77.0.3", 80, host="10.0.0.2"),
            [{**PM[0], "hostIP": "10.0.0.1"}],
        ),
        (dnat_rule("output", 4, B, 8080, "10.77.0.3", 80), [{**PM[0], "hostIP": "10.0.0.1"}]),
    ],
)
def test_non_overlapping_mappings_coexist(tmp_path: Path, existing: dict, wanted: list) -> None:
    mgr, fake = manager(tmp_path, existing)
    mgr.add(NET, A, [V4], wanted)
    assert len(fake.scripts) == 1


def test_ipv6_table_conflicts_only_with_ipv6(tmp_path: Path) -> None:
    v6 = table(dnat_rule("prerouting", 4, B, 8080, "fd00::3", 80, family="ip6"), family="ip6")
    mgr, fake = manager(tmp_path, v6=v6)
    mgr.add(NET, A, [V4], PM)  # IPv4-only container: no clash
    with pytest.raises(errors.PortInUse, match=r"\[::\]:8080"):
        mgr.add(NET, C, [V4, V6], PM)
    assert len(fake.scripts) == 1


def test_remove_deletes_exactly_one_attachments_handles(tmp_path: Path) -> None:
    mgr, fake = manager(
        tmp_path,
        *attachment_a(),
        *attachment_a(20, B, port=9090),
        *attachment_a(40, A, "other", 7070),
    )
    assert mgr.remove(NET, A) == 5
    assert fake.scripts == [
        "delete rule ip podnet prerouting handle 4\n"
        "delete rule ip podnet output handle 5\n"
        "delete rule ip podnet postrouting handle 6\n"
        "delete rule ip podnet postrouting handle 7\n"
        "delete rule ip podnet postrouting handle 8\n"
    ]


def test_remove_is_idempotent_without_tables_or_rules(tmp_path: Path) -> None:
    mgr, fake = manager(tmp_path)
    assert mgr.remove(NET, A) == 0
    mgr, fake = manager(tmp_path, *attachment_a(20, B))
    assert mgr.remove(NET, A) == 0
    assert fake.scripts == []


def test_remove_retries_once_after_a_vanished_handle(tmp_path: Path) -> None:
    mgr, fake = manager(tmp_path, *attachment_a())
    fake.fail = "Error: Could not process rule: No such file or directory"
    assert mgr.remove(NET, A) == 5
    assert len(fake.scripts) == 1


def test_gc_removes_unkept_attachments_of_this_network_only(tmp_path: Path) -> None:
    mgr, fake = manager(
        tmp_path,
        *attachment_a(4, A, port=8080),
        *attachment_a(20, B, port=8081),
        *attachment_a(40, C, port=8082),
        *attachment_a(60, "dddddddddddd", "other", 8083),
    )
    assert mgr.gc(NET, {B}) == {A, C}
    (script,) = fake.scripts
    handles = sorted(int(line.rsplit(" ", 1)[1]) for line in script.splitlines())
    assert handles == [4, 5, 6, 7, 8, 40, 41, 42, 43, 44]
    fake.scripts.clear()
    mgr2, fake2 = manager(tmp_path, *attachment_a(20, B, port=8081))
    assert mgr2.gc(NET, {B}) == set()
    assert fake2.scripts == []


def test_rules_describe_installed_rules(tmp_path: Path) -> None:
    mgr, _ = manager(tmp_path, *attachment_a(), *attachment_a(20, B, "other", 9090))
    mine = mgr.rules(NET)
    assert list(mine) == [A]
    assert mine[A] == [
        "ip prerouting fib daddr type local tcp dport 8080 dnat to 10.77.0.2:80",
        "ip output fib daddr type local tcp dport 8080 dnat to 10.77.0.2:80",
        "ip postrouting ip saddr 10.77.0.2 ip daddr 10.77.0.2 ct status dnat masquerade",
        "ip postrouting ip saddr 127.0.0.0/8 ip daddr 10.77.0.2 ct status dnat masquerade",
        "ip postrouting ip saddr 10.77.0.0/24 ip daddr 10.77.0.2 ct status dnat masquerade",
    ]
    assert set(mgr.rules()) == {A, B}


def test_rules_ignore_foreign_rules(tmp_path: Path) -> None:
    foreign = _rule("ip", "prerouting", 3, A, [FIB_LOCAL], NET)
    foreign["rule"]["comment"] = "someone else"
    untagged = _rule("ip", "prerouting", 2, A, [FIB_LOCAL], NET)
    del untagged["rule"]["comment"]
    mgr, _ = manager(tmp_path, foreign, untagged)
    assert mgr.rules() == {}
    assert mgr.remove(NET, A) == 0


def test_check_reports_missing_rules(tmp_path: Path) -> None:
    mgr, _ = manager(tmp_path, *attachment_a())
    assert mgr.check(NET, A, [V4], PM) == []
    missing = mgr.check(
        NET, A, [V4], [*PM, {"hostPort": 53, "containerPort": 53, "protocol": "udp"}]
    )
    assert missing == [
        "ip prerouting fib daddr type local udp dport 53 dnat to 10.77.0.2:53",
        "ip output fib daddr type local udp dport 53 dnat to 10.77.0.2:53",
    ]
    mgr_empty, _ = manager(tmp_path)
    assert len(mgr_empty.check(NET, A, [V4], PM)) == 6  # the 5 rules and the guard


def test_check_reports_a_missing_loopback_guard(tmp_path: Path) -> None:
    """A table from before the guard (or flushed by hand) fails CHECK, and the agent's
    resync re-adds the attachment, which brings the guard back."""
    mgr, fake = manager(tmp_path)
    fake.tables[("ip", "podnet")] = table(*attachment_a(), guard=False)
    assert mgr.check(NET, A, [V4], PM) == [f"ip input {GUARD_RULE}"]
    assert mgr.check(NET, A, [V6], PM) != [f"ip input {GUARD_RULE}"]  # no IPv4 rules: no guard needed
    mgr.add(NET, A, [V4], PM)
    assert f'{GUARD_RULE} comment "{GUARD_COMMENT}"' in fake.scripts[-1]
    assert mgr.rules(NET)[A] == mgr.rules(NET)[A]  # the guard is no attachment's rule
    assert "input" not in " ".join(mgr.rules(NET)[A])


def test_route_localnet_is_enabled_on_the_host_interface(tmp_path: Path) -> None:
    knob = tmp_path / "net/ipv4/conf/br0/route_localnet"
    knob.parent.mkdir(parents=True)
    knob.write_text("0\n")
    mgr, fake = manager(tmp_path)
    mgr.add(NET, A, [V4], [{**PM[0], "hostIP": "10.0.0.1"}], host_if="br0")
    assert knob.read_text() == "0\n"  # a specific non-loopback hostIP does not need it
    mgr.add(NET, A, [V6], PM, host_if="br0")
    assert knob.read_text() == "0\n"  # IPv6 only: nothing to do
    mgr.add(NET, A, [V4], PM, host_if="br0")
    assert knob.read_text() == "1\n"
    assert len(fake.scripts) == 3


def test_route_localnet_comes_only_after_the_guard_is_in_force(tmp_path: Path) -> None:
    """The bridge takes 127.0.0.0/8 only once the transaction holding the guard is
    applied: an nft failure leaves route_localnet alone."""
    knob = tmp_path / "net/ipv4/conf/br0/route_localnet"
    knob.parent.mkdir(parents=True)
    knob.write_text("0\n")
    mgr, fake = manager(tmp_path)
    fake.fail = "Error: Could not process rule: No such file or directory"
    with pytest.raises(errors.KernelError):
        mgr.add(NET, A, [V4], PM, host_if="br0")
    assert knob.read_text() == "0\n"
    mgr.add(NET, A, [V4], PM, host_if="br0")
    assert knob.read_text() == "1\n" and GUARD_COMMENT in fake.scripts[-1]


def test_route_localnet_failure_is_a_kernel_error_and_leaves_no_rule(tmp_path: Path) -> None:
    class Installing(FakeNft):
        """Listings follow what was applied: the attachment's rules once added."""

        def apply(self, script: str) -> None:
            super().apply(script)
            if "dnat to" in script:
                self.tables[("ip", "podnet")] = table(*attachment_a())

    fake = Installing()
    mgr = NatManager(fake, lock_path=str(tmp_path / "nft.lock"), proc_sys=str(tmp_path))
    with pytest.raises(errors.KernelError, match=r"net\.ipv4\.conf\.nosuch0\.route_localnet"):
        mgr.add(NET, A, [V4], PM, host_if="nosuch0")
    assert fake.scripts[0] == render_add(NET, A, [V4], PM, False)
    assert fake.scripts[1:] == ["".join(f"delete rule ip podnet {c} handle {h}\n" for c, h in (
        ("prerouting", 4), ("output", 5), ("postrouting", 6), ("postrouting", 7), ("postrouting", 8)))]


@pytest.mark.parametrize("ifname", ["", ".", "..", "../../x", "a/b", "toolonginterface", "a b"])
def test_bad_host_if_is_invalid_config(tmp_path: Path, ifname: str) -> None:
    mgr, _ = manager(tmp_path)
    with pytest.raises(errors.InvalidConfig):
        mgr.add(NET, A, [V4], PM, host_if=ifname)


def test_nft_failure_propagates_as_kernel_error(tmp_path: Path) -> None:
    mgr, fake = manager(tmp_path)
    fake.fail = "Error: Could not process rule: No such file or directory"
    with pytest.raises(errors.KernelError) as info:
        mgr.add(NET, A, [V4], PM)
    assert info.value.code == 102
    assert "No such file" in info.value.details


# ---------------------------------------------------------------- the real Nft, stubbed binary


def _stub(tmp_path: Path, body: str) -> str:
    path = tmp_path / "nft"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_nft_apply_feeds_stdin_and_reports_stderr(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    ok = Nft(_stub(tmp_path, f'echo "$@" > {seen}.args; cat > {seen}\n'))
    ok.apply("add table ip podnet\n")
    assert seen.read_text() == "add table ip podnet\n"
    assert (tmp_path / "seen.args").read_text().strip() == "-f -"
    bad = Nft(_stub(tmp_path, 'echo "Error: syntax error" >&2; exit 1\n'))
    with pytest.raises(errors.KernelError) as info:
        bad.apply("nonsense\n")
    assert info.value.details == "Error: syntax error"
    bad.apply("   \n")  # empty script: nft is not even run


def test_nft_list_table_json(tmp_path: Path) -> None:
    doc = table(*attachment_a())
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    nft = Nft(_stub(tmp_path, f"cat {tmp_path}/doc.json\n"))
    assert nft.list_table_json("ip", "podnet") == doc
    absent = Nft(_stub(tmp_path, 'echo "Error: No such file or directory" >&2; exit 1\n'))
    assert absent.list_table_json("ip", "podnet") is None
    broken = Nft(_stub(tmp_path, 'echo "Error: Operation not permitted" >&2; exit 1\n'))
    with pytest.raises(errors.KernelError):
        broken.list_table_json("ip", "podnet")
    with pytest.raises(errors.KernelError):
        nft.list_table_json("ip", "podnet; flush ruleset")
    with pytest.raises(errors.KernelError, match="not found"):
        Nft(str(tmp_path / "missing")).apply("add table ip x\n")


def test_nft_argv_never_carries_a_second_command(tmp_path: Path) -> None:
    """nft parses its joined arguments as a script: a set name is checked like a table."""
    seen = tmp_path / "argv"
    nft = Nft(_stub(tmp_path, f'echo "$@" > {seen}; exit 1\n'))
    with pytest.raises(errors.KernelError):
        nft.set_elements("inet", "podnet-policy", "generation; flush ruleset")
    assert not seen.exists()
    with pytest.raises(errors.KernelError):
        FakeNft().set_elements("inet", "podnet-policy", "x\nflush ruleset")
    assert nft.set_elements("inet", "podnet-policy", "generation") is None and seen.exists()


def test_fake_nft_records_scripts() -> None:
    fake = FakeNft({("ip", "podnet"): {"nftables": []}})
    fake.apply("add table ip podnet\n")
    fake.apply("")
    assert fake.scripts == ["add table ip podnet\n"]
    assert fake.list_table_json("ip", "podnet") == {"nftables": []}
    assert fake.list_table_json("ip6", "podnet") is None


def test_ip_masq_exclude_skips_cluster_destinations():
    """Flannel-style: no masquerade toward the cluster CIDR (pod-to-pod keeps its source)."""
    ips = [ipaddress.ip_interface("10.244.3.5/24"), ipaddress.ip_interface("fd00::5/64")]
    rules = plan_rules(ips, [], True, ["10.244.0.0/16", "fd00:1::/48"])
    v4 = [r.body for r in rules if r.family == "ip"]
    v6 = [r.body for r in rules if r.family == "ip6"]
    assert v4 == ["ip saddr 10.244.3.5 ip daddr != 10.244.3.0/24 ip daddr != 224.0.0.0/4 "
                  "ip daddr != 10.244.0.0/16 masquerade"]
    assert v6 == ["ip6 saddr fd00::5 ip6 daddr != fd00::/64 ip6 daddr != ff00::/8 "
                  "ip6 daddr != fd00:1::/48 masquerade"]
    assert [r.body for r in plan_rules(ips[:1], [], True)] == [
        "ip saddr 10.244.3.5 ip daddr != 10.244.3.0/24 ip daddr != 224.0.0.0/4 masquerade"]
