"""The agent socket's framing: a 4-byte big-endian length, then JSON. The request's
first frame also carries namespace fds with SCM_RIGHTS. Standard library only."""

from __future__ import annotations

import array
import json
import struct

TYPE_CHECKING = False  # not `typing`: importing it costs the plugin ~3 ms
if TYPE_CHECKING:
    import socket

_HEADER = struct.Struct(">I")
SOL_SOCKET = 1  # Linux values, as in <sys/socket.h>
SCM_RIGHTS = 1
MAX_FRAME = 16 * 1024 * 1024


def encode(message: object) -> bytes:
    body = json.dumps(message).encode()
    return _HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: object, fds: list[int] | None = None) -> None:
    data = encode(message)
    if fds:
        # What socket.send_fds does, without importing socket.py (~4 ms for the plugin).
        ancillary = [(SOL_SOCKET, SCM_RIGHTS, array.array("i", fds))]
        sent = sock.sendmsg([data], ancillary)
        data = data[sent:]
    if data:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, size: int, buf: bytearray) -> bytearray:
    while len(buf) < size:
        chunk = sock.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection mid-message")
        buf.extend(chunk)
    return buf


def recv(sock: socket.socket, max_fds: int = 0) -> tuple[object, list[int]]:
    """One message and the fds that came with its first bytes."""
    fds: list[int] = []
    if max_fds:
        import socket as socket_module

        data, fds, _flags, _addr = socket_module.recv_fds(sock, 65536, max_fds)
        if not data:
            raise ConnectionError("peer closed the connection")
        buf = bytearray(data)
    else:
        buf = bytearray()
    _recv_exact(sock, _HEADER.size, buf)
    (length,) = _HEADER.unpack_from(buf)
    if length > MAX_FRAME:
        raise ConnectionError(f"frame of {length} bytes is too large")
    _recv_exact(sock, _HEADER.size + length, buf)
    return json.loads(bytes(buf[_HEADER.size : _HEADER.size + length])), fds
