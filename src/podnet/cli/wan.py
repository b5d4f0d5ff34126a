"""`podnet wan up|down|status|plug|unplug`: the WAN joining labs side by side (lab/wan.py).

    podnet wan up [NAME] [--cidr 100.64.0.0/24]      namespace pn-wan-NAME, bridge br0, NAME's address
    podnet wan plug NAME --lab east --node node0     a leg wan0 in the node, an address from the WAN
    podnet wan unplug NAME --lab east --node node0   delete that leg
    podnet wan status [NAME] [-o json]               legs and whether their links still exist (all WANs
                                                     without NAME)
    podnet wan down NAME                             every leg, the namespace, the state

The WAN belongs to no lab: `lab down` leaves it (and the other labs' legs) alone.
"""

from __future__ import annotations

import argparse

from podnet.cli.output import add_output_option, emit_object, emit_rows, fail
from podnet.errors import PodnetError
from podnet.lab.wan import DEFAULT_CIDR

DEFAULT_NAME = "wan"
LEG_COLUMNS = ("owner", "netns", "ifname", "peer", "address", "link")


def register(sub: argparse._SubParsersAction) -> None:
    wan = sub.add_parser("wan", help="a WAN namespace joining labs side by side, owned by no lab")
    wan_sub = wan.add_subparsers(dest="wan_cmd", required=True)

    up = wan_sub.add_parser("up", help="create the WAN: namespace pn-wan-NAME, bridge br0 with the cidr's first host")
    up.add_argument("name", metavar="NAME", nargs="?", default=DEFAULT_NAME,
                    help=f"1-12 of [a-z0-9-] (default {DEFAULT_NAME})")
    up.add_argument("--cidr", default=DEFAULT_CIDR, help=f"the WAN's IPv4 range, /16 to /29 (default {DEFAULT_CIDR})")
    add_output_option(up)
    up.set_defaults(func=_cmd_up)

    down = wan_sub.add_parser("down", help="delete every leg, the WAN's namespace and its state")
    down.add_argument("name", metavar="NAME")
    down.set_defaults(func=_cmd_down)

    status = wan_sub.add_parser("status", help="a WAN's legs and whether their links still exist")
    status.add_argument("name", metavar="NAME", nargs="?", help="one WAN (default: every WAN here)")
    add_output_option(status)
    status.set_defaults(func=_cmd_status)

    for verb, what, func in (("plug", "give a lab node a leg (wan0) on the WAN and print its address", _cmd_plug),
                             ("unplug", "delete a lab node's leg", _cmd_unplug)):
        change = wan_sub.add_parser(verb, help=what)
        change.add_argument("name", metavar="NAME")
        change.add_argument("--lab", required=True, metavar="LAB", help="the node's lab")
        change.add_argument("--node", required=True, metavar="NODE", help="a node of that lab")
        change.set_defaults(func=func)


def _cmd_up(args: argparse.Namespace) -> int:
    from podnet.lab.wan import wan_up

    try:
        state = wan_up(args.name, args.cidr)
    except PodnetError as exc:
        return fail(exc)
    if args.output == "json":
        emit_object(state, "json")
    else:
        print(f"wan {state['name']}: {state['address']} on {state['netns']} ({len(state['legs'])} legs)")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from podnet.lab.wan import wan_down

    try:
        problems = wan_down(args.name)
    except PodnetError as exc:
        return fail(exc)
    for problem in problems:
        fail(problem)
    if not problems:
        print(f"wan {args.name} removed")
    return 1 if problems else 0


def _cmd_status(args: argparse.Namespace) -> int:
    from podnet.lab.wan import list_wans, wan_status

    try:
        states = [wan_status(name) for name in ([args.name] if args.name else list_wans())]
    except PodnetError as exc:
        return fail(exc)
    if args.output == "json":
        emit_object(states[0] if args.name else states, "json")
        return 0
    if not states:
        print("no WAN here (podnet wan up)")
    for state in states:
        rows = [{"owner": owner, **leg} for owner, leg in state["legs"].items()]
        title = f"wan {state['name']}: {state['address']} on {state['netns']}" + ("" if state["present"] else " (gone)")
        emit_rows(rows, LEG_COLUMNS, "table", title=title)
    return 0


def _owner(args: argparse.Namespace) -> tuple[str, str]:
    """The node's namespace and its leg's name "<lab>/<node>"."""
    from podnet.lab.state import LabState
    from podnet.lab.topology import check_lab_name

    try:
        nodes = LabState.load(check_lab_name(args.lab)).data.get("nodes", {})
    except PodnetError as exc:
        raise PodnetError(f"--lab: {exc.msg}", exc.details) from None
    if args.node not in nodes:
        raise PodnetError(f"--node: no node {args.node!r} in lab {args.lab}", f"nodes: {', '.join(nodes) or 'none'}")
    return nodes[args.node]["netns"], f"{args.lab}/{args.node}"


def _cmd_plug(args: argparse.Namespace) -> int:
    from podnet.lab.wan import plug

    try:
        netns, owner = _owner(args)
        address = plug(args.name, netns, owner)
    except PodnetError as exc:
        return fail(exc)
    print(address)
    return 0


def _cmd_unplug(args: argparse.Namespace) -> int:
    from podnet.lab.wan import unplug

    owner = f"{args.lab}/{args.node}"  # the lab may be gone already: its leg still goes
    try:
        removed = unplug(args.name, owner)
    except PodnetError as exc:
        return fail(exc)
    if not removed:
        return fail(f"--lab/--node: {owner} has no leg on WAN {args.name}")
    print(f"{owner} unplugged from wan {args.name}")
    return 0
