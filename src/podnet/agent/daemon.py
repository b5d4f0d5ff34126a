"""The node agent: a root-only UNIX socket serving CNI requests with warm netlink and
store handles on a pool of workers, serialised per container ID.

Requests are read by agent/intake.py (peer checked first, a deadline per connection),
so a worker only ever sees a whole request; ops that wait (a container stop's grace
period) run on a pool of their own, so a CNI request never queues behind them.

On start it resyncs (agent/resync.py) before it accepts any request, so a restarted
agent first repairs what a crash left behind.

Every CNI request is timed here, once, into the agent's own metrics (agent/metrics.py),
served as op `metrics` and, with `--metrics-addr`, over HTTP.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import selectors
import signal
import socket
import socketserver
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from podnet import keys
from podnet.agent.intake import Intake, Request
from podnet.agent.metrics import AgentMetrics, MetricsAddrError, serve_http
from podnet.agent.ops import build_services, long_ops
from podnet.agent.resync import resync
from podnet.cluster.options import NodeOptions
from podnet.cni.config import DEFAULT_SOCKET, DEFAULT_STORE
from podnet.endpoints.service import CniService
from podnet.errors import PodnetError
from podnet.identity import NodeIdentity
from podnet.kernel.tombstone import Reaper
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


class _Handler(socketserver.BaseRequestHandler):
    """One whole request (read by the intake) on a worker: dispatch, reply."""

    server: AgentServer

    def __init__(self, request, client_address, server: AgentServer, incoming: Request) -> None:
        self.incoming = incoming
        super().__init__(request, client_address, server)

    def handle(self) -> None:
        sock: socket.socket = self.request
        req = self.incoming
        try:
            code, payload = self.server.agent.dispatch(req.meta, req.body, req.fds, req.uid)
            sock.settimeout(self.server.reply_timeout)  # a peer that never reads its reply
            wire.send(sock, wire.pack_reply(code, payload))
        except (ConnectionError, OSError, ValueError) as exc:
            log.warning("dropped a request: %s", exc)


class AgentServer(socketserver.UnixStreamServer):
    """Accepts on the serving thread, reads through the intake, and runs whole
    requests on fixed pools (not a thread per request), so each worker's warm netlink
    sockets survive from one request to the next. Ops that wait run on the long pool."""

    allow_reuse_address = True
    request_queue_size = 1024  # a runtime may start a hundred pods at once
    workers = 32
    long_workers = 256  # they mostly wait out a grace period
    read_deadline = 5.0  # accept -> whole request; a CNI plugin sends its frame at once
    reply_timeout = 10.0

    def __init__(self, path: str, agent: Agent) -> None:
        self.agent = agent
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="podnet-worker")
        self.long_pool = ThreadPoolExecutor(max_workers=self.long_workers, thread_name_prefix="podnet-long")
        self.intake = Intake(self._submit, self.read_deadline)
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        super().__init__(path, _Handler)

    def serve_forever(self, poll_interval: float = 0.5) -> None:  # noqa: ARG002 - nothing polls
        """socketserver's loop without its poll: one wait that a stop ends at once (its
        0.1 s poll woke every idle agent ten times a second, 50 agents of a lab 500)."""
        with selectors.PollSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _events in selector.select():
                    if key.fileobj is self and not self._stopping:
                        self._handle_request_noblock()

    def shutdown(self) -> None:
        """Ends serve_forever now; returns at once (safe from a signal handler)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def process_request(self, request, client_address) -> None:
        self.intake.accept(request, client_address)

    def _submit(self, request: socket.socket, client_address, incoming: Request) -> None:
        pool = self.long_pool if self.agent.waits(incoming.meta) else self.pool
        pool.submit(self._work, request, client_address, incoming)

    def _work(self, request: socket.socket, client_address, incoming: Request) -> None:
        try:
            _Handler(request, client_address, self, incoming)
        except Exception:  # noqa: BLE001 - one bad request must not kill a worker
            self.handle_error(request, client_address)
        finally:
            wire.close_fds(incoming.fds)
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.intake.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.long_pool.shutdown(wait=False, cancel_futures=True)


