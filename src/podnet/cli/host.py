"""`podnet host join NAME` and `podnet host leave NAME`: a plain machine (a VM, bare
metal) on the pod network without an agent (hostjoin/). Which cluster: cli/target.py.

    podnet host join vm1 --store etcd://10.0.0.5:2379          print the `ip` commands
    podnet host join vm1 --store ... --apply                    apply them here
    podnet host join vm1 --address 192.0.2.7/24 --gateway 192.0.2.1 --underlay ens3
                                                                for another machine
    podnet host leave vm1 --store ... [--apply]                 undo, free the address

The join reserves the address in the store and writes `hosts/<name>` either way;
`--apply` also configures this machine's kernel (run it on the host itself).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re

from podnet.cli.output import fail
from podnet.cli.target import add_target_options, in_lab, open_cluster_store
from podnet.defaults import DEFAULT_BLOCK_PREFIX, DEFAULT_CLUSTER_CIDR
from podnet.errors import PodnetError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from podnet.hostjoin.plan import HostNet, JoinPlan

HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def register(sub: argparse._SubParsersAction) -> None:
    host = sub.add_parser("host", help="plain machines (VMs, bare metal) on the pod network, without an agent")
    host_sub = host.add_subparsers(dest="host_cmd", required=True)

    join = host_sub.add_parser("join", help="give this machine a podnet address and routes to the pods "
                                            "(printed as ip commands, or applied with --apply)")
    join.add_argument("name", metavar="NAME", help="the host's name (a DNS label): hosts/NAME, HostEndpoint host:")
    join.add_argument("--underlay", metavar="IF", help="the interface facing the nodes (default: the default "
                                                       "route's; with --address: eth0)")
    join.add_argument("--address", metavar="CIDR", help="the host's underlay address/prefix, for a host other than "
                                                        "this machine (default: read from --underlay)")
    join.add_argument("--gateway", metavar="IP", help="the host's default gateway (with --address)")
    join.add_argument("--cluster-cidr", default=DEFAULT_CLUSTER_CIDR, help=f"the pod network (default {DEFAULT_CLUSTER_CIDR})")
    join.add_argument("--rack", type=int, help="the host's rack (default: as recorded, else 0)")
    _mode_options(join)
    join.set_defaults(func=_cmd_join)

    leave = host_sub.add_parser("leave", help="undo host join: free the address, delete hosts/NAME "
                                              "(and with --apply the routes and address here)")
    leave.add_argument("name", metavar="NAME")
    leave.add_argument("--underlay", metavar="IF", help="the interface the address is on (printed commands; "
                                                        "default eth0)")
    _mode_options(leave)
    leave.set_defaults(func=_cmd_leave)


def _mode_options(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="change this machine's kernel (run it on the host)")
    mode.add_argument("--print", dest="print_only", action="store_true", help="print the ip commands (default)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_target_options(parser)


def host_name(text: str) -> str:
    if not HOST_NAME.fullmatch(text):
        raise PodnetError(f"NAME: {text!r} is not a valid host name",
                          "at most 63 lowercase alphanumerics or '-', starting and ending with an alphanumeric")
    return text


def _network(text: str, what: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text)
    except ValueError:
        raise PodnetError(f"{what}: {text!r} is not an IPv4 network (a.b.c.d/len, host bits zero)") from None


def _given_host(args: argparse.Namespace) -> HostNet:
    """The host's underlay from --address/--gateway/--underlay (no kernel read)."""
    from podnet.hostjoin.plan import HostNet

    try:
        address = ipaddress.IPv4Interface(args.address)
    except ValueError:
        raise PodnetError(f"--address: {args.address!r} is not an IPv4 address with a prefix (a.b.c.d/len)") from None
    if "/" not in args.address:
        raise PodnetError(f"--address: {args.address!r} needs its prefix length (a.b.c.d/len): it says what is on-link")
    gateway = ""
    if args.gateway:
        try:
            gateway = str(ipaddress.IPv4Address(args.gateway))
        except ValueError:
            raise PodnetError(f"--gateway: {args.gateway!r} is not an IPv4 address") from None
        if ipaddress.IPv4Address(gateway) not in address.network:
            raise PodnetError(f"--gateway: {gateway} is not on-link on {address.network}")
    return HostNet(args.underlay or "eth0", address, gateway)


