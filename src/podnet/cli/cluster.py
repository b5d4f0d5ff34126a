"""`podnet cluster init|join|leave|gateway|status`: clusters joined into a clusterset.

    podnet cluster init NAME --cluster-cidr C --service-cidr S [--global-cidr G]
                                                                   who this cluster is
    podnet cluster init --lab LAB [--global-cidr G]                (a lab: its name, its ranges)
    podnet cluster join OTHER --endpoint STORE [--advertise STORE] peer with OTHER
    podnet cluster join OTHER --peer-lab LAB                       (two labs: both named)
    podnet cluster join OTHER ... --encrypt                        tunnel through the encrypted sleeve
    podnet cluster leave OTHER                                     unpeer
    podnet cluster gateway add NODE (--address IP | --wan WAN)     a gateway candidate
    podnet cluster gateway remove NODE
    podnet cluster status [-o json]                                peers, gateways, each node's view

Joining writes both stores (as `cilium clustermesh connect` configures both clusters):
each gets a `clusterset/peers/<other>` naming the other's store and ranges, after the
ranges were checked for overlap (clusterset/model.py). A lab is its own cluster named
after it: `--lab` fills `clusterset/self` from the lab's state the first time.
`gateway add --wan` plugs a lab node into a WAN (`podnet wan up`) and takes the address
it got there.
"""

from __future__ import annotations

import argparse
import json

from podnet.cli.output import fail
from podnet.cli.target import add_target_options, open_cluster_store, store_location, target
from podnet.errors import PodnetError


def register(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="join clusters into a clusterset: peers, gateways, status")
    verbs = cluster.add_subparsers(dest="cluster_command", required=True)
    init = verbs.add_parser("init", help="name this cluster and its ranges (clusterset/self)")
    init.add_argument("name", nargs="?", help="this cluster's name (default with --lab: the lab's)")
    init.add_argument("--cluster-cidr", help="its pods' range (default with --lab: the lab's)")
    init.add_argument("--service-cidr", help="its services' range (default with --lab: the lab's)")
    init.add_argument("--global-cidr", help="reach this cluster on global IPs from G only (ranges that overlap "
                                            "another cluster's): G holds the cluster and service CIDRs one to "
                                            "one, each in a half")
    add_target_options(init)
    init.set_defaults(func=_cmd_init)
    join = verbs.add_parser("join", help="peer this cluster with OTHER (both stores are written)")
    join.add_argument("other", metavar="OTHER")
    where = join.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", metavar="STORE", help="OTHER's store (its agents' --store)")
    where.add_argument("--peer-lab", metavar="LAB", help="OTHER is the lab LAB on this machine")
    join.add_argument("--encrypt", action="store_true",
                      help="tunnel to OTHER through the gossip fabric's encrypted sleeve (AES-256-GCM), keyed from "
                           "a secret this command writes into both stores, instead of VXLAN in clear")
    join.add_argument("--advertise", metavar="STORE", help="this cluster's store as OTHER's agents reach it "
                                                            "(default: the store this command uses)")
    add_target_options(join)
    join.set_defaults(func=_cmd_join)
    leave = verbs.add_parser("leave", help="unpeer this cluster and OTHER (both stores)")
    leave.add_argument("other", metavar="OTHER")
    add_target_options(leave)
    leave.set_defaults(func=_cmd_leave)
    gateway = verbs.add_parser("gateway", help="the nodes that may carry the clusterset's traffic")
    gverbs = gateway.add_subparsers(dest="gateway_command", required=True)
    add = gverbs.add_parser("add", help="make NODE a gateway candidate")
    add.add_argument("node")
    how = add.add_mutually_exclusive_group(required=True)
    how.add_argument("--address", help="the address NODE tunnels from (one of its own)")
    how.add_argument("--wan", help="a lab's node: plug it into WAN (podnet wan up) and tunnel from there")
    add_target_options(add)
    add.set_defaults(func=_cmd_gateway_add)
    remove = gverbs.add_parser("remove", help="NODE is no gateway candidate any more")
    remove.add_argument("node")
    add_target_options(remove)
    remove.set_defaults(func=_cmd_gateway_remove)
    status = verbs.add_parser("status", help="this cluster, its peers, gateways, and each node's view (exit 1 if unwell)")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_target_options(status)
    status.set_defaults(func=_cmd_status)


def _cmd_init(args: argparse.Namespace) -> int:
    from podnet.clusterset.model import ClusterInfo
    from podnet.clusterset.records import read_local, write_self

    try:
        lab = target(args).lab
        base = _lab_info(lab).to_json() if lab else {}
        given = {"name": args.name, "clusterCIDR": args.cluster_cidr, "serviceCIDR": args.service_cidr,
                 "globalCIDR": args.global_cidr}
        info = ClusterInfo.from_json({**base, **{k: v for k, v in given.items() if v is not None}},
                                     "podnet cluster init")
        with open_cluster_store(args) as store:
            view = read_local(store)
            if view.me is not None and view.me != info and view.peers:
                raise PodnetError(f"cluster {view.me.name} has peers ({', '.join(p.name for p in view.peers)}): "
                                  "they route to it as it was named", "leave them first (podnet cluster leave), "
                                  "then init and join again")
            write_self(store, info)
    except PodnetError as exc:
        return fail(exc)
    print(f"cluster {info.name}: pods {info.cluster_cidr}, services {info.service_cidr}"
          + (f", reached on global IPs in {info.global_cidr}" if info.global_cidr else ""))
    return 0


