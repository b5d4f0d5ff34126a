"""The nftables ruleset generation of the calling thread's network namespace.

The kernel counts every committed nftables transaction of a namespace (any table, any
process) and answers NFT_MSG_GETGEN with that count. What podnet read of a table stays
true while the count has not moved since: the CNI ADD's NAT (kernel/nat/manager.py)
uses it to skip listing its tables again, a listing that grows with the node's pods.

One request on a netlink socket of the namespace (a socket belongs to the namespace
the thread is in when it is made, as libnftables' does).
"""

from __future__ import annotations

import os
import socket
import struct
import threading

from podnet.kernel import netns

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, resource id (big endian, 0 here)
_ATTR = struct.Struct("=HH")  # nlattr: length, type


class RulesetGeneration:
    """ruleset_generation(): one netlink socket kept for the namespace last asked about
    (closing one costs milliseconds once the namespace has committed nftables
    transactions: 6 ms a call, measured, against 9 us for the request itself), made
    again when the calling thread is elsewhere. Like libnftables' context it keeps that
    namespace alive, so its inode cannot be reused while it is known."""

    def __init__(self, timeout: float = 1.0) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._where: tuple[int, int] | None = None
        self._sequence = int.from_bytes(os.urandom(3), "little")

    def __call__(self) -> int | None:
        """The generation; None when the kernel does not answer it (the caller then
        reads its tables as if it had never seen them)."""
        with self._lock:
            try:
                return self._ask()
            except OSError:
                self._close()
                return None

    def _ask(self) -> int | None:
        here = netns.current_identity()
        if self._sock is None or self._where != here:
            self._close()
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
            self._sock.settimeout(self._timeout)
            self._sock.bind((0, 0))
            self._where = here
        self._sequence = self._sequence % 0xFFFFFFFF + 1
        body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
        kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST, self._sequence, 0) + body)
        while True:  # (a late answer to an earlier, timed-out request is skipped)
            found = parse_generation(self._sock.recv(65536), self._sequence)
            if found is not None:
                return found if found >= 0 else None

    def _close(self) -> None:
        sock, self._sock, self._where = self._sock, None, None
        if sock is not None:
            sock.close()


ruleset_generation = RulesetGeneration()  # the process's: the agent's NAT manager asks it


def parse_generation(data: bytes, sequence: int) -> int | None:
    """The generation in a netlink reply for `sequence`: -1 for an error reply or a
    reply without it; None when the data holds nothing for that sequence."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            return -1
        if seq == sequence:
            if kind == NLMSG_ERROR or kind & 0xFF != NFT_MSG_NEWGEN:
                return -1
            return _gen_id(data[offset + _HEADER.size + _NFGEN.size: offset + length])
        offset += (length + 3) & ~3
    return None


def _gen_id(attrs: bytes) -> int:
    offset = 0
    while offset + _ATTR.size <= len(attrs):
        length, kind = _ATTR.unpack_from(attrs, offset)
        if length < _ATTR.size:
            return -1
        if kind & 0x3FFF == NFTA_GEN_ID and length >= _ATTR.size + 4:
            return int.from_bytes(attrs[offset + _ATTR.size: offset + _ATTR.size + 4], "big")
        offset += (length + 3) & ~3
    return -1
