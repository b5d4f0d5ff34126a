"""The agent socket's framing, shared by the plugin, the agent and the CLI.

request: u32 meta length, meta (JSON text), u32 body length, body (raw bytes); the
         first bytes carry the caller's namespace fds (SCM_RIGHTS).
reply:   u32 exit code, u32 payload length, payload (raw bytes: for CNI, exactly what
         the plugin must print).

The plugin forwards stdin untouched and prints the reply untouched, so it needs no
JSON parser of its own: only C modules (`_struct`), which keeps its start-up near the
interpreter's floor (its whole import path: podnet.cni.plugin and this module).
Standard library only.

A request is read by `RequestReader`, which never reads a byte past a length it has
not checked against MAX_FRAME, nor past the end of the frame, so no client can make
the agent read (or allocate) more than one bounded frame; the fds that come with a
request are closed on every path that does not hand them on.
"""

import _struct  # no __future__/os imports: the thin plugin imports this module

DEFAULT_SOCKET = "/run/podnet/agent.sock"  # where an agent listens unless told otherwise
_U32 = _struct.Struct(">I")
_PAIR = _struct.Struct(">II")
SOL_SOCKET = 1  # Linux values, as in <sys/socket.h>
SCM_RIGHTS = 1
MSG_CTRUNC = 8
MAX_FRAME = 16 * 1024 * 1024  # the most a meta, a body or a reply payload may hold
MAX_FDS = 2  # the caller's namespace and the container's
_CHUNK = 1 << 20  # the most one recv asks for


class FrameError(ValueError):
    """A request that breaks the framing (a length over the limit, bytes after the
    frame, too many fds): refused without reading on."""


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
        chunk = sock.recv(min(size - len(buf), _CHUNK))
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


class RequestReader:
    """One request assembled from bytes as they arrive. `wanted()` says how many bytes
    the next read may take: never past a length not yet checked, never past the frame,
    so the buffer holds at most one frame of checked size."""

    __slots__ = ("limit", "_buf", "_meta_len", "_body_len")

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._meta_len = -1  # -1: its u32 is not whole yet
        self._body_len = -1

    def _boundary(self) -> int:
        """Where the next decision falls: the end of a length field, or of the frame."""
        if self._meta_len < 0:
            return _U32.size
        if self._body_len < 0:
            return _U32.size * 2 + self._meta_len
        return _U32.size * 2 + self._meta_len + self._body_len

    def wanted(self) -> int:
        """Bytes the next read may take (0 once the request is whole)."""
        return min(self._boundary() - len(self._buf), _CHUNK)

    def buffered(self) -> int:
        """Bytes held so far (at most one frame of checked lengths)."""
        return len(self._buf)

    def done(self) -> bool:
        return self._body_len >= 0 and len(self._buf) == self._boundary()

    def feed(self, data: bytes) -> bool:
        """Take received bytes; True once the request is whole. FrameError for a length
        over the limit or bytes beyond the frame."""
        view = memoryview(data)
        while view:
            if self.done():
                raise FrameError("bytes after the end of the request")
            take = self._boundary() - len(self._buf)
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self._boundary():
                self._check_length()
        return self.done()

    def _check_length(self) -> None:
        if self._meta_len < 0:
            (self._meta_len,) = _U32.unpack_from(self._buf, 0)
            if self._meta_len > self.limit:
                raise FrameError(f"request meta of {self._meta_len} bytes is too large (limit {self.limit})")
        elif self._body_len < 0:
            (self._body_len,) = _U32.unpack_from(self._buf, _U32.size + self._meta_len)
            if self._body_len > self.limit:
                raise FrameError(f"request body of {self._body_len} bytes is too large (limit {self.limit})")

    def request(self) -> tuple[bytes, bytes]:
        """(meta, body) of the whole request."""
        if not self.done():
            raise FrameError("the request is not complete")
        meta_end = _U32.size + self._meta_len
        return bytes(self._buf[_U32.size : meta_end]), bytes(self._buf[meta_end + _U32.size :])


def close_fds(fds: list[int]) -> None:
    """Close every fd of a request that will not be served (posix: the plugin imports
    this module, and os costs it start-up time)."""
    import posix

    while fds:
        try:  # noqa: SIM105 - contextlib would cost the plugin's start-up
            posix.close(fds.pop())
        except OSError:
            pass


def receive_some(sock, reader: RequestReader, fds: list[int], max_fds: int = MAX_FDS) -> bool:
    """One recvmsg into `reader`, collecting fds into `fds` (the caller closes them
    when the request fails): True once the request is whole. ConnectionError when the
    peer hangs up first, FrameError for bad framing or more than `max_fds` fds."""
    import _socket

    space = _socket.CMSG_SPACE(max(max_fds, 1) * 4)
    data, ancillary, flags, _addr = sock.recvmsg(reader.wanted(), space)
    for level, kind, payload in ancillary:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            count = len(payload) // 4
            fds.extend(_struct.unpack(f"{count}i", payload[: count * 4]))
    if flags & MSG_CTRUNC or len(fds) > max_fds:
        raise FrameError(f"a request carries at most {max_fds} fds")
    if not data:
        raise ConnectionError("peer closed the connection mid-request")
    return reader.feed(data)


def recv_request(sock, max_fds: int = MAX_FDS) -> tuple[bytes, bytes, list[int]]:
    """(meta, body, fds) of one request on a blocking socket; on any error the fds
    received so far are closed."""
    reader, fds = RequestReader(), []
    try:
        while not receive_some(sock, reader, fds, max_fds):
            pass
    except BaseException:
        close_fds(fds)
        raise
    meta, body = reader.request()
    return meta, body, fds