def _lab_info(lab: str):  # noqa: ANN202 - ClusterInfo
    """A lab as a cluster: named after it, its ranges from its state."""
    from podnet.clusterset.model import ClusterInfo
    from podnet.lab.state import LabState

    data = LabState.load(lab).data
    _check_shared_store(lab, data)
    return ClusterInfo.from_json({"name": lab, "clusterCIDR": data.get("cluster_cidr"),
                                  "serviceCIDR": data.get("service_cidr")}, f"lab {lab}")


def _self_of(store, lab: str | None, where: str):  # noqa: ANN001, ANN202 - Store -> ClusterInfo
    from podnet.clusterset.records import read_local, write_self

    view = read_local(store)
    if view.me is not None:
        return view.me, view
    if lab is None:
        raise PodnetError(f"{where} has no clusterset/self", "name it first: podnet cluster init NAME ...")
    info = _lab_info(lab)
    write_self(store, info)
    view.me = info
    return info, view


def _cmd_join(args: argparse.Namespace) -> int:
    from secrets import token_bytes

    from podnet import keys
    from podnet.clusterset.model import TUNNEL_SECRET_BYTES, ClusterPeer, check_joinable
    from podnet.clusterset.records import write_peer, write_tunnel_secret
    from podnet.store import open_store

    try:
        here = target(args)
        if here.lab:
            _check_shared_store(here.lab, _lab_data(here.lab))
        local_url = args.advertise or store_location(here)
        remote_url = args.endpoint or _lab_store(args.peer_lab)
        with open_cluster_store(args) as store, open_store(remote_url, create=False) as remote:
            me, mine = _self_of(store, here.lab, "this cluster's store")
            other, theirs = _self_of(remote, args.peer_lab, f"the store at {remote_url}")
            if other.name != args.other:
                raise PodnetError(f"the store at {remote_url} is cluster {other.name!r}, not {args.other!r}")
            check_joinable(me, other, [p.info for p in mine.peers])
            check_joinable(other, me, [p.info for p in theirs.peers])
            tunnel = "sleeve" if args.encrypt else "vxlan"
            if args.encrypt:  # the key first: a peer is never carried without it
                secret = token_bytes(TUNNEL_SECRET_BYTES)
                write_tunnel_secret(store, other.name, secret)
                write_tunnel_secret(remote, me.name, secret)
            write_peer(store, ClusterPeer(other, remote_url, tunnel))
            write_peer(remote, ClusterPeer(me, local_url, tunnel))
            if not args.encrypt:
                store.delete(keys.clusterset_tunnel_key(other.name))
                remote.delete(keys.clusterset_tunnel_key(me.name))
    except PodnetError as exc:
        return fail(exc)
    print(f"joined {me.name} ({', '.join(me.routed)}) <-> {other.name} ({', '.join(other.routed)})"
          f"{', encrypted' if args.encrypt else ''}; traffic flows once each has a gateway in charge")
    return 0


def _lab_data(lab: str) -> dict:
    from podnet.lab.state import LabState

    return LabState.load(lab).data


def _check_shared_store(lab: str, data: dict) -> None:
    """A clusterset's records are read by every node from its cluster's store: a gossip
    lab has none (each node keeps its own, as Weave's peers do)."""
    if data.get("fabric") == "gossip":
        raise PodnetError(f"lab {lab} runs the gossip fabric: its nodes share no store, so they cannot all read "
                          "the clusterset's records", "a cluster of a clusterset runs a fabric with a cluster store "
                          "(vxlan, host-gw, bgp)")


def _lab_store(lab: str) -> str:
    from podnet.lab.state import LabState

    data = LabState.load(lab).data
    _check_shared_store(lab, data)
    url = data.get("store_url")
    if not url:
        raise PodnetError(f"lab {lab!r} has no cluster store yet", "is it up? podnet lab status")
    return str(url)


def _cmd_leave(args: argparse.Namespace) -> int:
    from podnet import keys
    from podnet.clusterset.records import read_local
    from podnet.store import open_store

    try:
        with open_cluster_store(args) as store:
            view = read_local(store)
            peer = next((p for p in view.peers if p.name == args.other), None)
            if peer is None:
                raise PodnetError(f"this cluster has no peer {args.other!r}",
                                  f"peers: {', '.join(p.name for p in view.peers) or 'none'}")
            store.delete(keys.clusterset_peer(peer.name))
            store.delete(keys.clusterset_tunnel_key(peer.name))
            if view.me is not None:
                try:
                    with open_store(peer.store, create=False) as remote:
                        remote.delete(keys.clusterset_peer(view.me.name))
                        remote.delete(keys.clusterset_tunnel_key(view.me.name))
                except PodnetError as exc:
                    print(f"{peer.name}'s store does not answer ({exc.msg}): unpeer it there too")
    except PodnetError as exc:
        return fail(exc)
    print(f"left {args.other}")
    return 0


