"""The lab's zygote: one Python process with the agent's code already imported, which
forks the lab's Python daemons (the agents, the echo servers) instead of each one
starting an interpreter and importing it all again.

Why: importing the agent costs about 0.7 s of CPU; a 50-node lab paid that 50 times
on 2 CPUs before any agent did any work (bench/lab_scale.py). A fork costs a few ms,
and the forked daemons share the imported code's memory.

Protocol (lab/supervise.py is its only client; it starts the zygote as its child):
one JSON line per request on stdin,

    {"module": "podnet.cli", "argv": [...], "netns": "/run/netns/X", "log": "/path", "env": {...}}

and one line back, {"pid": N} or {"error": "..."}. The daemon is forked twice, so it
is re-parented to the supervisor (a child subreaper), which reaps and records it like
every other lab process. The daemon joins `netns` (network only, as `nsenter --net`),
writes to `log`, and runs `<module>.main(argv)` as `python -m <module>` would.

The zygote never starts a thread: a fork copies only the forking thread, so anything
another thread held (a lock, half a write) would be broken in the child.

Usage: python -m podnet.lab.zygote
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys
from typing import Any

CLONE_NEWNET = 0x40000000
MODULES = ("podnet.cli", "podnet.lab.echo")  # what may be forked (each has main(argv))
PRELOAD = ("podnet.cli", "podnet.cli.agent", "podnet.agent.daemon", "podnet.agent.ops", "podnet.lab.echo")


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def check(request: Any) -> dict[str, Any]:  # noqa: ANN401 - JSON from the supervisor
    """The request, or ValueError naming what is wrong (nothing is forked for it)."""
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    module, argv = request.get("module"), request.get("argv")
    if module not in MODULES:
        raise ValueError(f"module must be one of {', '.join(MODULES)}, not {module!r}")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a list of strings")
    for key in ("netns", "log"):
        if not isinstance(request.get(key), str) or not os.path.isabs(request[key]):
            raise ValueError(f"{key} must be an absolute path")
    env = request.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("env must map strings to strings")
    return {"module": module, "argv": argv, "netns": request["netns"], "log": request["log"], "env": env}


def _become(request: dict[str, Any]) -> None:
    """In the daemon: its namespace, its stdio, its environment, default signals."""
    _setns(request["netns"])
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the daemon's stdio for its life
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.update(request["env"])
    sys.argv = [f"python -m {request['module']}", *request["argv"]]


def _go_between(write_end: int) -> None:
    """Fork the daemon; here, tell its pid and exit at once (so the supervisor, a
    subreaper, inherits it). Returns in the daemon only."""
    try:
        daemon = os.fork()
    except OSError:
        os._exit(1)
    if daemon:
        try:
            os.write(write_end, str(daemon).encode())
        finally:
            os._exit(0)


def fork_daemon() -> int:
    """The daemon's pid in the zygote; 0 in the daemon itself (its setup done)."""
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:
        os.close(read_end)
        _go_between(write_end)  # returns in the daemon only
        os.close(write_end)
        return 0
    os.close(write_end)
    os.waitpid(first, 0)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    if not data:
        raise OSError("the daemon could not be forked")
    return int(data)


def serve(lines: Any, reply: Any) -> int | None:  # noqa: ANN401 - text streams
    """Answer requests until stdin closes (None); in a forked daemon, its exit code."""
    for line in lines:
        if not line.strip():
            continue
        try:
            request = check(json.loads(line))
            pid = fork_daemon()
        except (ValueError, OSError) as exc:
            reply.write(json.dumps({"error": str(exc)}) + "\n")
            reply.flush()
            continue
        if pid == 0:
            return _run(request)
        reply.write(json.dumps({"pid": pid}) + "\n")
        reply.flush()
    return None


def _run(request: dict[str, Any]) -> int:
    try:
        _become(request)
    except OSError as exc:
        print(f"zygote: cannot start {request['module']}: {exc}", file=sys.stderr)
        return 127
    module = importlib.import_module(request["module"])
    try:
        return int(module.main(request["argv"]) or 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def main() -> int:
    # The zygote changes no signal disposition: its daemons keep what a fresh
    # interpreter started by the supervisor would have.
    for name in PRELOAD:
        importlib.import_module(name)
    try:
        code = serve(sys.stdin, sys.stdout)
    except BrokenPipeError:  # the supervisor went: so do we
        return 0
    return 0 if code is None else code


if __name__ == "__main__":
    sys.exit(main())
