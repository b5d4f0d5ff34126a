"""`podnet peers [status]` and `podnet peers rm NODE`: the gossip fabric as every node's
agent sees it (op `gossip.status`): peers and how each is reached (direct or through
another peer, fast kernel path or sleeve, encrypted or not), the ring's block
ownership and dead peers' votes, and the DNS entries. Exit status 1 when a node does
not answer or a peer is unreachable, so a script can wait on the mesh.

`rm` hands a dead peer's space to the asked agent at once (op `gossip.rm`), for
those who will not wait out the grace period; Weave's `rmpeer`, but refused for the
asked node itself or a peer it does not know."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from podnet.cli.bgp import node_sockets
from podnet.cli.output import emit_rows, fail
from podnet.errors import PodnetError

PEER_COLUMNS = ("node", "peer", "connection", "path", "encrypted", "underlay", "last seen")


def register(sub: argparse._SubParsersAction) -> None:
    peers = sub.add_parser("peers", help="gossip fabric: peers, paths, ring ownership, DNS (exit 1 if unreachable)")
    _add_target(peers)
    peers.set_defaults(func=_cmd_status)
    verbs = peers.add_subparsers(dest="peers_command")
    status = verbs.add_parser("status", help="every node's peers, the ring and DNS (the default)")
    _add_target(status, argparse.SUPPRESS)
    status.set_defaults(func=_cmd_status)
    rm = verbs.add_parser("rm", help="reclaim a dead peer's address space now")
    rm.add_argument("peer", metavar="NODE", help="the peer to remove")
    _add_target(rm, argparse.SUPPRESS)
    rm.set_defaults(func=_cmd_rm)


def _add_target(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """--lab, --socket and -o, taken before or after the verb (the verb's own copies
    default to SUPPRESS, so they do not overwrite what came before the verb)."""
    parser.add_argument("--lab", default=default, help="the lab's nodes (default $PODNET_LAB)")
    parser.add_argument("--socket", default=default, help="one node: the agent at this socket (default: the local agent)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default=default or "table",
                        help="table for people (default), json for scripts")


def ask(sockets: dict[str, str], timeout: float = 10.0) -> list[dict[str, Any]]:
    """node -> agent socket  =>  each node's gossip.status answer, or its error, in that order."""
    from podnet.observe.peers_view import node_answer, node_error
    from podnet.rpc.client import call

    out = []
    for node, sock in sockets.items():
        try:
            answer = call(sock, "gossip.status", timeout=timeout)
        except (PodnetError, OSError, ValueError) as exc:
            out.append(node_error(node or sock, getattr(exc, "msg", None) or str(exc)))
            continue
        if isinstance(answer, dict):
            out.append(node_answer(node, answer))
        else:
            out.append(node_error(node or sock, f"gossip.status answered {type(answer).__name__}, not an object"))
    return out


def _cmd_status(args: argparse.Namespace) -> int:
    from podnet.observe import peers_view as view

    try:
        nodes = ask(node_sockets(args))
    except PodnetError as err:
        return fail(err)
    if args.output == "json":
        print(json.dumps(nodes, indent=2))
        return view.exit_status(nodes)
    from rich.markup import escape

    peers = view.peer_rows(nodes, time.time())
    for row in peers:
        if "error" in row:
            row["connection"] = f"[red]no answer: {escape(row['error'])}[/]"
        elif row["path"] == view.UNREACHABLE:
            row["path"] = f"[red]{view.UNREACHABLE}[/]"
    emit_rows(peers, PEER_COLUMNS, "table", title="Peers (as each node sees them)")
    emit_rows(view.ring_rows(nodes), ("owner", "blocks", "cidrs", "seen by"), "table", title="Ring ownership")
    deaths = view.death_rows(nodes)
    if deaths:
        emit_rows(deaths, ("peer", "reclaimed by", "votes", "seen by"), "table", title="Dead peers")
    emit_rows(view.dns_rows(nodes), ("name", "ip", "node", "ttl", "known to"), "table", title="DNS")
    return view.exit_status(nodes)


def _cmd_rm(args: argparse.Namespace) -> int:
    from podnet.observe import peers_view as view
    from podnet.rpc.client import call

    try:
        sockets = node_sockets(args)
    except PodnetError as err:
        return fail(err)
    asker = view.rm_asker(sockets, args.peer)
    if asker is None:
        return fail(f"peers rm: NODE {args.peer!r} is the only node: no other peer can take its space")
    try:
        status = call(sockets[asker], "gossip.status", timeout=10)
        refusal = view.rm_refusal(status if isinstance(status, dict) else {}, args.peer)
        if refusal:
            return fail(f"peers rm: {refusal}")
        answer = call(sockets[asker], "gossip.rm", timeout=30, peer=args.peer)
    except PodnetError as err:
        return fail(PodnetError(f"peers rm {args.peer}: {err.msg}", err.details))
    except OSError as exc:
        return fail(f"peers rm {args.peer}: agent of {asker or sockets[asker]} did not answer ({exc})")
    if args.output == "json":
        print(json.dumps(answer, indent=2))
    else:
        print(view.rm_summary(answer if isinstance(answer, dict) else {}))
    return 0
