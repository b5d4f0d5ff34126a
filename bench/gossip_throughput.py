"""Cross-node pod-to-pod TCP throughput of the gossip fabric (issue 14): the kernel
VXLAN fast path and the agent's encrypted sleeve, against the vxlan fabric, direct and
relayed through a middle peer, and the agents' CPU per Gbit/s.

    sudo .venv/bin/python bench/gossip_throughput.py [--seconds 5] [--repeat 3] [--json]

Three labs (one pod per node), built with `podnet.lab.builder.LabBuilder` as
`podnet lab up` builds them (fabric_throughput.BenchLab):
- vxlan: 2 nodes, `--fabric vxlan --store sqlite`, the baseline of the ratios;
- gossip-fast: 3 nodes, `--fabric gossip --store none`, no secret: the kernel VXLAN
  fast path, FDB and neighbour entries programmed from the gossip;
- gossip-enc: the same with `--encrypt`: every pod packet goes through the agent's
  in-process encrypted sleeve (TUN pnsl0, UDP 6784).
Before measuring, every node's `podnet peers --lab NAME -o json` must show every other
node direct on the expected path (fast; sleeve and encrypted), and p1-0 must answer a
ping from p0-0. The plain (unencrypted) sleeve is not a lab path:
without a secret the agent takes the fast path; bench/sleeve_throughput.py measures
it (bare namespaces, the sleeve as a forwarder process).

Direct: each round runs iperf3 TCP p0-0 -> p1-0 in every lab (one stream, `-t SECONDS`
after one omitted second), interleaved, the first lab rotating. Figures: median Gbit/s,
gossip-fast/vxlan (target >= 0.95x), the encrypted sleeve's Gbit/s (target >= 1), and
the CPU of all the lab's agents (utime + stime of every thread, /proc/<pid>/stat, over
the client's run, divided by its wall time) as cores, and cores per Gbit/s. On the
fast path the kernel does the work in softirq context, which no agent is charged
for: its figure is the agents' idle cost, shown for information. The busiest agent
threads of the encrypted runs are kept (where the CPU goes).

Relay (issue 14: "stay in the kernel where it can, fall back to the sleeve where it
cannot; measure both"): then the node0-node2 underlay link of both gossip labs is cut
(podnet.lab.cuts: an nft drop in the lab's fabric namespace), and once node0's and
node2's `podnet peers` show each other reached via node1 on the lab's path, interleaved
rounds p0-0 -> p2-0 run in both: gossip-fast relays in node1's kernel (VXLAN in, VXLAN
out), gossip-enc in node1's sleeve (opened and sealed again). Figures: median Gbit/s,
ratio to the same lab's direct figure, all three agents' cores (and per node: the
middle one's is the relay's cost) per Gbit/s. Nothing is healed: teardown deletes the
fabric namespace and its nft table with it.

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
from typing import NamedTuple

from agentcpu import agent_pids, run_once
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


class LabSpec(NamedTuple):
    fabric: str
    store: str
    encrypt: bool
    path: tuple[str, bool] | None  # what `podnet peers` must show: (path, encrypted)
    nodes: int


LABS: dict[str, LabSpec] = {
    "vxlan": LabSpec("vxlan", "sqlite", False, None, 2),
    "gossip-fast": LabSpec("gossip", "none", False, ("fast", False), 3),
    "gossip-enc": LabSpec("gossip", "none", True, ("sleeve", True), 3),
}
CLIENT, SERVER = "default/p0-0", "default/p1-0"
# The relay: the node0-node2 link cut, p0-0 -> p2-0 through node1
CUT, MIDDLE, RELAY_SERVER = ("node0", "node2"), "node1", "default/p2-0"
RELAYS = {
    "gossip-fast": "kernel relay (node1: VXLAN in, VXLAN out)",
    "gossip-enc": "sleeve relay (node1: opened, sealed again)",
}
TARGET_FAST_RATIO = 0.95
TARGET_ENCRYPTED_GBPS = 1.0
PLAIN_SLEEVE = (
    "not a lab path (without a secret the agent takes the fast path): "
    "bench/sleeve_throughput.py measures it (bare namespaces, forwarder process)"
)
Shown = tuple[str | None, str | None, bool]  # how a node reaches a peer: via, path, encrypted


# --------------------------------------------------------------------------------------
# Ready: the expected paths in `podnet peers`, and a reply across them
# --------------------------------------------------------------------------------------
def peer_paths(lab: BenchLab) -> dict[str, dict[str, Shown]]:
    """node -> peer -> (via, path, encrypted), as `podnet peers --lab NAME -o json` says."""
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
            p["name"]: (p.get("via"), p.get("path"), bool(p.get("encrypted")))
            for p in n.get("peers") or ()
        }
        for n in nodes
        if "error" not in n
    }


def direct_paths(lab: BenchLab, spec: LabSpec) -> dict[tuple[str, str], Shown]:
    """Every node reaches every other directly on the lab's path (none: not gossip)."""
    if spec.path is None:
        return {}
    names = list(lab.data["nodes"])
    return {(n, o): (o, *spec.path) for n in names for o in names if o != n}


