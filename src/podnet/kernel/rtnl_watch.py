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
from collections.abc import Callable

from podnet.kernel.rtnl import (
    IFLA_IFNAME,
    IFLA_MASTER,
    IFLA_MTU,
    NLMSG_ERROR,
    NUD_PERMANENT,
    attrs,
    messages,
)

log = logging.getLogger("podnet.kernel")

RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x4, 0x40, 0x400
GROUPS = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
RTM_NEWLINK, RTM_DELLINK, RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 16, 17, 24, 25, 28, 29
NUD_NOARP = 0x40
_NDM_STATE = struct.Struct("=BxxxiH")  # ndmsg: family, ifindex, state
_NDM_SIZE, _NDA_DST = 12, 1
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
IFF_UP = 0x1
_RTA_OIF = 4
_RT_TABLE_MAIN = 254  # the fabric's routes are all in main
_RTM_SIZE = 12  # rtmsg


class Relevance:
    """Which announcements change what a repair pass looks at (the fabric's devices,
    routes and neighbours). Not: neighbour entries the kernel learns and ages (ARP/ND
    of live traffic: the fabric's own are permanent or NOARP); links `ignored` by name
    (the pods' host veths: they come and go with every ADD and DEL, which the repair
    pass does not manage) and their routes and bridge entries; a bridge's own or
    learned entries (the fabric's FDB entries name a remote VTEP) and the kernel's
    multicast ones; routes outside the main table (the kernel's local routes of
    addresses); a link announced again with the same admin state, MTU and master (a
    bridge is announced again, its carrier flapping, for every port that joins it); and
    an FDB entry added (VXLAN announces the fabric's own writes without naming their
    sender; a stale one added by hand waits for the full pass)."""

    def __init__(self, ignored: Callable[[str], bool] = lambda _name: False) -> None:
        self._ignored = ignored
        self._skip: set[int] = set()  # indexes of ignored links
        self._seen: dict[int, tuple[int, bytes | None, bytes | None]] = {}  # index -> flags, mtu, master

    def __call__(self, kind: int, payload: bytes) -> bool:
        if kind == NLMSG_ERROR:
            return False
        if kind in (RTM_NEWLINK, RTM_DELLINK) and len(payload) >= _IFINFO.size:
            return self._link(kind, payload)
        if kind in (RTM_NEWNEIGH, RTM_DELNEIGH) and len(payload) >= _NDM_STATE.size:
            family, index, state = _NDM_STATE.unpack_from(payload)
            if index in self._skip:
                return False
            dst = attrs(payload, _NDM_SIZE).get(_NDA_DST)
            if family == socket.AF_BRIDGE and (dst is None or kind == RTM_NEWNEIGH):
                # a bridge's own or learned entry; and FDB entries added: VXLAN announces the
                # fabric's own without a sender (one added by hand is found by the full pass)
                return False
            if family in (socket.AF_INET, socket.AF_INET6) and dst and _multicast(family, dst):
                return False  # the kernel's IGMP/MLD entries
            return kind == RTM_DELNEIGH or bool(state & (NUD_PERMANENT | NUD_NOARP))
        if kind in (RTM_NEWROUTE, RTM_DELROUTE) and len(payload) >= _RTM_SIZE:
            if payload[4] != _RT_TABLE_MAIN:  # rtm_table: the kernel's local and other tables
                return False
            oif = attrs(payload, _RTM_SIZE).get(_RTA_OIF)
            return not (oif and len(oif) >= 4 and struct.unpack_from("=i", oif)[0] in self._skip)
        return True

    def _link(self, kind: int, payload: bytes) -> bool:
        _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
        found = attrs(payload, _IFINFO.size)
        name = (found.get(IFLA_IFNAME) or b"").split(b"\0", 1)[0].decode(errors="replace")
        if kind == RTM_DELLINK:  # (a bridge port is announced gone twice: as a link and as a port)
            self._seen.pop(index, None)
            return index not in self._skip
        if name:  # an index is used again by a new link: its name decides
            (self._skip.add if self._ignored(name) else self._skip.discard)(index)
        if index in self._skip:
            return False
        state = (flags & IFF_UP, found.get(IFLA_MTU), found.get(IFLA_MASTER))  # not the carrier:
        changed = self._seen.get(index) != state  # a bridge's flaps as ports join; nothing to repair
        self._seen[index] = state
        return changed


def _multicast(family: int, raw: bytes) -> bool:
    return (raw[0] & 0xF0) == 0xE0 if family == socket.AF_INET else raw[0] == 0xFF


def relevant(kind: int, payload: bytes) -> bool:
    """`Relevance` with nothing ignored and no memory of links (each link announcement
    counts): for one-off judgements."""
    return Relevance()(kind, payload)


class KernelChanges:
    """`take()`: True when the kernel announced a relevant change since the last take
    (or when nobody can tell: no socket, an overrun). Lives in the namespace of the
    thread that calls `start()`."""

    def __init__(self, ignored: Callable[[str], bool] = lambda _name: False) -> None:
        self._relevant = Relevance(ignored)
        self._own: frozenset[int] | set[int] = frozenset()  # netlink ports whose changes are ours
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

    def ignore_sender(self, port: int) -> None:
        """Announcements of changes requested through netlink port `port` (the fabric's
        own writer, kernel/rtnl.py `RtnlSocket.port`) do not raise the flag: a pass's own
        routes and neighbours made the next repair pass due, which in a 100-node lab
        came up every few seconds in every agent (60-90 ms of dumps at 100 peers)."""
        self._own = self._own | {port}

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
            # every message is judged (a link's state is remembered), not just the first relevant;
            # what the node loop's own writer did is no change to repair
            if [kind for kind, _seq, sender, payload in messages(data)
                    if sender not in self._own and self._relevant(kind, payload)]:
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
