"""The VXLAN tunnel in tc: the vxlan fabric's fast path encapsulates and decapsulates
pod-to-pod packets itself (fabric/fastpath.py; BPF assembly as in fastpath_prog.py).

Why: with the fast path through pnvx0, every tunnel packet still crossed the kernel's
VXLAN device and both nodes' IP stacks for its outer header: routing, the UDP socket,
the device's GRO cells, and each of the node's netfilter hooks (the outer packets are
untracked, but every table's base chains still run for them). Measured on a 2-node lab
(issue 19): pod to pod with the fast path 0.79-0.81x of a bare tunnel over a veth pair,
0.87x with the decapsulation below alone, 0.95x with both.

encap (`podnet_encap`, on the ingress of every pod's host veth, in place of
`podnet_out`): a plain IPv4 packet to a peer's block (the LPM trie; value: `peer_value`)
gets TTL - 1, then 50 bytes of header in front of its IP header (bpf_skb_adjust_room,
which marks a GSO packet as a UDP tunnel's so any device can still segment it): outer
IPv4 (this node's underlay address to the peer's, TTL 64, no DF, a random ID, the
header checksum), UDP (source port from the flow's hash, as the kernel's VXLAN device
picks one; the fabric's port; no checksum, as the device sends it), VXLAN (the fabric's
VNI) and the inner Ethernet header the device would write (the peer's VTEP MAC from
ours). Then bpf_redirect_neigh out of the underlay: the kernel's route and neighbour
entry for the peer's address give the outer MACs. A packet whose outer IPv4 length
would pass 65535 takes the kernel path.

decap (`podnet_decap`, on the ingress of the underlay): a VXLAN packet to this node's
underlay address on the fabric's port and VNI, whose inner packet is one `podnet_in`
would take (a pod of this node, a flow conntrack does not know), loses its 50 bytes of
outer header and goes straight into the pod (bpf_redirect_peer). Anything else, and a
packet the helper cannot shrink, takes the kernel path: the VXLAN device decapsulates
it as before. Both programs pass everything while the policy switch is off.

On the wire nothing changes: a node on the kernel path reads what `podnet_encap` sends
and sends what `podnet_decap` reads (the tests mix the two).
"""

from __future__ import annotations

import ipaddress
import re
import struct

from podnet.fabric.fastpath_prog import (
    ETH,
    ETH_P_IP_LE,
    FRAG_MASK_LE,
    HELPER_REDIRECT_NEIGH,
    IP_CSUM,
    IP_DADDR,
    IP_FRAG,
    IP_PROTO,
    IP_SADDR,
    IP_TTL,
    L4,
    for_a_pod,
    packet,
    pass_,
    switch,
    to_a_peer,
    to_the_pod,
    ttl_down,
)
from podnet.kernel import bpf
from podnet.kernel.bpf import R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, Insn

ENCAP, DECAP = "podnet_encap", "podnet_decap"
OUTER = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
UDP, VXLAN, INNER = ETH + 20, ETH + 28, ETH + 36  # where each header starts in the frame
PEER_VALUE_SIZE = 28
HELPER_PRANDOM, HELPER_GET_HASH, HELPER_ADJUST_ROOM = 7, 34, 50
ADJ_ROOM_MAC = 1
F_FIXED_GSO, F_ENCAP_L3_IPV4, F_ENCAP_L4_UDP, F_ENCAP_L2_ETH = 0x1, 0x2, 0x10, 0x40
ENCAP_L2_SHIFT = 56  # BPF_F_ADJ_ROOM_ENCAP_L2(len): the inner L2 header's length
SPORT_LOW, SPORT_MASK = 0x8000, 0x7FFF  # the outer source port: 32768-65535, from the flow's hash
MAX_IPV4_LENGTH = 0xFFFF
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _le16(data: bytes) -> int:
    """What a 16-bit load of these two packet bytes puts in a register."""
    return struct.unpack("<H", data)[0]


def _le32(data: bytes) -> int:
    """What a 32-bit load of these four bytes gives, as the signed immediate BPF takes."""
    value = struct.unpack("<I", data)[0]
    return value - (1 << 32) if value >= 1 << 31 else value


def _vxlan_words(port: int, vni: int) -> tuple[int, int, int]:
    """The UDP port, VXLAN flags (the I flag) and VNI words as the programs load and
    store them: what encap writes is what decap compares."""
    return _le16(struct.pack(">H", port)), _le32(b"\x08\x00\x00\x00"), _le32(struct.pack(">I", vni << 8))


