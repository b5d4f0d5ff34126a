"""Has the kernel's routing state changed? rtnetlink's multicast groups, read by one
thread that only raises a flag.

Why: the node loop's repair pass (agent/node_service.py) dumps links, routes,
neighbours and FDB entries to bring back what someone deleted by hand. Run blindly
every few seconds, those dumps were most of an idle agent's CPU: 50 idle agents of a
lab spent most of a CPU on them. The kernel announces every change of these tables,
so a pass is needed only after an announcement (or as a rare safety net, in case an
announcement was lost: an overrun socket sets the flag too).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading

from podnet.kernel.rtnl import NLMSG_ERROR, NUD_PERMANENT, messages

log = logging.getLogger("podnet.kernel")

RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x4, 0x40, 0x400
GROUPS = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NUD_NOARP = 0x40
_NDM_STATE = struct.Struct("=BxxxiH")  # ndmsg: family, ifindex, state


def relevant(kind: int, payload: bytes) -> bool:
    """Does this announcement change what a repair pass looks at? Neighbour entries
    that the kernel learns and ages (ARP/ND of live traffic) do not: the fabric's own
    are permanent (or NOARP), and only those, or their deletion, count."""
    if kind == NLMSG_ERROR:
        return False
    if kind in (RTM_NEWNEIGH, RTM_DELNEIGH) and len(payload) >= _NDM_STATE.size:
        _family, _index, state = _NDM_STATE.unpack_from(payload)
        return kind == RTM_DELNEIGH or bool(state & (NUD_PERMANENT | NUD_NOARP))
    return True


class KernelChanges:
    """`take()`: True when the kernel announced a relevant change since the last take
    (or when nobody can tell: no socket, an overrun). Lives in the namespace of the
    thread that calls `start()`."""

    def __init__(self) -> None:
        self._changed = threading.Event()
        self._changed.set()  # nothing is known before the first pass
        self._sock: socket.socket | None = None
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """False (and `take()` always True) when the groups cannot be joined."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
            sock.bind((0, GROUPS))
        except OSError as exc:
            log.debug("kernel: no rtnetlink announcements (%s): periodic repair only", exc)
            return False
        self._sock = sock
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._read, name="podnet-kernel-changes", daemon=True)
        self._thread.start()
        return True

    def take(self) -> bool:
        if self._sock is None:
            return True
        changed = self._changed.is_set()
        self._changed.clear()
        return changed

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                ready, _, _ = select.select([sock, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                data = sock.recv(1 << 16)
            except (OSError, ValueError) as exc:
                if getattr(exc, "errno", None) == errno.ENOBUFS:  # announcements were lost:
                    self._changed.set()  # assume a change
                    continue
                return  # closed
            if not data:
                return
            if any(relevant(kind, payload) for kind, _seq, payload in messages(data)):
                self._changed.set()

    def close(self) -> None:
        if self._stop_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self._thread = None
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._stop_r = self._stop_w = -1
