"""GSO limits (kernel/gso.py): packing and capping, no root needed."""

from __future__ import annotations

import struct

from podnet.kernel.gso import BIG_TCP, DEFAULT, LEGACY, GsoLimits


def _attrs(packed: bytes) -> dict[int, int]:
    out, offset = {}, 0
    while offset < len(packed):
        length, kind = struct.unpack_from("=HH", packed, offset)
        out[kind] = struct.unpack_from("=I", packed, offset + 4)[0]
        offset += (length + 3) & ~3
    return out


def test_default_limits_add_nothing_to_a_new_link():
    assert not DEFAULT.big and DEFAULT.link_attrs() == b""
    assert GsoLimits(LEGACY, LEGACY) == DEFAULT


def test_big_limits_set_gso_and_gro_for_both_families():
    limits = GsoLimits(ipv6=BIG_TCP, ipv4=131072)
    assert limits.big
    # IFLA_GSO_MAX_SIZE 41, IFLA_GRO_MAX_SIZE 58, IFLA_GSO/GRO_IPV4_MAX_SIZE 63/64
    assert _attrs(limits.link_attrs()) == {41: BIG_TCP, 58: BIG_TCP, 63: 131072, 64: 131072}


def test_capped_by_what_the_device_can_do():
    assert GsoLimits(BIG_TCP, BIG_TCP).capped(LEGACY) == DEFAULT
    assert GsoLimits(BIG_TCP, LEGACY).capped(524280) == GsoLimits(BIG_TCP, LEGACY)
