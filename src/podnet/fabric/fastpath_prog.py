"""The two tc programs of the vxlan fast path (fabric/fastpath.py), in BPF assembly.

out (`podnet_out`, on the ingress of every pod's host veth): a plain IPv4 packet (no
options, TTL > 1) to a peer's block (an LPM trie of the peers' blocks, value: the
fabric device's ifindex) gets TTL - 1 and a fixed header checksum, then
bpf_redirect_neigh(pnvx0): the kernel's route and the VTEP's permanent neighbour give
it its addresses and pnvx0 encapsulates it.

in (`podnet_in`, on the ingress of pnvx0): an unfragmented plain IPv4 TCP or UDP
packet to one of this node's pods (a hash map: address -> host veth, pod MAC, gateway
MAC) that conntrack knows nothing of (bpf_skb_ct_lookup, either direction) gets the
pod's and its gateway's MACs, TTL - 1, and bpf_redirect_peer into the pod. A flow
conntrack knows (one this node NATed: a ClusterIP's answer, a NodePort; or one that
began on the kernel path) stays on the kernel path, so its translation is undone.

Both start with the switch (an array map, slot 0 == 1) and return TC_ACT_OK (the
kernel path) for anything they do not take.
"""

from __future__ import annotations

import ipaddress
import struct

from podnet.kernel import bpf
from podnet.kernel.bpf import R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, Insn, Label

OUT, IN = "podnet_out", "podnet_in"
# struct __sk_buff offsets
SKB_DATA, SKB_DATA_END = 76, 80
HELPER_MAP_LOOKUP, HELPER_L3_CSUM_REPLACE, HELPER_REDIRECT_NEIGH, HELPER_REDIRECT_PEER = 1, 10, 152, 155
PSEUDO_KFUNC_CALL = 2
TC_ACT_OK = 0
ETH_P_IP_LE = 0x0008  # htons(0x0800) as a little-endian load sees it
FRAG_MASK_LE = 0xFF3F  # MF and the fragment offset, as a little-endian load of the two bytes sees them
ETH, IP_FRAG, IP_TTL, IP_PROTO, IP_CSUM, IP_SADDR, IP_DADDR, L4 = 14, 20, 22, 23, 24, 26, 30, 34
BPF_F_CURRENT_NETNS = -1
CT_OPTS_SIZE = 16  # struct bpf_ct_opts (netns_id, error, l4proto, dir, ct_zone_id, ct_zone_dir, reserved)
TUPLE4_SIZE = 12  # struct bpf_sock_tuple, ipv4: saddr, daddr, sport, dport


def switch(switch_fd: int) -> list[Insn | Label | list[Insn]]:
    """r6 = the skb; on to the rest only when the switch is on."""
    return [
        bpf.mov_reg(R6, R1),
        bpf.st_imm(bpf.W, R10, -4, 0),
        bpf.ld_map_fd(R1, switch_fd), bpf.mov_reg(R2, R10), bpf.add_imm(R2, -4),
        bpf.call(HELPER_MAP_LOOKUP),
        bpf.jmp_imm(bpf.JEQ, R0, 0, "pass"),
        bpf.ldx(bpf.W, R1, R0, 0),
        bpf.jmp_imm(bpf.JNE, R1, 1, "pass"),
    ]


def packet(end: int) -> list[Insn]:
    """r2 = data, r3 = data_end, `end` bytes there (else: pass)."""
    return [bpf.ldx(bpf.W, R2, R6, SKB_DATA), bpf.ldx(bpf.W, R3, R6, SKB_DATA_END),
            bpf.mov_reg(R4, R2), bpf.add_imm(R4, end), bpf.jmp_reg(bpf.JGT, R4, R3, "pass")]


def plain_ipv4(at: int = 0) -> list[Insn | Label]:
    """An Ethernet frame at `at` (r2 = data) holding IPv4 without options with a TTL
    above 1, else pass."""
    return [bpf.ldx(bpf.H, R5, R2, at + 12), bpf.jmp_imm(bpf.JNE, R5, ETH_P_IP_LE, "pass"),
            bpf.ldx(bpf.B, R5, R2, at + ETH), bpf.jmp_imm(bpf.JNE, R5, 0x45, "pass"),
            bpf.ldx(bpf.B, R5, R2, at + IP_TTL), bpf.jmp_imm(bpf.JGT, R5, 1, "ttl_ok"),
            Insn(bpf.JMP | bpf.JA, label="pass"),
            Label("ttl_ok")]


