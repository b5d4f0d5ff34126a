"""CNI latency: podnet (with its agent) against the reference bridge + host-local.

    .venv/bin/python bench/cni_latency.py [--n 50] [--rounds 3] [--warmup 3] [--json] [--no-fallback]
    .venv/bin/python bench/cni_latency.py --profile [--n 20] [--json] [--profile-out DIR]

Measures ADD, CHECK and DEL wall time (p50, p90) of each plugin executable, from just
before the spawn to the process exit, in `--rounds` interleaved rounds (median and
min-max spread over the rounds, and each podnet row's ratio to the reference against
the 1.0x target), exec'd two ways, interleaved in one run
(`--exec direct|nsenter|both`, default both): `direct`, from a process that already
lives in the bench's simulated host namespace (no `ip netns exec` per call); and
`nsenter`, through `nsenter --net=<host ns>` as a runtime living in another namespace
calls it (podman under `nsenter --net`), every call on its own fresh container
namespace:

- podnet, agent:     the installed `podnet` (the compiled exec shim, when install_cni
                     could build it) + built-in `podnet-ipam`, `agentSocket` -> a running agent
- podnet python:     `podnet-python`, the Python plugin the shim stands in for, on the same
                     agent (`--no-python` skips; absent when no shim was built)
- reference:         /usr/lib/cni `bridge` + `host-local` (containernetworking-plugins)
- podnet, no agent:  the plugin's in-process fallback (informative, `--no-fallback` skips)

Both configs are cniVersion 1.0.0 with the same bridge options (isGateway,
isDefaultGateway, hairpinMode, no ipMasq) and a /16 each, on separate bridges. Each phase
(ADD all containers, then CHECK all with the ADD result as prevResult, then DEL all)
runs the systems interleaved, rotating which one goes first, after a few warm-up
ADD/CHECK/DEL cycles that are not counted.

`--profile` is a separate run that explains where podnet's ADD time goes: the start-up
of the interpreter and of the Go binaries, `-X importtime` of the plugin, a per-phase
timeline of the plugin process, the agent-side time per request, and a cProfile of the
agent's request handling.

Safety: everything happens in namespaces named `pn-bench-<token>-*` (lab.Sandbox),
processes are recorded and stopped by PID, and all is torn down in a `finally`, also on
Ctrl-C or SIGTERM. The root network namespace is never changed.

This file is the entry point (also of the measuring process, `--inner`, and of the
agent shim, `--agent-shim`); the parts are in bench/cni/: lab.py (sandbox, agent,
leftovers), calls.py (configs, one timed plugin call), latency.py (the benchmark and
its table), profile.py + profile_report.py (`--profile`) and shim.py (the agent shim).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from benchlib import BenchError, raise_interrupt, run_bench
from cni.lab import prerequisites
from cni.latency import bench, measure, render_bench
from cni.profile import profile, profile_inner
from cni.profile_report import render_profile
from cni.shim import run_agent_shim

# The parts import podnet only inside their functions, once this has run.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="container namespaces per system (default 50; 20 with --profile)",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="uncounted ADD/CHECK/DEL cycles per system"
    )
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (each ADD, CHECK, DEL on every namespace); median and spread over them")
    parser.add_argument("--no-python", action="store_true",
                        help="skip the podnet-python row (the Python plugin beside the compiled shim)")
    parser.add_argument("--exec", choices=("direct", "nsenter", "both"), default="both",
                        help="how each plugin is exec'd: from the host namespace, through nsenter --net as a "
                             "runtime in another namespace does, or both interleaved (default)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    parser.add_argument(
        "--no-fallback", action="store_true", help="skip the podnet in-process (no agent) row"
    )
    parser.add_argument("--profile", action="store_true", help="explain where podnet's time goes")
    parser.add_argument(
        "--profile-out", metavar="DIR", help="with --profile: keep the agent's pstats files here"
    )
    parser.add_argument("--inner", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument(
        "--agent-shim", nargs=2, metavar=("SOCKET", "STORE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.agent_shim:
        return run_agent_shim(*args.agent_shim)
    if args.inner:
        return run_inner(args.inner, args.profile)

    problem = prerequisites()
    if problem:
        print(f"cni_latency: {problem}", file=sys.stderr)
        return 2
    if args.n is None:
        args.n = 20 if args.profile else 50
    if args.n < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--n and --rounds must be >= 1 and --warmup >= 0")
    if args.profile:
        return run_bench("cni_latency", profile, args, render_profile)
    return run_bench("cni_latency", bench, args, render_bench)


def run_inner(spec_path: str, profiling: bool) -> int:
    """The measuring process, in the host namespace: its result as JSON on stdout."""
    # Stopped by the outer process (SIGTERM): unwind, so subprocess.run kills and reaps
    # the plugin it is waiting for instead of leaving it orphaned.
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, raise_interrupt)
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = profile_inner(spec) if profiling else measure(spec)
    except KeyboardInterrupt:
        return 130
    except BenchError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
