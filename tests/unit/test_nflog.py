"""NFLOG message parsing (kernel/nflog.py), on crafted netlink messages."""

from __future__ import annotations

import socket
import struct

from podnet.kernel import nflog


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _ipv4_udp(src: str, dst: str, sport: int, dport: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + struct.pack("!HHHH", sport, dport, 8, 0)


def _message(prefix: bytes, payload: bytes, outdev: int | None = 3) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(5))
    body += _attr(nflog.NFULA_PACKET_HDR, struct.pack("!HBB", 0x0800, 2, 0))
    if outdev is not None:
        body += _attr(nflog.NFULA_IFINDEX_OUTDEV, struct.pack("!I", outdev))
    body += _attr(nflog.NFULA_PREFIX, prefix + b"\0") + _attr(nflog.NFULA_PAYLOAD, payload)
    kind = (nflog.NFNL_SUBSYS_ULOG << 8) | nflog.NFULNL_MSG_PACKET
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_packet_messages_are_parsed():
    data = _message(b"D np:x/deny", _ipv4_udp("10.244.0.2", "10.244.1.3", 40000, 80))
    data += _message(b"A cp:default/allow", _ipv4_udp("10.244.0.4", "10.244.1.5", 1, 81), None)
    first, second = nflog.parse_message(data)
    assert (first.prefix, first.protocol, first.src, first.dst, first.sport, first.dport) == (
        "D np:x/deny", "udp", "10.244.0.2", "10.244.1.3", 40000, 80)
    assert first.outdev == 3 and second.outdev is None and second.prefix == "A cp:default/allow"


def test_ipv6_and_truncated_payloads():
    v6 = bytes([0x60, 0, 0, 0, 0, 8, 6, 64]) + socket.inet_pton(socket.AF_INET6, "fd00::1")
    v6 += socket.inet_pton(socket.AF_INET6, "fd00::2") + struct.pack("!HH", 5, 443)
    assert nflog.parse_payload(v6) == (6, "tcp", "fd00::1", "fd00::2", 5, 443)
    assert nflog.parse_payload(b"") is None and nflog.parse_payload(b"\x45\x00") is None
    icmp = bytearray(_ipv4_udp("1.1.1.1", "2.2.2.2", 0, 0))
    icmp[9] = 1
    assert nflog.parse_payload(bytes(icmp))[1:] == ("icmp", "1.1.1.1", "2.2.2.2", None, None)
