"""The kind registry: every kind podnet knows, and parsing a manifest by its kind.

    podnet apply|delete -f   parse_documents -> each kind's parser -> objects/store.py
    podnet get|describe KIND lookup(KIND)    -> the kind's prefix, columns, describe

Adding a kind is one module that declares it (a `Kind`, see schema/kind.py; the
policy kinds are in policy/kinds.py, Node in cluster/kinds.py, Service and
EndpointSlice in services/kinds.py, BGPConfiguration and BGPPeer in bgp/kinds.py,
Host in hostjoin/kinds.py, HTTPRoute, MeshTrafficPolicy, MeshAuthorizationPolicy and
PeerAuthentication in mesh/kinds.py, ServiceExport and ServiceImport in
clusterset/exports.py)
plus its line below.
Nothing else lists kinds: the CLI, the store operations and the agents go through
this table. Pure: a kind's parser never touches the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from podnet.bgp.kinds import BGP_KINDS
from podnet.cluster.kinds import CLUSTER_KINDS
from podnet.clusterset.exports import CLUSTERSET_KINDS
from podnet.errors import ObjectError
from podnet.hostjoin.kinds import HOST_KINDS
from podnet.mesh.kinds import MESH_KINDS
from podnet.policy.kinds import POLICY_KINDS
from podnet.schema.fields import Loc, mapping
from podnet.schema.kind import ENVELOPE, Kind
from podnet.services.kinds import SERVICE_KINDS

KINDS: tuple[Kind, ...] = (
    *POLICY_KINDS,
    *CLUSTER_KINDS,
    *SERVICE_KINDS,
    *BGP_KINDS,
    *HOST_KINDS,
    *MESH_KINDS,
    *CLUSTERSET_KINDS,
)
_BY_KIND = {kind.kind: kind for kind in KINDS}
_BY_NAME = {name: kind for kind in KINDS for name in kind.names}


def lookup(text: str) -> Kind:
    """`networkpolicy`, `netpol`, `NetworkPolicies`... -> its Kind."""
    kind = _BY_NAME.get(text.lower())
    if kind is None:
        names = ", ".join(sorted(_BY_KIND))
        raise ObjectError(f"unknown kind {text!r}", f"one of: {names} (or their short names)")
    return kind


def kind_of_key(key: str) -> Kind | None:
    """The kind whose objects live under `key` (None: not an object's key)."""
    return next((kind for kind in KINDS if key.startswith(kind.prefix)), None)


def applicable() -> list[str]:
    return [kind.kind for kind in KINDS if kind.parse is not None]


def parse_document(doc: Mapping[str, Any], index: int) -> Any:
    """One manifest (already loaded from YAML) into its frozen object."""
    loc = Loc(f"document {index}")
    doc = mapping(doc, loc)
    kind = _BY_KIND.get(doc.get("kind"))  # type: ignore[arg-type]
    if kind is None or kind.parse is None:
        raise loc.field("kind").error(f"{doc.get('kind')!r} is not a kind podnet apply takes",
                                      f"podnet apply knows {', '.join(applicable())}")
    if kind.reads == ("spec",):
        mapping(doc, loc, ENVELOPE)
    return kind.parse_manifest(doc, loc)


def parse_documents(docs: Iterable[Mapping[str, Any] | None]) -> list[Any]:
    """Every non-empty document of a multi-document YAML file, in file order. Two
    documents with the same (kind, namespace, name) are an error: which one should win?"""
    out: list[Any] = []
    seen: dict[str, int] = {}
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        obj = parse_document(doc, index)
        if obj.key in seen:
            where = f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name
            raise ObjectError(f"{obj.kind} {where}: defined twice (documents {seen[obj.key]} and {index})")
        seen[obj.key] = index
        out.append(obj)
    return out