def ttl_down() -> list[Insn]:
    """TTL - 1 and the header checksum fixed (r2 = data; the call invalidates it)."""
    return [bpf.ldx(bpf.H, R8, R2, IP_TTL),  # TTL and protocol: one 16-bit word of the checksum
            bpf.mov_reg(R9, R8), bpf.add_imm(R9, -1), bpf.stx(bpf.H, R2, R9, IP_TTL),
            bpf.mov_reg(R1, R6), bpf.mov_imm(R2, IP_CSUM), bpf.mov_reg(R3, R8), bpf.mov_reg(R4, R9),
            bpf.mov_imm(R5, 2), bpf.call(HELPER_L3_CSUM_REPLACE)]


def pass_() -> list[Insn | Label]:
    return [Label("pass"), bpf.mov_imm(R0, TC_ACT_OK), bpf.exit_()]


def kfunc(btf_id: int) -> Insn:
    return Insn(bpf.JMP | bpf.CALL, 0, PSEUDO_KFUNC_CALL, 0, btf_id)


def to_a_peer(blocks_fd: int) -> list[Insn | Label | list[Insn]]:
    """A plain IPv4 packet (r2 = data) whose destination is in a peer's block of the
    trie: r0 = that block's value, else pass."""
    return [
        packet(L4), *plain_ipv4(),
        bpf.ldx(bpf.W, R5, R2, IP_DADDR), bpf.stx(bpf.W, R10, R5, -8), bpf.st_imm(bpf.W, R10, -12, 32),
        bpf.ld_map_fd(R1, blocks_fd), bpf.mov_reg(R2, R10), bpf.add_imm(R2, -12),
        bpf.call(HELPER_MAP_LOOKUP),
        bpf.jmp_imm(bpf.JEQ, R0, 0, "pass"),
    ]


def program_out(blocks_fd: int, switch_fd: int) -> bytes:
    """The pod veths' program (module docstring)."""
    return bpf.assemble([
        *switch(switch_fd),
        *to_a_peer(blocks_fd),
        bpf.ldx(bpf.W, R7, R0, 0),  # the fabric device's ifindex
        packet(L4),  # the call invalidated the packet pointers
        ttl_down(),
        bpf.mov_reg(R1, R7), bpf.mov_imm(R2, 0), bpf.mov_imm(R3, 0), bpf.mov_imm(R4, 0),
        bpf.call(HELPER_REDIRECT_NEIGH),
        bpf.exit_(),
        *pass_(),
    ])


def program_in(pods_fd: int, switch_fd: int, ct_lookup: int, ct_release: int) -> bytes:
    """The fabric device's program (module docstring); `ct_lookup`, `ct_release`: the
    BTF ids of bpf_skb_ct_lookup and bpf_ct_release (kernel/btf.py)."""
    return bpf.assemble([
        *switch(switch_fd),
        packet(L4 + 4),
        *for_a_pod(pods_fd, ct_lookup, ct_release),
        *to_the_pod(),
        *pass_(),
    ])


