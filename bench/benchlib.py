"""What the benchmarks share: logging, errors, percentiles, namespace listing, the
machine and the console of a report, the teardown check of a lab or sandbox a
benchmark brought up, iperf3 servers and clients."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
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


def machine() -> dict:
    """What a result depends on, recorded with it."""
    return {"cpus": os.cpu_count(), "kernel": os.uname().release}


def console(width: int = 140):
    """A rich console; not a terminal (make, CI, a pipe): wide enough for the tables."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=width)


def print_cleanup(con, outcome: dict, ok: str) -> None:
    """A report's cleanup line: `ok`, or in red what the teardown left behind."""
    clean = outcome["cleanup"]
    con.print(ok if clean["ok"] else f"[red]cleanup problems:[/] {clean['problems']}")


def close_sandbox(sandbox) -> list[str]:
    """Close a lab.Sandbox and report what it left: recorded processes still running,
    namespaces of its token still present."""
    processes = list(sandbox.processes)
    token = f"{sandbox.prefix}{sandbox.token}-"
    sandbox.close()
    problems = []
    alive = [p.pid for p in processes if p.poll() is None]
    if alive:
        problems.append(f"processes still running: {alive}")
    left = [ns for ns in list_netns() if ns.startswith(token)]
    if left:
        problems.append(f"namespaces still present: {left}")
    return problems


def close_lab(name: str) -> list[str]:
    """`lab down` a benchmark's lab and report anything left behind."""
    from podnet.lab.state import LabError, lab_dir, state_file
    from podnet.lab.teardown import teardown
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


IPERF_PORT = 5201


class Iperf:
    """iperf3 servers started by the bench, recorded and stopped by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def server(self, ns: str, bind: str) -> subprocess.Popen:
        # nsenter --net execs iperf3 itself: the recorded PID is iperf3's.
        proc = subprocess.Popen(
            [*nsenter(ns), "iperf3", "-s", "-B", bind, "-p", str(IPERF_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        while not self._listening(ns):
            if proc.poll() is not None:
                raise BenchError(f"iperf3 -s in {ns} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise BenchError(f"iperf3 -s in {ns} did not listen within 10 s")
            time.sleep(0.05)
        return proc

    @staticmethod
    def _listening(ns: str) -> bool:
        out = subprocess.run(
            [*nsenter(ns), "ss", "-Hltn", f"sport = :{IPERF_PORT}"],
            capture_output=True,
            text=True,
            check=False,
        )
        return bool(out.stdout.strip())

    @staticmethod
    def client(ns: str, server_ip: str, seconds: float) -> dict:
        argv = [*nsenter(ns), "iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", str(seconds)]
        argv += ["-O", "1", "-J"]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            raise BenchError(
                f"iperf3 -c {server_ip} from {ns}: rc {proc.returncode}, {proc.stderr.strip()[-400:]}"
            ) from None
        if "error" in data:
            raise BenchError(f"iperf3 -c {server_ip} from {ns}: {data['error']}")
        end = data["end"]
        return {
            "gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end["sum_sent"].get("retransmits"),
            "sender_cpu": round(end["cpu_utilization_percent"]["host_total"], 1),
            "receiver_cpu": round(end["cpu_utilization_percent"]["remote_total"], 1),
        }

    def stop(self, proc: subprocess.Popen) -> None:
        from podnet.lab.sandbox import stop_process

        stop_process(proc)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> list[str]:
        problems = []
        for proc in list(self.procs):
            with contextlib.suppress(OSError):
                self.stop(proc)
            if proc.poll() is None:
                problems.append(f"iperf3 pid {proc.pid} still running")
        return problems


@contextlib.contextmanager
def no_interrupt():
    """A second Ctrl-C must not cut a teardown short."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_bench(name: str, bench, args, render) -> int:
    """A benchmark's main after its argument checks: SIGINT/SIGTERM/SIGHUP become
    KeyboardInterrupt (its `finally` tears down), failures are one line on stderr,
    and the outcome is printed with its elapsed time (see finish)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_interrupt)
    started = time.monotonic()
    try:
        outcome = bench(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; everything was torn down", file=sys.stderr)
        return 130
    except Exception as exc:  # BenchError, a LabError, nft...: teardown already ran
        print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    outcome["elapsed_s"] = round(time.monotonic() - started, 1)
    return finish(outcome, args.json, render)


def median_spread(values: list[float], digits: int = 3) -> dict:
    """One figure measured in several rounds: its median and the spread around it
    (issue 19: at least three interleaved rounds, the spread next to the median)."""
    import statistics

    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "rounds": [round(v, digits) for v in values]}


def format_spread(figure: dict, fmt: str = "{:.1f}", suffix: str = "") -> str:
    """`median (min-max)` of a median_spread figure, e.g. `0.93x (0.90-0.97)`."""
    med, lo, hi = (fmt.format(figure[k]) for k in ("median", "min", "max"))
    return f"{med}{suffix} ({lo}-{hi})"
