"""`podnet apply|delete -f FILE.yaml`, `podnet get|describe KIND`, `podnet label`:
kubectl-style editing of objects in the cluster store, every kind through the
registry (objects/registry.py). Which cluster: cli/target.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from podnet.cli.output import emit_rows, fail
from podnet.cli.target import add_target_options, lab_aware, open_cluster_store
from podnet.errors import PodnetError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from podnet.schema.kind import Kind


def register(sub: argparse._SubParsersAction) -> None:
    apply = sub.add_parser("apply", help="create or update objects from YAML (multi-document)")
    _file_options(apply)
    apply.set_defaults(func=_cmd_apply)

    delete = sub.add_parser("delete", help="delete the objects named in YAML files")
    _file_options(delete)
    delete.set_defaults(func=_cmd_delete)

    get = sub.add_parser("get", help="list objects: namespaces, networkpolicies, clusterpolicies, "
                                     "tiers, hostendpoints, pods, nodes, services, endpointslices, hosts")
    get.add_argument("kind", help="a kind or its short name (ns, netpol, cp, hep, po, no, svc, eps)")
    get.add_argument("-n", "--namespace", help="only this namespace (namespaced kinds)")
    get.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    add_target_options(get)
    get.set_defaults(func=_cmd_get)

    describe = sub.add_parser("describe", help="one object and what the cluster made of it "
                                               "(a pod: its node, IPs and the policies selecting it)")
    describe.add_argument("kind", help="a kind or its short name (ns, netpol, cp, tiers, hep, po, no, svc, eps)")
    describe.add_argument("name", metavar="NAME|NS/NAME", help="the object; NS/NAME for namespaced kinds")
    describe.add_argument("-n", "--namespace", help="the namespace of NAME (default: default)")
    describe.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    add_target_options(describe)
    describe.set_defaults(func=_cmd_describe)

    label = sub.add_parser("label", help="set (k=v) or remove (k-) labels of a namespace or a pod")
    label.add_argument("kind", choices=("namespace", "ns", "pod", "po"))
    label.add_argument("target", metavar="NAME|NS/POD")
    label.add_argument("changes", nargs="+", metavar="k=v|k-")
    add_target_options(label)
    label.set_defaults(func=_cmd_label)


def _file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                        help="YAML file, or - for standard input (repeatable)")
    add_target_options(parser)


def read_documents(files: list[str]) -> list[dict[str, Any]]:
    """The documents of every file, read with bounds (podnet/yamlsafe.py): a small
    file cannot expand into a huge tree through aliases."""
    from podnet import yamlsafe

    docs: list[dict[str, Any]] = []
    for name in files:
        try:
            data = yamlsafe.read_stream(sys.stdin) if name == "-" else yamlsafe.read_file(name)
            loaded = [d for d in yamlsafe.load_all(data) if d is not None]
        except OSError as exc:
            raise PodnetError(f"cannot read {name}: {exc.strerror}") from None
        except yamlsafe.YAMLError as exc:
            raise PodnetError(f"{name} is not valid YAML", str(exc).replace("\n", " ")) from None
        for doc in loaded:
            if not isinstance(doc, dict):
                raise PodnetError(f"{name}: every document must be a mapping, got {type(doc).__name__}")
            docs.append(doc)
    if not docs:
        raise PodnetError("no documents given")
    return docs


def _parse(args: argparse.Namespace):
    from podnet.objects.registry import parse_documents

    return parse_documents(read_documents(args.filename))


def _edit(args: argparse.Namespace, action: str) -> int:
    """apply or delete: parse every file first, then one store transaction."""
    from podnet.objects import store as repository

    try:
        objects = _parse(args)
        with open_cluster_store(args) as store:
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


def _summary(kind: Kind, doc: dict[str, Any]) -> dict[str, Any]:
    meta = doc.get("metadata", {})
    labels = ",".join(f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items()))
    row: dict[str, Any] = {"NAME": meta.get("name")}
    if kind.namespaced:
        row["NAMESPACE"] = meta.get("namespace")
    row["LABELS"] = labels
    row.update((column.title, column.value(doc)) for column in kind.columns)
    return row


@lab_aware
def _cmd_get(args: argparse.Namespace) -> int:
    from podnet.objects import store as repository
    from podnet.objects.registry import lookup

    try:
        kind = lookup(args.kind)
        with open_cluster_store(args) as store:
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
        emit_rows(rows, list(rows[0]) if rows else ["NAME"], "table")
    return 0


@lab_aware
def _cmd_describe(args: argparse.Namespace) -> int:
    from podnet.objects import describe
    from podnet.objects.registry import lookup

    try:
        kind = lookup(args.kind)
        namespace, sep, name = args.name.rpartition("/")
        if not sep:
            namespace = args.namespace or "default"
        with open_cluster_store(args) as store:
            described = describe.describe(store, kind, name, namespace)
    except PodnetError as exc:
        return fail(exc)
    if args.output == "json":
        print(json.dumps(described, indent=2, default=str))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump(described, sort_keys=False), end="")
    else:
        print(describe.render(kind, described))
    return 0


@lab_aware
def _cmd_label(args: argparse.Namespace) -> int:
    from podnet.objects import store as repository
    from podnet.objects.registry import lookup

    try:
        kind = lookup(args.kind)
        with open_cluster_store(args) as store:
            change = repository.label(store, kind, args.target, args.changes)
    except PodnetError as exc:
        return fail(exc)
    print(change.shown)
    return 0
