"""Cross-node pod-to-pod TCP throughput of the gossip fabric (issue 14): the kernel
VXLAN fast path and the agent's encrypted sleeve, against the vxlan fabric, and the
agents' CPU per Gbit/s.

    sudo .venv/bin/python bench/gossip_throughput.py [--seconds 5] [--repeat 3] [--json]

Three 2-node labs (one pod per node), built with `podnet.lab.builder.LabBuilder` as
`podnet lab up` builds them (fabric_throughput.BenchLab):
- vxlan: `--fabric vxlan --store sqlite`, the baseline of the ratios;
- gossip-fast: `--fabric gossip --store none`, no secret: the kernel VXLAN fast path,
  FDB and neighbour entries programmed from the gossip;
- gossip-enc: the same with `--encrypt`: every pod packet goes through the agent's
  in-process encrypted sleeve (TUN pnsl0, UDP 6784).
Before measuring, every node's `podnet peers --lab NAME -o json` must show the other
node on the expected path (fast; sleeve and encrypted), and p1-0 must answer a ping
from p0-0. The plain (unencrypted) sleeve is not a lab path:
without a secret the agent takes the fast path; bench/sleeve_throughput.py measures
it (bare namespaces, the sleeve as a forwarder process).

Each round runs iperf3 TCP p0-0 -> p1-0 in every lab (one stream, `-t SECONDS` after
one omitted second), interleaved, the first lab rotating. Figures: median Gbit/s,
gossip-fast/vxlan (target >= 0.95x), the encrypted sleeve's Gbit/s (target >= 1), and
the CPU of both nodes' agents (utime + stime of every thread, /proc/<pid>/stat, over
the client's run, divided by its wall time) as cores, and cores per Gbit/s. On the
fast path the kernel does the work in softirq context, which no agent is charged
for: its figure is the agents' idle cost, shown for information. The busiest agent
threads of the encrypted runs are kept (where the CPU goes).

Safety: the labs are named `b<hex>` (namespaces `pn-lab-b<hex>-*`) and torn down in a
`finally` (also on Ctrl-C, SIGTERM or SIGHUP) with podnet.lab.teardown, which removes
exactly what each lab recorded; the namespaces are checked gone. iperf3 servers are
stopped by PID. The root network namespace is never changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    BenchError,
    Iperf,
    console,
    log,
    machine,
    no_interrupt,
    nsenter,
    print_cleanup,
    run_bench,
)
from fabric_throughput import BenchLab, iperf_path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

# lab key -> (fabric, store, encrypt, the path `podnet peers` must show: (path, encrypted))
LABS: dict[str, tuple[str, str, bool, tuple[str, bool] | None]] = {
    "vxlan": ("vxlan", "sqlite", False, None),
    "gossip-fast": ("gossip", "none", False, ("fast", False)),
    "gossip-enc": ("gossip", "none", True, ("sleeve", True)),
}
CLIENT, SERVER = "default/p0-0", "default/p1-0"
TARGET_FAST_RATIO = 0.95
TARGET_ENCRYPTED_GBPS = 1.0
PLAIN_SLEEVE = (
    "not a lab path (without a secret the agent takes the fast path): "
    "bench/sleeve_throughput.py measures it (bare namespaces, forwarder process)"
)
TOP_THREADS = 4


# --------------------------------------------------------------------------------------
# Ready: the expected path in `podnet peers`, and a reply across it
# --------------------------------------------------------------------------------------
def peer_paths(lab: BenchLab) -> dict[str, dict[str, tuple[str, bool]]]:
    """node -> peer -> (path, encrypted), as `podnet peers --lab NAME -o json` says."""
    out = subprocess.run(
        [sys.executable, "-m", "podnet.cli", "peers", "--lab", lab.name, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    try:
        nodes = json.loads(out.stdout)
    except ValueError:
        return {}
    return {
        n["node"]: {
            p["name"]: (p.get("path"), bool(p.get("encrypted"))) for p in n.get("peers") or ()
        }
        for n in nodes
        if "error" not in n
    }


def wait_ready(lab: BenchLab, expected: tuple[str, bool] | None, timeout: float) -> dict:
    """Until every node sees every other on `expected` and p1-0 answers p0-0; what
    `podnet peers` said last (for the JSON)."""
    names = set(lab.data["nodes"])
    deadline = time.monotonic() + timeout
    seen: dict = {}
    while expected is not None:
        seen = peer_paths(lab)
        if set(seen) == names and all(
            peers.get(other) == expected for node, peers in seen.items() for other in names - {node}
        ):
            break
        if time.monotonic() > deadline:
            raise BenchError(
                f"lab {lab.name}: peers not all on {expected} within {timeout:.0f}s: {seen}"
            )
        time.sleep(0.5)
    ping = [
        *nsenter(lab.pod_ns(CLIENT)),
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        lab.pod_ip(SERVER),
    ]
    while subprocess.run(ping, capture_output=True, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise BenchError(
                f"lab {lab.name}: {SERVER} does not answer {CLIENT} within {timeout:.0f}s"
            )
        time.sleep(0.2)
    return {node: {peer: list(v) for peer, v in peers.items()} for node, peers in seen.items()}


# --------------------------------------------------------------------------------------
# The agents' CPU
# --------------------------------------------------------------------------------------
def agent_pids(lab: BenchLab) -> list[int]:
    """Both nodes' agents, by the PIDs the lab recorded (checked alive)."""
    pids = [info["agent_pid"] for info in lab.data["nodes"].values()]
    for pid in pids:
        if not Path(f"/proc/{pid}").exists():
            raise BenchError(f"lab {lab.name}: agent pid {pid} is gone")
    return pids


