"""`podnet flows` (verdicts the nodes logged, each naming its rule) and `podnet policy
explain|status|counters|log-allowed` (what would happen and why; what is in force;
how many packets each rule decided).

flows asks every node's agent (`policy.flows`, over its unix socket) for the packets
its NFLOG group saw; `--follow` keeps asking from each node's cursor. explain runs the
reference semantics (policy/evaluate.py) on the store's objects: no traffic is sent.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from podnet.cli.output import emit_rows, fail
from podnet.cli.target import (
    add_target_options,
    lab_aware,
    node_sockets,
    open_cluster_store,
    target,
)
from podnet.errors import PodnetError

FOLLOW_INTERVAL = 0.5
PAGE = 1000
COLUMNS = ["TIME", "NODE", "VERDICT", "SRC", "DST", "PROTO", "RULE"]


def register(sub: argparse._SubParsersAction) -> None:
    flows = sub.add_parser("flows", help="policy verdicts logged by the nodes, each naming its rule")
    flows.add_argument("--follow", "-f", action="store_true", help="keep printing new verdicts")
    flows.add_argument("--pod", metavar="NS/NAME", help="only flows from or to this pod")
    flows.add_argument("--verdict", choices=("deny", "allow", "log", "pass"), help="only this verdict")
    flows.add_argument("--since", type=float, metavar="SECONDS", help="only flows of the last SECONDS")
    flows.add_argument("--mesh", nargs="?", const="all", choices=("all", "denied", "rate_limited", "retried", "failed"),
                       help="the service mesh's requests instead: 403s, 429s, retried and failed ones, each with "
                            "its request id (the sidecars' access log, kept by each node's agent)")
    flows.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _agent_options(flows)
    flows.set_defaults(func=_cmd_flows)

    policy = sub.add_parser("policy", help="explain a flow, show what is in force, log allowed flows")
    psub = policy.add_subparsers(dest="policy_cmd", required=True)
    explain = psub.add_parser("explain", help="what would happen to a flow, and why (no traffic sent)")
    explain.add_argument("src", metavar="SRC", help="ns/pod, a host endpoint name, or an IP")
    explain.add_argument("dst", metavar="DST", help="ns/pod, a host endpoint name, or an IP")
    explain.add_argument("--port", type=int, default=80)
    explain.add_argument("--protocol", default="tcp", type=str.upper, choices=("TCP", "UDP", "SCTP", "ICMP"))
    explain.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_target_options(explain)
    explain.set_defaults(func=_cmd_explain)

    status = psub.add_parser("status", help="the policy table each node has in force")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _agent_options(status)
    status.set_defaults(func=_cmd_status)

    counters = psub.add_parser("counters", help="packets and bytes per rule on every node (nft counters)")
    counters.add_argument("--all", action="store_true", help="also rules no packet has hit")
    counters.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _agent_options(counters)
    counters.set_defaults(func=_cmd_counters)

    logging = psub.add_parser("log-allowed", help="also log allowed new flows (on) or only denials (off)")
    logging.add_argument("state", choices=("on", "off"))
    add_target_options(logging)
    logging.set_defaults(func=_cmd_log_allowed)


# --------------------------------------------------------------------------- flows


def _agent_options(parser: argparse.ArgumentParser) -> None:
    """Commands that ask the agents: every node of a lab, or this machine's agent."""
    add_target_options(parser)
    parser.add_argument("--socket", help="this machine's agent, when the cluster is a store "
                                         "(default $PODNET_AGENT_SOCKET or /run/podnet/agent.sock)")


def _pod_addresses(args: argparse.Namespace) -> dict[str, list[str]]:
    """ns/name -> addresses of every pod: the lab's record, or the store's pods."""
    where = target(args)
    if where.lab is not None:
        from podnet.lab.state import LabState

        pods = LabState.load(where.lab).data.get("pods") or {}
        return {key: [ip.split("/")[0] for ip in pod.get("ips", [])] for key, pod in pods.items()}
    from podnet.objects import store as objects
    from podnet.policy.kinds import POD

    with open_cluster_store(args) as store:
        docs = objects.get(store, POD)
    return {f"{d['metadata']['namespace']}/{d['metadata']['name']}": list(d["status"]["podIPs"]) for d in docs}


