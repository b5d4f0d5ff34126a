"""`podnet mesh enable|disable NS`, `podnet mesh status`, `podnet mesh top`.

enable/disable label the namespace `podnet.io/mesh=enabled` (Istio's
`istio-injection=enabled`): every node agent then gives each of its pods there a
sidecar (agent/mesh_service.py), and takes it away when the label goes. status asks
every node's agent (op `mesh.status`): which pods are meshed, whether each sidecar
runs, its reloads and restarts, its certificate's identity and expiry, the routes in
force; exit 1 when a sidecar is down or a node reports a problem.
"""

from __future__ import annotations

import argparse
import json
import time

from podnet.cli.output import fail
from podnet.cli.target import add_target_options, open_cluster_store
from podnet.errors import PodnetError

LABEL = "podnet.io/mesh"


def register(sub: argparse._SubParsersAction) -> None:
    mesh = sub.add_parser("mesh", help="the service mesh: sidecars, routes, identities, golden signals")
    verbs = mesh.add_subparsers(dest="mesh_command", required=True)
    for verb, what in (("enable", "give every pod of namespace NS a sidecar"),
                       ("disable", "take the sidecars of namespace NS away")):
        cmd = verbs.add_parser(verb, help=what)
        cmd.add_argument("namespace", metavar="NS")
        add_target_options(cmd)
        cmd.set_defaults(func=_cmd_label, enable=verb == "enable")
    status = verbs.add_parser("status", help="meshed pods, sidecar health, certificates, routes (exit 1 if unwell)")
    status.add_argument("--lab", help="the lab's nodes (default $PODNET_LAB)")
    status.add_argument("--socket", help="one node: the agent at this socket (default: the local agent)")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(func=_cmd_status)
    try:
        from podnet.cli.mesh_top import register_top
    except ImportError:  # pragma: no cover - mesh top is optional
        return
    register_top(verbs)


def _cmd_label(args: argparse.Namespace) -> int:
    from podnet.objects import store as repository
    from podnet.objects.registry import lookup

    change = f"{LABEL}=enabled" if args.enable else f"{LABEL}-"
    try:
        with open_cluster_store(args) as store:
            done = repository.label(store, lookup("namespace"), args.namespace, [change])
    except PodnetError as exc:
        return fail(exc)
    print(done.shown)
    return 0


def collect(sockets: dict[str, str], timeout: float = 10.0) -> list[dict]:
    from podnet.rpc.client import ask_each

    return ask_each(sockets, "mesh.status", {"pods": []}, timeout)


def unwell(nodes: list[dict]) -> list[str]:
    out = []
    for node in nodes:
        if "error" in node:
            out.append(f"{node['node']}: {node['error']}")
        out += [f"{node['node']}: {what}: {why}" for what, why in (node.get("problems") or {}).items()]
        out += [f"{node['node']}: sidecar of {p['pod']} is down" for p in node.get("pods", []) if not p["alive"]]
    return out


def _cmd_status(args: argparse.Namespace) -> int:
    from podnet.cli.bgp import node_sockets

    try:
        nodes = collect(node_sockets(args))
    except PodnetError as err:
        return fail(err)
    problems = unwell(nodes)
    if args.output == "json":
        print(json.dumps({"nodes": nodes, "problems": problems}, indent=2))
        return 1 if problems else 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="meshed pods")
    for column in ("node", "pod", "sidecar", "identity", "cert expires in", "reloads", "routes"):
        table.add_column(column, overflow="fold")
    for node in nodes:
        for pod in node.get("pods", []):
            expires = f"{pod['cert_expires'] - time.time():.0f}s" if pod.get("cert_expires") else "-"
            state = f"pid {pod['pid']}" if pod["alive"] else "[red]down[/]"
            table.add_row(node["node"], pod["pod"], state, pod.get("identity") or "-", expires,
                          str(pod["reloads"]), ", ".join(r for r in pod.get("routes", []) if "default" not in r) or "-")
    console = Console()
    console.print(table)
    for problem in problems:
        console.print(f"[red]✗ {problem}[/]")
    return 1 if problems else 0
