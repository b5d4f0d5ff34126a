"""Reading requests off the agent socket, so that no client can hold a worker.

Why: a worker thread that reads its own request can be held by any client that sends
half a frame and waits; 64 such clients once kept a CNI ADD waiting for as long as
they pleased. Here the peer's credentials are checked on accept, before a byte is
read; then one thread reads every connection without blocking (a selector), with a
deadline per connection (a CNI plugin sends its whole frame at once), through
`wire.RequestReader`, which checks each length before reading past it. Only a whole,
checked request reaches a worker pool. Every refusal (non-root peer, bad framing,
too many fds, deadline) gets a one-line error reply when the socket takes it, and
closes every fd that came with the request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from podnet.errors import PodnetError
from podnet.rpc import wire

log = logging.getLogger("podnet.agent")


@dataclass
class Request:
    """One whole request, as the workers get it. `fds` are the worker's to close."""

    meta: bytes
    body: bytes
    fds: list[int]
    uid: int


@dataclass
class _Pending:
    sock: socket.socket
    fd: int  # its key while watched: unregistered before the socket closes
    address: object
    uid: int
    deadline: float
    reader: wire.RequestReader = field(default_factory=wire.RequestReader)
    fds: list[int] = field(default_factory=list)


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def error_reply(msg: str) -> bytes:
    """A refusal as every client reads one: exit code 1, a CNI-style error."""
    return wire.pack_reply(1, json.dumps(PodnetError(msg).to_cni("1.0.0")).encode())


def refuse(sock: socket.socket, msg: str) -> None:
    """Answer `msg` if the socket takes it at once (never wait on the peer), close."""
    log.warning("refused a request: %s", msg)
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(error_reply(msg))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class Intake:
    """Accepted connections in, whole requests out (to `deliver`, which owns the
    socket and the request's fds from then on)."""

    def __init__(self, deliver: Callable[[socket.socket, object, Request], None], deadline: float = 5.0,
                 max_pending: int = 1024) -> None:
        self.deliver = deliver
        self.deadline = deadline  # seconds from accept to a whole request
        self.max_pending = max_pending  # beyond: the oldest connection is dropped
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._arrived: list[_Pending] = []
        self._pending: dict[int, _Pending] = {}  # by fd; insertion order = deadline order
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="podnet-intake", daemon=True)
        self._thread.start()

    def accept(self, sock: socket.socket, address: object) -> None:
        """A connection just accepted: refuse a non-root peer before reading anything;
        read what is already there; hand the rest to the intake thread."""
        try:
            uid = peer_uid(sock)
        except OSError as exc:
            refuse(sock, f"cannot read the peer's credentials: {exc}")
            return
        if uid != 0:
            refuse(sock, f"the podnet agent serves root only (peer uid {uid})")
            return
        sock.setblocking(False)
        pending = _Pending(sock, sock.fileno(), address, uid, time.monotonic() + self.deadline)
        if self._pump(pending, watched=False):
            return
        with self._lock:
            if self._closed:
                self._drop(pending, None)
                return
            self._arrived.append(pending)
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"\0")

    def close(self) -> None:
        """Stop reading; every connection still incomplete is dropped, its fds closed."""
        with self._lock:
            self._closed = True
            arrived, self._arrived = self._arrived, []
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._thread.join(5)
        for pending in [*arrived, *self._pending.values()]:
            self._drop(pending, None)
        self._pending.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the intake thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                if not self._turn():
                    return
            except Exception:  # noqa: BLE001 - the one reading thread must never die silently
                log.exception("the request intake failed; it goes on")

    def _turn(self) -> bool:
        """Wait for data or the next deadline, read, take new arrivals, expire the
        overdue. False once closed."""
        first = next(iter(self._pending.values()), None)
        timeout = None if first is None else max(0.0, first.deadline - time.monotonic())
        for key, _events in self._selector.select(timeout):
            if key.fileobj is self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            else:
                pending = self._pending.get(key.fd)
                if pending is not None:
                    self._pump(pending, watched=True)
        with self._lock:
            if self._closed:
                return False
            arrived, self._arrived = self._arrived, []
        for pending in arrived:
            self._watch(pending)
        self._expire(time.monotonic())
        return True

    def _watch(self, pending: _Pending) -> None:
        if len(self._pending) >= self.max_pending:
            oldest = next(iter(self._pending.values()))
            self._forget(oldest)
            self._drop(oldest, "too many connections are waiting to send a request")
        self._pending[pending.fd] = pending
        self._selector.register(pending.fd, selectors.EVENT_READ)

    def _forget(self, pending: _Pending) -> None:
        self._pending.pop(pending.fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(pending.fd)

    def _expire(self, now: float) -> None:
        while self._pending:
            pending = next(iter(self._pending.values()))
            if pending.deadline > now:
                return
            self._forget(pending)
            self._drop(pending, f"request not complete within {self.deadline:g} s")

    def _pump(self, pending: _Pending, watched: bool) -> bool:
        """Read what the socket holds. True when the connection is done with here
        (delivered whole, or refused), False: wait for more. A watched connection is
        forgotten before its socket can close (its fd number may come back at once)."""
        try:
            while not wire.receive_some(pending.sock, pending.reader, pending.fds):
                pass
        except BlockingIOError:
            return False
        except wire.FrameError as err:
            if watched:
                self._forget(pending)
            self._drop(pending, str(err))
            return True
        except OSError as exc:  # ConnectionError included: the peer hung up
            log.warning("dropped a request: %s", exc)
            if watched:
                self._forget(pending)
            self._drop(pending, None)
            return True
        if watched:
            self._forget(pending)
        meta, body = pending.reader.request()
        request = Request(meta, body, pending.fds, pending.uid)
        pending.fds = []
        try:
            self.deliver(pending.sock, pending.address, request)
        except Exception:  # noqa: BLE001 - e.g. the pools shut down: nothing may leak
            log.exception("could not hand a request to a worker")
            wire.close_fds(request.fds)
            pending.sock.close()
        return True

    @staticmethod
    def _drop(pending: _Pending, msg: str | None) -> None:
        wire.close_fds(pending.fds)
        if msg is None:
            pending.sock.close()
        else:
            refuse(pending.sock, msg)
