"""`podnet status`: the cluster at a glance (observe/status.py judges, this prints);
`podnet report`: the same snapshot, the connectivity test and a `make bench` run in one
self-contained HTML file (observe/report.py).

    podnet status [--lab NAME | --store URL | --context NAME] [--cluster-cidr CIDR] [-o table|json]
    podnet report [--lab NAME | ...] [--bench bench/out/<time>] [-f podnet-report.html]

On a lab every node's agent is asked; elsewhere only this machine's (`--socket`), and
the other nodes are shown from their leases. Exit 1 when anything is degraded, each
reason printed. On an etcd lab the command runs again inside the lab (its store lives
there, cli/target.py `lab_aware`); the lab's agent sockets are files, reachable from
that namespace too.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from podnet.cli.output import add_output_option, fail
from podnet.cli.target import (
    add_target_options,
    lab_aware,
    node_sockets,
    open_cluster_store,
    store_location,
    target,
)
from podnet.defaults import DEFAULT_CLUSTER_CIDR
from podnet.errors import PodnetError
from podnet.fileio import write_atomic
from podnet.observe.peers_view import compact_blocks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from podnet.config import Target
    from podnet.observe.status import ClusterStatus


def register(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="the cluster at a glance: nodes, blocks, store, counts (exit 1 if degraded)")
    add_target_options(status)
    status.add_argument("--socket", help="this machine's agent, on a real cluster (default $PODNET_AGENT_SOCKET "
                                         "or /run/podnet/agent.sock)")
    status.add_argument("--cluster-cidr", default=DEFAULT_CLUSTER_CIDR,
                        help=f"the pool the nodes' blocks come from (default {DEFAULT_CLUSTER_CIDR})")
    add_output_option(status)
    status.set_defaults(func=_cmd_status)
    report = sub.add_parser("report", help="one self-contained HTML file: the cluster at a glance, the "
                                           "connectivity test (a lab), benchmarks (--bench)")
    add_target_options(report)
    report.add_argument("--socket", help="this machine's agent, on a real cluster")
    report.add_argument("--cluster-cidr", default=DEFAULT_CLUSTER_CIDR, help="the pool of the nodes' blocks")
    report.add_argument("--bench", type=Path, metavar="DIR", help="a `make bench` results directory (bench/out/<time>)")
    report.add_argument("-f", "--file", type=Path, default=Path("podnet-report.html"),
                        help="where to write the page (default ./podnet-report.html)")
    report.set_defaults(func=_cmd_report)


def _unresolved(args: argparse.Namespace) -> argparse.Namespace:
    """The command's own target, also when it runs again inside an etcd lab (where
    `--resolved-store` names only the store): the lab's nodes are still asked."""
    original = copy.copy(args)
    original.resolved_store = None
    return original


def _collect(args: argparse.Namespace) -> tuple[ClusterStatus, Target]:
    """The cluster's status and where it was read (PodnetError on a bad target)."""
    import ipaddress
    import time

    from podnet.observe.status import ask_agents, read_store, summarize

    try:
        pool = str(ipaddress.IPv4Network(args.cluster_cidr))
    except ValueError:
        raise PodnetError(f"--cluster-cidr {args.cluster_cidr!r} is not an IPv4 network", "e.g. 10.244.0.0/16") from None
    where = target(_unresolved(args))
    url = getattr(args, "resolved_store", None) or store_location(where)
    sockets = node_sockets(_unresolved(args))
    _exists(url)
    return summarize(read_store(url), ask_agents(sockets), pool=pool, expect_all=where.lab is not None,
                     now=time.time()), where


@lab_aware
def _cmd_status(args: argparse.Namespace) -> int:
    try:
        result, where = _collect(args)
    except PodnetError as exc:
        return fail(exc)
    if args.output == "json":
        print(json.dumps(result.to_json(), indent=2, default=str))
        for reason in result.degraded:  # scripts read the JSON; a person reads these
            print(f"degraded: {reason}", file=sys.stderr)
    else:
        _print(result, where.lab)
    return 1 if result.degraded else 0


