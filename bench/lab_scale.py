"""Lab scale: wall time of `podnet lab up` and `podnet lab down` for big labs.

    .venv/bin/python bench/lab_scale.py                    # 20 nodes x 10 pods
    .venv/bin/python bench/lab_scale.py --big              # + 50 nodes x 20 pods
    .venv/bin/python bench/lab_scale.py --size 5x4 --size 10x10 [--store etcd] [--json]
    .venv/bin/python bench/lab_scale.py --big --profile    # + cProfile of lab up (in-process)
    .venv/bin/python bench/lab_scale.py --size 100x10 --busy  # + the same labs beside a busy process

Each size runs the real CLI, `python -m podnet.cli lab up --name b<hex> --nodes N
--pods-per-node P` (so interpreter start-up and imports are included), timed from the
spawn to its exit, with the per-phase marks the CLI prints (underlay, store, agents,
pods). The lab is checked (`lab status -o json`: every agent alive and answering, every
pod with an address and its echo server alive, not timed), then `lab down` is timed
the same way. Targets (issue 19): 50 x 20 up in <= 30 s and 100 x 10 in <= 60 s on
this 2-core machine.

Issue 19: `--rounds N` (default 3) builds every size N times, interleaved (the order of
the sizes rotates), and prints the median with the spread, the ratio to the target and
whether the rounds agree within 20% (max/min <= 1.2). Each run also reports the CPU the
lab's agents used (their own and their children's, from /proc, at the end of `lab up`)
and the idle lab's CPU over 3 s, by kind of process. `--compare-exec` adds, in the same
rounds, labs whose Python daemons are started the plain way (PODNET_LAB_ZYGOTE=0: an
interpreter and its imports per agent) instead of forked by the lab's zygote
(lab/zygote.py), the baseline of the zygote's gain.

`--busy` adds, in the same rounds, labs built beside one busy process (a Python loop
in a session of its own, so a core's worth of the machine, as another program would
take; started right before `lab up`, stopped by its PID when it returns): how `lab up`
degrades when the machine is shared, printed as the ratio to the quiet labs' median.
At a 30 s lease TTL one such process made a 100 x 10 `lab up` take 350 s (leases
expired on live nodes); the lab's crowding rules are sized by it (lab/crowding.py).

`--profile` builds each size once more in-process under cProfile
(`podnet.lab.builder.LabBuilder`, the code behind `lab up`) and prints where the time
goes; `--profile-out DIR` keeps the .pstats files.

Safety: labs are named `b<hex>` (namespaces `pn-lab-b<hex>-*`); `lab down` removes
exactly what the lab recorded. If `lab up` is interrupted, the bench stops it by its
PID and runs the teardown itself, in a `finally`, also on Ctrl-C, SIGTERM or SIGHUP.
The root network namespace is never changed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchlib import BenchError, finish, list_netns, log, no_interrupt, raise_interrupt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

TARGET = {(50, 20): 30.0, (100, 10): 60.0}
STABLE = 1.2  # the rounds of one size agree within 20% (max/min)
DEFAULT_SIZES = [(20, 10)]
BIG = ((50, 20), (100, 10))
VARIANTS = {"zygote": "1", "exec": "0", "busy": "1"}  # PODNET_LAB_ZYGOTE of the lab up
BUSY_LOOP = "while True: pass"  # --busy: the neighbour's work
PHASE = re.compile(r"✓ (.*?) \((\d+(?:\.\d+)?)s\)")


def cli_env(zygote: str = "1") -> dict[str, str]:
    env = dict(os.environ)
    env["PODNET_LAB_ZYGOTE"] = zygote
    env["PYTHONPATH"] = str(ROOT / "src") + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.pop("PODNET_LAB_SIMULATE_NODES", None)
    return env


def podnet(*args: str, timeout: float, zygote: str = "1") -> tuple[float, subprocess.CompletedProcess]:
    """Run the CLI; (wall seconds, result). Interrupted: stopped by its PID."""
    argv = [sys.executable, "-m", "podnet.cli", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(zygote)
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        # SIGINT first: `lab up` then tears down what it built itself.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    wall = time.monotonic() - t0
    return wall, subprocess.CompletedProcess(argv, proc.returncode, out, err)


class LabRecord:
    """What a lab recorded, to check after `lab down` that nothing is left."""

    def __init__(self, name: str) -> None:
        self.name = name

    def leftovers(self) -> list[str]:
        from podnet.lab.state import RUN_DIR, lab_dir, state_file

        problems = []
        left = [ns for ns in list_netns() if ns.startswith(f"pn-lab-{self.name}-")]
        if left:
            problems.append(f"lab {self.name}: {len(left)} namespaces still present: {left[:5]}")
        if state_file(self.name).exists() or lab_dir(self.name).exists():
            problems.append(f"lab {self.name}: state file or lab dir still present")
        socks = list(RUN_DIR.glob(f"lab-{self.name}-*.sock"))
        if socks:
            problems.append(f"lab {self.name}: sockets still present: {socks[:5]}")
        return problems

    def force_down(self) -> list[str]:
        """Teardown after a failed or interrupted run (idempotent)."""
        from podnet.lab.state import LabError, state_file
        from podnet.lab.teardown import teardown

        problems: list[str] = []
        if state_file(self.name).exists():
            try:
                problems += teardown(self.name)
            except LabError as exc:
                problems.append(str(exc))
        return problems


def check_lab(name: str, nodes: int, pods: int) -> list[str]:
    _, proc = podnet("lab", "status", "--name", name, "-o", "json", timeout=120)
    if proc.returncode not in (0, 1):
        return [f"lab status failed: {proc.stderr.strip()[-400:]}"]
    data = json.loads(proc.stdout)
    problems = []
    bad_nodes = [
        n["name"]
        for n in data["nodes"]
        if not (n["agent_alive"] and "result" in (n["agent"] or {}))
    ]
    bad_pods = [p["name"] for p in data["pods"] if not (p.get("ips") and p["echo_alive"])]
    if len(data["nodes"]) != nodes or bad_nodes:
        problems.append(f"{len(data['nodes'])} nodes, unhealthy: {bad_nodes[:5]}")
    if len(data["pods"]) != nodes * pods or bad_pods:
        problems.append(f"{len(data['pods'])} pods, unhealthy: {bad_pods[:5]}")
    return problems


def lab_cpu(procs: dict) -> dict:
    """CPU seconds used so far by the lab's recorded processes, by kind (the name's part
    before '/': agent, echo, zygote...), own and reaped children's, from /proc."""
    hz, out = os.sysconf("SC_CLK_TCK"), {}
    for name, entry in procs.items():
        try:
            stat = Path(f"/proc/{entry['pid']}/stat").read_text()
        except (OSError, KeyError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        kind = name.split("/")[0]
        out[kind] = out.get(kind, 0.0) + sum(int(f) for f in fields[11:15]) / hz
    return {kind: round(cpu, 2) for kind, cpu in sorted(out.items())}


@contextlib.contextmanager
def busy_neighbour(active: bool):
    """With `active`: one busy process for the block's duration, in a session of its own
    (the kernel's autogroups then share the CPUs between it and the lab as between two
    programs), stopped by its PID also when the block fails."""
    if not active:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def run_size(nodes: int, pods: int, args: argparse.Namespace, variant: str = "zygote") -> tuple[dict, list[str]]:
    name = f"b{secrets.token_hex(3)}"
    record = LabRecord(name)
    problems: list[str] = []
    result: dict = {"nodes": nodes, "pods_per_node": pods, "lab": name, "variant": variant}
    owners: list[str] = []  # "pid:starttime" of every recorded process
    try:
        log(f"lab up {name}: {nodes} nodes x {pods} pods ({args.fabric}, {args.store}, {variant})")
        load = os.getloadavg()[0]
        with busy_neighbour(variant == "busy"):
            wall, up = podnet(
                "lab", "up", "--name", name, "--nodes", str(nodes), "--pods-per-node", str(pods),
                "--fabric", args.fabric, "--store", args.store, "--timeout", str(args.timeout),
                *(["--lease-ttl", str(args.lease_ttl)] if args.lease_ttl else []),
                timeout=args.max_seconds, zygote=VARIANTS[variant],
            )  # fmt: skip
        if up.returncode != 0:
            raise BenchError(
                f"lab up {nodes}x{pods} failed (rc {up.returncode}): {up.stderr[-1500:]}"
            )
        marks = [(m.group(1), float(m.group(2))) for m in PHASE.finditer(up.stderr)]
        phases, prev = [], 0.0
        for label, at in marks:
            phases.append({"phase": label, "at_s": at, "took_s": round(at - prev, 2)})
            prev = at
        result.update(up_s=round(wall, 2), phases=phases, loadavg_1m=round(load, 2))
        log(f"  up in {wall:.1f}s")
        health = check_lab(name, nodes, pods)
        result["healthy"] = not health
        problems += [f"lab {name} after up: {h}" for h in health]
        from podnet.lab.state import lab_dir

        procs: dict = {}
        with contextlib.suppress(OSError, ValueError):
            procs = json.loads((lab_dir(name) / "procs.json").read_text())
            owners = [e["owner"] for e in procs.values() if e.get("owner")]
        result["processes"] = len(owners)
        result["cpu_s_at_up"] = lab_cpu(procs)
        before = lab_cpu(procs)
        time.sleep(3.0)
        after = lab_cpu(procs)
        result["idle_cores"] = {k: round((after.get(k, 0.0) - v) / 3.0, 3) for k, v in before.items()}
        wall, down = podnet("lab", "down", "--name", name, timeout=args.max_seconds)
        result["down_s"] = round(wall, 2)
        log(f"  down in {wall:.1f}s")
        if down.returncode != 0:
            problems.append(f"lab down {name}: {down.stderr.strip()[-600:]}")
    finally:
        with no_interrupt():
            problems += record.force_down()
            problems += record.leftovers()
    from podnet.procs import owner_alive

    still = [owner for owner in owners if owner_alive(owner)]
    if still:
        problems.append(f"lab {name}: recorded processes still alive: {still[:10]}")
    return result, problems


# --------------------------------------------------------------------------------------
# Profile (in-process LabBuilder under cProfile, plus timers around its steps)
# --------------------------------------------------------------------------------------
class StepTimers:
    """Wall time spent in a few LabBuilder/LabState steps (summed over threads)."""

    STEPS = (
        ("LabState", "add_netns"),
        ("LabState", "save"),
        ("LabBuilder", "plug"),
        ("LabBuilder", "forwarding"),
        ("LabBuilder", "attach"),
        ("LabBuilder", "spawn"),
        ("LabBuilder", "_wait"),
    )

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.stats: dict[str, list[float]] = {}

    def _wrap(self, label: str, fn):
        def timed(*a, **k):
            t0 = time.monotonic()
            try:
                return fn(*a, **k)
            finally:
                t1 = time.monotonic()
                with self.lock:
                    entry = self.stats.setdefault(label, [0, 0.0, t0, t1])
                    entry[0] += 1
                    entry[1] += t1 - t0
                    entry[2] = min(entry[2], t0)
                    entry[3] = max(entry[3], t1)

        return timed

    @contextlib.contextmanager
    def patched(self):
        from podnet.lab import builder

        saved = []
        for cls_name, attr in self.STEPS:
            cls = getattr(builder, cls_name)
            raw = cls.__dict__[attr]
            saved.append((cls, attr, raw))
            fn = raw.__func__ if isinstance(raw, staticmethod) else raw
            wrapped = self._wrap(f"{cls_name}.{attr}", fn)
            setattr(cls, attr, staticmethod(wrapped) if isinstance(raw, staticmethod) else wrapped)
        try:
            yield
        finally:
            for cls, attr, raw in saved:
                setattr(cls, attr, raw)

    def report(self, start: float) -> list[dict]:
        return [
            {
                "step": label,
                "calls": calls,
                "sum_s": round(total, 2),
                "span_s": [round(first - start, 2), round(last - start, 2)],
            }
            for label, (calls, total, first, last) in sorted(
                self.stats.items(), key=lambda kv: kv[1][2]
            )
        ]


def idle_cpu(name: str, seconds: float) -> dict:
    """CPU share (% of one CPU) of the lab's recorded processes while the lab is idle."""
    from podnet.lab.state import lab_dir

    try:
        procs = json.loads((lab_dir(name) / "procs.json").read_text())
    except (OSError, ValueError):
        return {}
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(pid: int) -> int:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            return 0
        return int(fields[11]) + int(fields[12])  # utime + stime

    before = {n: cpu(e["pid"]) for n, e in procs.items()}
    time.sleep(seconds)
    groups: dict[str, float] = {}
    for n, e in procs.items():
        used = (cpu(e["pid"]) - before[n]) / tick
        group = n.split("/")[0]
        groups[group] = groups.get(group, 0.0) + used
    return {g: round(100 * used / seconds, 1) for g, used in groups.items()}


def profile_size(nodes: int, pods: int, args: argparse.Namespace) -> tuple[dict, list[str]]:
    import cProfile
    import pstats

    from podnet.lab import topology as topo
    from podnet.lab.builder import LabBuilder, LabOptions

    name = f"b{secrets.token_hex(3)}"
    record = LabRecord(name)
    problems: list[str] = []
    start = time.monotonic()
    marks: list[tuple[str, float]] = []
    builder = LabBuilder(
        topo.default_topology(nodes, pods),
        LabOptions(name, args.fabric, args.store, timeout=args.timeout),
        lambda step: marks.append((step, round(time.monotonic() - start, 2))),
    )
    prof = cProfile.Profile()
    out: dict = {"nodes": nodes, "pods_per_node": pods, "lab": name}
    timers = StepTimers()
    try:
        with timers.patched():
            prof.enable()
            try:
                builder.build()
            finally:
                prof.disable()
        out["up_s"] = round(time.monotonic() - start, 2)
        out["marks"] = marks
        out["steps"] = timers.report(start)
        from podnet.lab.state import state_file

        out["state_file_bytes"] = state_file(name).stat().st_size
        out["idle_cpu"] = idle_cpu(name, 3.0)
    finally:
        with no_interrupt():
            problems += record.force_down()
            problems += record.leftovers()
    path = None
    if args.profile_out:
        os.makedirs(args.profile_out, exist_ok=True)
        path = os.path.join(args.profile_out, f"lab_up_{nodes}x{pods}.pstats")
        prof.dump_stats(path)
    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.replace(str(ROOT / "src") + "/", "")
        if "/lib/python3" in short:
            short = "stdlib/" + short.split("/lib/python3", 1)[1].split("/", 1)[-1]
        rows.append(
            {"func": f"{short}:{line}({func})", "calls": nc, "tottime_s": tt, "cumtime_s": ct}
        )
    out["top_cumtime"] = [
        {**r, "tottime_s": round(r["tottime_s"], 3), "cumtime_s": round(r["cumtime_s"], 3)}
        for r in sorted(rows, key=lambda r: -r["cumtime_s"])[:25]
    ]
    out["top_tottime"] = [
        {**r, "tottime_s": round(r["tottime_s"], 3), "cumtime_s": round(r["cumtime_s"], 3)}
        for r in sorted(rows, key=lambda r: -r["tottime_s"])[:12]
    ]
    out["pstats"] = path
    return out, problems


# --------------------------------------------------------------------------------------
def render(outcome: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console() if sys.stdout.isatty() else Console(width=150)
    table = Table(
        title=f"lab up / lab down wall time, s ({outcome['fabric']}, store {outcome['store']}, "
        f"{outcome['machine']['cpus']} CPUs)"
    )
    for col in ("round", "nodes x pods", "daemons", "namespaces", "lab up", "target", "phases (took)", "lab down"):
        table.add_column(col, justify="left" if col == "phases (took)" else "right")
    for r in outcome["runs"]:
        target = TARGET.get((r["nodes"], r["pods_per_node"]))
        up = f"{r['up_s']:.1f}"
        if target:
            up = f"[{'green' if r['up_s'] <= target else 'red'}]{up}[/]"
        phases = ", ".join(f"{p['phase'].split(':')[0]} {p['took_s']:.1f}" for p in r["phases"])
        namespaces = r["nodes"] * (1 + r["pods_per_node"]) + 2
        table.add_row(
            str(r.get("round", 1)),
            f"{r['nodes']} x {r['pods_per_node']}",
            r.get("variant", "zygote"),
            str(namespaces),
            up,
            f"<= {target:.0f}" if target else "",
            phases,
            f"{r.get('down_s', float('nan')):.1f}",
        )
    con.print(table)
    summary = Table(title="over the rounds (issue 19): median (min-max), ratio to the target, rounds within 20%")
    for col in ("nodes x pods", "daemons", "lab up s", "target", "ratio", "stable", "phases (median s)",
                "agents' CPU s", "idle lab, cores"):
        summary.add_column(col, justify="left" if col.startswith("phases") else "right")
    for r in outcome.get("summary", []):
        up = r["up_s"]
        colour = "" if r["met"] is None else ("green" if r["met"] else "red")
        summary.add_row(
            f"{r['nodes']} x {r['pods_per_node']}", r["variant"],
            f"{up['median']:.1f} ({up['min']:.1f}-{up['max']:.1f})",
            f"<= {r['target_s']:.0f}" if r["target_s"] else "",
            f"[{colour}]{r['ratio_to_target']:.2f}x[/]" if r["ratio_to_target"] else "",
            f"{'yes' if r['stable'] else 'NO'} ({r['max_over_min']}x)"
            + (f"; {r['over_quiet']:.2f}x quiet" if r.get("over_quiet") else ""),
            ", ".join(f"{k} {v:.1f}" for k, v in r["phases_median_s"].items()),
            f"{r['agents_cpu_s_median']:.1f}", f"{r['idle_cores_median']:.3f}",
        )
    con.print(summary)
    for prof in outcome.get("profiles", []):
        t = Table(
            title=f"cProfile of lab up (in-process) {prof['nodes']} x {prof['pods_per_node']}: "
            f"{prof['up_s']:.1f} s, marks {prof['marks']}"
        )
        for col in ("function", "calls", "cumtime s", "tottime s"):
            t.add_column(col, justify="left" if col == "function" else "right")
        for r in prof["top_cumtime"][:20]:
            t.add_row(
                r["func"][-95:], str(r["calls"]), f"{r['cumtime_s']:.2f}", f"{r['tottime_s']:.2f}"
            )
        con.print(t)
        t = Table(
            title="time in lab-up steps (summed over threads; span = first start .. last end)"
        )
        for col in ("step", "calls", "sum s", "span s"):
            t.add_column(col, justify="left" if col == "step" else "right")
        for r in prof["steps"]:
            t.add_row(
                r["step"],
                str(r["calls"]),
                f"{r['sum_s']:.2f}",
                f"{r['span_s'][0]:.1f} .. {r['span_s'][1]:.1f}",
            )
        con.print(t)
        con.print(
            f"state file: {prof['state_file_bytes']} bytes; CPU of the idle lab's processes "
            f"(% of one CPU): {prof['idle_cpu']}"
        )
    clean = outcome["cleanup"]
    con.print(
        "cleanup: every lab down, nothing left"
        if clean["ok"]
        else f"[red]cleanup problems:[/] {clean['problems']}"
    )
    for r in outcome["runs"]:
        target = TARGET.get((r["nodes"], r["pods_per_node"]))
        suffix = f" (target <= {target:.0f} s)" if target else ""
        print(
            f"lab up {r['nodes']}x{r['pods_per_node']}: {r['up_s']:.1f} s{suffix}; down {r.get('down_s', float('nan')):.1f} s"
        )


def summarize(runs: list[dict]) -> list[dict]:
    """Per size and variant: lab up's median and spread over the rounds, whether the
    rounds agree within 20%, the ratio to the target, and where the CPU went."""
    import statistics

    from benchlib import median_spread

    out = []
    keys = list(dict.fromkeys((r["nodes"], r["pods_per_node"], r["variant"]) for r in runs))
    for nodes, pods, variant in keys:
        mine = [r for r in runs if (r["nodes"], r["pods_per_node"], r["variant"]) == (nodes, pods, variant)]
        up = median_spread([r["up_s"] for r in mine], 2)
        phases: dict[str, list[float]] = {}
        for r in mine:
            for p in r["phases"]:
                phases.setdefault(p["phase"].split(":")[0], []).append(p["took_s"])
        target = TARGET.get((nodes, pods)) if variant != "busy" else None  # the targets are a quiet machine's
        quiet = [r["up_s"] for r in runs if (r["nodes"], r["pods_per_node"], r["variant"]) == (nodes, pods, "zygote")]
        out.append({
            "nodes": nodes, "pods_per_node": pods, "variant": variant, "rounds": len(mine), "up_s": up,
            "max_over_min": round(up["max"] / up["min"], 2) if up["min"] else None,
            "stable": bool(up["min"]) and up["max"] / up["min"] <= STABLE,
            "target_s": target, "ratio_to_target": round(up["median"] / target, 2) if target else None,
            "met": up["median"] <= target if target else None,
            "over_quiet": round(up["median"] / statistics.median(quiet), 2) if variant == "busy" and quiet else None,
            "phases_median_s": {k: round(statistics.median(v), 2) for k, v in phases.items()},
            "agents_cpu_s_median": round(statistics.median(r["cpu_s_at_up"].get("agent", 0.0) for r in mine), 1),
            "idle_cores_median": round(statistics.median(sum(r["idle_cores"].values()) for r in mine), 3),
        })
    return out


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not NODESxPODS, e.g. 20x10")
    return int(m.group(1)), int(m.group(2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", action="store_true", help="also 50 nodes x 20 pods and 100 x 10")
    parser.add_argument(
        "--size", type=parse_size, action="append", metavar="NxP", help="sizes (replace 20x10)"
    )
    parser.add_argument("--fabric", choices=("vxlan", "host-gw"), default="vxlan")
    parser.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite")
    parser.add_argument("--timeout", type=float, default=120, help="lab up --timeout (default 120)")
    parser.add_argument("--lease-ttl", type=float, help="lab up --lease-ttl (default: the lab's own, crowding.py)")
    parser.add_argument(
        "--max-seconds", type=float, default=900, help="give up on one lab up/down after this"
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile lab up in-process")
    parser.add_argument("--profile-out", metavar="DIR", help="with --profile: keep .pstats here")
    parser.add_argument("--rounds", type=int, default=3, help="builds of each size, interleaved (default 3)")
    parser.add_argument("--compare-exec", action="store_true",
                        help="also labs whose daemons start the plain way (no zygote), in the same rounds")
    parser.add_argument("--busy", action="store_true",
                        help="also labs built beside one busy process, in the same rounds (ratio to the quiet ones)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    sizes = list(args.size or DEFAULT_SIZES)
    if args.big:
        sizes += [size for size in BIG if size not in sizes]
    if os.geteuid() != 0:
        print("lab_scale: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    if args.store == "etcd" and not shutil.which("etcd"):
        print("lab_scale: --store etcd needs the etcd binary", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_interrupt)
    started = time.monotonic()
    runs, profiles, problems = [], [], []
    variants = ["zygote", *(["exec"] if args.compare_exec else []), *(["busy"] if args.busy else [])]
    try:
        for round_ in range(args.rounds):  # interleaved: every size and variant once per round
            order = [(size, variant) for size in sizes for variant in variants]
            shift = round_ % len(order)
            for (nodes, pods), variant in order[shift:] + order[:shift]:
                result, trouble = run_size(nodes, pods, args, variant)
                result["round"] = round_ + 1
                runs.append(result)
                problems += trouble
        if args.profile:
            for nodes, pods in sizes:
                log(f"cProfile of lab up {nodes}x{pods} (in-process)")
                prof, trouble = profile_size(nodes, pods, args)
                profiles.append(prof)
                problems += trouble
    except KeyboardInterrupt:
        print("lab_scale: interrupted; everything was torn down", file=sys.stderr)
        return 130
    except Exception as exc:  # BenchError, a LabError...: teardown already ran
        print(f"lab_scale: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    outcome = {
        "fabric": args.fabric,
        "store": args.store,
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "runs": runs,
        "summary": summarize(runs),
        "profiles": profiles,
        "cleanup": {"ok": not problems, "problems": problems},
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    return finish(outcome, args.json, render)


if __name__ == "__main__":
    sys.exit(main())