def _row(flow: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    def side(ip: str, port: int | None) -> str:
        return f"{names.get(ip, ip)}{'' if port is None else f':{port}'}"

    return {"TIME": datetime.fromtimestamp(flow["time"]).strftime("%H:%M:%S.%f")[:-3], "NODE": flow["node"],
            "VERDICT": flow["verdict"].upper(), "SRC": side(flow["src"], flow.get("sport")),
            "DST": side(flow["dst"], flow.get("dport")), "PROTO": flow["protocol"], "RULE": flow["rule"]}


def _cmd_flows(args: argparse.Namespace) -> int:
    from podnet.observe.flows import FlowCursor

    if args.mesh:
        return _mesh_flows(args)
    try:
        sockets = node_sockets(args)
        pods = _pod_addresses(args)
        if args.pod and args.pod not in pods:
            raise PodnetError(f"no pod {args.pod!r} in {target(args)}", f"pods: {', '.join(sorted(pods))}")
    except PodnetError as exc:
        return fail(exc)
    ips = set(pods[args.pod]) if args.pod else None
    cursor = FlowCursor(sockets, page=PAGE)
    names = {ip: key for key, addresses in pods.items() for ip in addresses}  # flows read `x/a`

    oldest = time.time() - args.since if args.since else 0.0

    def fetch() -> list[dict[str, Any]]:
        return [f for f in cursor.fetch() if (ips is None or f["src"] in ips or f["dst"] in ips)
                and (args.verdict is None or f["verdict"] == args.verdict) and f["time"] >= oldest]

    flows = fetch()
    if not args.follow:
        if args.output == "json":
            print(json.dumps(flows, indent=2))
        else:
            emit_rows([_row(f, names) for f in flows], COLUMNS, "table", title=f"{len(flows)} logged flow(s)")
        return 0
    try:
        while True:
            for flow in flows:
                if args.output == "json":
                    print(json.dumps(flow), flush=True)
                else:
                    row = _row(flow, names)
                    print("  ".join(str(row[c]) for c in COLUMNS), flush=True)
            time.sleep(FOLLOW_INTERVAL)
            flows = fetch()
    except KeyboardInterrupt:
        return 0


MESH_COLUMNS = ["TIME", "NODE", "KIND", "POD", "SERVICE", "ROUTE", "STATUS", "PEER", "REQUEST-ID"]


def _mesh_flows(args: argparse.Namespace) -> int:
    """The requests the mesh refused, retried or failed (op mesh.denials), oldest first."""
    from podnet.rpc.client import call

    try:
        sockets = node_sockets(args)
    except PodnetError as exc:
        return fail(exc)
    oldest = time.time() - args.since if args.since else 0.0
    records = []
    for node, sock in sockets.items():
        try:
            reply = call(sock, "mesh.denials", timeout=5.0, kind=args.mesh)
        except PodnetError:
            continue  # an agent that is down has nothing to say now
        records += [{**r, "node": node} for r in reply.get("records", [])  # type: ignore[union-attr]
                    if r["time"] >= oldest and (not args.pod or args.pod in (r.get("pod"), r.get("peer")))]
    records.sort(key=lambda r: r["time"])
    if args.output == "json":
        print(json.dumps(records, indent=2))
        return 0
    rows = [{"TIME": datetime.fromtimestamp(r["time"]).strftime("%H:%M:%S.%f")[:-3], "NODE": r["node"],
             "KIND": ",".join(r["kinds"]), "POD": r["pod"], "SERVICE": r["service"], "ROUTE": r["route"],
             "STATUS": r["status"], "PEER": r["peer"] or "-", "REQUEST-ID": r["request_id"]} for r in records]
    emit_rows(rows, MESH_COLUMNS, "table", title=f"{len(rows)} mesh request(s)")
    return 0


# -------------------------------------------------------------------------- policy


@lab_aware
def _cmd_explain(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from podnet.policy.evaluate import decide, explain_text
    from podnet.policy.world import load_world

    try:
        with open_cluster_store(args) as store:
            world, _revision = load_world(store)
        src, dst = (_endpoint_or_ip(world, x) for x in (args.src, args.dst))
        decision = decide(world, src, dst, args.port, args.protocol)
    except PodnetError as exc:
        return fail(exc)
    if args.output == "json":
        print(json.dumps(asdict(decision), indent=2, default=str))
    else:
        print(explain_text(decision))
    return 0


def _endpoint_or_ip(world: Any, text: str) -> Any:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return world.endpoint(text)


def _ask_nodes(args: argparse.Namespace, op: str, timeout: float) -> list[tuple[str, dict | PodnetError]]:
    """Ask every node's agent one op: (node, reply) or (node, the error it gave)."""
    from podnet.rpc.client import call

    out: list[tuple[str, dict | PodnetError]] = []
    for node, sock in node_sockets(args).items():
        try:
            out.append((node, call(sock, op, timeout=timeout)))  # type: ignore[arg-type]
        except PodnetError as exc:
            out.append((node, exc))
    return out


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        replies = _ask_nodes(args, "policy.status", 5)
    except PodnetError as exc:
        return fail(exc)
    rows = [{"node": node, **reply} if isinstance(reply, dict) else {"node": node, "error": reply.msg}
            for node, reply in replies]
    emit_rows(rows, ["node", "rules", "chains", "sets", "endpoints", "revision", "compile_ms", "apply_ms",
                     "error"], args.output)
    return 0 if all(not r.get("error") for r in rows) else 1


def _cmd_counters(args: argparse.Namespace) -> int:
    try:
        replies = _ask_nodes(args, "policy.counters", 30)
    except PodnetError as exc:
        return fail(exc)
    rows = []
    for node, reply in replies:
        if isinstance(reply, PodnetError):
            return fail(reply)
        rows += [{"node": node, **r} for r in reply["rules"] if args.all or r["packets"]]
    emit_rows(rows, ["node", "packets", "bytes", "rule"], args.output)
    return 0


@lab_aware
def _cmd_log_allowed(args: argparse.Namespace) -> int:
    from podnet import keys
    from podnet.model.policy import PolicySettings

    try:
        with open_cluster_store(args) as store:
            store.put(keys.POLICY_SETTINGS, PolicySettings(log_allowed=args.state == "on").encode())
    except PodnetError as exc:
        return fail(exc)
    print(f"allowed new flows are {'logged' if args.state == 'on' else 'not logged'}")
    return 0