def _check(args: argparse.Namespace) -> None:
    """Refuse what cannot work before anything is reserved."""
    host_name(args.name)
    if getattr(args, "rack", None) is not None and args.rack < 0:
        raise PodnetError(f"--rack: {args.rack} must be a non-negative integer")
    if getattr(args, "gateway", None) and not args.address:
        raise PodnetError("--gateway: give it with --address (else it is read from this machine)")
    if in_lab_needed(args):
        if args.apply:
            raise PodnetError("--apply changes this machine, and this lab's store is reachable only inside the lab",
                              "run it inside the host: podnet lab host add NAME --join, or lab exec HOST -- podnet ...")
        if args.host_cmd == "join" and not args.address:
            raise PodnetError("--address: this lab's store is reachable only inside the lab, where this machine's "
                              "underlay is not the host's", "give the host's --address (and --gateway)")


def in_lab_needed(args: argparse.Namespace) -> bool:
    from podnet.cli.target import store_location, target
    from podnet.lab.orchestrator import needs_lab_namespace

    where = target(args)
    return where.lab is not None and needs_lab_namespace(store_location(where))


def _cmd_join(args: argparse.Namespace) -> int:
    from podnet.hostjoin import reserve

    try:
        _check(args)
        cluster = _network(args.cluster_cidr, "--cluster-cidr")
        if not args.apply and (code := in_lab(args)) is not None:
            return code
        if args.address:
            host = _given_host(args)
        else:
            from pyroute2 import IPRoute

            from podnet.hostjoin.apply import local_host

            with IPRoute() as ipr:
                host = local_host(ipr, args.underlay, cluster)
        with open_cluster_store(args) as store:
            before = reserve.read_host(store, args.name)
            joined = reserve.join(store, args.name, host, cluster, DEFAULT_BLOCK_PREFIX, args.rack)
        changes = _apply(joined.plan, before.pod_ip if before else "") if args.apply else []
    except PodnetError as exc:
        return fail(exc)
    plan = joined.plan
    if args.output == "json":
        print(json.dumps({**plan.to_json(), "block": joined.block, "reused": joined.reused,
                          "record": joined.record.to_json(), "applied": changes if args.apply else None}, indent=2))
        return 0
    again = " (kept)" if joined.reused else ""
    print(f"# host {plan.name}: podnet address {plan.pod_ip}{again} from the hosts block {joined.block}")
    for note in plan.notes:
        print(f"# {note}")
    if args.apply:
        print("\n".join(changes) if changes else "# nothing to change: already applied")
    else:
        print("\n".join(plan.commands()))
    return 0


def _apply(plan: JoinPlan, stale: str) -> list[str]:
    from pyroute2 import IPRoute

    from podnet.hostjoin.apply import apply_plan

    with IPRoute() as ipr:
        return apply_plan(ipr, plan, stale)


def _cmd_leave(args: argparse.Namespace) -> int:
    from podnet.hostjoin import reserve

    try:
        _check(args)
        if not args.apply and (code := in_lab(args)) is not None:
            return code
        with open_cluster_store(args) as store:
            record, freed = reserve.leave(store, args.name)
        changes: list[str] = []
        if args.apply:
            from pyroute2 import IPRoute

            from podnet.hostjoin.apply import undo

            with IPRoute() as ipr:
                changes = undo(ipr, record.pod_ip if record else "")
    except PodnetError as exc:
        return fail(exc)
    if record is None and not freed:
        return fail(PodnetError(f"host {args.name!r} is not known", "list them with: podnet get hosts"))
    pod_ip = record.pod_ip if record and record.pod_ip else (freed[0] if freed else "")
    if args.output == "json":
        print(json.dumps({"name": args.name, "freed": freed, "applied": changes if args.apply else None}, indent=2))
    elif args.apply:
        print(f"host {args.name} left the pod network" + (f" ({pod_ip} freed)" if pod_ip else ""))
        print("\n".join(changes))
    else:
        print(f"# host {args.name} left the pod network" + (f" ({pod_ip} freed)" if pod_ip else ""))
        if pod_ip:
            from podnet.defaults import HOST_ROUTE_PROTO

            print(f"ip route flush proto {HOST_ROUTE_PROTO}")
            print(f"ip address del {pod_ip}/32 dev {args.underlay or 'eth0'}  # /<segment prefix> on macvlan")
    return 0
