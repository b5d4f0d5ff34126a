"""The agent socket's framing, shared by the plugin, the agent and the CLI.

request: u32 meta length, meta (JSON text), u32 body length, body (raw bytes); the
         first bytes carry the caller's namespace fds (SCM_RIGHTS).
reply:   u32 exit code, u32 payload length, payload (raw bytes: for CNI, exactly what
         the plugin must print).

The plugin forwards stdin untouched and prints the reply untouched, so it needs no
JSON parser of its own: only C modules (`_struct`), which keeps its start-up near the
interpreter's floor (its whole import path: podnet.cni.plugin and this module).
Standard library only.
"""

import _struct  # no __future__/os imports: the thin plugin imports this module

DEFAULT_SOCKET = "/run/podnet/agent.sock"  # where an agent listens unless told otherwise
_U32 = _struct.Struct(">I")
_PAIR = _struct.Struct(">II")
SOL_SOCKET = 1  # Linux values, as in <sys/socket.h>
SCM_RIGHTS = 1
MAX_FRAME = 16 * 1024 * 1024


def pack_request(meta: bytes, body: bytes = b"") -> bytes:
    return _U32.pack(len(meta)) + meta + _U32.pack(len(body)) + body


def pack_reply(code: int, payload: bytes) -> bytes:
    return _PAIR.pack(code, len(payload)) + payload


def send(sock, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send all of `data`; the fds ride on the first sendmsg."""
    if fds:
        rights = _struct.pack(f"{len(fds)}i", *fds)
        sent = sock.sendmsg([data], [(SOL_SOCKET, SCM_RIGHTS, rights)])
        data = data[sent:]
    if data:
        sock.sendall(data)


def recv_exact(sock, size: int, buf: bytearray | None = None) -> bytearray:
    buf = buf if buf is not None else bytearray()
    while len(buf) < size:
        chunk = sock.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection mid-message")
        buf.extend(chunk)
    return buf


def recv_reply(sock) -> tuple[int, bytes]:
    head = recv_exact(sock, _PAIR.size)
    code, length = _PAIR.unpack(bytes(head))
    if length > MAX_FRAME:
        raise ConnectionError(f"reply of {length} bytes is too large")
    return code, bytes(recv_exact(sock, length)) if length else b""


def recv_request(sock, max_fds: int = 2) -> tuple[bytes, bytes, list[int]]:
    """(meta, body, fds) of one request: the agent side."""
    import socket as socket_module

    data, fds, _flags, _addr = socket_module.recv_fds(sock, 65536, max_fds)
    if not data:
        raise ConnectionError("peer closed the connection")
    buf = recv_exact(sock, _U32.size, bytearray(data))
    (meta_len,) = _U32.unpack_from(buf)
    recv_exact(sock, _U32.size * 2 + meta_len, buf)
    (body_len,) = _U32.unpack_from(buf, _U32.size + meta_len)
    if meta_len > MAX_FRAME or body_len > MAX_FRAME:
        raise ConnectionError("request frame is too large")
    total = _U32.size * 2 + meta_len + body_len
    recv_exact(sock, total, buf)
    meta = bytes(buf[_U32.size : _U32.size + meta_len])
    return meta, bytes(buf[_U32.size * 2 + meta_len : total]), list(fds)