def thread_seconds(pid: int) -> dict[str, float]:
    """`<pid>/<tid> <comm>` -> utime + stime in seconds of each thread of a process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            head, tail = (task / "stat").read_text().rsplit(") ", 1)
        except (OSError, ValueError):
            continue  # a thread that ended
        fields = tail.split()
        comm = head.split(" (", 1)[1]
        out[f"{pid}/{task.name} {comm}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def run_once(path: dict, pids: list[int], seconds: float) -> dict:
    """One iperf3 run and the agents' CPU over it, as cores and by thread."""
    from podnet.fabric.sleeve.launch import cpu_seconds

    before = {pid: cpu_seconds(pid) for pid in pids}
    threads_before = {k: v for pid in pids for k, v in thread_seconds(pid).items()}
    started = time.monotonic()
    result = Iperf.client(path["client"], path["server_ip"], seconds)
    wall = time.monotonic() - started
    cpu = sum(cpu_seconds(pid) - before[pid] for pid in pids)
    result["agent_cores"] = round(cpu / wall, 3)
    threads_after = {k: v for pid in pids for k, v in thread_seconds(pid).items()}
    busy = {k: (v - threads_before.get(k, 0.0)) / wall for k, v in threads_after.items()}
    result["threads"] = {
        k: round(c, 3) for k, c in sorted(busy.items(), key=lambda kv: -kv[1])[:TOP_THREADS]
    }
    return result


def summarize(runs: list[dict], mtu: int) -> dict:
    gbps = [r["gbps"] for r in runs]
    median, cores = statistics.median(gbps), statistics.median(r["agent_cores"] for r in runs)
    return {
        "mtu": mtu,
        "gbps": [round(x, 3) for x in gbps],
        "median_gbps": round(median, 3),
        "retransmits": [r["retransmits"] for r in runs],
        "sender_cpu": [r["sender_cpu"] for r in runs],
        "receiver_cpu": [r["receiver_cpu"] for r in runs],
        "agent_cores": [r["agent_cores"] for r in runs],
        "median_agent_cores": round(cores, 3),
        "agent_cores_per_gbps": round(cores / median, 3) if median else None,
        "busiest_threads": [r["threads"] for r in runs],
    }


