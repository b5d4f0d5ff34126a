"""`podnet mesh top`: the mesh's live golden signals per route, like `top`.

Each node's agent counts what its sidecars logged (mesh/golden.py) and answers op
`mesh.top` with one row per (service, route, direction) seen in its last seconds. With
no `--node`, every node of the lab is asked and rows of the same route are added up:
requests, errors and the latency bucket counts are summed, then error % and p50/p90/p99
are computed again from the summed buckets (quantiles of different nodes cannot be
averaged). `--watch` redraws every `--interval` seconds until Ctrl-C. Exit 1 when a
node does not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from podnet.cli.output import add_output_option, fail
from podnet.errors import PodnetError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from rich.table import Table

SUMMED = ("requests", "errors", "retries", "rate_limited", "denied")


def register_top(verbs: argparse._SubParsersAction) -> None:
    """Add `top` to the `podnet mesh` verbs."""
    top = verbs.add_parser("top", help="live requests/s, errors and latency per route (every node, or --node)")
    top.add_argument("--node", help="only this lab node's sidecars (default: every node, added up)")
    top.add_argument("--lab", help="the lab's nodes (default $PODNET_LAB)")
    top.add_argument("--socket", help="one node: the agent at this socket (default: the local agent)")
    top.add_argument("--watch", action="store_true", help="redraw until Ctrl-C")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch (default 2)")
    add_output_option(top)
    top.set_defaults(func=_cmd_top)


def ask(sockets: dict[str, str], timeout: float = 5.0) -> list[dict[str, Any]]:
    """Each node's `mesh.top` answer, or the reason it gave none."""
    from podnet.rpc.client import ask_each

    answers = ask_each({node or "local": sock for node, sock in sockets.items()},  # "": the agent at --socket
                       "mesh.top", {"routes": []}, timeout)
    return [{"node": a["node"], "routes": a.get("routes") or [], **({"error": a["error"]} if "error" in a else {})}
            for a in answers]


def merge(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Several nodes' answers -> one snapshot: {"nodes", "errors", "routes"}; rows of
    the same (service, route, direction) added up (golden.row recomputes the figures)."""
    from podnet.mesh.golden import Counts, row

    added: dict[tuple[str, str, str], tuple[Counts, float, int, set[str]]] = {}
    for answer in answers:
        for r in answer.get("routes") or []:
            key = (r["service"], r["route"], r["direction"])
            counts, span, total, nodes = added.get(key) or (Counts(), 0.0, 0, set())
            for name in SUMMED:
                setattr(counts, name, getattr(counts, name) + int(r[name]))
            counts.buckets = [a + int(b) for a, b in zip(counts.buckets, r["buckets"], strict=True)]
            added[key] = (counts, max(span, float(r["window"])), total + int(r["total"]), nodes | {answer["node"]})
    rows = []
    for key, (counts, span, total, nodes) in sorted(added.items()):
        rows.append({**row(key, counts, span, total), "nodes": sorted(nodes)})
    return {"nodes": [a["node"] for a in answers],
            "errors": {a["node"]: a["error"] for a in answers if "error" in a}, "routes": rows}


def render_top(snapshot: dict[str, Any]) -> Table:
    """One node's `mesh.top` answer, or `merge`'s: a table, busiest route first."""
    from rich.table import Table

    nodes = snapshot.get("nodes") or [snapshot.get("node") or "?"]
    rows = sorted(snapshot.get("routes") or [], key=lambda r: (-r["rps"], r["service"], r["route"]))
    window = max((r["window"] for r in rows), default=0.0)
    table = Table(title=f"mesh top: {', '.join(nodes)}" + (f" (last {window:.0f}s)" if rows else ""))
    for name in ("service", "route", "dir"):
        table.add_column(name, overflow="fold")
    for name in ("req/s", "err %", "p50 ms", "p90 ms", "p99 ms", "retries", "429", "403"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        errors = f"{r['error_pct']:.1f}"
        table.add_row(r["service"] or "-", r["route"] or "-", r["direction"][:3], f"{r['rps']:.1f}",
                      f"[red]{errors}[/]" if r["errors"] else errors,
                      *(_ms(r[name]) for name in ("p50_ms", "p90_ms", "p99_ms")),
                      str(r["retries"]), str(r["rate_limited"]), str(r["denied"]))
    for node, error in (snapshot.get("errors") or {}).items():
        table.add_row(f"[red]{node}: {error}[/]", *[""] * 10)
    if not rows and not snapshot.get("errors"):
        table.add_row("[dim]no requests through a sidecar lately[/]", *[""] * 10)
    return table


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _sockets(args: argparse.Namespace) -> dict[str, str]:
    from podnet.cli.bgp import node_sockets

    sockets = node_sockets(args)
    if not args.node:
        return sockets
    if "" in sockets:
        raise PodnetError(f"--node {args.node}: a node name needs a lab (--lab or $PODNET_LAB)")
    if args.node not in sockets:
        raise PodnetError(f"--node: no node {args.node!r} in the lab", f"nodes: {', '.join(sorted(sockets))}")
    return {args.node: sockets[args.node]}


def _cmd_top(args: argparse.Namespace) -> int:
    try:
        sockets = _sockets(args)
    except PodnetError as err:
        return fail(err, 2)
    if not args.watch:
        snapshot = merge(ask(sockets))
        if args.output == "json":
            print(json.dumps(snapshot, indent=2))
        else:
            from rich.console import Console

            Console(width=None if sys.stdout.isatty() else 200).print(render_top(snapshot))
        return 1 if snapshot["errors"] else 0
    return _watch(sockets, args.output, max(args.interval, 0.2))


def _watch(sockets: dict[str, str], output: str, interval: float) -> int:
    from rich.live import Live

    try:
        if output == "json":  # one snapshot per line, for a pipe
            while True:
                print(json.dumps(merge(ask(sockets))), flush=True)
                time.sleep(interval)
        with Live(render_top(merge(ask(sockets))), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render_top(merge(ask(sockets))), refresh=True)
    except KeyboardInterrupt:
        return 0
