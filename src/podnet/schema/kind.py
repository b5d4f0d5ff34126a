"""What a kind declares once, for `apply`, `get`, `describe`, `label` and the agents.

A `Kind` names its apiVersion and kind, plural and short names, scope (namespaced or
not), store prefix (from keys.py), how its spec is parsed, the extra columns of
`podnet get`, and optionally what `podnet describe` adds. The envelope every manifest
shares (apiVersion, kind, metadata: name, namespace, labels) is checked here, once, so
a kind's parser only sees its own spec.

Pure: parsers are functions of the manifest; `describe` gets a read-only view of the
cluster (objects/describe.py) passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from podnet import keys
from podnet.errors import ObjectError
from podnet.schema.fields import Loc, dns_name, mapping, parse_labels

ENVELOPE = ("apiVersion", "kind", "metadata", "spec", "status")


@dataclass(frozen=True)
class Metadata:
    """A manifest's checked metadata, and where the kind's parser reports errors
    (`Kind ns/name`)."""

    name: str
    namespace: str | None
    labels: dict[str, str]
    loc: Loc


@dataclass(frozen=True)
class Column:
    """One extra column of `podnet get KIND`: its title and how to read it from a
    stored manifest."""

    title: str
    value: Callable[[Mapping[str, Any]], Any]


Section = tuple[str, Any]  # a `describe` line: title, then a text or a list of texts


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str
    plural: str
    prefix: str
    short_names: tuple[str, ...] = ()
    namespaced: bool = False
    # metadata.name is a DNS label (<= 63, no dots) rather than a DNS subdomain
    name_is_label: bool = False
    # spec parser: (metadata, raw spec or None) -> the frozen object (with .key and
    # .to_dict()); None: the kind is not applied by users (podnet writes it)
    parse: Callable[[Metadata, Any], Any] | None = None
    columns: tuple[Column, ...] = ()
    # what `describe` shows beyond the manifest: (manifest, cluster view) -> sections
    describe: Callable[[Mapping[str, Any], Any], list[Section]] | None = None
    # the manifest of a stored value, when the store does not keep a manifest
    manifest: Callable[[Any], dict[str, Any]] | None = None
    # the top-level fields the parser reads besides the metadata: ("spec",) hands it
    # the spec itself; others (EndpointSlice keeps its body at the top level, Service
    # reads its status too) get a mapping of the fields given
    reads: tuple[str, ...] = ("spec",)
    # (transaction, parsed object, stored manifest or None) -> the object to store:
    # what the API server decides on create/update (a Service's ClusterIP), in apply's
    # transaction
    admit: Callable[[Any, Any, Mapping[str, Any] | None], Any] | None = None
    # (transaction, stored manifest): what goes with a deleted object (its claims)
    release: Callable[[Any, Mapping[str, Any]], None] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """What a user may type for it: `networkpolicy`, `networkpolicies`, `netpol`."""
        return (self.kind.lower(), self.plural, *self.short_names)

    def key(self, name: str, namespace: str | None = None) -> str:
        return keys.object_key(self.prefix, name, namespace if self.namespaced else None)

    def list_prefix(self, namespace: str | None = None) -> str:
        """The store prefix of every object of this kind (of one namespace if given)."""
        if namespace and self.namespaced:
            return f"{self.prefix}{keys.segment(namespace, 'namespace')}/"
        return self.prefix

    def ref(self, key: str) -> str:
        """`kind/[ns/]name` of a stored key, as apply and delete report it."""
        return f"{self.kind.lower()}/{keys.object_ref(self.prefix, key)}"

    def metadata(self, doc: Mapping[str, Any], loc: Loc) -> Metadata:
        """The envelope's metadata: name rules, scope, labels."""
        meta = mapping(doc.get("metadata"), loc.field("metadata"))
        name = dns_name(meta.get("name"), loc.field("metadata.name"), label=self.name_is_label)
        namespace = None
        if self.namespaced:
            namespace = meta.get("namespace") or "default"
            dns_name(namespace, loc.field("metadata.namespace"), label=True)
            where = Loc(f"{self.kind} {namespace}/{name}")
        else:
            where = Loc(f"{self.kind} {name}")
            if meta.get("namespace") is not None:
                raise where.field("metadata.namespace").error(f"{self.kind} is cluster-scoped",
                                                              "remove metadata.namespace")
        labels = parse_labels(meta.get("labels"), str(where.field("metadata.labels")))
        return Metadata(name, namespace, labels, where)

    def parse_manifest(self, doc: Mapping[str, Any], loc: Loc) -> Any:
        """One manifest of this kind (envelope already read) into its object."""
        if self.parse is None:
            raise loc.field("kind").error(f"{self.kind} objects are not applied by hand",
                                          "podnet writes them; `podnet get` and `describe` show them")
        if doc.get("apiVersion") != self.api_version:
            raise loc.field("apiVersion").error(
                f"{doc.get('apiVersion')!r} is not the apiVersion of {self.kind}",
                f"use apiVersion: {self.api_version}")
        if self.reads != ("spec",):
            mapping(doc, loc, ("apiVersion", "kind", "metadata", *self.reads))
            return self.parse(self.metadata(doc, loc), {k: doc[k] for k in self.reads if k in doc})
        return self.parse(self.metadata(doc, loc), doc.get("spec"))


def manifest(api_version: str, kind: str, name: str, namespace: str | None,
             labels: Mapping[str, str], spec: dict[str, Any] | None) -> dict[str, Any]:
    """The stored and printed form of an object: what `parse_manifest` reads back to
    an equal object."""
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    out: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": meta}
    if spec is not None:
        out["spec"] = spec
    return out


def not_found(kind: Kind, name: str, namespace: str | None) -> ObjectError:
    where = f"{namespace}/{name}" if namespace and kind.namespaced else name
    return ObjectError(f"{kind.kind.lower()} {where!r} not found",
                       f"list them with: podnet get {kind.plural}")
