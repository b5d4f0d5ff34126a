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


MODES = ("direct", "nsenter")  # how a plugin is exec'd: from the host namespace, or as a runtime does


def plugin_argv(system: dict, mode: str, host_ns_path: str) -> list[str]:
    """`direct`: the binary, from a process already in the host namespace; `nsenter`:
    through `nsenter --net=<host ns>`, as a runtime living in another namespace calls it
    (podman under `nsenter --net`): one more exec and a setns in every call."""
    if mode == "nsenter":
        return ["nsenter", f"--net={host_ns_path}", system["binary"]]
    return [system["binary"]]


def measure(spec: dict) -> dict:
    """Inner side (in the host namespace): every sample of every system, op and way of
    calling (`spec["modes"]`), each container namespace used by one of them only."""
    guard_namespace(spec["host_ns_path"])
    systems, modes = spec["systems"], spec.get("modes") or ["direct"]
    samples = {m: {s["key"]: {op: [] for op in OPS} for s in systems} for m in modes}

    # Warm-up: full cycles on their own namespaces, interleaved, not counted.
    for w in range(spec["warmup"]):
        for s in rotate(systems, w):
            cid, ns = f"warm-{s['key']}-{w}", s["warm_netns"][w]
            argv = plugin_argv(s, modes[w % len(modes)], spec["host_ns_path"])
            _, res, *_ = cni_call(s, "ADD", cid, ns, None, argv)
            cni_call(s, "CHECK", cid, ns, res, argv)
            cni_call(s, "DEL", cid, ns, res, argv)
    log(f"warm-up done ({spec['warmup']} cycles per system)")

    slots = spec["n"] * len(modes)
    results: dict[str, list] = {s["key"]: [None] * slots for s in systems}
    for op in OPS:
        started = time.monotonic()
        for i in range(spec["n"]):
            for mode in rotate(list(modes), i):
                j = i * len(modes) + modes.index(mode)  # this call's own container namespace
                for s in rotate(systems, i):
                    cid, ns = f"bench-{s['key']}-{j}", s["netns"][j]
                    prev = results[s["key"]][j] if op != "ADD" else None
                    ms, res, *_ = cni_call(s, op, cid, ns, prev, plugin_argv(s, mode, spec["host_ns_path"]))
                    if op == "ADD":
                        results[s["key"]][j] = res
                    samples[mode][s["key"]][op].append(ms)
        log(f"{op}: {spec['n']} x {len(systems)} x {len(modes)} calls in {time.monotonic() - started:.1f}s")
    return {"samples": samples, "example_result": {k: v[0] for k, v in results.items()}}


def bench(args: argparse.Namespace) -> dict:
    """Outer side: the lab, the measuring process, the outcome."""

    def work(lab: Lab) -> tuple[dict, list[dict]]:
        modes = list(MODES) if args.exec == "both" else [args.exec]
        systems = build_systems(lab, args.n * len(modes), args.warmup, not args.no_fallback)
        log(
            f"{len(lab.sandbox.namespaces)} namespaces ready in {time.monotonic() - lab.started:.1f}s; measuring"
        )
        spec = {
            "host_ns_path": lab.sandbox.path(lab.host),
            "n": args.n,
            "warmup": args.warmup,
            "systems": systems,
            "modes": modes,
        }
        data = lab.run_inner(spec, profile=False, timeout=900)
        return outcome_of(args, systems, data["samples"]), systems

    return run_in_lab(False, work)


def outcome_of(args: argparse.Namespace, systems: list[dict], samples: dict) -> dict:
    """Each way of calling's figures under `modes`; the first way's (direct, unless only
    nsenter was measured) also at the top level, as before both were measured."""
    modes = {mode: _figures(systems, by_system) for mode, by_system in samples.items()}
    first = modes["direct"] if "direct" in modes else next(iter(modes.values()))
    return {"n": args.n, "warmup": args.warmup, "cniVersion": CNI_VERSION, "machine": machine(),
            **first, "exec": list(modes), "modes": modes}


def _figures(systems: list[dict], samples: dict) -> dict:
    out = {"systems": {
        s["key"]: {
            "label": s["label"],
            "ops": {op: summary(samples[s["key"]][op]) for op in OPS},
            "samples_ms": {op: [round(v, 3) for v in samples[s["key"]][op]] for op in OPS},
        }
        for s in systems
    }}
    podnet, reference = out["systems"]["podnet"]["ops"], out["systems"]["reference"]["ops"]
    out["ratios"] = {op: {q: round(podnet[op][q] / reference[op][q], 3) for q in ("p50", "p90")} for op in OPS}
    return out


def render_bench(outcome: dict) -> None:
    con = console()
    for mode, figures in (outcome.get("modes") or {"direct": outcome}).items():
        _render_mode(con, outcome, mode, figures)
    print_cleanup(con, outcome, "cleanup: everything DELeted and torn down, nothing left")
    for mode, figures in (outcome.get("modes") or {"direct": outcome}).items():
        ratios = figures["ratios"]
        print(f"{mode}: " + ", ".join(f"{op} p50 {ratios[op]['p50']:.2f}x p90 {ratios[op]['p90']:.2f}x" for op in OPS)
              + f" (target <= {TARGET:.1f}x each)")


def _render_mode(con, outcome: dict, mode: str, figures: dict) -> None:
    from rich.table import Table

    systems = figures["systems"]
    how = "exec'd from the host namespace" if mode == "direct" else "exec'd through nsenter --net, as a runtime"
    table = Table(
        title=f"CNI latency, ms, {how} (n={outcome['n']} namespaces per system, {outcome['warmup']} warm-up, "
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
            row += [f"{systems[key]['ops'][op]['p50']:.1f}", f"{systems[key]['ops'][op]['p90']:.1f}"]
        for q in ("p50", "p90"):
            r = figures["ratios"][op][q]
            row.append(f"[{'green' if r <= TARGET else 'red'}]{r:.2f}x[/]")
        if "inprocess" in systems:
            row += [f"{systems['inprocess']['ops'][op]['p50']:.1f}", f"{systems['inprocess']['ops'][op]['p90']:.1f}"]
        table.add_row(*row)
    con.print(table)
