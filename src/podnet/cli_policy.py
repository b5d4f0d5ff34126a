"""`podnet apply|delete -f FILE.yaml`, `podnet get KIND`, `podnet label`: kubectl-style
editing of policy objects in the cluster store (policy/repository.py).

Which store: `--store URL` when given, else the lab's (`--lab NAME`, default
$PODNET_LAB or "lab"), whose state file names its shared store.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from podnet.cli_lab import DEFAULT_LAB
from podnet.cli_output import emit_rows, fail
from podnet.errors import PodnetError


def register(sub: argparse._SubParsersAction) -> None:
    apply = sub.add_parser("apply", help="create or update policy objects from YAML (multi-document)")
    _file_options(apply)
    apply.set_defaults(func=_cmd_apply)

    delete = sub.add_parser("delete", help="delete the policy objects named in YAML files")
    _file_options(delete)
    delete.set_defaults(func=_cmd_delete)

    get = sub.add_parser("get", help="list policy objects: namespaces, networkpolicies, clusterpolicies, "
                                     "tiers, hostendpoints, pods")
    get.add_argument("kind", help="a kind or its short name (ns, netpol, cp, hep, po)")
    get.add_argument("-n", "--namespace", help="only this namespace (namespaced kinds)")
    get.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    _store_options(get)
    get.set_defaults(func=_cmd_get)

    label = sub.add_parser("label", help="set (k=v) or remove (k-) labels of a namespace or a pod")
    label.add_argument("kind", choices=("namespace", "ns", "pod", "po"))
    label.add_argument("target", metavar="NAME|NS/POD")
    label.add_argument("changes", nargs="+", metavar="k=v|k-")
    _store_options(label)
    label.set_defaults(func=_cmd_label)


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", default=DEFAULT_LAB, help=f"the lab whose store to use (default $PODNET_LAB "
                                                           f"or {DEFAULT_LAB})")
    parser.add_argument("--store", help="a store location instead (path, sqlite://, etcd://)")


def _file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                        help="YAML file, or - for standard input (repeatable)")
    _store_options(parser)


def store_location(args: argparse.Namespace) -> str:
    if args.store:
        return str(args.store)
    from podnet.lab.cluster import LabState

    state = LabState.load(args.lab)
    url = state.data.get("store_url")
    if not url:
        raise PodnetError(f"lab {args.lab!r} has no cluster store yet", "is it up? podnet lab status")
    return str(url)


def in_lab(args: argparse.Namespace) -> int | None:
    """A lab's etcd store is reachable only from inside the lab: run this very command
    again in the lab's first node namespace, with the store named. None: run it here."""
    if args.store:
        return None
    import subprocess

    from podnet.lab.cluster import LabState
    from podnet.lab.orchestrator import in_lab_argv, needs_lab_namespace

    url = store_location(args)
    if not needs_lab_namespace(url):
        return None
    argv = in_lab_argv(LabState.load(args.lab), [sys.executable, "-m", "podnet.cli", *sys.argv[1:],
                                                 "--store", url])
    return subprocess.run(argv, check=False).returncode


def _open(args: argparse.Namespace):
    from podnet.store import open_store

    return open_store(store_location(args))


def lab_aware(command):
    """Wrap a command: errors become a message and exit 1; etcd labs run inside."""

    def run(args: argparse.Namespace) -> int:
        try:
            code = in_lab(args)
        except PodnetError as exc:
            return fail(exc)
        return command(args) if code is None else code

    run.__doc__ = command.__doc__
    return run


def read_documents(files: list[str]) -> list[dict[str, Any]]:
    import yaml

    docs: list[dict[str, Any]] = []
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else open(name).read()  # noqa: SIM115
        except OSError as exc:
            raise PodnetError(f"cannot read {name}: {exc.strerror}") from None
        try:
            loaded = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise PodnetError(f"{name} is not valid YAML", str(exc).replace("\n", " ")) from None
        for doc in loaded:
            if not isinstance(doc, dict):
                raise PodnetError(f"{name}: every document must be a mapping, got {type(doc).__name__}")
            docs.append(doc)
    if not docs:
        raise PodnetError("no documents given")
    return docs


def _parse(args: argparse.Namespace):
    from podnet.policy.objects import parse_documents

    return parse_documents(read_documents(args.filename))


def _edit(args: argparse.Namespace, action: str) -> int:
    """apply or delete: parse every file first, then one store transaction."""
    from podnet.policy import repository

    try:
        objects = _parse(args)
        with _open(args) as store:
            changes = getattr(repository, action)(store, objects)
    except PodnetError as exc:
        return fail(exc)
    for change in changes:
        print(change.shown)
    return 0


@lab_aware
def _cmd_apply(args: argparse.Namespace) -> int:
    return _edit(args, "apply")


@lab_aware
def _cmd_delete(args: argparse.Namespace) -> int:
    return _edit(args, "delete")


def _summary(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    meta, spec = doc.get("metadata", {}), doc.get("spec", {})
    labels = ",".join(f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items()))
    row: dict[str, Any] = {"NAME": meta.get("name"), "NAMESPACE": meta.get("namespace"), "LABELS": labels}
    if kind == "NetworkPolicy":
        row["POD-SELECTOR"] = json.dumps(spec.get("podSelector", {}), separators=(",", ":"))
        row["TYPES"] = ",".join(spec.get("policyTypes") or [])
    elif kind == "ClusterPolicy":
        row.update(TIER=spec.get("tier", "default"), ORDER=spec.get("order"),
                   SELECTOR=json.dumps(spec.get("selector", {}), separators=(",", ":")))
    elif kind == "Tier":
        row["ORDER"] = spec.get("order")
    elif kind == "HostEndpoint":
        row.update(NODE=spec.get("node") or spec.get("host"), IPS=spec.get("ips"))
    elif kind == "Pod":
        row.update(NODE=spec.get("nodeName"), IPS=doc.get("status", {}).get("podIPs"))
    return row


@lab_aware
def _cmd_get(args: argparse.Namespace) -> int:
    from podnet.policy import repository

    try:
        kind = repository.kind_of(args.kind)
        with _open(args) as store:
            docs = repository.get(store, kind, args.namespace)
    except PodnetError as exc:
        return fail(exc)
    if args.output == "json":
        print(json.dumps(docs, indent=2))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    else:
        rows = [_summary(kind, doc) for doc in docs]
        columns = [c for c in (rows[0] if rows else {"NAME": 0}) if kind in repository.NAMESPACED
                   or c != "NAMESPACE"]
        emit_rows(rows, columns, "table")
    return 0


@lab_aware
def _cmd_label(args: argparse.Namespace) -> int:
    from podnet.policy import repository

    try:
        kind = repository.kind_of(args.kind)
        with _open(args) as store:
            change = repository.label(store, kind, args.target, args.changes)
    except PodnetError as exc:
        return fail(exc)
    print(change.shown)
    return 0
