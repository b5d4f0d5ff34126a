"""Lab pods with their own application process (topology `ownApp: true`): one
`podnet.lab.meshapp` per pod, run in the pod's namespace as a child of the lab's
supervisor, with a control file the tests write (lab/meshapp.py) and a restart of the
app alone (`podnet lab app restart NS/POD`: the sidecar and the pod's network stay).

Each pod's state entry records `app_proc`, `app_pid`, `control` and `ready`, so
`lab down` stops it like any lab process and a restart finds it by PID.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from podnet.fileio import write_atomic
from podnet.lab.state import LabError, LabState, enter
from podnet.lab.supervisor_client import spawn_supervised
from podnet.lab.topology import Pod

Spawn = Callable[[str, str, list[str]], int]  # (process name, netns, argv) -> pid


def app_argv(st: LabState, key: str, entry: dict) -> list[str]:
    ports = [str(p).partition("/")[0] for p in entry.get("ports", []) if str(p).upper().endswith("TCP")]
    argv = [sys.executable, "-m", "podnet.lab.meshapp", "--name", key.split("/", 1)[1],
            "--version", str(entry.get("labels", {}).get("version", "v1")),
            "--control", entry["control"], "--ready", entry["ready"]]
    for port in ports:
        argv += ["--port", port]
    return argv


def start(st: LabState, pods: Iterable[Pod], spawn: Spawn, timeout: float = 30.0) -> None:
    """Start every own-app pod's process; wait until each listens."""
    started = []
    for pod in pods:
        entry = st.data["pods"][pod.key]
        slug = f"{pod.namespace}-{pod.name}"
        entry["control"] = str(st.labdir / "apps" / f"{slug}.json")
        entry["ready"] = str(st.labdir / "ready" / f"app-{slug}")
        Path(entry["control"]).parent.mkdir(parents=True, exist_ok=True)
        Path(entry["ready"]).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(entry["control"]), "{}")
        entry["app_proc"] = f"app/{slug}"
        entry["app_pid"] = spawn(entry["app_proc"], entry["netns"], app_argv(st, pod.key, entry))
        st.save()
        started.append(entry)
    _wait_ready(st, started, timeout)


def restart(lab: str, key: str, timeout: float = 30.0) -> int:
    """Stop the app of pod `key` by its PID and start it again; its new PID."""
    st = LabState.load(lab)
    entry = st.data.get("pods", {}).get(key)
    if not entry or "app_proc" not in entry:
        raise LabError(f"pod {key} has no app of its own", "give it `ownApp: true` in the topology")
    _stop(int(entry["app_pid"]))
    Path(entry["ready"]).unlink(missing_ok=True)
    logs = st.labdir / "logs"
    entry["app_pid"] = spawn_supervised(st.labdir, entry["app_proc"],
                                        [*enter(entry["netns"]), *app_argv(st, key, entry)],
                                        logs / f"{entry['app_proc'].replace('/', '_')}.log")
    st.save()
    _wait_ready(st, [entry], timeout)
    return int(entry["app_pid"])


def control(lab: str, key: str, settings: dict) -> None:
    """Change what the app of `key` does (fail_percent, fail_status, delay_ms)."""
    entry = LabState.load(lab).data.get("pods", {}).get(key) or {}
    if "control" not in entry:
        raise LabError(f"pod {key} has no app of its own")
    write_atomic(Path(entry["control"]), json.dumps(settings))


def _stop(pid: int, grace: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)  # the supervisor reaps it
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _wait_ready(st: LabState, entries: list[dict], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for entry in entries:
        while not Path(entry["ready"]).exists():
            if time.monotonic() > deadline:
                raise LabError(f"the app {entry['app_proc']} did not listen within {timeout:.0f}s",
                               f"see {st.labdir}/logs")
            time.sleep(0.05)

