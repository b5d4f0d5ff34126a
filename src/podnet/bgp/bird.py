"""One BIRD per node, run by the node's agent: its files under `<state dir>/bird/`
(bird.conf, bird.ctl, bird.pid), started once, reconfigured in place, adopted after
the agent restarts.

Why BIRD outlives the agent: an agent restart (an upgrade, a crash) must not take the
node's routes down; BIRD keeps its sessions and its kernel routes, and the restarted
agent finds it by its pid file and control socket and goes on configuring it (Calico
users lose routes on calico-node restarts without graceful restart). It is started in
the agent's own network namespace (the node's), in the foreground as the agent's child
so the agent reaps it; an orphaned BIRD is reaped by whatever adopts orphans (the
lab's supervisor is a child subreaper). `stop()` is for tear-down only: by PID from
the pid file, after checking the process is this node's BIRD (its command line names
this very control socket), never by name.

BIRD always starts in graceful-restart recovery (`-R`, as calico-node runs it): its
kernel protocol then keeps the routes a former BIRD installed until the sessions are
back and have converged, instead of flushing them at its first scan (which broke every
cross-node flow for the ~5 s a session takes to come up).

A changed configuration is written beside the old one, checked with `bird -p`, moved
into place and applied with `configure` (BIRD keeps the old one when it refuses);
an unchanged one costs a file read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from podnet.bgp.birdc import BirdControl
from podnet.errors import PodnetError
from podnet.fileio import write_atomic
from podnet.procs import cmdline, running

log = logging.getLogger("podnet.bgp")

BIRD = "bird"
START_TIMEOUT = 10.0


class BirdDaemonError(PodnetError):
    """BIRD could not be started, or refused a configuration before it got it."""


class BirdDaemon:
    """This node's BIRD (module docstring)."""

    def __init__(self, directory: Path, binary: str = BIRD) -> None:
        self.dir = directory
        self.conf = directory / "bird.conf"
        self.ctl = directory / "bird.ctl"
        self.pidfile = directory / "bird.pid"
        self.binary = binary
        self.control = BirdControl(str(self.ctl))
        self._child: subprocess.Popen | None = None  # the BIRD this object started (it waits on it)
        self._managed = False  # the running BIRD has this object's configuration (started or adopted)

    # -- finding it

    def pid(self) -> int | None:
        """The pid of this node's running BIRD, or None (a stale pid file, a pid now
        used by another program, or no file)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if str(self.ctl) in cmdline(pid) else None

    def running(self) -> bool:
        self._reap()
        return self.pid() is not None and self.ctl.exists()

    def _reap(self) -> None:
        if self._child is not None and self._child.poll() is not None:
            log.warning("bgp: BIRD (pid %d) exited with %s", self._child.pid, self._child.returncode)
            self._child, self._managed = None, False

    # -- running it

    def ensure(self, config: str) -> str:
        """BIRD running `config`: "started", "adopted" (a BIRD of a former agent, now on
        `config`), "reconfigured" or "unchanged". BirdDaemonError if it cannot start, and
        birdc's BirdError if the running BIRD refuses `configure`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        changed = self._write(config)
        if self.running():
            adopted = not self._managed
            if changed or adopted:
                self.control.configure()
            self._managed = True
            return "adopted" if adopted else "reconfigured" if changed else "unchanged"
        self._start()
        self._managed = True
        return "started"

    def _write(self, config: str) -> bool:
        try:
            if self.conf.read_text() == config:
                return False
        except OSError:
            pass
        candidate = self.dir / "bird.conf.new"
        write_atomic(candidate, config)
        check = subprocess.run([self.binary, "-p", "-c", str(candidate)], capture_output=True, text=True,
                               timeout=30, check=False)
        candidate.unlink(missing_ok=True)
        if check.returncode != 0:
            raise BirdDaemonError("BIRD refused the rendered configuration", (check.stderr or check.stdout).strip())
        write_atomic(self.conf, config)
        return True

    def _start(self) -> None:
        self.ctl.unlink(missing_ok=True)  # a dead BIRD's socket
        log_path = self.dir / "bird.log"
        with open(log_path, "ab") as out:
            self._child = subprocess.Popen(
                [self.binary, "-f", "-R", "-c", str(self.conf), "-s", str(self.ctl), "-P", str(self.pidfile)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._child.poll() is not None:
                raise BirdDaemonError(f"BIRD exited with {self._child.returncode} at start", _tail(log_path))
            if self.ctl.exists() and self.pid() == self._child.pid:
                log.info("bgp: started BIRD (pid %d) with %s", self._child.pid, self.conf)
                return
            time.sleep(0.02)
        raise BirdDaemonError(f"BIRD did not open {self.ctl} within {START_TIMEOUT:g}s", _tail(log_path))

    def stop(self, timeout: float = 5.0) -> bool:
        """Tear-down: end this node's BIRD by its pid (checked); True if one was running.
        Its kernel routes stay (`persist`) until the namespace goes."""
        pid = self.pid()
        if pid is None and self._child is not None and self._child.poll() is None:
            pid = self._child.pid  # started, its pid file not written yet
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        # Wait for the process itself, not its pid file: BIRD removes that file first.
        child = self._child if self._child is not None and self._child.pid == pid else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _running(pid, child):
            time.sleep(0.05)
        if _running(pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout)
        self._child, self._managed = None, False
        return True


def _running(pid: int, child: subprocess.Popen | None) -> bool:
    """Whether BIRD `pid` still runs: our child is reaped when it ends; an adopted one
    (another agent's child) is gone when the pid is, or a zombie of its parent."""
    if child is not None:
        return child.poll() is None
    return running(pid)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
