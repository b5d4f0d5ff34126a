"""The `podnet` command."""

from __future__ import annotations

import argparse
import sys

from podnet import (
    cli_connectivity,
    cli_container,
    cli_flows,
    cli_lab,
    cli_network,
    cli_policy,
    cli_probe,
)
from podnet.cli_output import fail
from podnet.cni.config import DEFAULT_SOCKET, DEFAULT_STORE
from podnet.errors import PodnetError
from podnet.state import agent_socket


def _cmd_agent(args: argparse.Namespace) -> int:
    from podnet.agent.daemon import run_agent
    from podnet.cluster.options import NodeOptions

    node = None
    if args.node:
        node = NodeOptions(args.node, args.fabric, args.cluster_cidr, args.block_prefix, args.underlay, args.lease_ttl)
    if args.policy_host and args.node:
        return fail("--policy-host and --node exclude each other (a node enforces its own host endpoint)", 2)
    return run_agent(args.socket, args.store, args.state_dir, args.dns_upstream, node, args.policy_host)


def _cmd_install(args: argparse.Namespace) -> int:
    from podnet.install import install_cni

    for path in install_cni(args.bin_dir, args.conf_dir, args.network, args.subnet, args.bridge):
        print(f"wrote {path}")
    return 0


def _cmd_ping(args: argparse.Namespace) -> int:
    import socket

    from podnet.cni import wire

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(args.socket)
            with open("/proc/self/ns/net", "rb") as ns:
                wire.send(sock, wire.pack_request(b'{"op":"ping"}'), [ns.fileno()])
            code, payload = wire.recv_reply(sock)
    except OSError as exc:
        print(f"podnet: no agent answers on {args.socket}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(payload.decode())
    return code


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.host:
        from podnet.demo_host import run_demo as run_host_demo

        return run_host_demo(keep=args.keep)
    from podnet.demo import run_demo

    return run_demo(keep=args.keep, name=args.name, nodes=args.nodes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podnet", description="container networking for Linux")
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run the node agent (serves CNI requests)")
    agent.add_argument("--socket", default=agent_socket(),
                       help=f"UNIX socket (default $PODNET_AGENT_SOCKET or {DEFAULT_SOCKET})")
    agent.add_argument("--store", help=f"SQLite store (default STATE_DIR/store.db = {DEFAULT_STORE})")
    agent.add_argument("--state-dir", help="state directory (default $PODNET_STATE_DIR or /var/lib/podnet)")
    agent.add_argument("--dns-upstream", metavar="IP[:PORT]",
                       help="where container DNS forwards names outside its networks (default: nowhere)")
    agent.add_argument("--policy-host", metavar="NAME",
                       help="only enforce the policy of the plain host NAME (its HostEndpoint) from --store")
    cluster = agent.add_argument_group("cluster node (all ignored without --node)")
    cluster.add_argument("--node", help="join a cluster through the store as node NAME")
    cluster.add_argument("--fabric", choices=("vxlan", "host-gw"), default="vxlan",
                         help="how nodes reach each other's pod blocks (default vxlan)")
    cluster.add_argument("--cluster-cidr", default="10.244.0.0/16", help="pod CIDR split into node blocks")
    cluster.add_argument("--block-prefix", type=int, default=24, help="prefix length of a node's block (default 24)")
    cluster.add_argument("--underlay", default="eth0", help="the node's interface toward other nodes (default eth0)")
    cluster.add_argument("--lease-ttl", type=float, default=10.0, help="node lease TTL in seconds (default 10)")
    agent.set_defaults(func=_cmd_agent)

    install = sub.add_parser("install-cni", help="install the podnet CNI executables")
    install.add_argument("--bin-dir", required=True, help="CNI plugin directory, e.g. /opt/cni/bin")
    install.add_argument("--conf-dir", help="also write a default conflist here, e.g. /etc/cni/net.d")
    install.add_argument("--network", default="podnet", help="name of the default network")
    install.add_argument("--subnet", default="10.85.0.0/16", help="subnet of the default network")
    install.add_argument("--bridge", default="podnet0", help="bridge of the default network")
    install.set_defaults(func=_cmd_install)

    ping = sub.add_parser("ping", help="check that an agent answers")
    ping.add_argument("--socket", default=agent_socket())
    ping.set_defaults(func=_cmd_ping)

    demo = sub.add_parser("demo", help="a live demo: a 3-node lab, its connectivity test and a tour")
    demo.add_argument("--keep", action="store_true", help="leave the demo up for exploration")
    demo.add_argument("--host", action="store_true", help="the single-host demo instead (Docker's network modes)")
    demo.add_argument("--name", default="demo", help="lab name (default demo)")
    demo.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    demo.set_defaults(func=_cmd_demo)
    cli_network.register(sub)
    cli_container.register(sub)
    cli_lab.register(sub)
    cli_connectivity.register(sub)
    cli_probe.register(sub)
    cli_policy.register(sub)
    cli_flows.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PodnetError as err:
        return fail(err)
    except BrokenPipeError:  # `podnet get ... | head`: the reader left, nothing to say
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
