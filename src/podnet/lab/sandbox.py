"""Prefixed, recorded namespaces and processes that are always torn down by name or
PID (never by pattern). The base of the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a process we started, by its PID: SIGTERM, then SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class Sandbox:
    """Owns every namespace and process it creates; `close()` removes exactly those."""

    def __init__(self, prefix: str = "pn-") -> None:
        if not prefix.startswith(("pn", "podnet")):
            raise ValueError("sandbox names must start with 'pn' or 'podnet'")
        self.prefix = prefix
        self.token = secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.files: list = []
        self.callbacks: list = []

    def on_close(self, callback) -> None:
        """Run `callback` at close(), after the processes are stopped (e.g. remove a
        daemon's socket file that a kill -9 left behind)."""
        self.callbacks.append(callback)

    def keep_open(self, handle):
        """Keep a file (e.g. a daemon's log) open until close()."""
        self.files.append(handle)
        return handle

    def name(self, role: str) -> str:
        name = f"{self.prefix}{self.token}-{role}"
        if len(name) > 64:
            raise ValueError(f"namespace name {name!r} is too long")
        return name

    def netns(self, role: str) -> str:
        """Create the namespace `<prefix><token>-<role>` with lo up; return its name."""
        name = self.name(role)
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    @staticmethod
    def path(name: str) -> str:
        return str(NETNS_DIR / name)

    def exec(self, ns: str, argv: Sequence[str], check: bool = True, timeout: float = 60, **kw):
        """Run argv inside namespace `ns` and wait for it."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check,
            timeout=timeout, **kw,
        )

    def spawn(self, ns: str | None, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start a long-running process (in `ns` if given), recorded for teardown."""
        cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
        proc = subprocess.Popen(cmd, **kw)
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 5.0) -> None:
        stop_process(proc, timeout)
        if proc in self.processes:
            self.processes.remove(proc)

    def delete_netns(self, name: str) -> None:
        if name in self.namespaces:
            ip("netns", "del", name, check=False)
            self.namespaces.remove(name)

    def close(self) -> None:
        for proc in reversed(list(self.processes)):
            with contextlib.suppress(OSError):
                self.stop(proc)
        for handle in self.files:
            handle.close()
        for callback in reversed(self.callbacks):
            with contextlib.suppress(OSError):
                callback()
        for name in reversed(list(self.namespaces)):
            self.delete_netns(name)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_path(path: str, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)
