"""Which cluster a command talks to, the same way for every command (config.py has the rule).

Every command that talks to a cluster takes `--lab NAME`, `--store URL` and
`--context NAME` (commands that only run on a lab take `--lab` alone). The old
spellings stay as hidden aliases: `--name` for the lab of `lab`, `probe`,
`connectivity test` and `demo`.

A lab's etcd store is reachable only from inside the lab: such a command runs itself
again in the lab's first node namespace with the store it resolved (`in_lab`), so the
root namespace never talks to lab addresses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from podnet.cli.output import fail
from podnet.errors import PodnetError
from podnet.state import agent_socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from podnet.config import Target
    from podnet.store.base import Store

RULE = ("first given wins: --lab, --store, --context, $PODNET_STORE, $PODNET_LAB, "
        "the config file's current-context ($PODNET_CONFIG or /etc/podnet/config.yaml), the lab 'lab'")
RESOLVED = "--resolved-store"  # how a command re-run inside a lab is told its store


def add_target_options(parser: argparse.ArgumentParser, *, lab_only: bool = False) -> None:
    group = parser.add_argument_group("which cluster", RULE)
    group.add_argument("--lab", metavar="NAME", help="a lab on this machine")
    if lab_only:
        group.add_argument("--name", dest="lab", help=argparse.SUPPRESS)  # the old spelling
    else:
        group.add_argument("--store", dest="target_store", metavar="URL",
                           help="a store: path, sqlite:///path, etcd://host:port,...")
        group.add_argument("--context", dest="target_context", metavar="NAME", help="a context of the config file")
        group.add_argument(RESOLVED, dest="resolved_store", help=argparse.SUPPRESS)


def target(args: argparse.Namespace) -> Target:
    from podnet.config import Target, resolve  # (config file parsing: only when a command runs)

    resolved = getattr(args, "resolved_store", None)
    if resolved:
        return Target(store=resolved, source="the command that ran this one")
    return resolve(args.lab, getattr(args, "target_store", None), getattr(args, "target_context", None))


def lab_name(args: argparse.Namespace, command: str) -> str:
    """The lab of a command that only runs on a lab."""
    where = target(args)
    if where.lab is None:
        raise PodnetError(f"{command} runs on a lab, and {where.source} names a store",
                          "give --lab NAME")
    return where.lab


def store_location(where: Target) -> str:
    if where.store:
        return where.store
    from podnet.lab.state import LabState

    assert where.lab is not None
    url = LabState.load(where.lab).data.get("store_url")
    if not url:
        raise PodnetError(f"lab {where.lab!r} has no cluster store yet", "is it up? podnet lab status")
    return str(url)


def open_cluster_store(args: argparse.Namespace) -> Store:
    """The cluster's store, which must exist: a mistyped --store never becomes a new one."""
    from podnet.store import open_store

    return open_store(store_location(target(args)), create=False)


def in_lab(args: argparse.Namespace) -> int | None:
    """Run this very command again inside the lab when its store lives there (etcd on
    the lab fabric); None: run it here."""
    where = target(args)
    if where.lab is None:
        return None
    from podnet.lab.orchestrator import in_lab_argv, needs_lab_namespace
    from podnet.lab.state import LabState

    url = store_location(where)
    if not needs_lab_namespace(url):
        return None
    import subprocess

    argv = in_lab_argv(LabState.load(where.lab), [sys.executable, "-m", "podnet.cli", *sys.argv[1:], RESOLVED, url])
    return subprocess.run(argv, check=False).returncode


def lab_aware(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a store command: errors become a message and exit 1; etcd labs run inside."""

    def run(args: argparse.Namespace) -> int:
        try:
            code = in_lab(args)
        except PodnetError as exc:
            return fail(exc)
        return command(args) if code is None else code

    run.__doc__ = command.__doc__
    return run


def node_sockets(args: argparse.Namespace) -> dict[str, str]:
    """node -> agent socket: every node of a lab; on a real cluster, this machine's
    agent (the context's socket, else --socket/$PODNET_AGENT_SOCKET/the default)."""
    where = target(args)
    if where.lab is None:
        import socket

        return {socket.gethostname(): where.socket or agent_socket(getattr(args, "socket", None))}
    from podnet.lab.state import LabState

    nodes = LabState.load(where.lab).data.get("nodes") or {}
    if not nodes:
        raise PodnetError(f"lab {where.lab!r} has no nodes", "is it up? podnet lab status")
    return {name: node["socket"] for name, node in nodes.items()}
