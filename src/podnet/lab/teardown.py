"""`lab down`: remove exactly what a lab recorded, also after `lab up` crashed.

Processes go first (the supervisor, then any recorded child still alive, matched by
"pid:starttime" so a recycled pid is never signalled), then the recorded namespaces
(only `pn-lab-*` names), sockets and the lab directory; the state file goes last, and
only when nothing was left behind, so a second `lab down` can finish the job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from podnet.bgp.bird import BirdDaemon
from podnet.lab import topology as topo
from podnet.lab.state import (
    NETNS_DIR,
    RUN_DIR,
    LabError,
    LabState,
    ip,
    lab_dir,
    process_alive,
    state_file,
)
from podnet.mesh.sidecar_process import end_left_behind
from podnet.state import StatePaths


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_dead(entries: list[dict], timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [e for e in entries if process_alive(e)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def teardown(name: str, progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Remove everything the state file and procs.json record; return what could not
    be removed (empty when clean). Idempotent."""
    topo.check_lab_name(name)
    state = LabState.load(name)
    problems: list[str] = []
    procs = state.processes()
    running = sum(1 for e in procs.values() if process_alive(e))
    sup = procs.get("supervisor")
    if sup and process_alive(sup):
        _kill(sup["pid"], signal.SIGTERM)
        if _wait_dead([sup], 15):
            _kill(sup["pid"], signal.SIGKILL)
    procs = state.processes()
    children = [e for n, e in procs.items() if n != "supervisor" and process_alive(e)]
    for entry in children:
        _kill(entry["pid"], signal.SIGTERM)
    for entry in _wait_dead(children, 5):
        _kill(entry["pid"], signal.SIGKILL)
    for entry in _wait_dead(children, 5):
        problems.append(f"process {entry['pid']} survived SIGKILL")
    for node, info in (state.data.get("nodes") or {}).items():
        # the supervisor ends the BIRDs it adopted; one left when it is gone too
        # (a crashed lab) is found by its pid file and checked before it is signalled
        if info.get("state_dir") and BirdDaemon(StatePaths(Path(info["state_dir"])).bird_dir).stop():
            progress(f"stopped the BIRD of {node}")
        # likewise the mesh sidecars, which outlive their agent (mesh/sidecar_process.py)
        if info.get("state_dir") and (ended := end_left_behind(StatePaths(Path(info["state_dir"])).mesh_dir)):
            progress(f"stopped {ended} mesh sidecar(s) of {node}")
    progress(f"stopped {running} recorded process(es)")
    namespaces = list(state.data.get("namespaces", []))
    for ns in reversed(namespaces):
        if not ns.startswith("pn-lab-"):
            problems.append(f"refusing to delete namespace {ns!r} (not a lab name)")
            continue
        if (NETNS_DIR / ns).exists():
            try:
                result = ip("netns", "del", ns, check=False)
            except LabError as err:  # timed out: the rest still goes
                problems.append(f"ip netns del {ns}: {err.msg}")
                continue
            if result.returncode != 0:
                problems.append(f"ip netns del {ns}: {result.stderr.strip()}")
    progress(f"deleted {len(namespaces)} namespace(s)")
    for sock in state.data.get("sockets", []):
        if sock.startswith(str(RUN_DIR / f"lab-{name}-")):
            Path(sock).unlink(missing_ok=True)
    if state.labdir == lab_dir(name):
        shutil.rmtree(state.labdir, ignore_errors=True)
    if not problems:
        state_file(name).unlink(missing_ok=True)
    return problems
