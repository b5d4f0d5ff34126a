"""The vxlan fast path's tunnel in tc (fabric/fastpath_tunnel.py) without root: the
outer header's checksum arithmetic, the trie's value, which helpers each program calls,
the peers the vxlan fabric hands it, and how status shows it. The kernel runs the
programs in tests/ns/test_fastpath_tunnel_run.py and tests/ns/test_vxlan_fastpath_lab.py."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.fabric import FABRICS, fastpath, fastpath_prog
from podnet.fabric import fastpath_tunnel as tunnel
from podnet.fabric.base import Desired
from podnet.fabric.kernel_state import FdbSpec, NeighSpec, RouteSpec
from podnet.kernel import bpf
from podnet.lab.status import fastpath_of, fastpath_text

MAC_A, MAC_B = "6a:52:65:46:01:1b", "c2:21:78:e7:27:e5"


def reference_checksum(header: bytes) -> int:
    """RFC 791's header checksum, in network order."""
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def program_checksum(partial: int, length: int, ident: bytes) -> bytes:
    """What podnet_encap computes: the value's sum + the length and ID words as 16-bit
    little-endian loads see them, folded twice, inverted, stored little-endian."""
    total = partial + struct.unpack("<H", struct.pack(">H", length))[0] + struct.unpack("<H", ident)[0]
    for _ in range(2):
        total = (total & 0xFFFF) + (total >> 16)
    return struct.pack("<H", total ^ 0xFFFF)


@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(28, 0xFFFF), st.binary(min_size=2, max_size=2))
def test_the_encapsulated_header_checksum_is_the_ipv4_one(local, peer, length, ident):
    partial = tunnel.header_sum(str(local), str(peer))
    header = struct.pack("!BBH2sHBBH4s4s", 0x45, 0, length, ident, 0, 64, 17, 0, local.packed, peer.packed)
    assert program_checksum(partial, length, ident) == struct.pack("!H", reference_checksum(header))


def test_peer_value_is_index_addresses_macs_then_the_header_sum():
    value = tunnel.peer_value(2, "172.31.0.10", MAC_A, "172.31.0.11", MAC_B.upper())
    assert len(value) == tunnel.PEER_VALUE_SIZE
    assert value[:4] == struct.pack("<I", 2)
    assert value[4:8] == ipaddress.IPv4Address("172.31.0.11").packed  # the peer's, where packets go
    assert value[8:12] == ipaddress.IPv4Address("172.31.0.10").packed
    assert value[12:18] == bytes.fromhex(MAC_B.replace(":", "")) and value[18:24] == bytes.fromhex(MAC_A.replace(":", ""))
    assert struct.unpack("<I", value[24:])[0] == tunnel.header_sum("172.31.0.10", "172.31.0.11")


@pytest.mark.parametrize("peer, mac", [("172.31.0.300", MAC_B), ("fd00::1", MAC_B), ("172.31.0.11", "c2:21:78:e7:27"),
                                       ("172.31.0.11", "zz:21:78:e7:27:e5")])
def test_peer_value_refuses_what_is_not_an_ipv4_address_or_a_mac(peer, mac):
    with pytest.raises(ValueError):
        tunnel.peer_value(2, "172.31.0.10", MAC_A, peer, mac)


def calls(code: bytes) -> tuple[list[int], list[int]]:
    """(helpers, kfuncs) a program calls, in order."""
    insns = [struct.unpack("<BBhi", code[i:i + 8]) for i in range(0, len(code), 8)]
    helpers = [i[3] for i in insns if i[0] == bpf.JMP | bpf.CALL and i[1] >> 4 == 0]
    kfuncs = [i[3] for i in insns if i[0] == bpf.JMP | bpf.CALL and i[1] >> 4 == fastpath_prog.PSEUDO_KFUNC_CALL]
    return helpers, kfuncs


