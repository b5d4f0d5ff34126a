"""Agent overhead: CPU and RSS of one agent, idle and with 200 pods, while its metrics
are scraped every second; and the wall time of `podnet status` on a 20-node lab.

    sudo .venv/bin/python bench/agent_overhead.py                    # 30 s a phase, ~3 min
    sudo .venv/bin/python bench/agent_overhead.py --seconds 10 --status-nodes 0
    sudo .venv/bin/python bench/agent_overhead.py --pods 200 --status-nodes 20 --status-runs 5 --json

Issue 13: "CPU and RSS of an agent idle and with 200 pods while metrics are scraped
every second. Targets: at most 2% of one core idle and at most 80 MB RSS", and "time of
`podnet status` and of `podnet trace` on a 20-node lab" (trace: bench/trace_time.py).

Agent: a 2-node vxlan lab built with `podnet.lab.builder.LabBuilder` (the code behind
`podnet lab up`, one pod per node, cluster DNS on), named `b<hex>`. node0's agent is
found by its recorded PID (procs.json, `agent/node0`, checked alive by pid:starttime).
After `--settle` seconds, two phases of `--seconds` each:

1. idle: once a second the bench scrapes node0's metrics over the agent socket (op
   `metrics`, what `podnet metrics` asks; the scrape's cost is part of the figure) and
   samples /proc/<pid>/stat (utime + stime: all the agent's threads; cutime + cstime:
   the children it ran and reaped, e.g. nft, shown apart) and /proc/<pid>/status
   (VmRSS, RssAnon);
2. pods: `--pods` pods are added on node0 the way convergence.py does it (each namespace
   recorded in the lab's state file first, so `lab down` removes it, then CNI ADD of
   node0's `cluster.conflist` through `podnet.runtime.libcni.Conflist` under `nsenter
   --net=<node0>`: thin plugin -> node0's agent), then `--settle` seconds, then the same
   measurement with the pods present.

Figures: CPU % of one core over the phase = delta(utime+stime) / (CLK_TCK * wall), and the
busiest 1-s sample; VmRSS median and max (MiB); the scrape's round trip; ratios pods/idle.
Targets: CPU <= 2% of one core idle; VmRSS <= 80 MiB in both phases.

`podnet status`: a `--status-nodes`-node vxlan lab (one pod per node, as `lab up --nodes
20 --pods-per-node 1`); once it answers healthy (untimed), `podnet status --lab NAME -o
json` is run `--status-runs` times as its own process (`python -m podnet.cli`), timed
from spawn to exit: median, min, max. Baseline of the same run: `podnet status --help`
(interpreter and CLI start-up, no cluster). `--status-nodes 0` skips it.

Safety: labs are named `b<hex>` (namespaces `pn-lab-b<hex>-*`) and torn down by
`podnet.lab.teardown.teardown` (exactly what they recorded, processes by pid:starttime)
in a `finally`, also on Ctrl-C, SIGTERM or SIGHUP. The root network namespace is never
changed: the bench only reads /proc and talks to the agent's unix socket.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchlib import (
    BenchError,
    console,
    log,
    machine,
    no_interrupt,
    percentile,
    print_cleanup,
    run_bench,
)
from bgp_scale import resident
from convergence import BenchLab
from lab_scale import podnet

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

TARGET_CPU_IDLE_PCT = 2.0
TARGET_RSS_MIB = 80.0
MIB = 1024 * 1024
NODE = "node0"
FABRIC = "vxlan"
RESERVED = "podnet_ipam_addresses_reserved"


# --------------------------------------------------------------------------------------
# Sampling one process
# --------------------------------------------------------------------------------------
def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime, cutime + cstime) of a process, in clock ticks: its own threads,
    and the children it waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        raise BenchError(f"agent pid {pid} is gone") from None
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def reserved_addresses(text: str) -> int:
    """Addresses the agent's IPAM counts (all networks) in a metrics scrape: proof the
    pods are in the phase's figures."""
    total = 0
    for line in text.splitlines():
        if line.startswith(RESERVED + "{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def measure(pid: int, socket: str, seconds: int) -> dict:
    """One phase: a scrape and a sample every second for `seconds`; the CPU share comes
    from the first and last sample (wall time between them, not the nominal seconds)."""
    from podnet.errors import PodnetError
    from podnet.rpc.client import call

    tick = os.sysconf("SC_CLK_TCK")
    samples: list[dict] = []
    start = time.monotonic()
    for i in range(seconds + 1):
        # i = 0 is the baseline sample; each later one closes a 1-s window with a scrape.
        scrape_ms = None
        text = ""
        if i:
            t0 = time.monotonic()
            try:
                text = str(call(socket, "metrics", timeout=10))
            except (PodnetError, OSError) as exc:
                raise BenchError(f"metrics scrape of {NODE} failed: {exc}") from None
            scrape_ms = (time.monotonic() - t0) * 1000
        own, children = cpu_ticks(pid)
        samples.append(
            {
                "t": time.monotonic(),
                "ticks": own,
                "child_ticks": children,
                **resident(pid),
                "scrape_ms": scrape_ms,
                "scrape_bytes": len(text),
                "reserved": reserved_addresses(text) if text else None,
            }
        )
        rest = start + i + 1 - time.monotonic()
        if i < seconds and rest > 0:
            time.sleep(rest)
    first, last = samples[0], samples[-1]
    wall = last["t"] - first["t"]
    windows = [
        100 * (b["ticks"] - a["ticks"]) / (tick * (b["t"] - a["t"]))
        for a, b in itertools.pairwise(samples)
    ]
    rss = [s["rss"] / MIB for s in samples]
    scrapes = [s["scrape_ms"] for s in samples if s["scrape_ms"] is not None]
    return {
        "seconds": round(wall, 2),
        "cpu_pct": round(100 * (last["ticks"] - first["ticks"]) / (tick * wall), 2),
        "cpu_children_pct": round(
            100 * (last["child_ticks"] - first["child_ticks"]) / (tick * wall), 2
        ),
        "cpu_max_1s_pct": round(max(windows), 1),
        "rss_mib_median": round(statistics.median(rss), 1),
        "rss_mib_max": round(max(rss), 1),
        "rss_anon_mib_median": round(statistics.median(s["rss_anon"] / MIB for s in samples), 1),
        "scrape_ms_p50": round(percentile(scrapes, 0.5), 2),
        "scrape_ms_max": round(max(scrapes), 2),
        "scrape_kib": round(samples[-1]["scrape_bytes"] / 1024, 1),
        "reserved_addresses": samples[-1]["reserved"],
        "cpu_1s_pct": [round(w, 1) for w in windows],
    }


# --------------------------------------------------------------------------------------
# The agent lab
# --------------------------------------------------------------------------------------
def agent_pid(lab: BenchLab) -> int:
    """node0's agent, by the PID the lab's supervisor recorded (alive as pid:starttime)."""
    from podnet.lab.state import process_alive

    entry = lab.state.processes().get(f"agent/{NODE}")
    if not entry or not process_alive(entry):
        raise BenchError(f"lab {lab.name}: no live agent/{NODE} in procs.json")
    comm = Path(f"/proc/{entry['pid']}/comm").read_text().strip()
    if not comm.startswith("python"):
        raise BenchError(f"agent/{NODE} pid {entry['pid']} is {comm!r}, not the agent")
    return entry["pid"]


def add_pods(lab: BenchLab, count: int) -> float:
    """`count` pods on node0 through its cluster conflist (namespaces recorded in the
    lab state before they exist); seconds taken."""
    from podnet.lab import topology as topo
    from podnet.lab.state import NETNS_DIR, enter
    from podnet.runtime.libcni import CniFailure, Conflist

    node = lab.data["nodes"][NODE]
    names = [topo.netns_name(lab.name, f"p-ovh-{i}") for i in range(count)]
    lab.state.add_netns_batch(names)
    conflist = Conflist(
        json.loads(Path(node["conflist"]).read_text()),
        [str(lab.state.labdir / "bin"), "/usr/lib/cni"],
        enter=enter(node["netns"]),
    )
    start = time.monotonic()
    for i, ns in enumerate(names):
        try:
            conflist.add(
                f"ovh-{i}",
                str(NETNS_DIR / ns),
                "eth0",
                args=f"K8S_POD_NAMESPACE=ovh;K8S_POD_NAME=o{i}",
            )
        except CniFailure as exc:
            raise BenchError(f"ADD of pod {i} on {NODE} failed: {exc}") from None
        if (i + 1) % 50 == 0:
            log(f"  {i + 1}/{count} pods added")
    return time.monotonic() - start


def agent_phases(args: argparse.Namespace, labs: list[BenchLab]) -> dict:
    from podnet.lab import topology as topo

    lab = BenchLab(FABRIC, "sqlite")
    labs.append(lab)
    t0 = time.monotonic()
    lab.up(topo.default_topology(2, 1))
    log(f"lab {lab.name}: 2 nodes, {FABRIC}, up in {time.monotonic() - t0:.1f}s")
    pid = agent_pid(lab)
    socket = lab.data["nodes"][NODE]["socket"]
    time.sleep(args.settle)
    log(f"idle: {args.seconds}s, agent pid {pid}, scraping {socket} every second")
    idle = measure(pid, socket, args.seconds)
    log(f"adding {args.pods} pods on {NODE}")
    add_s = add_pods(lab, args.pods)
    time.sleep(args.settle)
    log(f"pods: {args.seconds}s with {args.pods} pods")
    pods = measure(pid, socket, args.seconds)
    if pods["reserved_addresses"] is not None and idle["reserved_addresses"] is not None:
        added = pods["reserved_addresses"] - idle["reserved_addresses"]
        if added < args.pods:
            raise BenchError(f"{NODE}'s metrics count {added} new addresses, not {args.pods}")
    return {
        "lab": lab.name,
        "node": NODE,
        "pid": pid,
        "pods": args.pods,
        "add_s": round(add_s, 1),
        "idle": idle,
        "with_pods": pods,
        "ratio": {
            key: round(pods[key] / idle[key], 2) if idle[key] else None
            for key in ("cpu_pct", "rss_mib_median", "rss_mib_max", "scrape_ms_p50")
        },
    }


# --------------------------------------------------------------------------------------
# podnet status on a bigger lab
# --------------------------------------------------------------------------------------
def timed_cli(runs: int, *argv: str) -> tuple[list[float], list]:
    """`runs` runs of the CLI as its own process: (wall seconds, results)."""
    walls, results = [], []
    for _ in range(runs):
        wall, proc = podnet(*argv, timeout=120)
        walls.append(wall)
        results.append(proc)
    return walls, results


def spread(walls: list[float]) -> dict:
    return {
        "median": round(statistics.median(walls), 3),
        "min": round(min(walls), 3),
        "max": round(max(walls), 3),
        "runs": [round(w, 3) for w in walls],
    }


def status_timing(args: argparse.Namespace, labs: list[BenchLab]) -> dict:
    from podnet.lab import topology as topo

    lab = BenchLab(FABRIC, "sqlite")
    labs.append(lab)
    t0 = time.monotonic()
    lab.up(topo.default_topology(args.status_nodes, 1))
    up_s = time.monotonic() - t0
    log(f"lab {lab.name}: {args.status_nodes} nodes, {FABRIC}, up in {up_s:.1f}s")
    deadline = time.monotonic() + 60
    while True:  # untimed: the agents may still be settling their peers
        _, proc = podnet("status", "--lab", lab.name, "-o", "json", timeout=120)
        if proc.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"podnet status of {lab.name} not healthy: {proc.stdout[-400:]}")
        time.sleep(1)
    floor, _ = timed_cli(args.status_runs, "status", "--help")
    walls, results = timed_cli(args.status_runs, "status", "--lab", lab.name, "-o", "json")
    bad = [p.returncode for p in results if p.returncode != 0]
    nodes = len(json.loads(results[-1].stdout)["nodes"])
    if nodes != args.status_nodes:
        raise BenchError(f"podnet status shows {nodes} nodes, not {args.status_nodes}")
    status = spread(walls)
    return {
        "lab": lab.name,
        "nodes": args.status_nodes,
        "lab_up_s": round(up_s, 1),
        "status_s": status,
        "floor_s": spread(floor),
        "ratio_to_floor": round(status["median"] / statistics.median(floor), 2),
        "degraded_runs": len(bad),
    }


