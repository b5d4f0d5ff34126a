"""kernel/sysctl.py against a tmp dir standing in for /proc/sys (no root, no namespace)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from podnet.errors import KernelError
from podnet.kernel import sysctl


def knob(root: Path, rel: str, value: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(value)
    return p


def test_path_splits_the_dotted_name_and_keeps_parts_whole(tmp_path: Path) -> None:
    assert sysctl.path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    got = sysctl.path("net.ipv4.conf", "eth0.10", "route_localnet", root=str(tmp_path))
    assert got == str(tmp_path / "net/ipv4/conf/eth0.10/route_localnet")


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("net.ipv4.conf", ("..", "x")),
        ("net.ipv4.conf", ("a/b", "route_localnet")),
        ("net.ipv4.conf", ("/etc", "passwd")),
        ("net.ipv4.conf", (".", "rp_filter")),
        ("net.ipv4.conf", ("", "rp_filter")),
        ("net..ipv4", ()),
        ("net.ipv4/../../etc", ()),
        ("net.ipv4.conf", ("a\0b", "rp_filter")),
    ],
)
def test_path_refuses_segments_that_leave_proc_sys(name: str, parts: tuple[str, ...]) -> None:
    with pytest.raises(KernelError, match="invalid sysctl name"):
        sysctl.path(name, *parts)


def test_read_strips_and_missing_is_none(tmp_path: Path) -> None:
    knob(tmp_path, "net/ipv4/ip_forward", "1\n")
    assert sysctl.read("net.ipv4.ip_forward", root=str(tmp_path)) == "1"
    assert sysctl.read("net.ipv6.conf.all.forwarding", root=str(tmp_path)) is None


def test_ensure_writes_a_differing_value(tmp_path: Path) -> None:
    p = knob(tmp_path, "net/ipv4/conf/br0/route_localnet", "0\n")
    assert sysctl.ensure("net.ipv4.conf", 1, "br0", "route_localnet", root=str(tmp_path)) is True
    assert p.read_text() == "1\n"


def test_ensure_does_not_write_a_value_already_there(tmp_path: Path) -> None:
    p = knob(tmp_path, "net/ipv4/ip_forward", "1\n")
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))  # a write would move the mtime
    assert sysctl.ensure("net.ipv4.ip_forward", "1", root=str(tmp_path)) is False
    assert p.stat().st_mtime_ns == 1_000_000_000
    assert p.read_text() == "1\n"


def test_ensure_failure_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match=r"net\.ipv4\.conf\.nosuch0\.route_localnet = 1") as info:
        sysctl.ensure("net.ipv4.conf", 1, "nosuch0", "route_localnet", root=str(tmp_path))
    assert info.value.details == str(tmp_path / "net/ipv4/conf/nosuch0/route_localnet")
    assert not (tmp_path / "net").exists()
