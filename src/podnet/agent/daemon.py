"""The node agent: a root-only UNIX socket serving CNI requests with warm netlink and
store handles, one thread per request, serialised per container ID.

On start it resyncs (agent/resync.py) before it accepts any request, so a restarted
agent first repairs what a crash left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import socketserver
import struct
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from podnet.agent.ops import build_services
from podnet.agent.resync import resync
from podnet.cluster.options import NodeOptions
from podnet.cni.config import DEFAULT_SOCKET, DEFAULT_STORE
from podnet.endpoints.service import CniService
from podnet.errors import PodnetError
from podnet.rpc import wire
from podnet.state import StatePaths

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
            meta, body, fds = wire.recv_request(sock)
            code, payload = self.server.agent.dispatch(meta, body, fds, peer_uid(sock))
            wire.send(sock, wire.pack_reply(code, payload))
        except (ConnectionError, OSError, ValueError) as exc:
            log.warning("dropped a request: %s", exc)
        finally:
            for fd in fds:
                os.close(fd)


class AgentServer(socketserver.UnixStreamServer):
    """Requests run on a fixed pool of worker threads (not a thread per request), so
    each worker's warm netlink sockets survive from one request to the next."""

    allow_reuse_address = True
    request_queue_size = 1024  # a runtime may start a hundred pods at once
    workers = 32

    def __init__(self, path: str, agent: Agent) -> None:
        self.agent = agent
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="podnet-worker")
        super().__init__(path, _Handler)

    def process_request(self, request, client_address) -> None:
        self.pool.submit(self._work, request, client_address)

    def _work(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one bad request must not kill a worker
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


class Agent:
    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        store_path: str = DEFAULT_STORE,
        state: StatePaths | None = None,
        dns_upstream: str | None = None,
        node_options: NodeOptions | None = None,
        policy_host: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.node_options = node_options  # None: not a cluster node (node service idle)
        self.policy_host = policy_host  # a plain host whose HostEndpoint policy this agent enforces
        self.dns_upstream = dns_upstream  # None: the DNS service never forwards
        # Absolute: a cluster node names this very string in its conflist (ipam.store),
        # and CniService keys its one handle per store by it.
        self.store_path = store_path if "://" in store_path else os.path.abspath(store_path)
        self.state = state or StatePaths.resolve()
        self.service = CniService(default_store=self.store_path, track_stores=True)
        self.locks = KeyedLocks()
        self.server: AgentServer | None = None
        self.services = build_services(self)
        self.ops = {op: fn for svc in self.services for op, fn in svc.ops().items()}

    def dispatch(self, meta: bytes, body: bytes, fds: list[int], uid: int) -> tuple[int, bytes]:
        """One request -> (exit code, payload). For CNI the payload is exactly what the
        plugin prints: results and spec errors are formatted here, not in the plugin."""
        if uid != 0:
            return 1, _error("the podnet agent serves root only")
        try:
            message = json.loads(meta)
        except ValueError:
            return 1, _error("malformed request")
        op = message.get("op") if isinstance(message, dict) else None
        if op == "ping":
            return 0, json.dumps({"pid": os.getpid(), "store": self.store_path}).encode()
        if op != "cni":
            return self._dispatch_op(str(op), message, fds)
        env = {str(k): str(v) for k, v in (message.get("env") or {}).items()}
        if not fds:
            return 1, _error("request came without the caller's namespace fd")
        host_fd = fds[0]
        container_fd = fds[1] if len(fds) > 1 else None
        out = io.StringIO()
        lock_key = env.get("CNI_CONTAINERID") or "-" + env.get("CNI_COMMAND", "")
        with self.locks.hold(lock_key):
            code = self.service.run_invocation(env, body, out, host_fd, container_fd)
        if code:
            log.info("%s %s: %s", env.get("CNI_COMMAND"), env.get("CNI_CONTAINERID", ""), out.getvalue().strip())
        return code, out.getvalue().encode()

    def _dispatch_op(self, op: str, message: dict, fds: list[int]) -> tuple[int, bytes]:
        """A JSON op of an agent service (agent/ops.py): reply {"result": ...} with code
        0, or {"error": {"code", "msg", "details"}} with code 1."""
        handler = self.ops.get(op)
        if handler is None:
            return 1, json.dumps({"error": PodnetError(f"unknown op {op!r}").to_cni("1.0.0")}).encode()
        try:
            result = handler(message, fds)
        except PodnetError as err:
            return 1, json.dumps({"error": err.to_cni("1.0.0")}).encode()
        except Exception as exc:  # noqa: BLE001 - report, never kill the worker
            log.exception("op %s failed", op)
            return 1, json.dumps({"error": PodnetError(f"internal error: {exc}").to_cni("1.0.0")}).encode()
        return 0, json.dumps({"result": result}).encode()

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
        for svc in self.services:
            svc.start()
        log.info("podnet agent serving %s (store %s)", self.socket_path, self.store_path)
        try:
            self.server.serve_forever(poll_interval=0.5)
        finally:
            for svc in reversed(self.services):
                svc.stop()
            self.server.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            self.service.close()

    def stop(self) -> None:
        if self.server is not None:
            threading.Thread(target=self.server.shutdown, daemon=True).start()


def _error(msg: str) -> bytes:
    return json.dumps(PodnetError(msg).to_cni("1.0.0")).encode()


def _socket_alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def run_agent(
    socket_path: str,
    store_path: str | None = None,
    state_dir: str | None = None,
    dns_upstream: str | None = None,
    node_options: NodeOptions | None = None,
    policy_host: str | None = None,
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s podnet-agent %(levelname)s %(message)s")
    if state_dir is None and store_path and not os.environ.get("PODNET_STATE_DIR"):
        state = StatePaths(Path(store_path).parent)  # the store's directory is the state dir
    else:
        state = StatePaths.resolve(state_dir)
    agent = Agent(socket_path, store_path or str(state.store), state, dns_upstream, node_options, policy_host)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.serve()
    except PodnetError as err:
        log.error("%s", err.msg)
        return 1
    return 0
