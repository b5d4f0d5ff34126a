"""`podnet container run|ls|inspect|exec|logs|stop|rm|connect|disconnect`: Docker's container commands
over podnet's CNI path. The work is in podnet.containers; this module only parses,
prints (tables for people, `-o json` for scripts) and maps errors to exit codes
(`run` uses Docker's 125 for its own failures, so they differ from the container's).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from podnet.cli.output import add_host_options, emit_object, emit_rows, fail
from podnet.errors import PodnetError

if TYPE_CHECKING:
    from podnet.model.container import ContainerRecord

RUN_FAILED = 125
LS_COLUMNS = ("NAME", "ID", "NETWORK", "IPS", "PORTS", "STATE", "CMD")


def _host(args: argparse.Namespace):
    from podnet.containers.lifecycle import default_host

    return default_host(args.state_dir, args.socket)


def _command(raw: list[str]) -> list[str]:
    return raw[1:] if raw[:1] == ["--"] else raw


def _shown(record: ContainerRecord) -> dict[str, Any]:
    """A record as `inspect` and `-o json` print it: as the store holds it (keys
    sorted, as store.base.dumps writes them), so scripts see what they always saw."""
    return json.loads(record.encode())


def _with_host(fn: Callable) -> Callable[[argparse.Namespace], int]:
    """Open the host's store for one command and always close it."""

    def run(args: argparse.Namespace) -> int:
        host = _host(args)
        try:
            return int(fn(host, args) or 0)
        finally:
            host.store.close()

    return run


def _run(host, args: argparse.Namespace) -> int:
    from podnet.containers import lifecycle, spec

    try:
        choice, extra_networks = spec.parse_networks(args.network)
        req = spec.check_request(spec.RunRequest(
            name=args.name or spec.new_id()[:12],
            choice=choice,
            extra_networks=extra_networks,
            cmd=tuple(_command(args.cmd)),
            ports=spec.parse_ports(args.publish),
            ip=args.ip,
            aliases=tuple(args.alias),
            hostname=args.hostname,
            detached=args.detach,
            env=spec.parse_env(args.env),
            auto_remove=args.rm,
            interactive=args.interactive,
        ))
        if args.detach:
            record = lifecycle.run_detached(host, req)
            if args.output == "json":
                emit_object(_shown(record), "json")
            else:
                print(record.id)
            return 0
        code, record = lifecycle.run_foreground(host, req, echo=args.output != "json")
    except PodnetError as err:
        return fail(err, RUN_FAILED)
    if args.output == "json":
        emit_object(_shown(record), "json")
    return code


def _ls(host, args: argparse.Namespace) -> int:
    from podnet.containers.spec import ls_row

    records = [r for r in host.records.list() if args.all or r.state != "exited"]
    if args.output == "json":
        emit_rows([_shown(r) for r in records], LS_COLUMNS, "json")
    else:
        emit_rows([ls_row(r) for r in records], LS_COLUMNS, "table")
    return 0


def _inspect(host, args: argparse.Namespace) -> int:
    emit_object(_shown(host.records.require(args.name)), args.output)
    return 0


def _exec(host, args: argparse.Namespace) -> int:
    from podnet.containers.lifecycle import exec_in

    capture = args.output == "json"
    done = exec_in(host, args.name, _command(args.cmd), capture)
    if capture:
        emit_object({"name": args.name, "exit_code": done.returncode,
                     "stdout": done.stdout.decode(errors="replace"),
                     "stderr": done.stderr.decode(errors="replace")}, "json")
    return done.returncode


def _logs(host, args: argparse.Namespace) -> int:
    log = host.files(host.records.require(args.name).id).log
    data = log.read_bytes() if log.exists() else b""
    if args.output == "json":
        emit_object({"name": args.name, "log": data.decode(errors="replace")}, "json")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def _stop(host, args: argparse.Namespace) -> int:
    from podnet.containers.lifecycle import stop

    _done(_shown(stop(host, args.name, args.time)), args.output)
    return 0


def _rm(host, args: argparse.Namespace) -> int:
    from podnet.containers.lifecycle import remove

    _done({**_shown(remove(host, args.name, args.force)), "removed": True}, args.output)
    return 0


def _connect(host, args: argparse.Namespace) -> int:
    from podnet.containers.connect import connect

    _done(_shown(connect(host, args.network, args.name)), args.output)
    return 0


def _disconnect(host, args: argparse.Namespace) -> int:
    from podnet.containers.connect import disconnect

    _done(_shown(disconnect(host, args.network, args.name)), args.output)
    return 0


def _done(record: dict[str, Any], output: str) -> None:
    if output == "json":
        emit_object(record, "json")
    else:
        print(record["name"])


def register(sub: argparse._SubParsersAction) -> None:
    """Add `podnet container ...` to the top-level parser."""
    container = sub.add_parser("container", help="run and manage containers")
    commands = container.add_subparsers(dest="container_command", required=True)

    run = add_host_options(commands.add_parser("run", help="run a command in a new container"))
    run.add_argument("--name", help="container name (default: a random one)")
    run.add_argument("--network", action="append",
                     help="NET, host, none or container:NAME (default: network 'podnet'); repeat with further"
                          " networks to put the container on each (eth1, eth2...; the default route stays on"
                          " the first)")
    run.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOSTPORT:CONTAINERPORT[/PROTO]",
                     help="publish a container port on the host (repeatable)")
    run.add_argument("--ip", help="a static address on the network")
    run.add_argument("--alias", action="append", default=[], help="another DNS name on the network (repeatable)")
    run.add_argument("--hostname", help="hostname (default: the name)")
    run.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable")
    run.add_argument("-d", "--detach", action="store_true", help="run in the background (the agent is its parent)")
    run.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    run.add_argument("--rm", action="store_true", help="remove the container when it exits")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    run.set_defaults(func=_with_host(_run))

    ls = add_host_options(commands.add_parser("ls", help="list containers"))
    ls.add_argument("-a", "--all", action="store_true", help="include exited containers")
    ls.set_defaults(func=_with_host(_ls))

    for name, helptext, fn in (("inspect", "show a container's record", _inspect),
                               ("logs", "print a container's output", _logs)):
        parser = add_host_options(commands.add_parser(name, help=helptext))
        parser.add_argument("name")
        parser.set_defaults(func=_with_host(fn))

    exec_ = add_host_options(commands.add_parser("exec", help="run a command inside a running container"))
    exec_.add_argument("name")
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    exec_.set_defaults(func=_with_host(_exec))

    stop = add_host_options(commands.add_parser("stop", help="stop a container (SIGTERM, then SIGKILL)"))
    stop.add_argument("name")
    stop.add_argument("-t", "--time", type=float, default=10.0, help="seconds before SIGKILL (default 10)")
    stop.set_defaults(func=_with_host(_stop))

    rm = add_host_options(commands.add_parser("rm", help="remove a container"))
    rm.add_argument("name")
    rm.add_argument("-f", "--force", action="store_true", help="stop it first if it is running")
    rm.set_defaults(func=_with_host(_rm))

    for name, helptext, fn in (("connect", "put a running container on a further network", _connect),
                               ("disconnect", "take a running container off a secondary network", _disconnect)):
        parser = add_host_options(commands.add_parser(name, help=helptext))
        parser.add_argument("network")
        parser.add_argument("name")
        parser.set_defaults(func=_with_host(fn))


__all__ = ["register"]
