"""Deferred deletion of a pod's veth pair: DEL answers in about a millisecond, the
kernel's teardown of the pair runs on a thread afterwards.

Why: deleting a veth (either end takes both) costs 10-20 ms in the kernel (RTNL plus
RCU grace periods in unregister_netdevice), and that was all but ~1 ms of DEL, for
podnet as for the reference bridge plugin. Measured on this machine, with nobody else
holding RTNL: bringing a link down, deleting its addresses and renaming it cost
0.05-0.15 ms each; moving the container's end to another namespace costs as much as
deleting it (it unregisters the device there), so it is renamed in place instead.

What the runtime may rely on when DEL returns (`bury`):

```
 host namespace                          container namespace
 pn<attach 11 hex>  --down, renamed-->   <ifname> --addresses deleted, down, renamed-->
 pnz<12 random hex>  (alias ALIAS)       pnz<same token> (alias ALIAS), no address, no route
```

- the container's CNI_IFNAME is free, and the old end holds no address and no route
  (deleting its last IPv4 address and taking it down removes its routes; down removes
  IPv6 addresses): an ADD of the same ifname, even with the same address, succeeds;
- the host veth's name is free (an ADD of the same attachment recomputes it), its
  routes (a routed pod's /32) and neighbour entries went with the down;
- the end in the container is renamed only when it really is the peer of the host end
  (each one's IFLA_LINK names the other); a namespace that is gone or unreachable
  keeps its end until the pair is deleted.

Any failure on the way falls back to deleting the pair at once, as before.

The tombstone's name is podnet's own ("pnz" + 12 hex: "z" is no hex digit, so never a
host veth; naming.py) and it carries ALIAS; only a veth with both is ever deleted as
a tombstone. `Reaper` deletes tombstones on one thread, preferring moments when no CNI
request is running (a deletion holds RTNL, which every ADD and DEL needs), and at
most MAX_DELAY after DEL. An agent that dies first leaves tombstones; its start-up
resync deletes those in its namespace (`sweep`, agent/resync.py); a namespace deleted
meanwhile takes its end, and the pair, with it.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from podnet.errors import KernelError
from podnet.kernel.rtnl import Link, RtnlSocket
from podnet.naming import TOMBSTONE_TOKEN_LEN, is_tombstone, tombstone_name

log = logging.getLogger("podnet.kernel")

ALIAS = "podnet-tombstone"
MAX_DELAY = 2.0  # seconds: a tombstone older than this is deleted even while requests run
MAX_BACKLOG = 256  # tombstones waiting; beyond, DEL deletes at once (and holds no more fds)


def bury(host_fd: int, container_fd: int | None, host_name: str, ifname: str) -> str | None:
    """Retire the veth pair whose host end is `host_name` (module docstring): return
    the tombstone's name in the host namespace, or None when there was no such veth
    or the pair had to be deleted at once."""
    name = tombstone_name(secrets.token_hex(TOMBSTONE_TOKEN_LEN // 2))
    with RtnlSocket(host_fd) as host:
        link = host.link(host_name)
        if link is None:
            return None
        if link.kind != "veth":  # not what podnet builds: delete it as DEL always did
            host.delete_link(host_name)
            return None
        try:
            host.retire(link.index, name, ALIAS)
        except KernelError as exc:
            log.warning("DEL: cannot retire %s (%s): deleting it now", host_name, exc.msg)
            host.delete_link(host_name)
            return None
        try:
            if container_fd is not None:
                _retire_peer(container_fd, link, ifname, name)
        except (KernelError, OSError) as exc:
            log.warning("DEL: cannot retire %s's peer %s (%s): deleting the pair now", host_name, ifname, exc)
            host.delete_link(name)
            return None
    return name


def _retire_peer(container_fd: int, host: Link, ifname: str, name: str) -> None:
    """The container's end of the pair, when `ifname` is it: addresses, down, renamed."""
    with RtnlSocket(container_fd) as inside:
        peer = inside.link(ifname)
        if peer is None or peer.peer != host.index or host.peer != peer.index:
            return  # not this pair's end: the runtime's, untouched
        inside.retire(peer.index, name, ALIAS, sorted(inside.addresses(peer.index)))


def sweep(host_fd: int, names: Iterable[str]) -> list[str]:
    """Delete the tombstones among `names` (links of the namespace `host_fd`) that a
    reaper left behind: only veths with a tombstone's name and ALIAS. Returns them."""
    removed = []
    with RtnlSocket(host_fd) as sock:
        for name in names:
            if not is_tombstone(name):
                continue
            link = sock.link(name)
            if link is not None and link.kind == "veth" and link.alias == ALIAS and sock.delete_link(name):
                removed.append(name)
    return removed


@dataclass
class _Grave:
    fd: int  # the host namespace (a dup, closed once deleted)
    name: str
    since: float


class Reaper:
    """Deletes buried veth pairs on one thread (started on the first DEL). Requests
    are announced with `request()`, so a deletion waits until none runs, but never
    longer than `max_delay`. `stop()` deletes what is left
    (at most `timeout`); what an agent killed leaves, the next start sweeps."""

    def __init__(self, max_delay: float = MAX_DELAY, max_backlog: int = MAX_BACKLOG) -> None:
        self.max_delay, self.max_backlog = max_delay, max_backlog
        self._graves: deque[_Grave] = deque()
        self._cond = threading.Condition()
        self._busy = 0  # CNI requests running
        self._deleting = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def bury(self, host_fd: int, container_fd: int | None, host_name: str, ifname: str) -> str | None:
        """DEL of a veth pair: retired now (`bury`), deleted later; at once when the
        backlog is full or the reaper stopped. Returns the tombstone's name, if any."""
        with self._cond:
            full = self._stopping or len(self._graves) >= self.max_backlog
        if full:
            with RtnlSocket(host_fd) as sock:
                sock.delete_link(host_name)
            return None
        name = bury(host_fd, container_fd, host_name, ifname)
        if name is not None:
            self._add(_Grave(os.dup(host_fd), name, time.monotonic()))
        return name

    def _add(self, grave: _Grave) -> None:
        with self._cond:
            self._graves.append(grave)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="podnet-reaper", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    @contextmanager
    def request(self) -> Iterator[None]:
        """Around each CNI request: no deletion starts while one runs."""
        with self._cond:
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def pending(self) -> int:
        """Tombstones not yet deleted (waiting or being deleted)."""
        with self._cond:
            return len(self._graves) + self._deleting

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until every tombstone so far is deleted; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._graves or self._deleting:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _next(self) -> _Grave | None:
        """The next tombstone to delete, once its time came; None: stopped, all done."""
        with self._cond:
            while True:
                if not self._graves:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                overdue = self._graves[0].since + self.max_delay - time.monotonic()
                if self._stopping or self._busy == 0 or overdue <= 0:
                    self._deleting += 1
                    return self._graves.popleft()
                self._cond.wait(max(overdue, 0.001))  # a request's end notifies sooner

    def _run(self) -> None:
        while (grave := self._next()) is not None:
            try:
                with RtnlSocket(grave.fd) as sock:
                    sock.delete_link(grave.name)
            except (KernelError, OSError) as exc:  # the next start-up sweep tries again
                log.warning("cannot delete tombstone %s: %s", grave.name, exc)
            finally:
                os.close(grave.fd)
                with self._cond:
                    self._deleting -= 1
                    self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Delete every waiting tombstone now (at most `timeout`), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
