"""What the benchmarks share: logging, errors, percentiles, namespace listing, and
the teardown check of a lab a benchmark brought up."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def raise_interrupt(signum, frame):  # noqa: ARG001 - a signal handler's signature
    raise KeyboardInterrupt


def nsenter(ns: str) -> list[str]:
    return ["nsenter", f"--net={NETNS_DIR / ns}", "--"]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def list_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def close_lab(name: str) -> list[str]:
    """`lab down` a benchmark's lab and report anything left behind."""
    from podnet.lab.cluster import LabError, lab_dir, state_file, teardown
    from podnet.procs import owner_alive

    problems: list[str] = []
    procs: dict = {}
    with contextlib.suppress(OSError, ValueError):
        procs = json.loads((lab_dir(name) / "procs.json").read_text())
    if state_file(name).exists():
        try:
            problems += teardown(name)
        except LabError as exc:
            problems.append(str(exc))
    alive = [e["pid"] for e in procs.values() if e.get("owner") and owner_alive(e["owner"])]
    if alive:
        problems.append(f"lab {name}: processes still running: {alive}")
    left = [ns for ns in list_netns() if ns.startswith(f"pn-lab-{name}-")]
    if left:
        problems.append(f"lab {name}: namespaces still present: {left}")
    if lab_dir(name).exists() or state_file(name).exists():
        problems.append(f"lab {name}: state file or lab dir still present")
    return problems


def finish(outcome: dict, as_json: bool, render) -> int:
    """Print a benchmark's outcome (JSON or its table) and the exit code: 0 only when
    its teardown left nothing behind."""
    if as_json:
        print(json.dumps(outcome, indent=2))
    else:
        render(outcome)
        log(f"done in {outcome['elapsed_s']}s")
    return 0 if outcome["cleanup"]["ok"] else 1
