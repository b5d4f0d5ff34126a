"""The tunnel programs (fabric/fastpath_tunnel.py) run by the kernel on packets built
here (BPF_PROG_TEST_RUN, in a namespace of the test's own): the bytes `podnet_encap`
writes (the outer IPv4 header and its checksum, UDP, VXLAN, the inner Ethernet header)
and what `podnet_decap` hands the pod, for underlay addresses whose last byte is above
127 too (a 32-bit constant with its top bit set: once never matched)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from podnet.lab.sandbox import Sandbox

pytestmark = pytest.mark.root

RUN = r"""
import ipaddress, json, struct, sys
from podnet.fabric import fastpath_prog as prog, fastpath_tunnel as tunnel
from podnet.fabric.fastpath import MAP_TYPE_HASH
from podnet.kernel import bpf, btf

local, peer, pod = sys.argv[1], sys.argv[2], sys.argv[3]
own_mac, peer_mac, pod_mac, gw_mac = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:01", "02:00:00:00:00:02"
switch = bpf.BpfMap(bpf.MAP_TYPE_ARRAY, 4, 4, 1)
switch.update(struct.pack("<I", 0), struct.pack("<I", 1))
peers = bpf.BpfMap(bpf.MAP_TYPE_LPM_TRIE, 8, tunnel.PEER_VALUE_SIZE, 16, bpf.F_NO_PREALLOC)
peers.update(prog.lpm_key("10.244.1.0/24"), tunnel.peer_value(3, local, own_mac, peer, peer_mac))
pods = bpf.BpfMap(MAP_TYPE_HASH, 4, 16, 16)
pods.update(prog.pod_key(pod), prog.pod_value(9, pod_mac, gw_mac))
encap = bpf.load_program(tunnel.program_encap(peers.fd, switch.fd, 8472, 1), tunnel.ENCAP)
lookup, release = btf.function_id("bpf_skb_ct_lookup"), btf.function_id("bpf_ct_release")
decap = bpf.load_program(tunnel.program_decap(pods.fd, switch.fd, lookup, release, local, 8472, 1), tunnel.DECAP)
out = {}
for name, fd in (("encap", encap), ("decap", decap)):
    for packet in json.loads(sys.argv[4])[name]:
        code, data = bpf.run_once(fd, bytes.fromhex(packet))
        out.setdefault(name, []).append([code, data.hex()])
print(json.dumps(out))
"""

TC_ACT_OK, TC_ACT_REDIRECT = 0, 7
MACS = bytes.fromhex("aabbccddeeff" "112233445566")


def checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, payload: bytes, proto: int = 17, ttl: int = 64) -> bytes:
    head = bytearray(20)
    head[0], head[8], head[9] = 0x45, ttl, proto
    head[2:4] = (20 + len(payload)).to_bytes(2, "big")
    head[12:16], head[16:20] = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    head[10:12] = checksum(bytes(head)).to_bytes(2, "big")
    return bytes(head) + payload


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + (8 + len(data)).to_bytes(2, "big") + b"\0\0" + data


def frame(packet: bytes) -> bytes:
    return MACS + b"\x08\x00" + packet


def vxlan(outer_src: str, outer_dst: str, inner: bytes, vni: int = 1, port: int = 8472) -> bytes:
    body = b"\x08\0\0\0" + (vni << 8).to_bytes(4, "big") + bytes.fromhex("020000000000" "0200000000ff") + b"\x08\x00"
    return frame(ipv4(outer_src, outer_dst, udp(40000, port, body + inner)))


def run(local: str, peer: str, pod: str, packets: dict[str, list[bytes]]) -> dict[str, list[tuple[int, bytes]]]:
    with Sandbox("pn-fpr-") as box:
        ns = box.netns("run")
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", RUN, local, peer, pod,
                              json.dumps({k: [p.hex() for p in v] for k, v in packets.items()})],
                             capture_output=True, text=True, timeout=60, check=True)
    found = json.loads(out.stdout)
    return {k: [(code, bytes.fromhex(data)) for code, data in v] for k, v in found.items()}


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.mark.parametrize("local, peer", [("172.31.0.10", "172.31.0.11"), ("10.9.0.200", "10.9.0.250")])
def test_encap_writes_what_the_vxlan_device_would_and_decap_takes_it_off(local, peer):
    inner = ipv4("10.244.0.2", "10.244.1.7", udp(5000, 80, b"hello fabric"))
    to_pod = ipv4("10.244.1.2", "10.244.0.2", udp(80, 5000, b"answer"))
    found = run(local, peer, "10.244.0.2", {
        "encap": [frame(inner), frame(ipv4("10.244.0.2", "10.245.0.1", udp(5000, 80, b"x")))],
        "decap": [vxlan(peer, local, to_pod), vxlan(peer, "10.9.9.9", to_pod), vxlan(peer, local, to_pod, vni=2),
                  vxlan(peer, local, ipv4("10.244.1.2", "10.244.0.99", udp(80, 5000, b"answer")))],
    })
    (code, out), (other_code, other) = found["encap"]
    assert code == TC_ACT_REDIRECT and len(out) == len(frame(inner)) + 50
    outer = out[14:34]
    assert outer[0] == 0x45 and outer[8] == 64 and outer[9] == 17 and outer[6] & 0x40 == 0  # TTL 64, UDP, no DF
    assert int.from_bytes(outer[2:4], "big") == len(out) - 14
    assert checksum(outer) == 0  # a valid header checksum
    assert outer[12:16] == ipaddress.IPv4Address(local).packed and outer[16:20] == ipaddress.IPv4Address(peer).packed
    sport, dport, length = (int.from_bytes(out[34 + i:36 + i], "big") for i in (0, 2, 4))
    assert sport >= 0x8000 and dport == 8472 and length == len(out) - 34 and out[40:42] == b"\0\0"
    assert out[42:50] == b"\x08\0\0\0\0\0\x01\0"  # the I flag, VNI 1
    assert out[50:64] == bytes.fromhex("02000000000b" "02000000000a") + b"\x08\x00"  # to the peer's VTEP MAC
    sent = out[64:]
    assert sent[8] == 63 and checksum(sent[:20]) == 0 and sent[20:] == inner[20:]  # a router's hop
    assert (other_code, other) == (TC_ACT_OK, frame(ipv4("10.244.0.2", "10.245.0.1", udp(5000, 80, b"x"))))

    (code, out), *others = found["decap"]
    assert code == TC_ACT_REDIRECT
    assert out[:14] == bytes.fromhex("020000000001" "020000000002") + b"\x08\x00"  # the pod's MAC, its gateway's
    assert out[14 + 8] == 63 and checksum(out[14:34]) == 0 and out[34:] == to_pod[20:]
    # another node's address, another VNI, no such pod: not ours, passed on (TC_ACT_OK)
    assert [c for c, _ in others] == [TC_ACT_OK] * 3
