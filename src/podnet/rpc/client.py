"""Talk to the agent's JSON ops (the CLI side): one request, one reply."""

from __future__ import annotations

import json
import os
import socket

from podnet.errors import PodnetError
from podnet.rpc import wire


class AgentUnavailable(PodnetError):
    """No agent answers on the socket."""


def exchange(socket_path: str, meta: bytes, timeout: float = 60.0) -> tuple[int, bytes]:
    """One request with our network namespace fd attached: (exit code, raw reply).
    OSError when the socket does not answer."""
    ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            wire.send(sock, wire.pack_request(meta), [ns_fd])
            return wire.recv_reply(sock)
    finally:
        os.close(ns_fd)


def call(socket_path: str, op: str, timeout: float = 60.0, **payload) -> object:
    """Send {"op": op, **payload}; return the result, or raise the agent's error as a
    PodnetError with its code."""
    meta = json.dumps({"op": op, **payload}).encode()
    try:
        code, payload_bytes = exchange(socket_path, meta, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        raise AgentUnavailable(f"no podnet agent answers on {socket_path}", "start one with: podnet agent") from None
    reply = json.loads(payload_bytes or b"{}")
    if code or "error" in reply:
        error = reply.get("error") or {}
        err = PodnetError(str(error.get("msg", "agent error")), str(error.get("details", "")))
        err.code = int(error.get("code", 999))
        raise err
    return reply.get("result")


def ask_each(sockets: dict[str, str], op: str, empty: dict | None = None, timeout: float = 10.0) -> list[dict]:
    """Each node's answer to `op` (node -> its agent's socket), in that order, with
    its `node` filled in; a node that gives none has {"node", "error"} and `empty`'s
    fields instead, so a caller lists every node either way."""
    out = []
    for node, sock in sockets.items():
        try:
            answer = call(sock, op, timeout=timeout)
            out.append({**answer, "node": answer.get("node") or node})  # type: ignore[union-attr]
        except (PodnetError, OSError, ValueError) as exc:
            out.append({"node": node, "error": getattr(exc, "msg", None) or str(exc), **(empty or {})})
    return out