def _mac(mac: str) -> bytes:
    if not _MAC.match(mac.lower()):
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes.fromhex(mac.replace(":", ""))


def header_sum(local: str, peer: str) -> int:
    """The sum of the outer IPv4 header's 16-bit words, as little-endian loads see them,
    with its length, ID and checksum zero: the program adds those two and folds. (The
    ones' complement sum does not depend on byte order, RFC 1071.)"""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, 17, 0,
                         ipaddress.IPv4Address(local).packed, ipaddress.IPv4Address(peer).packed)
    return sum(struct.unpack("<10H", header))


def peer_value(underlay_index: int, local: str, own_mac: str, peer: str, peer_mac: str) -> bytes:
    """The trie's value for one peer's block: the underlay's index, the peer's and this
    node's underlay addresses, the peer's and this node's VTEP MACs, the header sum.
    ValueError for a malformed address or MAC (a lease's: checked again here)."""
    return (struct.pack("<I", underlay_index) + ipaddress.IPv4Address(peer).packed
            + ipaddress.IPv4Address(local).packed + _mac(peer_mac) + _mac(own_mac)
            + struct.pack("<I", header_sum(local, peer)))


def _fold(reg: int, tmp: int) -> list[Insn]:
    """reg = (reg & 0xffff) + (reg >> 16)."""
    return [bpf.mov_reg(tmp, reg), bpf.alu_imm(bpf.RSH, tmp, 16), bpf.alu_imm(bpf.AND, reg, 0xFFFF),
            bpf.alu_reg(bpf.ADD, reg, tmp)]


def program_encap(peers_fd: int, switch_fd: int, port: int, vni: int) -> bytes:
    """The pod veths' program in tunnel mode (module docstring)."""
    flags = F_FIXED_GSO | F_ENCAP_L3_IPV4 | F_ENCAP_L4_UDP | F_ENCAP_L2_ETH
    port_word, flags_word, vni_word = _vxlan_words(port, vni)
    return bpf.assemble([
        *switch(switch_fd),
        *to_a_peer(peers_fd),
        bpf.mov_reg(R7, R0),  # the peer's value
        bpf.ldx(bpf.W, R5, R6, 0), bpf.add_imm(R5, OUTER - ETH),  # skb->len: the outer IPv4 length to be
        bpf.jmp_imm(bpf.JGT, R5, MAX_IPV4_LENGTH, "pass"),
        packet(L4),  # the call invalidated the packet pointers
        ttl_down(),
        bpf.mov_reg(R1, R6), bpf.call(HELPER_GET_HASH), bpf.mov_reg(R8, R0),
        bpf.call(HELPER_PRANDOM), bpf.stx(bpf.H, R10, R0, -2),  # the outer ID
        bpf.mov_reg(R1, R6), bpf.mov_imm(R2, OUTER), bpf.mov_imm(R3, ADJ_ROOM_MAC),
        bpf.mov_imm(R4, 14), bpf.alu_imm(bpf.LSH, R4, ENCAP_L2_SHIFT), bpf.alu_imm(bpf.OR, R4, flags),
        bpf.call(HELPER_ADJUST_ROOM),
        bpf.jmp_imm(bpf.JNE, R0, 0, "pass"),  # not grown: as it was, the kernel path
        bpf.ldx(bpf.W, R9, R6, 0), bpf.add_imm(R9, -ETH), bpf.to_be16(R9),  # the outer length, network order
        packet(INNER + ETH),
        # outer IPv4
        bpf.st_imm(bpf.H, R2, ETH, _le16(b"\x45\x00")),
        bpf.stx(bpf.H, R2, R9, ETH + 2),  # total length
        bpf.ldx(bpf.H, R3, R10, -2), bpf.stx(bpf.H, R2, R3, ETH + 4),  # ID
        bpf.st_imm(bpf.H, R2, IP_FRAG, 0),  # no DF, no fragment, as the VXLAN device sends
        bpf.st_imm(bpf.H, R2, IP_TTL, _le16(b"\x40\x11")),  # TTL 64, UDP
        bpf.ldx(bpf.W, R5, R7, 8), bpf.stx(bpf.W, R2, R5, IP_SADDR),  # from this node
        bpf.ldx(bpf.W, R5, R7, 4), bpf.stx(bpf.W, R2, R5, IP_DADDR),  # to the peer
        bpf.ldx(bpf.W, R5, R7, 24), bpf.alu_reg(bpf.ADD, R5, R9), bpf.alu_reg(bpf.ADD, R5, R3),
        *_fold(R5, R4), *_fold(R5, R4), bpf.alu_imm(bpf.XOR, R5, 0xFFFF), bpf.stx(bpf.H, R2, R5, IP_CSUM),
        # UDP
        bpf.alu_imm(bpf.AND, R8, SPORT_MASK), bpf.alu_imm(bpf.OR, R8, SPORT_LOW), bpf.to_be16(R8),
        bpf.stx(bpf.H, R2, R8, UDP),
        bpf.st_imm(bpf.H, R2, UDP + 2, port_word),
        bpf.ldx(bpf.W, R9, R6, 0), bpf.add_imm(R9, -UDP), bpf.to_be16(R9), bpf.stx(bpf.H, R2, R9, UDP + 4),
        bpf.st_imm(bpf.H, R2, UDP + 6, 0),
        # VXLAN: the I flag, the VNI
        bpf.st_imm(bpf.W, R2, VXLAN, flags_word),
        bpf.st_imm(bpf.W, R2, VXLAN + 4, vni_word),
        # inner Ethernet: to the peer's VTEP MAC from ours, IPv4
        bpf.ldx(bpf.W, R5, R7, 12), bpf.stx(bpf.W, R2, R5, INNER),
        bpf.ldx(bpf.H, R5, R7, 16), bpf.stx(bpf.H, R2, R5, INNER + 4),
        bpf.ldx(bpf.H, R5, R7, 18), bpf.stx(bpf.H, R2, R5, INNER + 6),
        bpf.ldx(bpf.W, R5, R7, 20), bpf.stx(bpf.W, R2, R5, INNER + 8),
        bpf.st_imm(bpf.H, R2, INNER + 12, ETH_P_IP_LE),
        bpf.ldx(bpf.W, R1, R7, 0), bpf.mov_imm(R2, 0), bpf.mov_imm(R3, 0), bpf.mov_imm(R4, 0),
        bpf.call(HELPER_REDIRECT_NEIGH),
        bpf.exit_(),
        *pass_(),
    ])