def relay_paths(spec: LabSpec) -> dict[tuple[str, str], Shown]:
    """Both ends of the cut link reach each other via the middle node, on the lab's path."""
    assert spec.path is not None
    return {(a, b): (MIDDLE, *spec.path) for a, b in (CUT, CUT[::-1])}


def wait_ready(
    lab: BenchLab, want: dict[tuple[str, str], Shown], server: str, timeout: float
) -> dict[str, dict[str, Shown]]:
    """Until `podnet peers` shows each (node, peer) of `want` as wanted and `server`
    answers a ping from CLIENT; what `podnet peers` said last (for the JSON)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[str, Shown]] = {}
    while want:
        seen = peer_paths(lab)
        if all(seen.get(node, {}).get(peer) == shown for (node, peer), shown in want.items()):
            break
        if time.monotonic() > deadline:
            raise BenchError(
                f"lab {lab.name}: peers not as {want} (node, peer: via, path, encrypted) "
                f"within {timeout:.0f}s: {seen}"
            )
        time.sleep(0.5)
    ping = [*nsenter(lab.pod_ns(CLIENT)), "busybox", "ping", "-c", "1", "-W", "1"]
    while subprocess.run([*ping, lab.pod_ip(server)], capture_output=True, check=False).returncode:
        if time.monotonic() > deadline:
            raise BenchError(
                f"lab {lab.name}: {server} does not answer {CLIENT} within {timeout:.0f}s"
            )
        time.sleep(0.2)
    return seen


# --------------------------------------------------------------------------------------
# The agents' CPU, and interleaved rounds
# --------------------------------------------------------------------------------------
def interleaved(
    paths: dict[str, dict], pids: dict[str, dict[str, int]], args: argparse.Namespace, what: str
) -> dict[str, list[dict]]:
    """`args.repeat` rounds of one run per lab, the first lab rotating."""
    order, runs = list(paths), {key: [] for key in paths}
    for r in range(args.repeat):
        k = r % len(order)
        for key in order[k:] + order[:k]:
            result = run_once(paths[key], pids[key], args.seconds)
            runs[key].append(result)
            log(
                f"{what} round {r + 1}/{args.repeat} {key}: {result['gbps']:.2f} Gbit/s, "
                f"agents {result['agent_cores']} cores"
            )
    return runs


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
        "median_agent_cores_by_node": {
            node: round(statistics.median(r["agent_cores_by_node"][node] for r in runs), 3)
            for node in runs[0]["agent_cores_by_node"]
        },
        "agent_cores_per_gbps": round(cores / median, 3) if median else None,
        "busiest_threads": [r["threads"] for r in runs],
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


# --------------------------------------------------------------------------------------
# Bench
# --------------------------------------------------------------------------------------
def relay(labs: dict[str, BenchLab], pids: dict, iperf: Iperf, args: argparse.Namespace) -> dict:
    """Cut node0-node2 in the gossip labs, wait until node1 carries the pair both ways
    on the lab's path, and run interleaved rounds p0-0 -> p2-0."""
    from podnet.lab import cuts

    keys = [key for key in labs if key in RELAYS]
    cut_at = {}
    for key in keys:
        cuts.cut(labs[key].name, *CUT)
        cut_at[key] = time.monotonic()
    seen, shown_after, paths = {}, {}, {}
    for key in keys:
        lab = labs[key]
        seen[key] = wait_ready(lab, relay_paths(LABS[key]), RELAY_SERVER, args.ready_timeout)
        shown_after[key] = round(time.monotonic() - cut_at[key], 1)
        log(f"lab {lab.name} ({key}): {CUT[0]} <-> {CUT[1]} via {MIDDLE} after {shown_after[key]}s")
        paths[key] = iperf_path(
            lab.pod_ns(CLIENT), lab.pod_ns(RELAY_SERVER), lab.pod_ip(RELAY_SERVER)
        )
    servers = [iperf.server(p["server"], p["server_ip"]) for p in paths.values()]
    runs = interleaved(paths, {key: pids[key] for key in keys}, args, "relay")
    for proc in servers:
        iperf.stop(proc)
    return {
        "cut": list(CUT),
        "middle": MIDDLE,
        "client": CLIENT,
        "server": RELAY_SERVER,
        "labs": {
            key: {
                "relay": RELAYS[key],
                # when this bench saw it (an upper bound), not a convergence time
                "shown_after_cut_s": shown_after[key],
                "peers": {
                    node: {
                        peer: dict(zip(("via", "path", "encrypted"), v, strict=True))
                        for peer, v in p.items()
                    }
                    for node, p in seen[key].items()
                },
                "cuts": cuts.listing(labs[key].name),
            }
            for key in keys
        },
        "paths": {key: summarize(runs[key], paths[key]["mtu"]) for key in keys},
    }


