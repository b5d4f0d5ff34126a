"""Wake the shared tail (watch.py) the moment another process writes the database.

Why: a write by another process (the lab's CLI relabelling a pod, another node's agent
publishing readiness) was seen only at the tail's next poll, 20-50 ms later: a third
of the 45 ms an endpoint change took to reach every node at 10,000 services. inotify
on the database's directory reports each write to the database or its WAL file; the
tail then polls at once. Spurious wake-ups cost one `PRAGMA data_version`; without
inotify (another OS, a filesystem that does not report) the tail polls as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable

log = logging.getLogger("podnet.store")

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

_libc: ctypes.CDLL | None = None


def _inotify() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            _libc = lib
        except (OSError, AttributeError):
            return None
    return _libc


def names_of(buffer: bytes) -> set[str]:
    """The file names in a read() of inotify events."""
    names, at = set(), 0
    while at + _EVENT.size <= len(buffer):
        _wd, _mask, _cookie, size = _EVENT.unpack_from(buffer, at)
        raw = buffer[at + _EVENT.size:at + _EVENT.size + size]
        names.add(raw.split(b"\0", 1)[0].decode(errors="replace"))
        at += _EVENT.size + size
    return names


_warned: set[int] = set()


def _warn_no_instance(err: int) -> None:
    """Say once per process and cause why the tail polls instead: at the per-user
    limit of inotify instances (EMFILE: fs.inotify.max_user_instances, 128 by default)
    each tail without one polls every 20 ms, unseen. A lab node's agent holds two (one
    per store object it opens), so a lab of more than ~60 nodes passes the default."""
    if err in _warned:
        return
    _warned.add(err)
    hint = (" (fs.inotify.max_user_instances reached: every store tail without an instance polls"
            " every 20 ms instead of waiting to be woken)" if err == errno.EMFILE else "")
    log.warning("store: no inotify instance: %s%s", os.strerror(err or errno.EIO), hint)


class FileWake:
    """Calls `wake()` whenever a file of the database (`path`, `path-wal`) is written;
    one thread, stopped by `close()`."""

    def __init__(self, path: str, wake: Callable[[], None], listening: threading.Event | None = None) -> None:
        self._dir = os.path.dirname(os.path.abspath(path)) or "."
        base = os.path.basename(path)
        self._names = {base, f"{base}-wal"}
        self._wake = wake
        # `listening`: set by the caller while a wake-up is useful to it. Cleared here after
        # each wake-up: meanwhile the events pile up in the kernel (in one read later)
        # instead of waking this thread for each write of each commit of every process
        # (50 agents sharing a lab's store: most of their CPU while the pods attached).
        self._listening = listening
        self._closing = False
        self._fd = -1
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """False (and polling only) when inotify is not available here."""
        lib = _inotify()
        if lib is None:
            return False
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            _warn_no_instance(ctypes.get_errno())
            return False
        if lib.inotify_add_watch(fd, os.fsencode(self._dir), MASK) < 0:
            log.debug("store: no inotify on %s: %s", self._dir, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return False
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._loop, name=f"store-wake {self._dir}", daemon=True)
        self._thread.start()
        return True

    def _loop(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._fd, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                try:
                    data = os.read(self._fd, 65536)
                except OSError as exc:
                    if exc.errno == errno.EAGAIN:
                        continue
                    raise
                if names_of(data) & self._names:
                    self._wake()
                    if self._listening is not None:
                        self._listening.clear()
                        while not self._closing and not self._listening.wait(0.5):
                            pass
        except (OSError, ValueError) as exc:  # a closed fd: the store went
            log.debug("store: inotify wake-ups ended: %s", exc)

    def close(self) -> None:
        self._closing = True
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")
            if self._thread is not threading.current_thread():
                self._thread.join(2.0)
            self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1