def program_decap(pods_fd: int, switch_fd: int, ct_lookup: int, ct_release: int, local: str, port: int,
                  vni: int) -> bytes:
    """The underlay's program (module docstring); `local`: this node's underlay address."""
    port_word, flags_word, vni_word = _vxlan_words(port, vni)
    return bpf.assemble([
        *switch(switch_fd),
        packet(OUTER + L4 + 4),
        bpf.ldx(bpf.H, R5, R2, 12), bpf.jmp_imm(bpf.JNE, R5, ETH_P_IP_LE, "pass"),
        bpf.ldx(bpf.B, R5, R2, ETH), bpf.jmp_imm(bpf.JNE, R5, 0x45, "pass"),
        bpf.ldx(bpf.B, R5, R2, IP_PROTO), bpf.jmp_imm(bpf.JNE, R5, 17, "pass"),
        bpf.ldx(bpf.H, R5, R2, IP_FRAG), bpf.alu_imm(bpf.AND, R5, FRAG_MASK_LE), bpf.jmp_imm(bpf.JNE, R5, 0, "pass"),
        bpf.ldx(bpf.W, R5, R2, IP_DADDR), bpf.mov32_imm(R4, _le32(ipaddress.IPv4Address(local).packed)),
        bpf.jmp_reg(bpf.JNE, R5, R4, "pass"),
        bpf.ldx(bpf.H, R5, R2, UDP + 2), bpf.jmp_imm(bpf.JNE, R5, port_word, "pass"),
        bpf.ldx(bpf.W, R5, R2, VXLAN), bpf.jmp_imm(bpf.JNE, R5, flags_word, "pass"),
        bpf.ldx(bpf.W, R5, R2, VXLAN + 4), bpf.jmp_imm(bpf.JNE, R5, vni_word, "pass"),
        *for_a_pod(pods_fd, ct_lookup, ct_release, at=INNER),
        bpf.mov_reg(R1, R6), bpf.mov_imm(R2, -OUTER), bpf.mov_imm(R3, ADJ_ROOM_MAC), bpf.mov_imm(R4, F_FIXED_GSO),
        bpf.call(HELPER_ADJUST_ROOM),
        bpf.jmp_imm(bpf.JNE, R0, 0, "pass"),  # not shrunk: as it was, the VXLAN device's
        *to_the_pod(),
        *pass_(),
    ])