# --------------------------------------------------------------------------------------
# Bench
# --------------------------------------------------------------------------------------
def bench(args: argparse.Namespace) -> dict:
    labs = {
        key: BenchLab(fabric, store=store, encrypt=encrypt)
        for key, (fabric, store, encrypt, _) in LABS.items()
    }
    iperf = Iperf()
    problems: list[str] = []
    outcome: dict = {}
    try:
        paths, pids, seen = {}, {}, {}
        for key, lab in labs.items():
            t0 = time.monotonic()
            lab.up()
            seen[key] = wait_ready(lab, LABS[key][3], args.ready_timeout)
            log(f"lab {lab.name} ({key}) up and ready in {time.monotonic() - t0:.1f}s")
            paths[key] = iperf_path(lab.pod_ns(CLIENT), lab.pod_ns(SERVER), lab.pod_ip(SERVER))
            pids[key] = agent_pids(lab)
        servers = [iperf.server(p["server"], p["server_ip"]) for p in paths.values()]
        order, runs = list(paths), {key: [] for key in paths}
        load_before = os.getloadavg()
        for r in range(args.repeat):
            k = r % len(order)
            for key in order[k:] + order[:k]:  # rotate who goes first
                result = run_once(paths[key], pids[key], args.seconds)
                runs[key].append(result)
                log(
                    f"round {r + 1}/{args.repeat} {key}: {result['gbps']:.2f} Gbit/s, "
                    f"agents {result['agent_cores']} cores"
                )
        load_after = os.getloadavg()
        for proc in servers:
            iperf.stop(proc)
        rows = {key: summarize(runs[key], paths[key]["mtu"]) for key in paths}
        vxlan = rows["vxlan"]["median_gbps"]
        fast = round(rows["gossip-fast"]["median_gbps"] / vxlan, 3) if vxlan else None
        enc = rows["gossip-enc"]["median_gbps"]
        outcome = {
            "seconds": args.seconds,
            "repeat": args.repeat,
            "machine": machine(),
            "loadavg_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
            "labs": {
                key: {
                    "name": lab.name,
                    "fabric": lab.fabric,
                    "store": lab.store,
                    "encrypt": lab.encrypt,
                    "agent_pids": pids[key],
                    "peers": seen[key],
                    "phases": lab.phases,
                }
                for key, lab in labs.items()
            },
            "paths": rows,
            "ratios_vs_vxlan": {
                key: round(row["median_gbps"] / vxlan, 3) if vxlan else None
                for key, row in rows.items()
            },
            "targets": {
                "fast_vs_vxlan": TARGET_FAST_RATIO,
                "encrypted_gbps": TARGET_ENCRYPTED_GBPS,
            },
            "meets": {
                "fast_vs_vxlan": fast is not None and fast >= TARGET_FAST_RATIO,
                "encrypted_gbps": enc >= TARGET_ENCRYPTED_GBPS,
            },
            "plain_sleeve": PLAIN_SLEEVE,
        }
    finally:
        with no_interrupt():
            problems += iperf.close()
            for lab in labs.values():
                problems += lab.close()  # also checks its namespaces are gone
        for problem in problems:
            log(f"cleanup problem: {problem}")
    outcome["cleanup"] = {"ok": not problems, "problems": problems}
    return outcome


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
LABELS = {
    "vxlan": "pod -> pod, vxlan fabric (baseline)",
    "gossip-fast": "pod -> pod, gossip fast path (kernel VXLAN)",
    "gossip-enc": "pod -> pod, gossip encrypted sleeve",
}


def render(outcome: dict) -> None:
    from rich.table import Table

    con = console()
    table = Table(
        title=f"gossip fabric, cross-node TCP throughput, iperf3 1 stream, {outcome['seconds']} s x "
        f"{outcome['repeat']} ({outcome['machine']['cpus']} CPUs, load {outcome['loadavg_1m']['before']})"
    )
    for col in (
        "path",
        "MTU",
        "Gbit/s (median)",
        "runs",
        "retr",
        "vs vxlan",
        "agents' cores",
        "cores per Gbit/s",
    ):
        table.add_column(col, justify="left" if col == "path" else "right")
    for key, p in outcome["paths"].items():
        table.add_row(
            LABELS.get(key, key),
            str(p["mtu"]),
            f"{p['median_gbps']:.2f}",
            " ".join(f"{g:.2f}" for g in p["gbps"]),
            " ".join(str(r) for r in p["retransmits"]),
            f"{outcome['ratios_vs_vxlan'][key]:.2f}x",
            f"{p['median_agent_cores']:.3f}",
            f"{p['agent_cores_per_gbps']:.3f}" if p["agent_cores_per_gbps"] is not None else "-",
        )
    con.print(table)
    print_cleanup(con, outcome, "cleanup: labs torn down, no namespace left")
    meets, paths = outcome["meets"], outcome["paths"]
    mark = {True: "[green]met[/]", False: "[red]MISSED[/]"}
    con.print(
        f"gossip fast path / vxlan: {outcome['ratios_vs_vxlan']['gossip-fast']:.2f}x "
        f"(target >= {TARGET_FAST_RATIO}x): {mark[meets['fast_vs_vxlan']]}"
    )
    con.print(
        f"encrypted sleeve: {paths['gossip-enc']['median_gbps']:.2f} Gbit/s "
        f"(target >= {TARGET_ENCRYPTED_GBPS} Gbit/s): {mark[meets['encrypted_gbps']]}, "
        f"{paths['gossip-enc']['agent_cores_per_gbps']} agent cores per Gbit/s"
    )
    con.print(f"plain sleeve: {outcome['plain_sleeve']}")
    busiest = paths["gossip-enc"]["busiest_threads"][-1]
    con.print(
        "encrypted, last run, busiest agent threads (cores): "
        + ", ".join(f"{k} {v}" for k, v in busiest.items())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="iperf3 -t (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, interleaved (default 3)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60,
        metavar="S",
        help="seconds a lab may take to show its path in `podnet peers` (default 60)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeat < 1 or args.ready_timeout <= 0:
        parser.error("--seconds and --ready-timeout must be > 0, --repeat >= 1")
    if os.geteuid() != 0:
        print("gossip_throughput: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "nsenter", "ss", "busybox"):
        if not shutil.which(tool):
            print(f"gossip_throughput: {tool} is not installed", file=sys.stderr)
            return 2
    return run_bench("gossip_throughput", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
