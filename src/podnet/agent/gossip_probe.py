"""Is the kernel's fast path to each direct peer working? ICMP echoes through VXLAN.

Why: the gossip (TCP 6783) can reach a peer whose VXLAN packets (UDP 8472) are lost,
e.g. a firewall that passes one port and not the other. Weave's fastdp sends
heartbeats over the fast path for this; here each round sends one ICMP echo to every
direct peer's VTEP address through the VXLAN device (the socket is bound to it, so the
echo leaves through VXLAN even while the peer's blocks are routed to the sleeve: the
fabric keeps a direct peer's neighbour and FDB entries for this); the answers are read
on a second socket that is bound to no device, since a peer that routes this node
through its sleeve answers through it (this node judges only its own direction, so
both paths come back when VXLAN does). A peer whose echoes
go unanswered for DOWN_AFTER seconds, while the gossip reaches it, is carried by the
sleeve (agent/gossip_sleeve.py); its first answer brings it back to the fast path.

One raw socket, non-blocking, read and written from the gossip service's round: no
thread of its own.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Mapping

from podnet.observe.probe import checksum

log = logging.getLogger("podnet.gossip")

DOWN_AFTER = 3.0
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
ICMP_ECHO, ICMP_ECHO_REPLY = 8, 0


def echo_request(ident: int, seq: int, payload: bytes = b"podnet-fastpath") -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, checksum(header + payload), ident, seq) + payload


def parse_reply(packet: bytes, ident: int) -> str | None:
    """The source address of an echo reply to `ident` (an IPv4 packet), else None."""
    if len(packet) < 28 or packet[0] >> 4 != 4:
        return None
    start = (packet[0] & 0x0F) * 4
    kind, _code, _sum, their_ident, _seq = struct.unpack("!BBHHH", packet[start:start + 8])
    if kind != ICMP_ECHO_REPLY or their_ident != ident:
        return None
    return socket.inet_ntoa(packet[12:16])


class FastPathProbe:
    """The fast path's health per peer: `round(vteps)` sends and reads; `down()` says
    which direct peers have not answered for DOWN_AFTER seconds."""

    def __init__(self, device: str, clock=time.monotonic) -> None:
        self.device = device
        self._clock = clock
        self._sock: socket.socket | None = None
        self._reader: socket.socket | None = None
        self._ident = os.getpid() & 0xFFFF
        self._seq = 0
        self._since: dict[str, float] = {}  # peer -> first probe of the current silence
        self._answered: dict[str, float] = {}
        self._by_address: dict[str, str] = {}
        self.error = ""

    def round(self, vteps: Mapping[str, str]) -> None:
        """`vteps`: direct peer -> its VTEP address. Reads the answers so far, then sends
        one echo to each."""
        now = self._clock()
        self._by_address = {address: peer for peer, address in vteps.items()}
        for peer in list(self._since):
            if peer not in vteps:
                del self._since[peer]
                self._answered.pop(peer, None)
        sock = self._socket()
        if sock is None:
            return
        self._read(self._reader, now)
        self._seq = (self._seq + 1) & 0xFFFF
        packet = echo_request(self._ident, self._seq)
        for peer, address in vteps.items():
            self._since.setdefault(peer, now)
            try:
                sock.sendto(packet, (address, 0))
            except OSError as exc:  # no neighbour yet, device gone: counts as no answer
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    log.debug("gossip: fast-path echo to %s (%s): %s", peer, address, exc)

    def down(self) -> frozenset[str]:
        now = self._clock()
        return frozenset(peer for peer, since in self._since.items()
                         if now - max(since, self._answered.get(peer, since)) >= DOWN_AFTER)

    def close(self) -> None:
        for sock in (self._sock, self._reader):
            if sock is not None:
                sock.close()
        self._sock = self._reader = None

    def _socket(self) -> socket.socket | None:
        """The sending socket (bound to the VXLAN device); the reading one beside it."""
        if self._sock is not None:
            return self._sock
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.device.encode())
            sock.setblocking(False)
            reader = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            reader.setblocking(False)
        except OSError as exc:
            if str(exc) != self.error:
                log.warning("gossip: no fast-path probe on %s: %s", self.device, exc)
            self.error = str(exc)
            return None
        self._sock, self._reader, self.error = sock, reader, ""
        return sock

    def _read(self, sock: socket.socket | None, now: float) -> None:
        while sock is not None:
            try:
                packet = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            source = parse_reply(packet, self._ident)
            peer = self._by_address.get(source) if source else None
            if peer is not None:
                self._answered[peer] = now
