"""`podnet demo` (`make demo`): a 3-node cluster on this machine, tested, then a tour.

`lab up --nodes 3` (lab `demo`: namespaces, one agent per node, two echo pods per
node with readiness probes, the `echo` service over them, the VXLAN fabric, the
outside world), then `connectivity test` against it (services included), then the
service act (cli/demo_service.py: load balancing, a backend failing its probe and the
service failing over, its return), then a printed tour of what to try next, then
`lab down` unless `--keep`. Whatever fails
(the build, a check, Ctrl-C) the lab is torn down by its recorded names and PIDs,
except that `--keep` leaves a built lab up for a look at the failure.

The single-host Docker-style demo is `podnet demo --host` (cli/demo_host.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from podnet.errors import PodnetError

DEMO_LAB = "demo"
DEMO_NODES = 3


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="a live demo: a 3-node lab, its connectivity test and a tour")
    demo.add_argument("--keep", action="store_true", help="leave the demo up for exploration")
    demo.add_argument("--host", action="store_true", help="the single-host demo instead (Docker's network modes)")
    demo.add_argument("--lab", default=DEMO_LAB, help=f"lab name (default {DEMO_LAB})")
    demo.add_argument("--name", dest="lab", help=argparse.SUPPRESS)  # the old spelling
    demo.add_argument("--nodes", type=int, default=DEMO_NODES, help=f"number of nodes (default {DEMO_NODES})")
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.host:
        from podnet.cli.demo_host import run_demo as run_host_demo

        return run_host_demo(keep=args.keep)
    return run_demo(keep=args.keep, name=args.lab, nodes=args.nodes)


def run_demo(keep: bool = False, name: str = DEMO_LAB, nodes: int = DEMO_NODES, fabric: str = "vxlan") -> int:
    """Build, test, tour and (unless `keep`) remove the lab; 0 when every check passed."""
    from podnet.cli import demo_mesh, demo_service
    from podnet.cli.lab import print_summary
    from podnet.cli.observe import render
    from podnet.lab import topology
    from podnet.lab.builder import LabBuilder, LabOptions
    from podnet.lab.teardown import teardown
    from podnet.observe import connectivity
    from podnet.store import open_store

    if os.geteuid() != 0:
        print("podnet demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    from rich.console import Console

    console = Console()
    start = time.monotonic()

    def progress(step: str) -> None:
        console.print(f"[green]✓[/] {step} [dim]({time.monotonic() - start:.1f}s)[/]")

    console.print(f"[bold]podnet demo[/]: a {nodes}-node cluster ({fabric}) in network namespaces, lab [cyan]{name}[/]")
    builder = LabBuilder(demo_mesh.with_mesh(demo_service.with_service(topology.default_topology(nodes, 2, 1))),
                         LabOptions(name, fabric), progress)
    passed = False
    try:
        with console.status(f"podnet lab up --lab {name} --nodes {nodes} --fabric {fabric} ..."):
            state = builder.build()
        console.print(f"lab [bold]{name}[/] up in {time.monotonic() - start:.1f}s")
        print_summary(state.data)
        if not demo_service.wait_ready(state.data):
            console.print("[red]✗ the pods did not all pass their readiness probes[/]")
        test_start = time.monotonic()
        with open_store(state.data["store_url"]) as store:
            results = connectivity.test_lab(name, store=store)
        render(results, console, f"lab {name}", time.monotonic() - test_start)
        passed = bool(results) and all(r.ok for r in results)
        passed = demo_service.act(console, state.data) and passed
        passed = demo_mesh.act(console, state.data) and passed
        tour(console, name, state.data, keep)
    except PodnetError as err:
        console.print(f"[red]✗ {err.msg}[/]")
        if err.details:
            console.print(str(err.details))
    finally:
        built = builder.state is not None  # else nothing of ours exists (e.g. the name was taken)
        if built and (not keep or builder.state.data.get("phase") != "up"):
            problems = teardown(name)
            for problem in problems:
                console.print(f"[red]{problem}[/]")
            console.print(f"lab {name} removed" if not problems else f"[red]lab {name} not fully removed[/]")
            passed = passed and not problems
    return 0 if passed else 1


def tour(console: Any, name: str, data: dict, keep: bool) -> None:
    """What to try next, with this lab's real names and addresses."""
    pods = list(data.get("pods", {}))
    nodes = list(data.get("nodes", {}))
    src = pods[0] if pods else "default/p0-0"
    far = next((k for k, p in data.get("pods", {}).items() if p["node"] != data["pods"][src]["node"]), src) \
        if pods else src
    far_ip = (data.get("pods", {}).get(far, {}).get("ips") or ["10.244.1.2/24"])[0].split("/")[0]
    node = nodes[0] if nodes else "node0"
    info = data.get("nodes", {}).get(node, {})
    env = f"PODNET_STATE_DIR={info.get('state_dir')} PODNET_AGENT_SOCKET={info.get('socket')}"
    outside = data.get("outside", {}).get("ip", "198.51.100.1")
    other_block = next((n.get("block") for n in list(data.get("nodes", {}).values())[1:] if n.get("block")),
                       "<another node's block>")
    lines = [
        ("the lab: nodes, agents, blocks, pods", f"podnet lab status --lab {name}"),
        ("a pod on another node (over VXLAN)", f"podnet lab exec --lab {name} {src} -- curl -s http://{far_ip}/"),
        ("the outside world sees the node (masquerade)",
         f"podnet lab exec --lab {name} {src} -- curl -s http://{outside}/peer"),
        ("a node's routes, VXLAN FDB and neighbours",
         f"podnet lab exec --lab {name} {node} -- sh -c 'ip route; bridge fdb show dev pnvx0; ip neigh show dev pnvx0'"),
        ("every path, checked again", f"podnet connectivity test --lab {name} [-o json]"),
        ("break a route, watch the test fail, then the agent repair it (~3 s)",
         f"podnet lab exec --lab {name} {node} -- ip route del {other_block}"),
        ("every pod to every pod, for real ('.' reachable, 'X' blocked)", f"podnet probe --lab {name} --port 80"),
        ("the echo service: its address, who answers it from every pod",
         f"podnet get svc --lab {name}; podnet probe --lab {name} --to svc/default/echo"),
        ("the echo service by name, from cluster DNS (the kube-dns service, 10.96.0.10)",
         f"podnet lab exec --lab {name} {src} -- busybox nslookup echo.default.svc.cluster.local 10.96.0.10"),
        ("isolate a pod's namespace, then ask which rule drops what",
         f"podnet apply --lab {name} -f examples/policy/default-deny.yaml && "
         f"podnet flows --lab {name} --verdict deny; podnet policy explain {far} {src} --lab {name}"),
        ("networks and containers on a node",
         f"podnet lab exec --lab {name} {node} -- env {env} podnet network ls"),
        ("the single-host Docker-style demo", "podnet demo --host"),
    ]
    console.print("\n[bold]what to try next[/]" + ("" if keep else " (after `podnet demo --keep`; this lab is removed now)"))
    for what, cmd in lines:
        console.print(f"  [dim]# {what}[/]\n  {cmd}", soft_wrap=True)
    if keep:
        console.print(f"  [dim]# done[/]\n  podnet lab down --lab {name}", soft_wrap=True)
