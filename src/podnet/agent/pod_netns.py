"""The kernel side of the macvlan pods' own policy tables (agent/pod_policy.py): nft
run inside a pod's network namespace (the port PodKernel, the real NetnsKernel) and
the NFLOG readers opened there, whose verdicts go to `podnet flows`.

Why nft forked from a thread standing in the pod's namespace (kernel/netns.py), not
`nsenter`: no extra process, and a namespace path is opened and checked to be one
(NS_GET_NSTYPE) before anything runs there.

Why a reader per pod: NFLOG is per network namespace, and a pod table logs in the
pod's namespace, where the node's reader (agent/policy_service.py) does not listen. So
a socket bound to group LOG_GROUP is opened inside each namespace holding a pod table
(the socket stays there once the thread returns home), and one thread polls them all;
each logged packet goes to the same flow buffer as the node's. An open socket keeps its
namespace alive, so a reader is closed as soon as its pod's table goes: when the pod's
endpoint record is deleted (its DEL), nothing selects it any more, or its namespace
path is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any, Protocol

from podnet.agent.service_thread import ServiceThread
from podnet.errors import PodnetError

log = logging.getLogger("podnet.agent.policy")
POLL_SECONDS = 0.5


class PodKernel(Protocol):
    """What the pod tables need of the kernel, acting inside the namespace at `netns`
    (a path). Raises InvalidNetNS when `netns` names no network namespace."""

    def apply(self, netns: str, script: str) -> None: ...

    def generation(self, netns: str) -> int | None: ...  # None: no pod table there

    def open_flows(self, netns: str) -> Any: ...  # an NflogReader bound there, or None

    def list_table(self, netns: str) -> dict | None: ...  # `nft -j list table` of the pod table


class NetnsKernel:
    """The real port: `nft` forked from this thread while it stands in the pod's
    namespace (kernel/netns.py), so the transaction acts there."""

    def __init__(self) -> None:
        from podnet.kernel.nft import Nft

        self.nft = Nft()

    def _inside(self, netns: str, fn: Callable[[], Any]) -> Any:
        from podnet.kernel import netns as ns

        fd = ns.open_netns(netns)
        try:
            with ns.entered(fd):
                return fn()
        finally:
            os.close(fd)

    def apply(self, netns: str, script: str) -> None:
        self._inside(netns, lambda: self.nft.apply(script))

    def generation(self, netns: str) -> int | None:
        from podnet.policy.pod_table import POD_TABLE
        from podnet.policy.table import FAMILY, GENERATION_SET

        found = self._inside(netns, lambda: self.nft.set_elements(FAMILY, POD_TABLE, GENERATION_SET))
        if found is None:
            return None
        return found[0] if found and isinstance(found[0], int) else -1  # -1: a table, but not one of ours

    def list_table(self, netns: str) -> dict | None:
        from podnet.policy.pod_table import POD_TABLE
        from podnet.policy.table import FAMILY

        return self._inside(netns, lambda: self.nft.list_table_json(FAMILY, POD_TABLE))

    def open_flows(self, netns: str) -> Any:
        from podnet.kernel.nflog import NflogReader
        from podnet.policy.table import LOG_GROUP

        return self._inside(netns, lambda: NflogReader(LOG_GROUP))


class PodFlowReaders:
    """`kernel.open_flows(netns)` gives a reader bound in that namespace (NflogReader:
    `sock`, `read(timeout)`, `close()`); `on_flows(packets)` takes what they log.
    Without `on_flows` nothing is opened.

    Only the polling thread closes a reader while it runs: a socket closed by another
    thread while select() waits on it stays bound in the kernel until select returns,
    and a table re-applied meanwhile could not bind the group again (EPERM) and would
    log nothing. So `close` hands the reader to the thread (waking it), and an `open`
    of the same namespace before the thread got to it takes the still-bound reader back."""

    def __init__(self, kernel: PodKernel, on_flows: Callable[[list], None] | None) -> None:
        self.kernel = kernel
        self.on_flows = on_flows
        self._readers: dict[str, Any] = {}
        self._closing: dict[str, Any] = {}  # closed by `close`, not yet by the thread
        self._lock = threading.Lock()
        self._thread = ServiceThread("podnet-pod-flows", self._run, join_timeout=3)
        self._running = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def start(self) -> None:
        if self.on_flows is not None:
            self._running = True
            self._thread.start()

    def signal_stop(self) -> None:
        self._thread.signal_stop()
        self._wake()

    def stop(self) -> None:
        self._wake()
        self._thread.stop()
        with self._lock:
            self._running = False
            for reader in [*self._readers.values(), *self._closing.values()]:
                reader.close()
            self._readers.clear()
            self._closing.clear()
            for fd in (self._wake_r, self._wake_w):  # the thread is gone: nobody selects on them
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def open(self, netns: str) -> None:
        if self.on_flows is None:
            return
        with self._lock:
            if netns in self._readers:
                return
            if netns in self._closing:  # closed a moment ago and still bound: take it back
                self._readers[netns] = self._closing.pop(netns)
                return
            try:
                reader = self.kernel.open_flows(netns)
            except (OSError, PodnetError) as exc:
                log.warning("policy: cannot read NFLOG in %s (no flow verdicts from that pod): %s", netns, exc)
                return
            if reader is not None:
                self._readers[netns] = reader

    def close(self, netns: str) -> None:
        with self._lock:
            reader = self._readers.pop(netns, None)
            if reader is not None and self._running:
                self._closing[netns] = reader
                reader = None
        if reader is not None:
            reader.close()
        else:
            self._wake()

    def watched(self) -> list[str]:
        with self._lock:
            return sorted(self._readers)

    def _wake(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError, OSError):  # (stop closes the pipe
            if self._wake_w >= 0:  # under the lock: never a write to a number used again)
                os.write(self._wake_w, b"x")

    def _run(self) -> None:
        assert self.on_flows is not None
        stopping = self._thread.stopping
        while not stopping.is_set():
            with self._lock:  # (under the lock: an `open` right after finds the group free)
                for reader in self._closing.values():  # no select holds them now: unbound at once
                    reader.close()
                self._closing.clear()
                readers = {r.sock.fileno(): r for r in self._readers.values()}
            try:
                ready, _w, _x = select.select([self._wake_r, *readers], [], [], POLL_SECONDS)
            except (OSError, ValueError):  # a reader went meanwhile: take the list again
                continue
            for fd in ready:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                try:
                    packets = readers[fd].read(0)
                except OSError:
                    continue
                if packets:
                    self.on_flows(packets)
