"""The latency benchmark: ADD, CHECK and DEL wall time of each system, interleaved,
after uncounted warm-up cycles, in several rounds, and its table (each podnet
system's ratio to the reference, median and spread over the rounds, against
TARGET)."""

from __future__ import annotations

import argparse
import time

from benchlib import console, format_spread, log, machine, median_spread, print_cleanup
from cni.calls import CNI_VERSION, OPS, cni_call, guard_namespace, summary
from cni.lab import Lab, build_systems, run_in_lab

TARGET = 1.0  # podnet/reference ratio to stay under, for every op, p50 and p90 (issue 19)
QS = ("p50", "p90")
PODNET_AGENT_SYSTEMS = ("podnet", "python")  # the rows compared with the reference


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
    """Inner side (in the host namespace): every sample of every round, way of calling
    (`spec["modes"]`), system and op. In a round each container namespace is used by one
    system and way only; the next round reuses it (DEL left it empty) with new ids."""
    guard_namespace(spec["host_ns_path"])
    systems, modes = spec["systems"], spec.get("modes") or ["direct"]
    rounds = spec.get("rounds", 1)
    samples = [{m: {s["key"]: {op: [] for op in OPS} for s in systems} for m in modes} for _ in range(rounds)]

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
    timed = [s for s in systems if s["key"] != "inprocess"]  # informative and slow: round 1 only
    for r in range(rounds):
        for op in OPS:
            started = time.monotonic()
            for i in range(spec["n"]):
                for mode in rotate(list(modes), i + r):
                    j = i * len(modes) + modes.index(mode)  # this call's own container namespace
                    for s in rotate(systems if r == 0 else timed, i + r):
                        cid, ns = f"bench-{s['key']}-{j}-r{r}", s["netns"][j]
                        prev = results[s["key"]][j] if op != "ADD" else None
                        ms, res, *_ = cni_call(s, op, cid, ns, prev, plugin_argv(s, mode, spec["host_ns_path"]))
                        if op == "ADD":
                            results[s["key"]][j] = res
                        samples[r][mode][s["key"]][op].append(ms)
            log(f"round {r + 1}/{rounds} {op}: {spec['n']} x {len(systems)} x {len(modes)} calls "
                f"in {time.monotonic() - started:.1f}s")
    return {"samples": samples, "example_result": {k: v[0] for k, v in results.items()}}


def bench(args: argparse.Namespace) -> dict:
    """Outer side: the lab, the measuring process, the outcome."""

    def work(lab: Lab) -> tuple[dict, list[dict]]:
        modes = list(MODES) if args.exec == "both" else [args.exec]
        systems = build_systems(lab, args.n * len(modes), args.warmup, not args.no_fallback,
                                python=not args.no_python)
        log(
            f"{len(lab.sandbox.namespaces)} namespaces ready in {time.monotonic() - lab.started:.1f}s; measuring"
        )
        spec = {
            "host_ns_path": lab.sandbox.path(lab.host),
            "n": args.n,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "systems": systems,
            "modes": modes,
        }
        data = lab.run_inner(spec, profile=False, timeout=900 * args.rounds)
        return outcome_of(args, systems, data["samples"]), systems

    return run_in_lab(False, work)


def outcome_of(args: argparse.Namespace, systems: list[dict], rounds: list[dict]) -> dict:
    """Each way of calling's figures under `modes`; the first way's (direct, unless only
    nsenter was measured) also at the top level, as before both were measured."""
    modes = {mode: _figures(systems, [r[mode] for r in rounds]) for mode in rounds[0]}
    first = modes["direct"] if "direct" in modes else next(iter(modes.values()))
    return {"n": args.n, "warmup": args.warmup, "rounds": len(rounds), "target": TARGET, "cniVersion": CNI_VERSION,
            "machine": machine(), **first, "exec": list(modes), "modes": modes}


def _figures(systems: list[dict], rounds: list[dict]) -> dict:
    """Per system and op: the summary of all rounds' samples pooled (`ops`), and each
    round's p50/p90 as median (min-max) over the rounds (`spread`). Per podnet system:
    its p50/p90 over the reference's, taken in each round, as median (min-max)."""
    out: dict = {"systems": {}}
    for s in systems:
        key = s["key"]
        measured = [r for r in rounds if r[key]["ADD"]]  # the no-agent row: the first round only
        pooled = {op: [v for r in measured for v in r[key][op]] for op in OPS}
        out["systems"][key] = {
            "label": s["label"],
            "ops": {op: summary(pooled[op]) for op in OPS},
            "spread": {op: {q: median_spread([summary(r[key][op])[q] for r in measured]) for q in QS} for op in OPS},
            "samples_ms": {op: [round(v, 3) for v in pooled[op]] for op in OPS},
        }
    out["ratio_spread"] = {
        key: {op: {q: median_spread([summary(r[key][op])[q] / summary(r["reference"][op])[q] for r in rounds])
                   for q in QS} for op in OPS}
        for key in out["systems"] if key in PODNET_AGENT_SYSTEMS
    }
    # the installed `podnet` against the reference: the median of the rounds' ratios
    out["ratios"] = {op: {q: out["ratio_spread"]["podnet"][op][q]["median"] for q in QS} for op in OPS}
    return out


def render_bench(outcome: dict) -> None:
    con = console()
    for mode, figures in (outcome.get("modes") or {"direct": outcome}).items():
        _render_mode(con, outcome, mode, figures)
    print_cleanup(con, outcome, "cleanup: everything DELeted and torn down, nothing left")
    for mode, figures in (outcome.get("modes") or {"direct": outcome}).items():
        for key, by_op in figures["ratio_spread"].items():
            label = figures["systems"][key]["label"]
            print(f"{mode}, {label}/reference: " + ", ".join(
                f"{op} p50 {format_spread(by_op[op]['p50'], '{:.2f}', 'x')} p90 {format_spread(by_op[op]['p90'], '{:.2f}', 'x')}"
                for op in OPS) + f" (target <= {TARGET:.1f}x each)")


def _render_mode(con, outcome: dict, mode: str, figures: dict) -> None:
    from rich.table import Table

    systems = figures["systems"]
    how = "exec'd from the host namespace" if mode == "direct" else "exec'd through nsenter --net, as a runtime"
    table = Table(
        title=f"CNI latency, ms, {how}: median (min-max) over {outcome.get('rounds', 1)} interleaved rounds "
        f"(n={outcome['n']} namespaces per system and round, {outcome['warmup']} warm-up, "
        f"cniVersion {outcome['cniVersion']}, {outcome['machine']['cpus']} CPUs)"
    )
    for column in ("op", "system", "p50 ms", "p90 ms", "/reference p50", "/reference p90"):
        table.add_column(column, justify="left" if column in ("op", "system") else "right")
    order = [k for k in ("podnet", "python", "reference", "inprocess") if k in systems]
    for op in OPS:
        for key in order:
            spread = systems[key]["spread"][op]
            row = [op if key == order[0] else "", systems[key]["label"],
                   format_spread(spread["p50"]), format_spread(spread["p90"])]
            for q in QS:
                ratio = figures["ratio_spread"].get(key, {}).get(op, {}).get(q)
                color = "green" if ratio and ratio["median"] <= TARGET else "red"
                row.append(f"[{color}]{format_spread(ratio, '{:.2f}', 'x')}[/]" if ratio else "")
            table.add_row(*row, style="dim" if key == "inprocess" else None,
                          end_section=key == order[-1] and op != OPS[-1])
    con.print(table)
