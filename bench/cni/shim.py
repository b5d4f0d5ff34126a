"""The agent shim of `--profile`: the real agent (`podnet.agent.daemon.run_agent`) with
timers and an optional per-request cProfile around its request handling, steered by
`{"op": "bench", ...}` control requests framed as the plugin frames its own."""

from __future__ import annotations

import json
import os
import time

from benchlib import BenchError


def run_agent_shim(socket_path: str, store_path: str) -> int:
    import cProfile
    import pstats
    import threading

    from podnet.agent import daemon

    lock = threading.Lock()
    state: dict = {"times": {}, "cprofile": False, "stats": {}}
    orig_dispatch = daemon.Agent.dispatch
    orig_handle = daemon._Handler.handle
    orig_process = daemon.AgentServer.process_request
    accepted: dict[int, int] = {}
    local = threading.local()

    def record(command: str, key: str, ns: int) -> None:
        with lock:
            state["times"].setdefault(command, {}).setdefault(key, []).append(ns / 1e6)

    def control(message: dict) -> dict:
        action = message.get("action")
        with lock:
            if action == "reset":
                state["times"] = {}
                return {}
            if action == "stats":
                return state["times"]
            if action == "cprofile":
                state["cprofile"] = bool(message.get("on"))
                return {}
            if action == "dump":
                files = {}
                for command, stats in state["stats"].items():
                    path = os.path.join(message["dir"], f"agent-{command}.pstats")
                    stats.dump_stats(path)
                    files[command] = path
                return files
        raise ValueError(f"unknown bench action {action!r}")

    def dispatch(self, meta, body, fds, uid):
        try:
            message = json.loads(meta)
        except ValueError:
            message = None  # the real dispatch answers it
        if not isinstance(message, dict):
            message = {}
        if message.get("op") == "bench":
            if uid != 0:
                return 1, json.dumps({"error": "bench control is for root only"}).encode()
            try:
                return 0, json.dumps(control(message)).encode()
            except (KeyError, TypeError, ValueError, OSError) as exc:
                return 1, json.dumps({"error": str(exc)}).encode()
        env = message.get("env") if message.get("op") == "cni" else None
        command = str(env.get("CNI_COMMAND", "?")) if isinstance(env, dict) else "?"
        local.command = command
        prof = cProfile.Profile() if state["cprofile"] else None
        t0 = time.perf_counter_ns()
        if prof:
            prof.enable()
        try:
            return orig_dispatch(self, meta, body, fds, uid)
        finally:
            if prof:
                prof.disable()
                with lock:
                    if command in state["stats"]:
                        state["stats"][command].add(prof)
                    else:
                        state["stats"][command] = pstats.Stats(prof)
            elif command != "?":
                record(command, "dispatch (service work)", time.perf_counter_ns() - t0)

    def handle(self):
        t0 = time.perf_counter_ns()
        local.command = "?"
        try:
            orig_handle(self)
        finally:
            t1 = time.perf_counter_ns()
            queued = accepted.pop(id(self.request), None)
            if local.command != "?" and not state["cprofile"]:
                record(local.command, "handler (recv + dispatch + send)", t1 - t0)
                if queued is not None:
                    record(local.command, "accept -> worker thread running", t0 - queued)

    def process_request(self, request, client_address):
        accepted[id(request)] = time.perf_counter_ns()
        return orig_process(self, request, client_address)

    daemon.Agent.dispatch = dispatch
    daemon._Handler.handle = handle
    daemon.AgentServer.process_request = process_request
    return daemon.run_agent(socket_path, store_path)


def agent_control(socket_path: str, message: dict) -> dict:
    """A control op for the agent shim, framed as the plugin frames its requests."""
    import socket

    from podnet.rpc import wire

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(socket_path)
        wire.send(sock, wire.pack_request(json.dumps(message).encode()))
        code, payload = wire.recv_reply(sock)
    try:
        reply = json.loads(payload)
    except ValueError:
        reply = payload.decode(errors="replace")
    if code != 0 or not isinstance(reply, dict):
        raise BenchError(f"agent control {message} failed (code {code}): {reply}")
    return reply