def for_a_pod(pods_fd: int, ct_lookup: int, ct_release: int, at: int = 0) -> list[Insn | Label | list[Insn]]:
    """An unfragmented plain IPv4 TCP or UDP packet at `at` (r2 = data, checked up to
    its ports) to one of this node's pods, of a flow conntrack does not know: on to
    the label "untracked" with r7 = the pod's entry, else pass."""
    return [
        *plain_ipv4(at),
        bpf.ldx(bpf.H, R5, R2, at + IP_FRAG), bpf.jmp_imm(bpf.JNE, R5, 0, "maybe_frag"),
        Insn(bpf.JMP | bpf.JA, label="whole"),
        Label("maybe_frag"),
        bpf.alu_imm(bpf.AND, R5, FRAG_MASK_LE), bpf.jmp_imm(bpf.JNE, R5, 0, "pass"),
        Label("whole"),
        bpf.ldx(bpf.B, R8, R2, at + IP_PROTO), bpf.jmp_imm(bpf.JEQ, R8, 6, "l4_ok"), bpf.jmp_imm(bpf.JNE, R8, 17, "pass"),
        Label("l4_ok"),
        # the conntrack tuple at r10-16 (saddr, daddr, sport, dport: the packet's own bytes)
        bpf.ldx(bpf.W, R5, R2, at + IP_SADDR), bpf.stx(bpf.W, R10, R5, -16),
        bpf.ldx(bpf.W, R5, R2, at + IP_DADDR), bpf.stx(bpf.W, R10, R5, -12),
        bpf.ldx(bpf.W, R5, R2, at + L4), bpf.stx(bpf.W, R10, R5, -8),
        # the pod: address -> {ifindex, pod MAC, gateway MAC}
        bpf.ldx(bpf.W, R5, R2, at + IP_DADDR), bpf.stx(bpf.W, R10, R5, -36),
        bpf.ld_map_fd(R1, pods_fd), bpf.mov_reg(R2, R10), bpf.add_imm(R2, -36),
        bpf.call(HELPER_MAP_LOOKUP),
        bpf.jmp_imm(bpf.JEQ, R0, 0, "pass"),
        bpf.mov_reg(R7, R0),
        # struct bpf_ct_opts at r10-32: this netns, the packet's protocol
        bpf.st_imm(bpf.W, R10, -32, BPF_F_CURRENT_NETNS), bpf.st_imm(bpf.W, R10, -28, 0),
        bpf.st_imm(bpf.W, R10, -24, 0), bpf.st_imm(bpf.W, R10, -20, 0), bpf.stx(bpf.B, R10, R8, -24),
        bpf.mov_reg(R1, R6), bpf.mov_reg(R2, R10), bpf.add_imm(R2, -16), bpf.mov_imm(R3, TUPLE4_SIZE),
        bpf.mov_reg(R4, R10), bpf.add_imm(R4, -32), bpf.mov_imm(R5, CT_OPTS_SIZE),
        kfunc(ct_lookup),
        bpf.jmp_imm(bpf.JEQ, R0, 0, "untracked"),
        bpf.mov_reg(R1, R0), kfunc(ct_release),
        Insn(bpf.JMP | bpf.JA, label="pass"),  # conntrack knows this flow: the kernel path
        Label("untracked"),
    ]


def to_the_pod() -> list[Insn | Label | list[Insn]]:
    """The packet (now at 0) gets the pod's and its gateway's MACs (r7: the pod's
    entry), TTL - 1, and bpf_redirect_peer into the pod."""
    return [
        packet(L4),
        bpf.ldx(bpf.W, R5, R7, 4), bpf.stx(bpf.W, R2, R5, 0),  # destination MAC: the pod's
        bpf.ldx(bpf.H, R5, R7, 8), bpf.stx(bpf.H, R2, R5, 4),
        bpf.ldx(bpf.H, R5, R7, 10), bpf.stx(bpf.H, R2, R5, 6),  # source MAC: its gateway's
        bpf.ldx(bpf.W, R5, R7, 12), bpf.stx(bpf.W, R2, R5, 8),
        ttl_down(),
        bpf.ldx(bpf.W, R1, R7, 0), bpf.mov_imm(R2, 0),
        bpf.call(HELPER_REDIRECT_PEER),
        bpf.exit_(),
    ]


def lpm_key(block: str) -> bytes:
    """An LPM trie key: the prefix length, then the network's bytes."""
    net = ipaddress.IPv4Network(block)
    return struct.pack("<I", net.prefixlen) + net.network_address.packed


def pod_key(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def pod_value(ifindex: int, pod_mac: str, gateway_mac: str) -> bytes:
    """The pods map's value: host veth index, the pod's MAC, its gateway's MAC."""
    return struct.pack("<I", ifindex) + bytes.fromhex(pod_mac.replace(":", "")) + \
        bytes.fromhex(gateway_mac.replace(":", ""))
