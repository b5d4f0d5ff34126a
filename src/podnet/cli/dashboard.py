"""`podnet dashboard`: the cluster as a live, read-only web page (observe/dashboard/).

    podnet dashboard [--lab NAME | --store URL | --context NAME] [--host 127.0.0.1] [--port 8642]
                     [--open-browser yes|no] [--allow-remote] [--socket S] [--cluster-cidr CIDR]

Prints the URL and serves until Ctrl-C or SIGTERM (exit 0). A lab's nodes are all asked; on a
store, this machine's agent. An etcd lab's store is reachable only inside the lab,
where a browser on this machine cannot reach the page: such labs are refused with
that reason (sqlite-store labs and real stores work).
"""

from __future__ import annotations

import argparse
import signal
import threading

from podnet.cli.output import fail
from podnet.cli.target import add_target_options, node_sockets, store_location, target
from podnet.defaults import DEFAULT_CLUSTER_CIDR
from podnet.errors import PodnetError
from podnet.observe.dashboard import DEFAULT_HOST, DEFAULT_PORT


def register(sub: argparse._SubParsersAction) -> None:
    dash = sub.add_parser("dashboard", help="a live, read-only web page of the cluster (topology, health, flows, "
                                            "services, trace)")
    add_target_options(dash)
    dash.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; "
                                                           "another than loopback needs --allow-remote)")
    dash.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    dash.add_argument("--allow-remote", action="store_true",
                      help="listen on a non-loopback --host: whoever reaches it sees the whole cluster")
    dash.add_argument("--open-browser", choices=("yes", "no"), default="no", help="open the page (default no)")
    dash.add_argument("--socket", help="this machine's agent, when the cluster is a store "
                                       "(default $PODNET_AGENT_SOCKET or /run/podnet/agent.sock)")
    dash.add_argument("--cluster-cidr", default=DEFAULT_CLUSTER_CIDR,
                      help=f"the pool the nodes' blocks come from (default {DEFAULT_CLUSTER_CIDR})")
    dash.set_defaults(func=_cmd_dashboard)


def _source(args: argparse.Namespace):  # -> ClusterSource (imported late: the CLI starts fast)
    import ipaddress

    from podnet.observe.dashboard.data import ClusterSource
    from podnet.store import missing_store

    if not 0 <= args.port <= 65535:
        raise PodnetError(f"--port {args.port} is not a port number", "0 to 65535 (0: any free port)")
    try:
        pool = str(ipaddress.IPv4Network(args.cluster_cidr))
    except ValueError:
        raise PodnetError(f"--cluster-cidr {args.cluster_cidr!r} is not an IPv4 network", "e.g. 10.244.0.0/16") from None
    where = target(args)
    url = store_location(where)
    if where.lab is not None:
        from podnet.lab.orchestrator import needs_lab_namespace

        if needs_lab_namespace(url):
            raise PodnetError(f"lab {where.lab!r} keeps its store in etcd inside the lab, which the dashboard "
                              "cannot reach from here", "the dashboard supports sqlite-store labs and real stores "
                                                        "for now (podnet status --lab works on this lab)")
    if missing_store(url):
        raise PodnetError(f"store {missing_store(url)} does not exist", "check --store (or the context's store)")
    return ClusterSource(url, node_sockets(args), lab=where.lab, pool=pool)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from podnet.observe.dashboard.server import check_bind, make_server

    try:
        check_bind(args.host, args.allow_remote)  # before reading anything
        source = _source(args)
    except PodnetError as exc:
        return fail(exc)
    try:
        server = make_server(source, args.host, args.port, allow_remote=args.allow_remote)
    except PodnetError as exc:
        source.close()
        return fail(exc)
    print(f"podnet dashboard: {server.url}  (read-only; Ctrl-C stops it)", flush=True)
    if args.open_browser == "yes":
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    server.hub.start()
    signal.signal(signal.SIGTERM, _stop)  # `kill` and service managers stop it as cleanly as Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.hub.stop()
        server.server_close()
        source.close()
    return 0


def _stop(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt
