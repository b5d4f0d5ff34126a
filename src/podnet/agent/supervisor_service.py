"""The parent of detached containers.

PID 1 on this machine reaps no orphans, so a detached container cannot be left to
it: the agent spawns it (stdout/stderr into its log), a reaper thread waits on it,
and when it exits the container is finished (state exited + exit code in the store,
CNI DEL with the cached result, netns deleted). A sweep (at start, then every few
seconds) finishes containers whose process died with nobody left to notice: those
of a previous agent, of a CLI that was killed, or half-built by a crashed `run`.

A graceful agent stop stops the containers it is the parent of. Those that outlive
a crashed agent cannot be waited on by the next one: the sweep polls them by their
"pid:starttime" tag instead, and `stop` signals them by pid.

Ops: container.info, container.spawn {name, id, argv, env, log_path, netns,
state_dir} -> {pid}, container.signal {name, signal}, container.stop {name, grace}.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from podnet.containers import lifecycle
from podnet.containers.process import send_signal
from podnet.containers.spec import ContainerError, exit_status, now, signal_number
from podnet.errors import InvalidNetNS
from podnet.kernel.netns import open_netns
from podnet.model.container import ContainerRecord
from podnet.procs import process_owner

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler

log = logging.getLogger("podnet.agent.supervisor")


@dataclass
class Child:
    name: str
    id: str
    proc: subprocess.Popen
    done: threading.Event = field(default_factory=threading.Event)
    final: ContainerRecord | None = None


class SupervisorService:
    sweep_seconds = 2.0
    shutdown_grace = 2.0
    # A stop waits out the grace period, then for the reaper, whose CNI DEL comes back
    # through the agent socket: it must never hold a CNI worker (agent/ops.py).
    long_ops = frozenset({"container.stop"})

    def __init__(self, agent: AgentContext) -> None:
        self.agent = agent
        self._host: lifecycle.Host | None = None
        self._host_lock = threading.Lock()
        self._children: dict[str, Child] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None

    @property
    def host(self) -> lifecycle.Host:
        """Containers live in the state dir's store, where the CLI writes them. The
        handle is the CNI service's, shared: a second SqliteStore on the same file in
        one process would drop the first one's POSIX locks when it opens the file,
        and SQLite could then delete the WAL under it."""
        with self._host_lock:
            if self._host is None:
                path = str(self.agent.state.store)
                if os.path.realpath(self.agent.store_path) == os.path.realpath(path):
                    path = self.agent.store_path
                store = self.agent.service.store(path)
                self._host = lifecycle.Host(self.agent.state, store, self.agent.socket_path)
            return self._host

    def ops(self) -> dict[str, OpHandler]:
        return {
            "container.info": self._info,
            "container.spawn": self._spawn,
            "container.signal": self._signal,
            "container.stop": self._stop,
        }

    def start(self) -> None:
        # The first sweep may run CNI DEL, whose plugin calls this very agent: it runs
        # in a thread, as serve_forever only starts after start() returns.
        self._sweeper = threading.Thread(target=self._sweep_loop, name="podnet-supervisor", daemon=True)
        self._sweeper.start()

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> None:
        """Stop the sweep, then the containers this agent is the parent of (as Docker
        does without live-restore): left running, they would become orphans of a PID 1
        that never reaps them. Their CNI DEL runs in the plugin's own process, since
        this agent no longer answers its socket."""
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.join(10)
        with self._lock:
            children = list(self._children.values())
        if not children:
            return
        host = self.host
        with self._host_lock:
            self._host = lifecycle.Host(host.paths, host.store, str(host.paths.root / "agent-stopped.sock"))
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.proc.terminate()
        for child in children:
            if not child.done.wait(self.shutdown_grace):
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
        for child in children:
            child.done.wait(30)

    # -- ops -------------------------------------------------------------------------
    def _info(self, message: dict, fds: list[int]) -> dict:
        return {"pid": os.getpid(), "owner": process_owner(), "state_dir": str(self.agent.state.root)}

    def _spawn(self, message: dict, fds: list[int]) -> dict:
        host = self.host
        if str(message.get("state_dir")) != str(host.paths.root):
            raise ContainerError(f"this agent serves state dir {host.paths.root}, not {message.get('state_dir')}")
        name, cid = str(message["name"]), str(message["id"])
        record = host.records.require(name)
        if record.id != cid or record.state != "created":
            raise ContainerError(f"container {name} is not waiting to start")
        log_path = Path(str(message["log_path"]))
        if log_path != host.files(cid).log:
            raise ContainerError(f"log path {log_path} is not container {name}'s")
        if message.get("netns"):
            self._check_netns(str(message["netns"]))
        argv = [str(a) for a in message["argv"]]
        env = {str(k): str(v) for k, v in (message.get("env") or {}).items()}
        with open(log_path, "ab") as out:
            try:
                proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
            except OSError as exc:
                raise ContainerError(f"cannot start container {name}: {exc}") from None
        child = Child(name, cid, proc)
        with self._lock:
            self._children[cid] = child
        started = host.records.patch(name, cid, state="running", pid=proc.pid, process=process_owner(proc.pid),
                                     supervisor=process_owner(), started=now())
        threading.Thread(target=self._reap, args=(child,), name=f"reap-{name}", daemon=True).start()
        if started is None:
            proc.kill()
            raise ContainerError(f"container {name} was removed while starting")
        log.info("container %s started (pid %d)", name, proc.pid)
        return {"pid": proc.pid}

    @staticmethod
    def _check_netns(path: str) -> None:
        """The CLI made the netns; we must see it too (an `ip netns exec` CLI or agent
        has a private mount namespace, where /run/netns mounts do not propagate)."""
        try:
            os.close(open_netns(path))
        except InvalidNetNS as err:
            raise ContainerError(
                f"the agent cannot open {path}: {err.msg}",
                "run the CLI and the agent in one mount namespace (nsenter --net=..., not ip netns exec)",
            ) from None

    def _signal(self, message: dict, fds: list[int]) -> dict:
        record = self.host.records.require(str(message["name"]))
        signum = signal_number(message.get("signal", "TERM"))
        child = self._children.get(record.id)
        if child is not None and child.proc.poll() is None:
            child.proc.send_signal(signum)
            return {"sent": True}
        return {"sent": send_signal(record.process, signum)}

    def _stop(self, message: dict, fds: list[int]) -> dict:
        """The container's final record, as JSON (the answer crosses the socket)."""
        return self._stop_container(str(message["name"]), float(message.get("grace", 10))).to_json()

    def _stop_container(self, name: str, grace: float) -> ContainerRecord:
        host = self.host
        record = host.records.require(name)
        if record.state != "running":
            return record
        child = self._children.get(record.id)
        if child is None:  # an orphan of a previous agent: by pid
            return lifecycle.stop_process(host, record, grace)
        with contextlib.suppress(ProcessLookupError):
            child.proc.terminate()
        if not child.done.wait(grace):
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            child.done.wait(60)
        return child.final or host.records.get(record.name) or record.but(state="exited")

    # -- reaping ---------------------------------------------------------------------
    def _reap(self, child: Child) -> None:
        code = exit_status(child.proc.wait())
        try:
            child.final = lifecycle.finish(self.host, child.name, child.id, code)
            log.info("container %s exited with %d", child.name, code)
        except Exception:  # noqa: BLE001 - a reaper must never die silently
            log.exception("finishing container %s failed", child.name)
        finally:
            with self._lock:
                self._children.pop(child.id, None)
            child.done.set()

    def sweep(self) -> list[str]:
        """Finish every stale container (see lifecycle.stale); returns their names."""
        host = self.host
        with self._lock:
            supervising = set(self._children)
        done = []
        for record in host.records.list():
            if not lifecycle.stale(record, supervising):
                continue
            try:
                if lifecycle.finish(host, record.name, record.id, None) is not None:
                    done.append(record.name)
                    log.info("container %s: its process is gone; cleaned up", record.name)
            except Exception:  # noqa: BLE001 - one bad container must not stop the sweep
                log.exception("cleaning up container %s failed", record.name)
        return done

    def _sweep_loop(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - keep sweeping (e.g. store briefly locked)
                log.exception("container sweep failed")
            if self._stopping.wait(self.sweep_seconds):
                return
