"""HTTPRoute, MeshTrafficPolicy, MeshAuthorizationPolicy and PeerAuthentication declared
once for the object registry (mesh/manifests.py parses and writes them).

`podnet get httproutes` shows each route's parent, rule count and backends with their
weights (`web-v1:90,web-v2:10`); `podnet describe httproute NS/NAME` adds what the
parent and each backend resolve to (ClusterIP:port), or that the service is missing.
Admission (in apply's transaction) keeps one MeshTrafficPolicy per service and one
PeerAuthentication per namespace: the second is refused naming the first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from podnet import keys
from podnet.errors import ObjectError
from podnet.mesh import model
from podnet.mesh.manifests import (
    GATEWAY_API,
    ISTIO_SECURITY_API,
    MESH_API,
    MeshObject,
    parse_authorization_policy,
    parse_http_route,
    parse_peer_authentication,
    parse_traffic_policy,
)
from podnet.schema.fields import Loc
from podnet.schema.kind import Column, Kind, Section
from podnet.services.kinds import SERVICE, read_service
from podnet.store.base import Store

ISTIO_SECURITY_OLDER = ("security.istio.io/v1beta1",)


class StoreView(Protocol):
    store: Store


@dataclass(frozen=True)
class VersionedKind(Kind):
    """A kind that also takes older apiVersions and stores them as the current one
    (as the API server converts: Istio's v1beta1 and v1 PeerAuthentication agree)."""

    older_versions: tuple[str, ...] = ()

    def parse_manifest(self, doc: Mapping[str, Any], loc: Loc) -> Any:
        if doc.get("apiVersion") in self.older_versions:
            doc = {**doc, "apiVersion": self.api_version}
        return super().parse_manifest(doc, loc)


def read(kind: Kind, doc: Mapping[str, Any], where: str) -> MeshObject[Any]:
    """A stored manifest of `kind`, validated again as if applied (ObjectError if not;
    also when it is of another kind: two mesh kinds share an apiVersion)."""
    if not isinstance(doc, Mapping) or doc.get("kind") != kind.kind:
        found = doc.get("kind") if isinstance(doc, Mapping) else type(doc).__name__
        raise Loc(where).field("kind").error(f"{found!r} where a {kind.kind} belongs")
    return kind.parse_manifest(doc, Loc(where))


# --- get columns (from the stored, canonical manifest) ------------------------------------


def _spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("spec") or {}


def _parent(doc: Mapping[str, Any]) -> str:
    parent = (_spec(doc).get("parentRefs") or [{}])[0]
    return f"{parent.get('name')}:{parent['port']}" if parent.get("port") else str(parent.get("name"))


def _backend(ref: Mapping[str, Any]) -> str:
    """`[namespace/]name:weight`: the stored form names the namespace only when it is
    not the route's."""
    where = f"{ref['namespace']}/" if ref.get("namespace") else ""
    return f"{where}{ref.get('name')}:{ref.get('weight', 1)}"


def _backends(doc: Mapping[str, Any]) -> str:
    """Each rule's backends with their weights; rules apart by `;`."""
    rules = _spec(doc).get("rules") or []
    return ";".join(",".join(_backend(b) for b in rule.get("backendRefs") or []) for rule in rules)


def _target(doc: Mapping[str, Any]) -> Any:
    return (_spec(doc).get("targetRef") or {}).get("name")


def _or_dash(value: Any) -> Any:
    return "-" if value is None else value


def _rate(doc: Mapping[str, Any]) -> str:
    rate = _spec(doc).get("rateLimit")
    return f"{rate.get('requestsPerSecond')}/s" if rate else "-"


# --- describe -------------------------------------------------------------------------------


def _service_at(store: Store, namespace: str, name: str, port: int | None) -> str:
    """`ns/name ClusterIP:port`, or why a service (port) is not there."""
    entry = store.get(SERVICE.key(name, namespace))
    if entry is None:
        return f"{namespace}/{name}  (no such service)"
    try:
        svc = read_service(entry.json(), entry.key)
    except (ObjectError, ValueError) as exc:
        return f"{namespace}/{name}  (stored service unreadable: {exc})"
    ports = [p.port for p in svc.ports if port is None or p.port == port]
    if not ports:
        return f"{namespace}/{name}  (the service has no port {port})"
    ip = "headless" if svc.headless else svc.cluster_ip or "<pending>"
    return f"{namespace}/{name}  " + ", ".join(f"{ip}:{p}" for p in ports)


def describe_route(doc: Mapping[str, Any], view: StoreView) -> list[Section]:
    route: model.HTTPRoute = read(HTTP_ROUTE, doc, "stored HTTP route").value
    sections: list[Section] = [("Parent", _service_at(view.store, route.namespace, route.service, route.port))]
    for i, rule in enumerate(route.rules):
        total = sum(b.weight for b in rule.backends)
        rows = [f"weight {b.weight} ({100 * b.weight / total:.3g}%)  "
                f"{_service_at(view.store, b.namespace, b.service, b.port)}"
                + (f"  subset {dict(b.subset)}" if b.subset else "") for b in rule.backends]
        sections.append((f"Backends of rule {i}", rows))
    return sections


def describe_target(doc: Mapping[str, Any], view: StoreView) -> list[Section]:
    policy = _KIND_OF[doc.get("kind")]
    value = read(policy, doc, f"stored {policy.kind}").value
    return [("Target", _service_at(view.store, value.namespace, value.service, None))]


# --- admission: one in force, never "whichever was written last" ---------------------------


def _one_in_force(kind_name: str, same: Callable[[Any, Any], bool], what: str) -> Callable[..., Any]:
    """An `admit` refusing `obj` when another stored object of its kind and namespace
    is the `same` target; stored manifests that no longer parse do not count."""

    def admit(tx: Store, obj: MeshObject[Any], stored: Mapping[str, Any] | None) -> MeshObject[Any]:
        kind = _KIND_OF[kind_name]
        for entry in tx.list(kind.list_prefix(obj.namespace)):
            if entry.key == obj.key:
                continue
            try:
                other = read(kind, entry.json(), entry.key)
            except (ObjectError, ValueError):
                continue
            if same(other.value, obj.value):
                where = Loc(f"{kind.kind} {obj.namespace}/{obj.name}")
                raise where.error(f"{what(obj.value)} already has {kind.kind} {other.namespace}/{other.name}",
                                  f"change that one, or delete it first (podnet delete {kind.short_names[0]} "
                                  f"{other.namespace}/{other.name})")
        return obj

    return admit


HTTP_ROUTE = Kind(
    "HTTPRoute", GATEWAY_API, "httproutes", keys.MESH_HTTP_ROUTES, namespaced=True, parse=parse_http_route,
    describe=describe_route,
    columns=(Column("PARENT", _parent), Column("RULES", lambda d: len(_spec(d).get("rules") or [])),
             Column("BACKENDS", _backends)))
TRAFFIC_POLICY = Kind(
    "MeshTrafficPolicy", MESH_API, "meshtrafficpolicies", keys.MESH_TRAFFIC_POLICIES, ("mtp",), namespaced=True,
    parse=parse_traffic_policy, describe=describe_target,
    admit=_one_in_force("MeshTrafficPolicy", lambda a, b: a.service == b.service,
                        lambda p: f"spec.targetRef: service {p.namespace}/{p.service}"),
    columns=(Column("TARGET", _target),
             Column("RETRIES", lambda d: _or_dash((_spec(d).get("retries") or {}).get("attempts"))),
             Column("TIMEOUT", lambda d: _or_dash(_spec(d).get("timeout"))), Column("RATE", _rate)))
AUTHORIZATION_POLICY = Kind(
    "MeshAuthorizationPolicy", MESH_API, "meshauthorizationpolicies", keys.MESH_AUTHORIZATION_POLICIES, ("map",),
    namespaced=True, parse=parse_authorization_policy, describe=describe_target,
    columns=(Column("TARGET", _target), Column("FROM", lambda d: len(_spec(d).get("from") or []))))
PEER_AUTHENTICATION = VersionedKind(
    "PeerAuthentication", ISTIO_SECURITY_API, "peerauthentications", keys.MESH_PEER_AUTHENTICATIONS, ("pa",),
    namespaced=True, parse=parse_peer_authentication, older_versions=ISTIO_SECURITY_OLDER,
    admit=_one_in_force("PeerAuthentication", lambda a, b: True, lambda p: f"namespace {p.namespace}"),
    columns=(Column("MODE", lambda d: ((_spec(d).get("mtls") or {}).get("mode")) or model.MTLS_PERMISSIVE),))

MESH_KINDS: tuple[Kind, ...] = (HTTP_ROUTE, TRAFFIC_POLICY, AUTHORIZATION_POLICY, PEER_AUTHENTICATION)
_KIND_OF = {kind.kind: kind for kind in MESH_KINDS}
