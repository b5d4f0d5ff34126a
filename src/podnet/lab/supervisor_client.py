"""The caller's end of the lab supervisor's protocol (lab/supervise.py).

Two ways in, one JSON request line and one answer line each: `lab up` starts the
supervisor and talks over its stdin/stdout (`SupervisorClient`); commands run after
`lab up` (`podnet lab host add`) reach the running one on `<labdir>/supervisor.sock`
(`spawn_supervised`). Either way the supervisor is the daemons' parent and records them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

from podnet.lab.state import LabError


def _spawned(name: str, line: str, log: Path) -> int:
    """The supervisor's answer to a spawn request: the child's pid, or LabError."""
    if not line:
        raise LabError("the lab supervisor exited", f"see {log.parent}/supervisor.log")
    reply = json.loads(line)
    if "error" in reply:
        raise LabError(f"cannot start {name}: {reply['error']}")
    return int(reply["pid"])


def spawn_supervised(labdir: Path, name: str, argv: list[str], log: Path) -> int:
    """Ask a running lab's supervisor (its unix socket) to start and record a daemon."""
    path = labdir / "supervisor.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            with sock.makefile("rw") as stream:
                stream.write(json.dumps({"name": name, "argv": argv, "log": str(log)}) + "\n")
                stream.flush()
                return _spawned(name, stream.readline(), log)
    except OSError as exc:
        raise LabError(f"the lab supervisor does not answer on {path}: {exc}",
                       "is the lab up? podnet lab status") from None


class SupervisorClient:
    """The CLI's end of the supervisor's stdin/stdout protocol."""

    def __init__(self, labdir: Path) -> None:
        log = open(labdir / "supervisor.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "podnet.lab.supervise", str(labdir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        )
        log.close()

    def spawn(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"name": name, "argv": argv, "log": str(log), "env": env or {}}) + "\n")
        self.proc.stdin.flush()
        return _spawned(name, self.proc.stdout.readline(), log)

    def fork(self, name: str, module: str, args: list[str], netns: str, argv: list[str], log: Path) -> int:
        """A Python daemon forked by the lab's zygote (lab/zygote.py) in `netns`; `argv`
        is what would start the same daemon, kept in its record."""
        assert self.proc.stdin and self.proc.stdout
        request = {"name": name, "argv": argv, "log": str(log),
                   "fork": {"module": module, "args": args, "netns": netns}}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return _spawned(name, self.proc.stdout.readline(), log)

    def detach(self) -> None:
        """Leave the supervisor running on its own (it ignores the closed pipes)."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]
