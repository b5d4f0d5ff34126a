"""A sidecar's HAProxy master found again by its pid file: how a restarted agent adopts
the sidecars its predecessor started, and how `lab down` ends the ones left behind.

Why sidecars outlive their agent: an agent restart (an upgrade, a crash) must not
break the meshed pods' requests, as it must not take a node's routes down (BIRD
outlives it too, bgp/bird.py). The master writes `haproxy.pid` in its work directory;
a pid is trusted only while that process's command line names this very work
directory's configuration, so a reused pid is never signalled. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from podnet.procs import cmdline, running

PIDFILE = "haproxy.pid"
CONFIG = "haproxy.cfg"


def sidecar_pid(workdir: Path) -> int | None:
    """The running master of the sidecar whose files are in `workdir`, or None."""
    try:
        pid = int((workdir / PIDFILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0 or not running(pid) or str(workdir / CONFIG) not in cmdline(pid):
        return None
    return pid


def end(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM (the master stops its workers), SIGKILL after `timeout`; returns once it
    has ended (a zombie has: its parent reaps it)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not running(pid):
            return


def end_left_behind(mesh_root: Path) -> int:
    """Tear-down: end every sidecar still running from a work directory under
    `mesh_root` (an agent's `<state>/mesh`); how many there were."""
    ended = 0
    for workdir in sorted(p for p in mesh_root.glob("*") if p.is_dir()) if mesh_root.is_dir() else []:
        pid = sidecar_pid(workdir)
        if pid is not None:
            end(pid)
            ended += 1
    return ended