@lab_aware
def _cmd_report(args: argparse.Namespace) -> int:
    """Write the page; exit 1 when the cluster is degraded or a connectivity check failed."""
    from podnet.observe import connectivity
    from podnet.observe.report import render

    if args.bench is not None and not args.bench.is_dir():
        return fail(PodnetError(f"--bench {args.bench} is not a directory", "give a make bench results directory, "
                                                                              "bench/out/<time>"))
    try:
        result, where = _collect(args)
        results = None
        if where.lab:
            with open_cluster_store(args) as store:
                results = [r.as_dict() for r in connectivity.test_lab(where.lab, store=store)]
    except PodnetError as exc:
        return fail(exc)
    title = f"podnet: {'lab ' + where.lab if where.lab else 'cluster'}"
    write_atomic(args.file, render(title, result.to_json(), results, args.bench))
    failed = [r for r in results or [] if not r["ok"]]
    print(f"wrote {args.file}: {'healthy' if not result.degraded else f'{len(result.degraded)} degraded'}"
          f"{'' if results is None else f', connectivity {len(results) - len(failed)} passed {len(failed)} failed'}")
    return 1 if result.degraded or failed else 0


def _exists(url: str) -> None:
    """A mistyped --store is the user's error, not a store that does not answer."""
    from podnet.store import missing_store

    path = missing_store(url)
    if path:
        raise PodnetError(f"store {path} does not exist", "check --store (or the context's store)")


def _print(result: ClusterStatus, lab: str | None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # names and reasons are data, never markup

    console = Console(width=None if sys.stdout.isatty() else 200)
    store = result.store
    members = f", members {', '.join(store['members'])}" if store.get("members") else ""
    latency = f"read {store['latency_ms']} ms" if store.get("latency_ms") is not None else "no answer"
    console.print(Text(f"{'lab ' + lab if lab else 'cluster'}: store {store.get('backend')} {store.get('url')}"
                       f"{members}, {latency}"))
    counts = ", ".join(f"{n} {what}" for what, n in result.counts.items())
    if counts:
        console.print(Text(counts))
    nodes = Table(title="nodes")
    for col in ("node", "lease", "underlay", "fabric", "mtu", "blocks", "agent", "peers", "bgp"):
        nodes.add_column(col, no_wrap=col not in ("agent", "blocks"))
    for n in result.nodes:
        expires = n.get("lease_expires_s")  # None: no TTL (a gossip node's copy of a peer's lease)
        lease = (f"age {n.get('lease_age_s')}s" + (f", expires {expires}s" if expires is not None else "")
                 if n["lease"] else "NONE")
        peers = f"{n['peers_ok']}/{n['peers']} ok" if "peers" in n else "-"
        nodes.add_row(n["name"], lease, str(n.get("underlay_ip") or "-"), str(n.get("fabric") or "-"),
                      str(n.get("mtu") or "-"), ", ".join(compact_blocks(n["blocks"])) or "-", Text(n["agent"]), peers,
                      str(n.get("bgp") or "-"),
                      style="red" if n["agent"] not in ("answers", "not reachable from here") or n.get("refused")
                      else None)
    console.print(nodes)
    console.print(Text(_pool_line(result.pool)))
    blocks = Table(title="blocks")
    for col in ("block", "node", "used", "size", "%"):
        blocks.add_column(col, no_wrap=True)
    for b in _shown_blocks(result.blocks):
        share = 100 * b["used"] / b["size"] if b["size"] else 0.0
        blocks.add_row(b["block"], b["node"], str(b["used"]), str(b["size"]), f"{share:.1f}")
    console.print(blocks)
    if result.degraded:
        console.print(f"[red]degraded[/] ({len(result.degraded)}):")
        for reason in result.degraded:
            console.print(Text(f"  {reason}", style="red"))
    else:
        console.print("[green]healthy[/]")


def _shown_blocks(rows: list[dict], most_empty: int = 4) -> list[dict]:
    """Blocks in use, and a node's empty ones as one row once it has many (a gossip
    node owns a large part of the ring); `-o json` keeps every block."""
    empty: dict[str, list[dict]] = {}
    for row in rows:
        if not row["used"]:
            empty.setdefault(row["node"], []).append(row)
    out = []
    for row in rows:
        spare = empty.get(row["node"], [])
        if row["used"] or len(spare) <= most_empty:
            out.append(row)
        elif row is spare[0]:
            cidrs = compact_blocks(r["block"] for r in spare)
            shown = ", ".join(cidrs[:3]) + (", ..." if len(cidrs) > 3 else "")
            out.append({"block": f"{len(spare)} empty: {shown}", "node": row["node"], "used": 0,
                        "size": sum(r["size"] for r in spare)})
    return out


def _pool_line(pool: dict) -> str:
    line = f"pool {pool['cidr']}"
    if pool.get("free") is not None:
        line += f": /{pool['block_prefix']} blocks, {pool['claimed']} claimed, {pool['free']} free"
    return line

