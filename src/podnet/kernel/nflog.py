"""Read packets that nftables rules `log group N prefix "..."` hand to NFLOG.

Why NFLOG: a verdict must carry the name of the rule that made it, and the kernel can
say it cheaply: the rule logs to a netlink group with a short prefix (the rule's ID),
and the agent reads the first bytes of each packet from that group, so only the
packets a rule chose to log cost anything. Plain `log` (to the kernel ring buffer)
would be global, rate-limited and unparseable per namespace; NFLOG is per network
namespace, which is exactly one node of the lab.

A raw NETLINK_NETFILTER socket bound to one group, copy mode "packet" limited to the
headers (COPY_RANGE bytes). Standard library only; the socket belongs to the network
namespace of the thread that opens it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass

from podnet.kernel.rtnl import attr
from podnet.kernel.rtnl import attrs as rtnl_attrs

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULA_PACKET_HDR, NFULA_TIMESTAMP, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV = 1, 3, 4, 5
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
COPY_RANGE = 64  # IPv4/IPv6 header + the ports of TCP/UDP: all a verdict needs
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}

_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")  # family, version, res_id (big endian: the group)


@dataclass(frozen=True)
class LoggedPacket:
    prefix: str
    family: int  # 4 or 6
    protocol: str
    src: str
    dst: str
    sport: int | None
    dport: int | None
    indev: int | None
    outdev: int | None
    time: float


def parse_payload(payload: bytes) -> tuple[int, str, str, str, int | None, int | None] | None:
    """(family, protocol, src, dst, sport, dport) from an IP packet's first bytes."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        ihl = (payload[0] & 0x0F) * 4
        proto = payload[9]
        src, dst = str(ipaddress.IPv4Address(payload[12:16])), str(ipaddress.IPv4Address(payload[16:20]))
        l4 = ihl
    elif version == 6 and len(payload) >= 40:
        proto = payload[6]
        src, dst = str(ipaddress.IPv6Address(payload[8:24])), str(ipaddress.IPv6Address(payload[24:40]))
        l4 = 40
    else:
        return None
    sport = dport = None
    if proto in (6, 17, 132) and len(payload) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", payload, l4)
    return version, PROTOCOLS.get(proto, str(proto)), src, dst, sport, dport


def parse_message(data: bytes) -> list[LoggedPacket]:
    """Every NFLOG packet message in one netlink datagram."""
    out: list[LoggedPacket] = []
    offset = 0
    now = time.time()
    while offset + _HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size:
            break
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            attrs = rtnl_attrs(data[: offset + length], offset + _HDR.size + _NFGEN.size)
            parsed = parse_payload(attrs.get(NFULA_PAYLOAD, b""))
            if parsed:
                family, proto, src, dst, sport, dport = parsed
                prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode(errors="replace")
                indev = struct.unpack("!I", attrs[NFULA_IFINDEX_INDEV])[0] if NFULA_IFINDEX_INDEV in attrs else None
                outdev = struct.unpack("!I", attrs[NFULA_IFINDEX_OUTDEV])[0] if NFULA_IFINDEX_OUTDEV in attrs else None
                stamp = attrs.get(NFULA_TIMESTAMP)  # the packet's own time, when the kernel kept one
                when = now
                if stamp and len(stamp) >= 16:
                    sec, usec = struct.unpack_from("!QQ", stamp)
                    when = sec + usec / 1e6 if sec else now
                out.append(LoggedPacket(prefix, family, proto, src, dst, sport, dport, indev, outdev, when))
        offset += (length + 3) & ~3
    return out


class NflogReader:
    """One NFLOG group in the calling thread's network namespace."""

    def __init__(self, group: int) -> None:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"nflog group {group} out of range")
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self._seq = 0
        try:
            self._config(attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND) + b"\0" * 3))
            self._config(attr(NFULA_CFG_MODE, struct.pack("!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)))
        except OSError:
            self.sock.close()
            raise

    def _config(self, attrs: bytes) -> None:
        self._seq += 1
        body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(self.group)) + attrs
        kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0) + body)
        while True:
            data = self.sock.recv(65536)
            length, msg_kind, _f, seq, _p = _HDR.unpack_from(data)
            if msg_kind == NLMSG_ERROR and seq == self._seq:
                (code,) = struct.unpack_from("=i", data, _HDR.size)
                if code:
                    raise OSError(-code, f"nflog group {self.group}: {os.strerror(-code)}")
                return

    def read(self, timeout: float | None = None) -> list[LoggedPacket]:
        """The packets logged since the last read (waits up to `timeout`; [] if none)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except (TimeoutError, BlockingIOError):
            return []
        return parse_message(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NflogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
