"""Time of `podnet trace` on a big lab: the static path and `--live` (a traced probe).

    sudo .venv/bin/python bench/trace_time.py                       # 20 nodes, 5 runs each
    sudo .venv/bin/python bench/trace_time.py --nodes 5 --runs 3 --json

One lab (`lab up --nodes N --pods-per-node 1`, named `t<hex>`), then the real CLI,
`python -m podnet.cli trace --lab L SRC DST -o json`, from a pod of the first node to a
pod of the last one (across nodes), timed from the spawn to its exit (interpreter start
and imports included), `--runs` times without and with `--live`; each run must say
"delivered". Baseline of the same run: `podnet trace --help` (interpreter and CLI
start-up, no cluster), each mode's ratio against it. The lab's build is not timed. The lab is torn down by name in a
`finally`, also on Ctrl-C; the root network namespace is never changed.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time

from benchlib import BenchError, close_lab, log, machine, percentile, run_bench


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podnet.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def bench(args: argparse.Namespace) -> dict:
    from podnet.lab.state import state_file

    name = f"t{secrets.token_hex(3)}"
    outcome: dict = {"machine": machine(), "nodes": args.nodes, "fabric": args.fabric, "runs": args.runs}
    try:
        log(f"lab up {name}: {args.nodes} nodes ({args.fabric})")
        up = _cli("lab", "up", "--name", name, "--nodes", str(args.nodes), "--pods-per-node", "1",
                  "--fabric", args.fabric, "--no-cluster-dns")
        if up.returncode != 0:
            raise BenchError(f"lab up failed: {up.stderr.strip()[-300:]}")
        state = json.loads(state_file(name).read_text())
        pods = sorted(state["pods"], key=lambda p: state["pods"][p]["node"])
        by_node = {state["pods"][p]["node"]: p for p in pods}
        nodes = sorted(by_node, key=lambda n: int("".join(c for c in n if c.isdigit()) or 0))
        src, dst = by_node[nodes[0]], by_node[nodes[-1]]
        outcome.update(src=src, dst=dst)
        for mode in ("floor", "static", "live"):
            times = []
            for _ in range(args.runs):
                argv = ["trace", "--help"] if mode == "floor" else \
                    ["trace", "--lab", name, src, dst, "-o", "json", *(["--live"] if mode == "live" else [])]
                started = time.perf_counter()
                out = _cli(*argv)
                times.append(time.perf_counter() - started)
                verdict = "delivered" if mode == "floor" else json.loads(out.stdout or "{}").get("verdict")
                if out.returncode != 0 or verdict != "delivered":
                    raise BenchError(f"trace {mode}: exit {out.returncode}, {verdict}: {out.stderr.strip()[-300:]}")
            outcome[mode] = {"median_s": round(percentile(times, 0.5), 3), "p90_s": round(percentile(times, 0.9), 3),
                             "runs_s": [round(t, 3) for t in times]}
            log(f"{mode}: median {outcome[mode]['median_s']} s")
        floor = outcome["floor"]["median_s"]
        outcome["ratio_to_floor"] = {m: round(outcome[m]["median_s"] / floor, 2) for m in ("static", "live")}
    finally:
        problems = close_lab(name)
        outcome["cleanup"] = {"ok": not problems, "problems": problems}
    return outcome


def render(outcome: dict) -> None:
    print(f"podnet trace on {outcome['nodes']} nodes ({outcome['fabric']}), {outcome['src']} -> {outcome['dst']}")
    for mode in ("floor", "static", "live"):
        r = outcome[mode]
        ratio = f"  {outcome['ratio_to_floor'][mode]:.2f}x the floor" if mode in outcome["ratio_to_floor"] else ""
        label = "--help" if mode == "floor" else mode
        print(f"  {label:6}  median {r['median_s']:.3f} s  p90 {r['p90_s']:.3f} s  ({len(r['runs_s'])} runs){ratio}")
    print("cleanup: " + ("ok" if outcome["cleanup"]["ok"] else "; ".join(outcome["cleanup"]["problems"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20, help="lab nodes (default 20)")
    parser.add_argument("--runs", type=int, default=5, help="runs per mode (default 5)")
    parser.add_argument("--fabric", choices=("vxlan", "host-gw"), default="vxlan")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.runs < 1:
        parser.error("--nodes must be >= 2 and --runs >= 1")
    return run_bench("trace_time", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
