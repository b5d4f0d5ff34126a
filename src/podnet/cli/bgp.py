"""`podnet bgp status`: every node's BGP sessions as its BIRD sees them (state, since,
the neighbour and its AS, routes imported and exported), asked of each node's agent
(op `bgp.status`, which reads BIRD's control socket). On a lab, every node; elsewhere,
the node of the agent at `--socket`. Exit status 1 when a session is not Established
or a node does not answer: BGP state is never left to guess (Calico users' complaint)."""

from __future__ import annotations

import argparse
import json

from podnet.cli.output import fail
from podnet.errors import PodnetError
from podnet.state import agent_socket


def register(sub: argparse._SubParsersAction) -> None:
    bgp = sub.add_parser("bgp", help="BGP (the bgp fabric): sessions and routes of every node")
    verbs = bgp.add_subparsers(dest="bgp_command", required=True)
    status = verbs.add_parser("status", help="every node's BGP sessions (exit 1 if one is not Established)")
    status.add_argument("--lab", help="the lab's nodes (default $PODNET_LAB)")
    status.add_argument("--socket", help="one node: the agent at this socket (default: the local agent)")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(func=_cmd_status)


def node_sockets(args: argparse.Namespace) -> dict[str, str]:
    """node -> agent socket: the lab's nodes (--lab, else $PODNET_LAB), or the one
    agent asked for (--socket, else the local agent: a real machine)."""
    import os

    lab = None if args.socket else args.lab or os.environ.get("PODNET_LAB")
    if not lab:
        return {"": args.socket or agent_socket()}
    from podnet.lab.state import LabState

    return {node: info["socket"] for node, info in LabState.load(lab).data.get("nodes", {}).items()}


def _cmd_status(args: argparse.Namespace) -> int:
    from podnet.observe.bgp_checks import ESTABLISHED, collect, healthy

    try:
        nodes = collect(node_sockets(args))
    except PodnetError as err:
        return fail(err)
    if args.output == "json":
        print(json.dumps(nodes, indent=2))
        return 0 if healthy(nodes) else 1
    from rich.console import Console
    from rich.table import Table

    table = Table(title="BGP sessions")
    for column in ("node", "session", "neighbor", "AS", "state", "since", "imported", "exported"):
        table.add_column(column)
    for node in nodes:
        if "error" in node:
            table.add_row(node["node"], "-", "-", "-", f"[red]{node['error']}[/]", "-", "-", "-")
            continue
        if not node.get("sessions"):
            table.add_row(node["node"], "-", "-", "-", "[yellow]no sessions[/]", "-", "-", "-")
        for s in node["sessions"]:
            state = s["state"] if s["state"] == ESTABLISHED else f"[red]{s['state']}[/]"
            table.add_row(node["node"], s["name"], s["neighbor"], str(s.get("neighbor_as") or "-"), state,
                          s["since"], str(s["imported"]), str(s["exported"]))
    Console().print(table)
    return 0 if healthy(nodes) else 1
