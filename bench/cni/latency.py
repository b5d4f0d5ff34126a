"""The latency benchmark: ADD, CHECK and DEL wall time of each system, interleaved,
after uncounted warm-up cycles, and its table (podnet/reference ratios against
TARGET)."""

from __future__ import annotations

import argparse
import time

from benchlib import console, log, machine, print_cleanup
from cni.calls import CNI_VERSION, OPS, cni_call, guard_namespace, summary
from cni.lab import Lab, build_systems, run_in_lab

TARGET = 1.0  # podnet/reference ADD p50 ratio to stay under


def rotate(items: list, i: int) -> list:
    k = i % len(items)
    return items[k:] + items[:k]


def measure(spec: dict) -> dict:
    """Inner side (in the host namespace): every sample of every system and op."""
    guard_namespace(spec["host_ns_path"])
    systems = spec["systems"]
    samples: dict[str, dict[str, list[float]]] = {s["key"]: {op: [] for op in OPS} for s in systems}

    # Warm-up: full cycles on their own namespaces, interleaved, not counted.
    for w in range(spec["warmup"]):
        for s in rotate(systems, w):
            cid, ns = f"warm-{s['key']}-{w}", s["warm_netns"][w]
            _, res, *_ = cni_call(s, "ADD", cid, ns, None)
            cni_call(s, "CHECK", cid, ns, res)
            cni_call(s, "DEL", cid, ns, res)
    log(f"warm-up done ({spec['warmup']} cycles per system)")

    results: dict[str, list] = {s["key"]: [None] * spec["n"] for s in systems}
    for op in OPS:
        started = time.monotonic()
        for i in range(spec["n"]):
            for s in rotate(systems, i):
                cid, ns = f"bench-{s['key']}-{i}", s["netns"][i]
                prev = results[s["key"]][i] if op != "ADD" else None
                ms, res, *_ = cni_call(s, op, cid, ns, prev)
                if op == "ADD":
                    results[s["key"]][i] = res
                samples[s["key"]][op].append(ms)
        log(f"{op}: {spec['n']} x {len(systems)} calls in {time.monotonic() - started:.1f}s")
    return {"samples": samples, "example_result": {k: v[0] for k, v in results.items()}}


def bench(args: argparse.Namespace) -> dict:
    """Outer side: the lab, the measuring process, the outcome."""

    def work(lab: Lab) -> tuple[dict, list[dict]]:
        systems = build_systems(lab, args.n, args.warmup, not args.no_fallback)
        log(
            f"{len(lab.sandbox.namespaces)} namespaces ready in {time.monotonic() - lab.started:.1f}s; measuring"
        )
        spec = {
            "host_ns_path": lab.sandbox.path(lab.host),
            "n": args.n,
            "warmup": args.warmup,
            "systems": systems,
        }
        data = lab.run_inner(spec, profile=False, timeout=900)
        return outcome_of(args, systems, data["samples"]), systems

    return run_in_lab(False, work)


def outcome_of(args: argparse.Namespace, systems: list[dict], samples: dict) -> dict:
    outcome = {
        "n": args.n,
        "warmup": args.warmup,
        "cniVersion": CNI_VERSION,
        "machine": machine(),
        "systems": {
            s["key"]: {
                "label": s["label"],
                "ops": {op: summary(samples[s["key"]][op]) for op in OPS},
                "samples_ms": {op: [round(v, 3) for v in samples[s["key"]][op]] for op in OPS},
            }
            for s in systems
        },
    }
    podnet, reference = outcome["systems"]["podnet"]["ops"], outcome["systems"]["reference"]["ops"]
    outcome["ratios"] = {
        op: {q: round(podnet[op][q] / reference[op][q], 3) for q in ("p50", "p90")} for op in OPS
    }
    return outcome


def render_bench(outcome: dict) -> None:
    from rich.table import Table

    con = console()
    systems = outcome["systems"]
    table = Table(
        title=f"CNI latency, ms (n={outcome['n']} namespaces per system, {outcome['warmup']} warm-up, "
        f"cniVersion {outcome['cniVersion']}, {outcome['machine']['cpus']} CPUs)"
    )
    table.add_column("op")
    for key in ("podnet", "reference"):
        table.add_column(f"{systems[key]['label']}\np50", justify="right")
        table.add_column("p90", justify="right")
    table.add_column("podnet/ref\np50", justify="right")
    table.add_column("p90", justify="right")
    if "inprocess" in systems:
        table.add_column(f"{systems['inprocess']['label']}\np50", justify="right", style="dim")
        table.add_column("p90", justify="right", style="dim")
    for op in OPS:
        row = [op]
        for key in ("podnet", "reference"):
            row += [
                f"{systems[key]['ops'][op]['p50']:.1f}",
                f"{systems[key]['ops'][op]['p90']:.1f}",
            ]
        for q in ("p50", "p90"):
            r = outcome["ratios"][op][q]
            row.append(f"[{'green' if r <= TARGET else 'red'}]{r:.2f}x[/]")
        if "inprocess" in systems:
            row += [
                f"{systems['inprocess']['ops'][op]['p50']:.1f}",
                f"{systems['inprocess']['ops'][op]['p90']:.1f}",
            ]
        table.add_row(*row)
    con.print(table)
    print_cleanup(con, outcome, "cleanup: everything DELeted and torn down, nothing left")
    print(f"ADD p50 ratio: {outcome['ratios']['ADD']['p50']:.2f}x (target <= {TARGET:.1f}x)")
