"""`podnet trace SRC DST [--port P] [--protocol tcp|udp] [--live]`: the path one packet
takes, hop by hop, from the live kernel of the nodes involved (observe/trace.py); with
`--live` a traced probe confirms each hop and names where a dropped packet died.

Exit 0 when the packet is delivered, 1 when it is dropped or the verdict is unknown,
2 on bad input (an unknown SRC or DST, a port the service does not have)."""

from __future__ import annotations

import argparse
import json

from podnet.cli.output import add_output_option, fail
from podnet.cli.target import add_target_options, lab_aware, node_sockets, open_cluster_store
from podnet.errors import PodnetError

MARKS = {True: "confirmed", False: "NOT SEEN", None: ""}


def register(sub: argparse._SubParsersAction) -> None:
    trace = sub.add_parser("trace", help="the path a packet takes, hop by hop, from the nodes' live kernel state")
    trace.add_argument("src", metavar="SRC", help="the source pod: ns/name or its IP")
    trace.add_argument("dst", metavar="DST", help="ns/name of a pod, svc/ns/name or a ClusterIP, or an IP")
    trace.add_argument("--port", type=int, help="destination port (default: the service's first port, "
                                                "the pod's first named port, else 80)")
    trace.add_argument("--protocol", default="tcp", type=str.lower, choices=("tcp", "udp"))
    trace.add_argument("--live", action="store_true", help="send a traced probe (nftrace) and confirm each hop")
    add_target_options(trace)
    trace.add_argument("--socket", help="this machine's agent, on a real cluster")
    add_output_option(trace)
    trace.set_defaults(func=_cmd_trace)


@lab_aware
def _cmd_trace(args: argparse.Namespace) -> int:
    from podnet.observe.trace import TraceError, run_trace

    if args.port is not None and not 0 < args.port < 65536:
        return fail(f"--port {args.port}: a port is 1-65535", 2)
    try:
        # inside an etcd lab (`--resolved-store` names only the store) the lab's nodes are still asked
        sockets = node_sockets(argparse.Namespace(**{**vars(args), "resolved_store": None}))
        with open_cluster_store(args) as store:
            result = run_trace(store, sockets, args.src, args.dst, args.port, args.protocol, args.live)
    except TraceError as exc:
        return fail(exc, 2)
    except PodnetError as exc:
        return fail(exc)
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0 if result["verdict"] == "delivered" else 1


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    svc = result["service"]
    title = (f"{result['src']['name']} -> {result['dst']['name']} ({result['dst']['ip']}) "
             f"{result['protocol']}/{result['port']}" + (f" via service {svc['name']} {svc['ip']}:{svc['port']}"
                                                          if svc else "") + (" [live]" if result["live"] else ""))
    table = Table(title=title)
    for column in ("#", "node", "kind", "where", "detail", "ok"):
        table.add_column(column, overflow="fold")
    for i, h in enumerate(result["hops"]):
        mark = ("ok" if h["ok"] else "[red]FAIL[/]") + (f" {MARKS[h['confirmed']]}" if result["live"] else "")
        style = "red" if i == result["died_at"] else None
        table.add_row(str(i), h["node"] or "-", h["kind"], h["where"], h["detail"], mark, style=style)
    console = Console()
    console.print(table)
    colour = {"delivered": "green", "dropped": "red"}.get(result["verdict"], "yellow")
    console.print(f"[{colour}]{result['verdict'].upper()}[/]: {result['reason']}", highlight=False)
