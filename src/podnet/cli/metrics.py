"""`podnet metrics [NODE]`: an agent's Prometheus metrics in the text format, asked
over the agent socket (op `metrics`), so a lab's nodes are read without opening a port
into the lab. On a lab: NODE's agent, or every node's, each block headed by a comment
line `# node NAME` (the text stays parseable); elsewhere the agent at `--socket` (else
the local one). Exit status 1 when an agent does not answer."""

from __future__ import annotations

import argparse
import sys

from podnet.cli.bgp import node_sockets
from podnet.cli.output import fail
from podnet.errors import PodnetError


def register(sub: argparse._SubParsersAction) -> None:
    metrics = sub.add_parser("metrics", help="an agent's Prometheus metrics (text format)")
    metrics.add_argument("node", nargs="?", help="the lab node to ask (default: every node of the lab)")
    metrics.add_argument("--lab", help="the lab's nodes (default $PODNET_LAB)")
    metrics.add_argument("--socket", help="the agent at this socket (default: the local agent)")
    metrics.set_defaults(func=_cmd_metrics)


def _cmd_metrics(args: argparse.Namespace) -> int:
    from podnet.rpc.client import call

    try:
        sockets = node_sockets(args)
    except PodnetError as err:
        return fail(err)
    if args.node:
        if "" in sockets:
            return fail(f"node {args.node!r}: a node name needs a lab (--lab or $PODNET_LAB)", 2)
        if args.node not in sockets:
            return fail(PodnetError(f"no node {args.node!r} in the lab", f"nodes: {', '.join(sorted(sockets))}"), 2)
        sockets = {args.node: sockets[args.node]}
    status = 0
    for node, path in sockets.items():
        try:
            text = call(path, "metrics", timeout=10)
        except (PodnetError, OSError) as err:
            reason = err.msg if isinstance(err, PodnetError) else f"no answer on {path}: {err}"
            print(f"podnet: {'node ' + node + ': ' if node else ''}{reason}", file=sys.stderr)
            status = 1
            continue
        if node and len(sockets) > 1:
            print(f"# node {node}")
        sys.stdout.write(str(text))
    return status