def test_encap_grows_the_packet_then_sends_it_out_by_the_kernels_neighbour():
    helpers, kfuncs = calls(tunnel.program_encap(3, 4, 8472, 1))
    assert helpers == [fastpath_prog.HELPER_MAP_LOOKUP, fastpath_prog.HELPER_MAP_LOOKUP,
                       fastpath_prog.HELPER_L3_CSUM_REPLACE, tunnel.HELPER_GET_HASH, tunnel.HELPER_PRANDOM,
                       tunnel.HELPER_ADJUST_ROOM, fastpath_prog.HELPER_REDIRECT_NEIGH]
    assert kfuncs == []
    assert tunnel.program_encap(3, 4, 8472, 1) != tunnel.program_encap(3, 4, 4789, 1)  # the port is in the code


def test_decap_asks_conntrack_before_it_shrinks_the_packet_for_the_pod():
    helpers, kfuncs = calls(tunnel.program_decap(3, 4, 1111, 2222, "172.31.0.11", 8472, 1))
    assert kfuncs == [1111, 2222]
    assert helpers == [fastpath_prog.HELPER_MAP_LOOKUP, fastpath_prog.HELPER_MAP_LOOKUP, tunnel.HELPER_ADJUST_ROOM,
                       fastpath_prog.HELPER_L3_CSUM_REPLACE, fastpath_prog.HELPER_REDIRECT_PEER]
    other = tunnel.program_decap(3, 4, 1111, 2222, "172.31.0.12", 8472, 1)
    assert other != tunnel.program_decap(3, 4, 1111, 2222, "172.31.0.11", 8472, 1)  # its own address only


def test_vxlan_hands_the_fast_path_each_ipv4_block_with_its_vtep_mac_and_host():
    want = Desired(
        routes={RouteSpec("10.244.1.0/24", "10.244.1.0", "pnvx0", True), RouteSpec("10.244.2.0/24", "10.244.2.0", "pnvx0", True),
                RouteSpec("10.244.3.0/24", "10.244.3.0", "pnvx0", True),  # no neighbour entry: not taken
                RouteSpec("fd00:10:244:1::/64", "fd00:10:244:1::", "pnvx0", True)},
        neighbours={NeighSpec("10.244.1.0", MAC_B, "pnvx0"), NeighSpec("10.244.2.0", MAC_A, "pnvx0"),
                    NeighSpec("fd00:10:244:1::", MAC_B, "pnvx0")},
        fdb={FdbSpec(MAC_B, "172.31.0.11", "pnvx0"), FdbSpec(MAC_A, "fd00::12", "pnvx0")})  # an IPv6 host: not taken
    assert FABRICS["vxlan"]().fastpath_peers(want) == {"10.244.1.0/24": fastpath.TunnelPeer("172.31.0.11", MAC_B)}
    assert FABRICS["host-gw"]().fastpath_peers(want) == {}


def test_status_says_where_the_tunnel_is(monkeypatch):
    monkeypatch.setattr(fastpath, "_active", None)
    plain = fastpath.FastPath("pnvx0", "pncl0")
    assert plain.status()["tunnel"] == "none" and plain.out_name == fastpath_prog.OUT
    spec = fastpath.Tunnel("eth0", "172.31.0.10", MAC_A, 8472, 1)
    path = fastpath.FastPath("pnvx0", "pncl0", spec)
    assert path.out_name == tunnel.ENCAP
    assert path.status()["tunnel"] == "encap in tc, decap by pnvx0"  # before the underlay's program is on
    path.decap_for = (2, "172.31.0.10")
    assert path.status()["tunnel"] == "in tc (encap on pod veths, decap on eth0)"
    found = fastpath_of({"result": {"fastpath": {"mode": "ebpf", "state": "on", "pods": 2, "blocks": 1,
                                                 "tunnel": path.status()["tunnel"]}}})
    assert fastpath_text(found) == "ebpf on, 2 pods, 1 blocks, tunnel in tc (encap on pod veths, decap on eth0)"
    assert fastpath_text({"mode": "ebpf", "state": "on", "pods": 2, "blocks": 1, "tunnel": "none"}) == \
        "ebpf on, 2 pods, 1 blocks"
