"""The lab's supervisor: the parent (and reaper) of every lab daemon.

PID 1 here reaps nobody, so `lab up` does not leave its agents and echo servers
orphaned: it starts this process (in a new session, so it outlives `lab up`) and asks
it, one JSON line per request on stdin, to spawn them:

    {"name": "agent/node0", "argv": [...], "log": "/path/to/log", "env": {...}}

and reads one JSON line back per request: {"name": ..., "pid": ...} or {"error": ...}.
The same requests are served on `<labdir>/supervisor.sock` (root only), so commands
run after `lab up` (`podnet lab host add`) can start supervised daemons too.

Every child is recorded (name, pid, "pid:starttime" owner, argv) in
`<labdir>/procs.json`, which only this process writes, right after it is spawned; the
supervisor records itself there first. It is also a child subreaper, so processes its
children leave behind are reaped too. SIGTERM/SIGINT: SIGTERM to every child, SIGKILL
after 5 s, reap, exit. `lab down` signals it by its recorded pid and then kills any
recorded child still alive (after a SIGKILL of the supervisor, say).

Usage: python -m podnet.lab.supervise LABDIR
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from podnet.fileio import write_atomic
from podnet.procs import process_owner

PR_SET_CHILD_SUBREAPER = 36
SOCKET = "supervisor.sock"


class Supervisor:
    def __init__(self, labdir: Path) -> None:
        self.labdir = labdir
        self.record = labdir / "procs.json"
        self.lock = threading.Lock()
        self.children: dict[int, subprocess.Popen] = {}
        self.entries: dict[str, dict] = {}
        self.stopping = threading.Event()
        self.zygote: subprocess.Popen | None = None
        self.adopted: dict[int, str] = {}  # forked daemons (re-parented here): pid -> name
        self.early_exits: dict[int, int] = {}  # adopted pids reaped before they were recorded

    def save(self) -> None:
        write_atomic(self.record, json.dumps(self.entries, separators=(",", ":")))

    def spawn(self, request: dict) -> dict:
        if request.get("fork"):
            return self.fork(request)
        name, argv = str(request["name"]), [str(a) for a in request["argv"]]
        env = {**os.environ, **{str(k): str(v) for k, v in (request.get("env") or {}).items()}}
        with self.lock:
            if self.stopping.is_set():
                return {"name": name, "error": "supervisor is stopping"}
            log = open(request.get("log") or os.devnull, "ab")  # noqa: SIM115 - handed to the child
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=False)
            except OSError as exc:
                return {"name": name, "error": str(exc)}
            finally:
                log.close()
            self.children[proc.pid] = proc
            self.entries[name] = {"pid": proc.pid, "owner": process_owner(proc.pid), "argv": argv}
            self.save()
        return {"name": name, "pid": proc.pid}

    def fork(self, request: dict) -> dict:
        """A Python daemon forked by the zygote (lab/zygote.py) instead of started: it is
        re-parented to this subreaper, recorded and reaped like the others. Its record
        keeps `argv`, what would start the same daemon (the tests restart agents so)."""
        name, fork = str(request["name"]), request["fork"]
        what = {"module": fork.get("module"), "argv": fork.get("args"), "netns": fork.get("netns"),
                "env": request.get("env") or {}, "log": request.get("log") or os.devnull}
        with self.lock:
            if self.stopping.is_set():
                return {"name": name, "error": "supervisor is stopping"}
            try:
                zygote = self._zygote()
                assert zygote.stdin is not None and zygote.stdout is not None
                zygote.stdin.write(json.dumps(what) + "\n")
                zygote.stdin.flush()
                reply = json.loads(zygote.stdout.readline() or '{"error": "the zygote exited"}')
            except (OSError, ValueError) as exc:
                return {"name": name, "error": f"zygote: {exc}"}
            if "error" in reply:
                return {"name": name, "error": reply["error"]}
            pid = int(reply["pid"])
            self.adopted[pid] = name
            self.entries[name] = {"pid": pid, "owner": process_owner(pid),
                                  "argv": [str(a) for a in request.get("argv") or []]}
            if pid in self.early_exits:  # it ended before it was recorded
                self.entries[name]["exit"] = self.early_exits.pop(pid)
                self.adopted.pop(pid, None)
            self.save()
        return {"name": name, "pid": pid}

    def _zygote(self) -> subprocess.Popen:
        """The zygote, started on first use (caller holds the lock)."""
        if self.zygote is None or self.zygote.poll() is not None:
            log = open(self.labdir / "zygote.log", "ab")  # noqa: SIM115 - handed to the child
            try:
                self.zygote = subprocess.Popen([sys.executable, "-m", "podnet.lab.zygote"], stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, stderr=log, text=True)
            finally:
                log.close()
            self.children[self.zygote.pid] = self.zygote
            self.entries["zygote"] = {"pid": self.zygote.pid, "owner": process_owner(self.zygote.pid),
                                      "argv": self.zygote.args}
            self.save()
        return self.zygote

    def answer(self, line: str) -> str:
        """One request line -> one reply line."""
        try:
            reply = self.spawn(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"error": f"bad request: {exc}"}
        return json.dumps(reply) + "\n"

    def serve_requests(self) -> None:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                sys.stdout.write(self.answer(line))
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):
                return

    def serve_socket(self) -> None:
        """The stdin protocol on a unix socket, one connection at a time."""
        path = self.labdir / SOCKET
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            server.bind(str(path))
        finally:
            os.umask(old)
        server.listen(4)
        server.settimeout(0.5)
        with server:
            while not self.stopping.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn, conn.makefile("rw") as stream:
                    for line in stream:
                        if line.strip():
                            stream.write(self.answer(line))
                            stream.flush()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            with self.lock:
                code = os.waitstatus_to_exitcode(status)
                proc = self.children.pop(pid, None)
                if proc is not None:
                    proc.returncode = code
                elif self.adopted.pop(pid, None) is None:
                    self.early_exits[pid] = code  # a forked daemon not recorded yet, or an orphan
                    continue
                for entry in self.entries.values():
                    if entry["pid"] == pid and "exit" not in entry:
                        entry["exit"] = code
                if not self.stopping.is_set():
                    self.save()

    def stop_children(self, grace: float = 5.0) -> None:
        with self.lock:
            self.stopping.set()
            pids = [*self.children, *self.adopted]
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while (self.children or self.adopted) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in [*self.children, *self.adopted]:
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + grace
        while (self.children or self.adopted) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        self.stop_adopted(grace)
        self.save()

    def stop_adopted(self, grace: float) -> None:
        """The orphans this subreaper inherited (a BIRD whose agent was killed outlives
        it on purpose, bgp/bird.py) end with the lab: SIGTERM, then SIGKILL, each by pid
        and only while the kernel still names this process as its parent; all reaped."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _own_children():
                _signal(pid, sig)
            deadline = time.monotonic() + grace
            while _own_children() and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.05)
            self.reap()

    def run(self) -> int:
        self.entries["supervisor"] = {"pid": os.getpid(), "owner": process_owner(), "argv": sys.argv}
        self.save()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        threading.Thread(target=self.serve_requests, daemon=True).start()
        threading.Thread(target=self.serve_socket, daemon=True).start()
        while not self.stopping.wait(0.2):
            self.reap()
        self.stop_children()
        return 0


def _own_children() -> list[int]:
    """The pids whose parent is this process, from /proc (threads excluded)."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(me) and fields[0] != "Z":
            out.append(int(entry))
    return out


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m podnet.lab.supervise LABDIR", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return Supervisor(Path(args[0])).run()


if __name__ == "__main__":
    sys.exit(main())
