"""`podnet network create|ls|inspect|rm`: Docker's user-defined networks.

Each command works on the state dir's store and conflists directly; the agent is only
asked to apply the isolation table now (if none answers, create/rm still succeed and
say that isolation follows when the agent runs).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from podnet.cli.output import add_host_options, emit_object, emit_rows, fail
from podnet.errors import InvalidConfig, PodnetError
from podnet.model.network import DRIVERS, NetworkRecord
from podnet.state import StatePaths

if TYPE_CHECKING:
    from podnet.networks.service import NetworkService

COLUMNS = ("NAME", "DRIVER", "SUBNETS", "GATEWAYS", "INTERNAL", "CONTAINERS")

CREATE_EPILOG = """\
Without --subnet, the first free /24 of 10.89.0.0/16 is used. --subnet may be given
several times (IPv4 and IPv6); --gateway and --ip-range may be given once per address
family and apply to the first --subnet of their family. An --internal network gets no
default route, no masquerade and no forwarding in or out: its containers reach each
other (and the host) only. Separate bridge networks cannot reach each other.
A macvlan network with --vlan N (or Docker's --parent eth0.N) puts its containers on
the 802.1Q sub-interface <parent>.N, made at the first attach; that needs the 8021q
kernel module.
"""


def _service(args: argparse.Namespace) -> NetworkService:
    from podnet.networks.service import NetworkService

    return NetworkService(StatePaths.resolve(args.state_dir), args.socket)


def _row(network: NetworkRecord, containers: list[dict[str, Any]]) -> dict[str, Any]:
    """The table row of a network; JSON output gets the full record instead."""
    return {
        "NAME": network.name,
        "DRIVER": network.driver,
        "SUBNETS": [str(s.subnet) for s in network.subnets],
        "GATEWAYS": [str(s.gateway) for s in network.subnets],
        "INTERNAL": "yes" if network.internal else "no",
        "CONTAINERS": len(containers),
    }


def _details(service: NetworkService, network: NetworkRecord) -> dict[str, Any]:
    return {
        **network.to_json(),
        "conflist": str(service.conflist_path(network.name)),
        "containers": service.containers_on(network.name),
    }


def _emit(service: NetworkService, networks: list[NetworkRecord], output: str) -> None:
    if output == "json":
        emit_rows([_details(service, n) for n in networks], COLUMNS, output)
    else:
        emit_rows([_row(n, service.containers_on(n.name)) for n in networks], COLUMNS, output)


def _sync(service: NetworkService) -> None:
    """Have the agent apply the isolation table now. The network change stands either
    way: without an agent, or if it fails, say so and exit 0."""
    from podnet.rpc.client import AgentUnavailable

    try:
        service.sync_isolation()
    except AgentUnavailable:
        print(
            f"podnet: warning: no agent answers on {service.socket_path}; network isolation "
            "is applied when the agent runs (podnet agent)",
            file=sys.stderr,
        )
    except PodnetError as err:
        print(f"podnet: warning: the agent could not apply network isolation: {err.msg}", file=sys.stderr)


def _labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidConfig(f"invalid --label {item!r}: want KEY=VALUE")
        out[name] = value
    return out


def _cmd_create(args: argparse.Namespace) -> int:
    with _service(args) as service:
        network = service.create(
            args.name, driver=args.driver, subnets=args.subnet, gateways=args.gateway,
            ip_ranges=args.ip_range, parent=args.parent, mtu=args.mtu, internal=args.internal,
            labels=_labels(args.label), vlan=args.vlan,
        )
        _sync(service)
        if args.output == "json":
            emit_object(_details(service, network), args.output)
        else:
            _emit(service, [network], args.output)
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    with _service(args) as service:
        _emit(service, service.list(), args.output)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    with _service(args) as service:
        emit_object(_details(service, service.get(args.name)), args.output)
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    """Like `docker network rm`: every name is tried; the exit code says if one failed."""
    code, done = 0, []
    with _service(args) as service:
        for name in args.names:
            try:
                removal = service.remove(name, force=args.force)
            except PodnetError as err:
                code = fail(err)
                continue
            done.append({
                "name": name,
                "detached": removal.detached,
                "bridge_deleted": removal.bridge_deleted,
            })
            if args.output != "json":
                print(name)
                for container in removal.detached:
                    who = container["name"] or container["id"]
                    print(f"podnet: warning: container {who} lost network {name}", file=sys.stderr)
        if done:
            _sync(service)
    if args.output == "json":
        emit_object({"removed": done}, args.output)
    return code


def register(sub: argparse._SubParsersAction) -> None:
    """Add `podnet network ...` to the top-level command's subparsers."""
    network = sub.add_parser("network", help="manage networks (create, ls, inspect, rm)")
    verbs = network.add_subparsers(dest="network_command", required=True)

    create = verbs.add_parser(
        "create", help="create a network", epilog=CREATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("name")
    create.add_argument("-d", "--driver", choices=DRIVERS, default="bridge")
    create.add_argument("--subnet", action="append", default=[], metavar="CIDR", help="repeatable; IPv4 or IPv6")
    create.add_argument("--gateway", action="append", default=[], metavar="IP", help="one per address family")
    create.add_argument("--ip-range", action="append", default=[], metavar="CIDR",
                        help="allocate container addresses from this part of the subnet")
    create.add_argument("--parent", metavar="IF",
                        help="host interface of a macvlan network (IF.N: VLAN N on IF, as Docker's parent=eth0.10)")
    create.add_argument("--vlan", type=int, metavar="N", help="macvlan on 802.1Q VLAN N (1-4094) of --parent")
    create.add_argument("--mtu", type=int, help="MTU of the containers' interfaces")
    create.add_argument("--internal", action="store_true", help="no access to or from outside the network")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    add_host_options(create)
    create.set_defaults(func=_cmd_create)

    ls = verbs.add_parser("ls", aliases=["list"], help="list networks")
    add_host_options(ls)
    ls.set_defaults(func=_cmd_ls)

    inspect = verbs.add_parser("inspect", help="show a network as JSON")
    inspect.add_argument("name")
    add_host_options(inspect)
    inspect.set_defaults(func=_cmd_inspect)

    rm = verbs.add_parser("rm", aliases=["remove"], help="remove networks")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.add_argument("-f", "--force", action="store_true",
                    help="remove even while containers are attached (they lose the network)")
    add_host_options(rm)
    rm.set_defaults(func=_cmd_rm)
