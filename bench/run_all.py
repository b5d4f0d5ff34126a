"""Every benchmark of bench/, one after another, and one report of them all.

    sudo .venv/bin/python bench/run_all.py --quick        # a few minutes
    sudo .venv/bin/python bench/run_all.py                # the benches' own defaults (~30 min)
    make bench ARGS=--quick

Each bench runs as its own process with `--json` (so one failing bench does not stop the
others, and each keeps its own teardown and leftover check); its JSON and its log go to
`bench/out/<UTC time>/<bench>.json|.log`, and `bench/report.py` turns that directory into
`report.html` with PNG plots beside it. Quick mode shortens each bench (fewer samples,
1-2 s measurements, small labs): its figures show the shape, not the final numbers.
Exit status 1 when any bench failed (the report says which).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    name: str  # also the file stem of its results
    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()


BENCHES = (
    Bench("cni_latency", "cni_latency.py", ("--n", "10", "--warmup", "2")),
    Bench("fabric_throughput", "fabric_throughput.py", ("--seconds", "2"), ("--seconds", "5", "--repeat", "3")),
    Bench("fabric_bgp", "fabric_throughput.py", ("--bgp-racks", "--seconds", "2", "--no-underlay"),
          ("--bgp-racks", "--seconds", "5", "--repeat", "3")),
    Bench("convergence", "convergence.py", ("--pods", "20"),
          ("--fabric", "bgp", "--racks", "2", "--nodes", "4", "--pods", "100", "--from", "node")),
    Bench("policy_scale", "policy_scale.py", ("--rules", "0,1000", "--seconds", "1", "--changes", "3")),
    Bench("services_lb", "services_lb.py", ("--services", "100,1000", "--seconds", "1", "--repeat", "1",
                                            "--changes", "3")),
    Bench("bgp_scale", "bgp_scale.py", ("--nodes", "10"), ("--nodes", "50", "--repeat", "3")),
    Bench("agent_overhead", "agent_overhead.py", ("--seconds", "10", "--pods", "50", "--status-nodes", "5")),
    Bench("trace_time", "trace_time.py", ("--nodes", "5", "--runs", "3")),
    Bench("sleeve_throughput", "sleeve_throughput.py", ("--seconds", "2", "--repeat", "1")),
    Bench("gossip_throughput", "gossip_throughput.py", ("--seconds", "2", "--repeat", "1"),
          ("--seconds", "5", "--repeat", "3")),
    Bench("gossip_convergence", "gossip_convergence.py", ("--peers", "10", "--runs", "3")),
    Bench("fabric_macvlan", "fabric_throughput.py", ("--fabric", "macvlan", "--fabric", "host-gw", "--seconds", "2"),
          ("--fabric", "macvlan", "--fabric", "host-gw", "--seconds", "5", "--repeat", "3")),
    Bench("macvlan_policy", "macvlan_policy.py", ("--seconds", "2", "--repeat", "1", "--conn-seconds", "1")),
    Bench("mesh_latency", "mesh_latency.py", ("--seconds", "2", "--repeat", "1", "--wrk-seconds", "2", "--idle-seconds", "1"),
          ("--seconds", "10", "--repeat", "3", "--wrk-seconds", "5")),
    Bench("clusterset", "clusterset.py", ("--seconds", "2", "--repeat", "1", "--requests", "300"),
          ("--seconds", "5", "--repeat", "3")),
    # issue 19: a new pod reachable from every node, p99 at 50 nodes on sqlite and on etcd, three rounds
    Bench("convergence_50", "convergence.py", ("--nodes", "10", "--pods", "30"),
          ("--nodes", "50", "--store", "sqlite", "etcd", "--pods", "150", "--rounds", "3")),
    # issue 19: lab up at 50 x 20 and 100 x 10, three interleaved rounds
    Bench("lab_scale", "lab_scale.py", ("--size", "10x10", "--rounds", "1"), ("--big", "--rounds", "3")),
)


def run(bench: Bench, quick: bool, out: Path) -> dict:
    """One bench, its JSON saved; what happened (for the report's index)."""
    argv = [sys.executable, str(HERE / bench.script), *(bench.quick if quick else bench.full), "--json"]
    start = time.monotonic()
    with open(out / f"{bench.name}.log", "w") as log:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log, text=True, check=False)
    seconds = round(time.monotonic() - start, 1)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    if data is not None:
        (out / f"{bench.name}.json").write_text(json.dumps(data, indent=2) + "\n")
    ok = proc.returncode == 0 and data is not None
    print(f"[bench] {bench.name}: {'ok' if ok else f'FAILED (exit {proc.returncode})'} in {seconds}s", file=sys.stderr)
    return {"name": bench.name, "argv": argv[1:], "exit": proc.returncode, "ok": ok, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs of every bench (a few minutes)")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], help="these benches only")
    parser.add_argument("--out", type=Path, help="results directory (default bench/out/<UTC time>)")
    args = parser.parse_args(argv)
    out = args.out or HERE / "out" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    index = {"quick": args.quick, "started": time.time(), "runs": [run(b, args.quick, out) for b in chosen]}
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    sys.path.insert(0, str(HERE))
    import report

    page = report.write(out)
    print(f"report: {page}")
    return 0 if all(r["ok"] for r in index["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
