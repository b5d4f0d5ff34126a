"""`podnet doctor [--fix]`: every node's common faults, each with its fix (agent/doctor.py
judges on the node, op `node.doctor`); `--fix` has each node repair what is safe to
repair and shows what was fixed and what is left. Exit 1 while a fault is left or a
node does not answer."""

from __future__ import annotations

import argparse
import json

from podnet.cli.output import add_output_option, fail
from podnet.cli.target import add_target_options, node_sockets
from podnet.errors import PodnetError


def register(sub: argparse._SubParsersAction) -> None:
    doctor = sub.add_parser("doctor", help="find and explain common faults on every node (--fix: repair what is safe)")
    add_target_options(doctor)
    doctor.add_argument("--socket", help="this machine's agent, on a real cluster")
    doctor.add_argument("--fix", action="store_true", help="have each node repair what it safely can, then check again")
    add_output_option(doctor)
    doctor.set_defaults(func=_cmd_doctor)


def ask(sockets: dict[str, str], fix: bool) -> list[dict]:
    """Each node's answer, or the reason it gave none."""
    from podnet.rpc.client import call

    out = []
    for node, socket in sockets.items():
        try:
            answer = call(socket, "node.doctor", timeout=60, fix=fix)
            out.append({**answer, "node": answer.get("node") or node})
        except (PodnetError, OSError, ValueError) as exc:
            out.append({"node": node, "error": getattr(exc, "msg", None) or str(exc), "findings": [], "fixed": []})
    return out


def mtu_mismatches(nodes: list[dict]) -> list[dict]:
    """Findings across nodes: pods on one node send packets bigger than another node's
    underlay now carries (vxlan: less the encapsulation). Packets from the first to the
    second are then dropped silently, TCP stalls on big segments and big UDP vanishes:
    the MTU complaint users of every fabric know."""
    sized = {n["node"]: n["mtu"] for n in nodes if isinstance(n.get("mtu"), dict)}
    out = []
    for sender, mtu in sorted(sized.items()):
        short = sorted(f"{other} {m['carried']}" for other, m in sized.items()
                       if other != sender and m["carried"] < mtu["pods"])
        if short:
            out.append({"check": "mtu", "fixable": False, "target": [],
                        "problem": f"pods on {sender} send packets up to {mtu['pods']} bytes, but what reaches "
                                   f"their pods is limited to {', '.join(short)}: bigger packets are dropped",
                        "fix": "give every node's underlay the same MTU, then restart the agents and re-create "
                               "the pods (their MTU is set at ADD)"})
    return out


def _cmd_doctor(args: argparse.Namespace) -> int:
    try:
        nodes = ask(node_sockets(args), args.fix)
    except PodnetError as err:
        return fail(err)
    cluster = mtu_mismatches(nodes)
    if cluster:
        nodes.append({"node": "cluster", "findings": cluster, "fixed": []})
    bad = any(n.get("error") or n["findings"] for n in nodes)
    if args.output == "json":
        print(json.dumps(nodes, indent=2))
        return 1 if bad else 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="podnet doctor")
    for column in ("node", "check", "problem", "fix"):
        table.add_column(column, overflow="fold")
    for node in nodes:
        if node.get("error"):
            table.add_row(node["node"], "agent", f"[red]{node['error']}[/]", "start the node's agent")
        for f in node.get("fixed", []):
            table.add_row(node["node"], f["check"], f"[green]fixed:[/] {f['problem']}", f["fix"])
        for f in node["findings"]:
            table.add_row(node["node"], f["check"], f"[red]{f['problem']}[/]",
                          f["fix"] + ("" if not f["fixable"] or args.fix else " [dim](--fix)[/]"))
    if not any(n.get("error") or n["findings"] or n.get("fixed") for n in nodes):
        table.add_row("all", "-", "[green]no fault found[/]", "-")
    Console().print(table)
    return 1 if bad else 0