class Agent:
    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        store_path: str = DEFAULT_STORE,
        state: StatePaths | None = None,
        dns_upstream: str | None = None,
        node_options: NodeOptions | None = None,
        policy_host: str | None = None,
        metrics_addr: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.node_options = node_options  # None: not a cluster node (node service idle)
        self.policy_host = policy_host  # a plain host whose HostEndpoint policy this agent enforces
        self.dns_upstream = dns_upstream  # None: the DNS service never forwards
        # Absolute: a cluster node names this very string in its conflist (ipam.store),
        # and CniService keys its one handle per store by it.
        self.store_path = store_path if "://" in store_path else os.path.abspath(store_path)
        self.state = state or StatePaths.resolve()
        # Its records name its node (--node, else the machine id, podnet/identity.py);
        # stores the fallback used while it was down are noted beside its socket.
        identity = NodeIdentity.local(node_options.node if node_options else "")
        self.metrics = AgentMetrics(lambda: (e.key for e in self.service.store(self.store_path).list(keys.IPAM)))
        # DEL retires a pod's veth pair and this thread deletes it just after (kernel/tombstone.py)
        self.service = CniService(default_store=self.store_path, track_stores=True, identity=identity,
                                  agent_socket=socket_path, wrap_store=self.metrics.timed_store, reaper=Reaper(),
                                  keep_nat=True)
        self.locks = KeyedLocks()
        self.server: AgentServer | None = None
        self.metrics_addr = metrics_addr  # None: metrics only over the socket (op `metrics`)
        self.services = build_services(self)
        self.ops = {op: fn for svc in self.services for op, fn in svc.ops().items()}
        self.ops["metrics"] = lambda _message, _fds: self.metrics.render()
        if "policy.counters" in self.ops:  # a node's policy verdicts, per rule, at scrape time
            counters = self.ops["policy.counters"]
            self.metrics.watch_policy(lambda: counters(None, []))
        if "services.counters" in self.ops:  # a node's service endpoints and NAT hits, at scrape time
            services = self.ops["services.counters"]
            self.metrics.watch_services(lambda: services(None, []))
        self.long_ops = long_ops(self.services)

    def waits(self, meta: bytes) -> bool:
        """Is this request an op that may wait long (served on the long pool)? Only
        a small meta is looked at: the ops that wait carry a name and a number."""
        if len(meta) > 4096 or not self.long_ops:
            return False
        try:
            message = json.loads(meta)
        except ValueError:
            return False
        op = message.get("op") if isinstance(message, dict) else None
        return isinstance(op, str) and op in self.long_ops

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
        started = time.perf_counter()
        with self.locks.hold(lock_key):
            code = self.service.run_invocation(env, body, out, host_fd, container_fd)
        self.metrics.cni_done(env.get("CNI_COMMAND", ""), time.perf_counter() - started,
                              out.getvalue() if code else None)
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
        stop_http = serve_http(self.metrics, self.metrics_addr) if self.metrics_addr else None
        try:
            self.bind()
        except BaseException:
            if stop_http:
                stop_http()
            raise
        assert self.server is not None
        for svc in self.services:
            svc.start()
        log.info("podnet agent serving %s (store %s)", self.socket_path, self.store_path)
        try:
            self.server.serve_forever()
        finally:
            for svc in self.services:
                svc.request_stop()
            for svc in reversed(self.services):
                svc.stop()
            self.server.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            if stop_http:
                stop_http()
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
    metrics_addr: str | None = None,
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s podnet-agent %(levelname)s %(message)s")
    if state_dir is None and store_path and not os.environ.get("PODNET_STATE_DIR"):
        state = StatePaths(Path(store_path).parent)  # the store's directory is the state dir
    else:
        state = StatePaths.resolve(state_dir)
    agent = Agent(socket_path, store_path or str(state.store), state, dns_upstream, node_options, policy_host,
                  metrics_addr)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.serve()
    except MetricsAddrError as err:
        log.error("%s", err.msg)
        return 2
    except PodnetError as err:
        log.error("%s", err.msg)
        return 1
    return 0