def _cmd_gateway_add(args: argparse.Namespace) -> int:
    from podnet.clusterset.model import GatewayCandidate
    from podnet.clusterset.records import write_candidate

    try:
        address = args.address
        if args.wan:
            address = _plug(args)
        candidate = GatewayCandidate.from_json({"node": args.node, "address": address}, "podnet cluster gateway add")
        with open_cluster_store(args) as store:
            write_candidate(store, candidate)
    except PodnetError as exc:
        return fail(exc)
    print(f"gateway candidate {candidate.node}, tunnelling from {candidate.address}")
    return 0


def _plug(args: argparse.Namespace) -> str:
    from podnet.lab import wan
    from podnet.lab.state import LabState

    lab = target(args).lab
    if lab is None:
        raise PodnetError("--wan plugs a lab's node into a lab WAN", "give --lab, or --address on a real node")
    nodes = LabState.load(lab).data.get("nodes", {})
    if args.node not in nodes:
        raise PodnetError(f"node: lab {lab} has no node {args.node!r}", f"nodes: {', '.join(sorted(nodes))}")
    return wan.plug(args.wan, nodes[args.node]["netns"], f"{lab}/{args.node}").split("/")[0]


def _cmd_gateway_remove(args: argparse.Namespace) -> int:
    from podnet import keys

    try:
        with open_cluster_store(args) as store:
            if not store.delete(keys.clusterset_gateway(args.node)):
                raise PodnetError(f"node {args.node!r} is no gateway candidate")
    except PodnetError as exc:
        return fail(exc)
    print(f"{args.node} is no gateway candidate any more")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from podnet.cli.target import node_sockets
    from podnet.clusterset.records import read_local
    from podnet.rpc.client import ask_each

    try:
        with open_cluster_store(args) as store:
            view = read_local(store)
        nodes = ask_each(node_sockets(args), "clusterset.status", {}, 10.0)
    except PodnetError as exc:
        return fail(exc)
    problems = list(view.problems)
    for node in nodes:
        if node.get("error"):
            problems.append(f"{node.get('node')}: {node['error']}")
        problems += [f"{node.get('node')}: {peer}: {why}" for peer, why in (node.get("peers") or {}).items()
                     if not str(why).startswith("ok")]
        problems += [f"{node.get('node')}: tunnel to {peer}: {t.get('detail')}"
                     for peer, t in (node.get("tunnels") or {}).items() if t.get("rtt_ms") is None]
    if view.peers and view.active is None:
        problems.append("no gateway in charge (podnet cluster gateway add NODE ...)")
    out = {"cluster": view.me.to_json() if view.me else None, "peers": [p.to_json() for p in view.peers],
           "candidates": [c.to_json() for c in view.candidates.values()],
           "active": view.active.to_json() if view.active else None, "nodes": nodes, "problems": problems}
    if args.output == "json":
        print(json.dumps(out, indent=2))
    else:
        _print_status(out)
    return 1 if problems else 0


def _print_status(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    me = out["cluster"]
    console.print(f"cluster {me['name']}: pods {me['clusterCIDR']}, services {me['serviceCIDR']}"
                  + (f", global {me['globalCIDR']}" if me.get("globalCIDR") else "") if me
                  else "this cluster has no name yet (podnet cluster init)")
    active = out["active"]
    console.print(f"gateway in charge: {active['node']} ({active['address']})" if active else "gateway in charge: none")
    peers = Table(title="peers")
    for column in ("cluster", "pods", "services", "reached on", "tunnel", "store"):
        peers.add_column(column, overflow="fold")
    for peer in out["peers"]:
        peers.add_row(peer["name"], peer["clusterCIDR"], peer["serviceCIDR"], peer.get("globalCIDR") or "its ranges",
                      "encrypted (sleeve)" if peer.get("tunnel") == "sleeve" else "vxlan", peer["store"])
    console.print(peers)
    nodes = Table(title="each node's view")
    for column in ("node", "role", "peers", "tunnels (gateway in charge)"):
        nodes.add_column(column, overflow="fold")
    for node in out["nodes"]:
        tunnels = "; ".join(f"{p}: {t['gateway']} {t['rtt_ms']} ms" if t.get("rtt_ms") is not None
                            else f"{p}: {t.get('detail')}" for p, t in (node.get("tunnels") or {}).items())
        nodes.add_row(str(node.get("node")), str(node.get("role", "-")),
                      "; ".join(f"{p}: {w}" for p, w in (node.get("peers") or {}).items()) or "-", tunnels or "-")
    console.print(nodes)
    for problem in out["problems"]:
        console.print(f"[red]✗ {problem}[/]")
