"""The `podnet` CNI executable: validate, then hand the request to the node agent over
its UNIX socket, with the caller's and the container's network namespaces attached as
fds (SCM_RIGHTS), so the host side lands where the runtime runs even when the agent
lives in another namespace. When no agent answers, do the same work in-process.

Standard library only until the fallback: the runtime waits on this process.
"""

from __future__ import annotations

import _socket
import os
import sys

from podnet.cni import skel, wire
from podnet.cni.types import version_result
from podnet.defaults import DEFAULT_SOCKET
from podnet.errors import InvalidNetNS, PodnetError, TryAgainLater
from podnet.kernel.netns import open_netns

TYPE_CHECKING = False  # not `typing`: importing it costs the plugin ~3 ms
if TYPE_CHECKING:
    from collections.abc import Sequence

AGENT_TIMEOUT = 300.0


def remote_error(error: dict) -> PodnetError:
    err = PodnetError(str(error.get("msg", "agent error")), str(error.get("details", "")))
    err.code = int(error.get("code", 999))
    return err


def _container_fd(req: skel.CniRequest) -> int | None:
    """The container netns fd; a missing one is an error except for DEL (idempotent)."""
    if not req.netns:
        return None
    try:
        return open_netns(req.netns)
    except InvalidNetNS:
        if req.command in ("DEL", "GC", "STATUS"):
            return None
        raise


def _connect(sock, path: str) -> None:
    """Connect, retrying while the agent's accept backlog is full (EAGAIN)."""
    import time

    delay = 0.002
    deadline = time.monotonic() + 10
    while True:
        sock.settimeout(AGENT_TIMEOUT)
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TryAgainLater(f"the podnet agent at {path} is overloaded") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def call_agent(sock_path: str, req: skel.CniRequest, fds: list[int]) -> dict | None:
    """Forward to the agent. Raises FileNotFoundError/ConnectionRefusedError when there
    is no agent (the caller falls back); an agent dying mid-call is TryAgainLater."""
    # _socket, not socket.py: the plugin must not pay ~4 ms of imports per call.
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        _connect(sock, sock_path)
        try:
            wire.send(sock, {"op": "cni", "request": req.to_wire()}, fds)
            reply, _ = wire.recv(sock)
        except (ConnectionError, OSError, ValueError) as exc:
            raise TryAgainLater(f"the podnet agent at {sock_path} failed mid-request: {exc}") from None
    finally:
        sock.close()
    if not isinstance(reply, dict):
        raise TryAgainLater("the podnet agent sent a malformed reply")
    if "error" in reply:
        raise remote_error(reply["error"])
    return reply.get("result")


def run_in_process(req: skel.CniRequest, host_fd: int, container_fd: int | None, extra_paths: Sequence[str]):
    for path in extra_paths:
        if path not in sys.path:
            sys.path.append(path)
    from podnet.agent.cni_service import CniService  # heavy: pyroute2

    service = CniService()
    try:
        return service.handle(req, host_fd, container_fd)
    finally:
        service.close()


def handle(req: skel.CniRequest, extra_paths: Sequence[str] = ()) -> dict | None:
    if req.command == "VERSION":
        return version_result(req.config.get("cniVersion"))
    sock_path = req.config.get("agentSocket") or os.environ.get("PODNET_AGENT_SOCKET") or DEFAULT_SOCKET
    host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    container_fd = _container_fd(req)
    fds = [host_fd] + ([container_fd] if container_fd is not None else [])
    try:
        try:
            return call_agent(str(sock_path), req, fds)
        except (FileNotFoundError, ConnectionRefusedError):
            return run_in_process(req, host_fd, container_fd, extra_paths)
    finally:
        for fd in fds:
            os.close(fd)


def main(extra_paths: Sequence[str] = ()) -> int:
    try:
        stdin = sys.stdin.buffer.read()
    except OSError:
        stdin = b""
    return skel.run(lambda req: handle(req, extra_paths), os.environ, stdin)


if __name__ == "__main__":
    sys.exit(main())