def bench(args: argparse.Namespace) -> dict:
    labs = {
        key: BenchLab(spec.fabric, nodes=spec.nodes, store=spec.store, encrypt=spec.encrypt)
        for key, spec in LABS.items()
    }
    iperf = Iperf()
    problems: list[str] = []
    outcome: dict = {}
    try:
        paths, pids, seen = {}, {}, {}
        for key, lab in labs.items():
            t0 = time.monotonic()
            lab.up()
            seen[key] = wait_ready(lab, direct_paths(lab, LABS[key]), SERVER, args.ready_timeout)
            log(f"lab {lab.name} ({key}) up and ready in {time.monotonic() - t0:.1f}s")
            paths[key] = iperf_path(lab.pod_ns(CLIENT), lab.pod_ns(SERVER), lab.pod_ip(SERVER))
            pids[key] = agent_pids(lab)
        servers = [iperf.server(p["server"], p["server_ip"]) for p in paths.values()]
        load_before = os.getloadavg()
        runs = interleaved(paths, pids, args, "direct")
        for proc in servers:
            iperf.stop(proc)
        relayed = relay(labs, pids, iperf, args)
        load_after = os.getloadavg()
        rows = {key: summarize(runs[key], paths[key]["mtu"]) for key in paths}
        relayed["ratios_vs_direct"] = {
            key: ratio(row["median_gbps"], rows[key]["median_gbps"])
            for key, row in relayed["paths"].items()
        }
        vxlan = rows["vxlan"]["median_gbps"]
        fast = ratio(rows["gossip-fast"]["median_gbps"], vxlan)
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
                    "nodes": lab.nodes,
                    "agent_pids": list(pids[key].values()),
                    "peers": {  # direct: node -> peer -> [path, encrypted]
                        node: {peer: [path, enc] for peer, (_, path, enc) in p.items()}
                        for node, p in seen[key].items()
                    },
                    "phases": lab.phases,
                }
                for key, lab in labs.items()
            },
            "paths": rows,
            "ratios_vs_vxlan": {key: ratio(row["median_gbps"], vxlan) for key, row in rows.items()},
            "relay": relayed,
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


COLUMNS = (
    "path",
    "MTU",
    "Gbit/s (median)",
    "runs",
    "retr",
    "ratio",
    "agents' cores",
    "cores per Gbit/s",
)


def throughput_table(title: str, paths: dict, ratios: dict, ratio_to: str, labels: dict):
    """One row per lab: its median and runs, its ratio (`ratio_to`), its agents' CPU."""
    from rich.table import Table

    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(
            f"vs {ratio_to}" if col == "ratio" else col,
            justify="left" if col == "path" else "right",
        )
    for key, p in paths.items():
        table.add_row(
            labels.get(key, key),
            str(p["mtu"]),
            f"{p['median_gbps']:.2f}",
            " ".join(f"{g:.2f}" for g in p["gbps"]),
            " ".join(str(r) for r in p["retransmits"]),
            f"{ratios[key]:.2f}x" if ratios[key] is not None else "-",
            f"{p['median_agent_cores']:.3f}",
            f"{p['agent_cores_per_gbps']:.3f}" if p["agent_cores_per_gbps"] is not None else "-",
        )
    return table


def render(outcome: dict) -> None:
    con = console()
    runs = f"iperf3 1 stream, {outcome['seconds']} s x {outcome['repeat']}"
    con.print(
        throughput_table(
            f"gossip fabric, cross-node TCP throughput, {runs} ({outcome['machine']['cpus']} "
            f"CPUs, load {outcome['loadavg_1m']['before']})",
            outcome["paths"],
            outcome["ratios_vs_vxlan"],
            "vxlan",
            LABELS,
        )
    )
    relayed = outcome["relay"]
    con.print(
        throughput_table(
            f"relayed p0-0 -> p2-0, {relayed['cut'][0]}-{relayed['cut'][1]} cut, through "
            f"{relayed['middle']}, {runs}",
            relayed["paths"],
            relayed["ratios_vs_direct"],
            "direct",
            RELAYS,
        )
    )
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
    for key, p in relayed["paths"].items():
        by_node = ", ".join(f"{n} {c}" for n, c in p["median_agent_cores_by_node"].items())
        con.print(f"{key} relay, agents' cores by node: {by_node}")
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