def bench(args: argparse.Namespace) -> dict:
    labs: list[BenchLab] = []
    problems: list[str] = []
    outcome: dict = {
        "targets": {"cpu_idle_pct": TARGET_CPU_IDLE_PCT, "rss_mib": TARGET_RSS_MIB},
        "machine": machine(),
    }
    try:
        if args.seconds:
            outcome["agent"] = agent_phases(args, labs)
            with no_interrupt():
                problems += labs[-1].close()  # before the next lab: one lab's load at a time
        if args.status_nodes:
            outcome["status"] = status_timing(args, labs)
    finally:
        with no_interrupt():
            for lab in labs:
                problems += lab.close()
        for problem in problems:
            log(f"cleanup problem: {problem}")
    outcome["loadavg_1m"] = round(os.getloadavg()[0], 2)
    outcome["cleanup"] = {"ok": not problems, "problems": problems}
    return outcome


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def mark(ok: bool) -> str:
    return "[green]pass[/]" if ok else "[red]FAIL[/]"


def render(outcome: dict) -> None:
    from rich.table import Table

    con = console()
    cpus = outcome["machine"]["cpus"]
    targets = outcome["targets"]
    agent = outcome.get("agent")
    if agent:
        table = Table(
            title=f"agent overhead: {agent['node']}'s agent (pid {agent['pid']}), metrics scraped "
            f"every second ({cpus} CPUs, load {outcome['loadavg_1m']})"
        )
        cols = ("phase", "s", "CPU % 1 core", "children %", "max 1-s %", "target CPU")
        cols += ("RSS MiB p50", "max", "anon p50", "target RSS", "scrape ms p50", "KiB", "addrs")
        for col in cols:
            table.add_column(col, justify="left" if col == "phase" else "right")
        for label, key in (("idle", "idle"), (f"{agent['pods']} pods", "with_pods")):
            m = agent[key]
            cpu = (
                f"<= {targets['cpu_idle_pct']:.0f}% "
                + mark(m["cpu_pct"] <= targets["cpu_idle_pct"])
                if key == "idle"
                else "-"
            )
            table.add_row(
                label,
                f"{m['seconds']:.0f}",
                f"{m['cpu_pct']:.2f}",
                f"{m['cpu_children_pct']:.2f}",
                f"{m['cpu_max_1s_pct']:.1f}",
                cpu,
                f"{m['rss_mib_median']:.1f}",
                f"{m['rss_mib_max']:.1f}",
                f"{m['rss_anon_mib_median']:.1f}",
                f"<= {targets['rss_mib']:.0f} " + mark(m["rss_mib_max"] <= targets["rss_mib"]),
                f"{m['scrape_ms_p50']:.1f}",
                f"{m['scrape_kib']:.1f}",
                str(m["reserved_addresses"]),
            )
        ratio = agent["ratio"]
        table.add_row(
            "pods/idle",
            "",
            f"{ratio['cpu_pct']}x" if ratio["cpu_pct"] else "-",
            "",
            "",
            "",
            f"{ratio['rss_mib_median']}x",
            f"{ratio['rss_mib_max']}x",
            "",
            "",
            f"{ratio['scrape_ms_p50']}x",
            "",
            "",
        )
        con.print(table)
        con.print(f"{agent['pods']} pods added on {agent['node']} in {agent['add_s']:.1f}s")
    status = outcome.get("status")
    if status:
        table = Table(
            title=f"podnet status on a {status['nodes']}-node lab ({len(status['status_s']['runs'])} runs, s)"
        )
        for col in ("command", "median", "min", "max", "ratio"):
            table.add_column(col, justify="left" if col == "command" else "right")
        for label, fig, ratio in (
            ("podnet status --lab L -o json", status["status_s"], f"{status['ratio_to_floor']}x"),
            ("podnet status --help (floor)", status["floor_s"], "1.00x"),
        ):
            table.add_row(label, *(f"{fig[k]:.3f}" for k in ("median", "min", "max")), ratio)
        con.print(table)
        if status["degraded_runs"]:
            con.print(f"[red]{status['degraded_runs']} status runs exited non-zero (degraded)[/]")
    print_cleanup(con, outcome, "cleanup: labs torn down, nothing left")
    if agent:
        idle, pods = agent["idle"], agent["with_pods"]
        print(
            f"agent idle: {idle['cpu_pct']:.2f}% of one core (target <= {targets['cpu_idle_pct']:.0f}%), "
            f"RSS max {idle['rss_mib_max']:.1f} MiB; with {agent['pods']} pods: "
            f"{pods['cpu_pct']:.2f}%, RSS max {pods['rss_mib_max']:.1f} MiB "
            f"(target <= {targets['rss_mib']:.0f} MiB)"
        )
    if status:
        print(f"podnet status, {status['nodes']} nodes: median {status['status_s']['median']:.3f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=int, default=30, help="length of each phase (default 30; 0: skip)"
    )
    parser.add_argument("--pods", type=int, default=200, help="pods added on node0 (default 200)")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="wait before each phase (default 5 s)"
    )
    parser.add_argument(
        "--status-nodes",
        type=int,
        default=20,
        help="nodes of the lab `podnet status` is timed on (default 20; 0: skip)",
    )
    parser.add_argument("--status-runs", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if args.seconds < 0 or not 1 <= args.pods <= 1000:
        parser.error("--seconds must be >= 0 and --pods 1..1000")
    if args.status_nodes and not 2 <= args.status_nodes <= 180 or args.status_runs < 1:
        parser.error("--status-nodes must be 0 or 2..180 and --status-runs >= 1")
    if os.geteuid() != 0:
        print("agent_overhead: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    return run_bench("agent_overhead", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
