"""The node agent: a root-only UNIX socket serving CNI requests with warm netlink and
store handles, one thread per request, serialised per container ID.

On start it resyncs (agent/resync.py) before it accepts any request, so a restarted
agent first repairs what a crash left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import socketserver
import struct
import threading
import traceback
from collections import defaultdict
from pathlib import Path

from podnet.agent.cni_service import CniService
from podnet.agent.resync import resync
from podnet.cni import wire
from podnet.cni.config import DEFAULT_SOCKET, DEFAULT_STORE
from podnet.cni.skel import CniRequest
from podnet.errors import PodnetError

log = logging.getLogger("podnet.agent")


class KeyedLocks:
    """One lock per container ID: CNI requests for one container never interleave,
    while different containers proceed in parallel."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._users: dict[str, int] = defaultdict(int)

    def hold(self, key: str):
        agent = self

        class _Held:
            def __enter__(self) -> None:
                with agent._guard:
                    agent._users[key] += 1
                    lock = agent._locks[key]
                lock.acquire()

            def __exit__(self, *exc: object) -> None:
                with agent._guard:
                    agent._locks[key].release()
                    agent._users[key] -= 1
                    if not agent._users[key]:
                        del agent._users[key]
                        del agent._locks[key]

        return _Held()


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class _Handler(socketserver.BaseRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        fds: list[int] = []
        try:
            message, fds = wire.recv(sock, max_fds=2)
            reply = self.server.agent.dispatch(message, fds, peer_uid(sock))
            wire.send(sock, reply)
        except (ConnectionError, OSError, ValueError) as exc:
            log.warning("dropped a request: %s", exc)
        finally:
            for fd in fds:
                os.close(fd)


class AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # a runtime may start a hundred pods at once

    def __init__(self, path: str, agent: Agent) -> None:
        self.agent = agent
        super().__init__(path, _Handler)


class Agent:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, store_path: str = DEFAULT_STORE) -> None:
        self.socket_path = socket_path
        self.store_path = store_path
        self.service = CniService(default_store=store_path, track_stores=True)
        self.locks = KeyedLocks()
        self.server: AgentServer | None = None

    def dispatch(self, message: object, fds: list[int], uid: int) -> dict:
        if uid != 0:
            return {"error": PodnetError("the podnet agent serves root only").to_cni("1.0.0")}
        if not isinstance(message, dict):
            return {"error": PodnetError("malformed request").to_cni("1.0.0")}
        op = message.get("op")
        if op == "ping":
            return {"result": {"pid": os.getpid(), "store": self.store_path}}
        if op != "cni":
            return {"error": PodnetError(f"unknown op {op!r}").to_cni("1.0.0")}
        raw = message.get("request") or {}
        version = str((raw.get("config") or {}).get("cniVersion", "1.0.0"))
        try:
            req = CniRequest.from_wire(raw)
            if not fds:
                raise PodnetError("request came without the caller's namespace fd")
            host_fd = fds[0]
            container_fd = fds[1] if len(fds) > 1 else None
            with self.locks.hold(req.container_id or "-" + req.command):
                return {"result": self.service.handle(req, host_fd, container_fd)}
        except PodnetError as err:
            return {"error": err.to_cni(version)}
        except Exception as exc:  # noqa: BLE001 - report to the runtime, log the trace
            log.error("internal error: %s", traceback.format_exc())
            return {"error": PodnetError(f"internal error: {type(exc).__name__}: {exc}").to_cni(version)}

    def bind(self) -> None:
        path = Path(self.socket_path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            if _socket_alive(str(path)):
                raise PodnetError(f"another agent is already serving {path}")
            path.unlink()
        old_umask = os.umask(0o077)
        try:
            self.server = AgentServer(str(path), self)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    def serve(self) -> None:
        report = resync(self.service)
        log.info("resync: %s", report)
        self.bind()
        assert self.server is not None
        log.info("podnet agent serving %s (store %s)", self.socket_path, self.store_path)
        try:
            self.server.serve_forever(poll_interval=0.5)
        finally:
            self.server.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            self.service.close()

    def stop(self) -> None:
        if self.server is not None:
            threading.Thread(target=self.server.shutdown, daemon=True).start()


def _socket_alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def run_agent(socket_path: str, store_path: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s podnet-agent %(levelname)s %(message)s")
    agent = Agent(socket_path, store_path)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.serve()
    except PodnetError as err:
        log.error("%s", err.msg)
        return 1
    return 0
