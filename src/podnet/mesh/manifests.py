"""The mesh's manifests, in shapes users know, parsed into mesh/model.py's values and
written back in one canonical form (pure; mesh/kinds.py declares the kinds).

  gateway.networking.k8s.io/v1 HTTPRoute      mesh/httproutes/<ns>/<name>
  mesh.podnet.io/v1 MeshTrafficPolicy         mesh/trafficpolicies/<ns>/<name>
  mesh.podnet.io/v1 MeshAuthorizationPolicy   mesh/authorizationpolicies/<ns>/<name>
  security.istio.io/v1 PeerAuthentication     mesh/peerauthentications/<ns>/<name>
                                              (v1beta1 accepted, stored as v1)

Decisions:
- An HTTPRoute attaches to a Service the GAMMA way: one parentRef of `kind: Service`
  (group ""), in the route's namespace, optionally one `port` (none: every port).
- A rule without `matches` matches everything; every rule needs a backend with a
  weight above 0 (all-zero would answer 500 to everything); `subset` (podnet's own)
  narrows a backend to the endpoints whose pods carry those labels.
- Route `timeouts` of "0s" mean none, as the Gateway API says; every other duration is
  positive (mesh/durations.py). `backendRequest` may not exceed `request`.
- One MeshTrafficPolicy per service and one PeerAuthentication per namespace (and only
  a namespace-wide one): a second is refused at apply naming the first (`admit`), so
  what applies is never a question of which was written last.
- A MeshAuthorizationPolicy only ALLOWs; `from` lists SPIFFE IDs or service accounts
  (both stored as SPIFFE IDs); no `from` at all allows nobody (Istio's allow-nothing).
  Several policies on one service add up.
The stored manifest is `to_dict()` of the parsed value: defaults filled, durations
in their shortest form, so a re-apply of the same meaning is "unchanged".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from podnet import keys
from podnet.mesh import model
from podnet.mesh.durations import format_duration, parse_duration
from podnet.mesh.identity import DEFAULT_TRUST_DOMAIN, IdentityError, parse_spiffe, spiffe_id
from podnet.mesh.spec_fields import (
    bounded,
    optional,
    percent,
    required,
    service_ref,
    service_ref_dict,
    shown,
)
from podnet.schema import fields
from podnet.schema.fields import Loc
from podnet.schema.kind import Metadata, manifest

GATEWAY_API = "gateway.networking.k8s.io/v1"
MESH_API = "mesh.podnet.io/v1"
ISTIO_SECURITY_API = "security.istio.io/v1"
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
MAX_WEIGHT = 1_000_000
MAX_RETRIES = 10
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_PATH_RE = re.compile(r"/[\x21-\x7e]*")  # printable, no space
_HEADER_VALUE_RE = re.compile(r"[\x20-\x7e]{0,4096}")
_UNSUPPORTED = "not supported by podnet's mesh"

Value = TypeVar("Value", model.HTTPRoute, model.MeshTrafficPolicy, model.MeshAuthorizationPolicy,
                model.PeerAuthentication)


@dataclass(frozen=True)
class MeshObject(Generic[Value]):
    """A mesh object as apply, delete and get handle it: the model value the control
    plane reads, plus what only the manifest carries (its labels)."""

    value: Value
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", fields.frozen_labels(self.labels))

    @property
    def kind(self) -> str:
        return type(self.value).__name__  # the model's classes are named as the kinds

    @property
    def name(self) -> str:
        return self.value.name

    @property
    def namespace(self) -> str:
        return self.value.namespace

    @property
    def key(self) -> str:
        return keys.object_key(_STORED_AS[self.kind][1], self.name, self.namespace)

    def to_dict(self) -> dict[str, Any]:
        api_version, _, spec = _STORED_AS[self.kind]
        return manifest(api_version, self.kind, self.name, self.namespace, self.labels, spec(self.value))


# --- HTTPRoute ------------------------------------------------------------------------


def _path(raw: Any, loc: Loc) -> tuple[str, str]:
    path = fields.mapping(raw, loc, ("type", "value"))
    kind = path.get("type", model.PATH_PREFIX)
    if kind not in (model.PATH_PREFIX, model.PATH_EXACT):
        raise loc.field("type").error(f"{kind!r} is not one of {model.PATH_PREFIX}, {model.PATH_EXACT}")
    value = path.get("value", "/")
    if not isinstance(value, str) or not _PATH_RE.fullmatch(value) or "#" in value or "?" in value:
        raise loc.field("value").error(f"{value!r} is not a path",
                                       "starts with '/', printable ASCII without spaces, '?' or '#'")
    return kind, value


def _header(raw: Any, loc: Loc) -> model.HeaderMatch:
    header = fields.mapping(raw, loc, ("name", "value", "type"))
    name = required(header, "name", loc)
    if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
        raise loc.field("name").error(f"{name!r} is not an HTTP header name")
    value = required(header, "value", loc)
    if not isinstance(value, str) or not _HEADER_VALUE_RE.fullmatch(value):
        raise loc.field("value").error(f"{value!r} is not a header value",
                                       "printable ASCII, at most 4096 characters")
    kind = header.get("type", "Exact")
    if kind not in ("Exact", "RegularExpression"):
        raise loc.field("type").error(f"{kind!r} is not one of Exact, RegularExpression")
    if kind == "RegularExpression":
        try:
            re.compile(value)
        except re.error as exc:
            raise loc.field("value").error(f"{value!r} is not a regular expression: {exc}") from None
    return model.HeaderMatch(name.lower(), value, kind == "RegularExpression")


def _match(raw: Any, loc: Loc) -> model.RouteMatch:
    match = fields.mapping(raw, loc, ("path", "headers", "method"))
    kind, path = _path(match.get("path") or {}, loc.field("path"))
    headers = tuple(_header(h, loc.field("headers").item(i))
                    for i, h in enumerate(fields.items(match.get("headers") or [], loc.field("headers"))))
    names = [h.name for h in headers]
    if len(set(names)) != len(names):
        raise loc.field("headers").error(f"a header is matched twice: {names}")
    method = match.get("method")
    if method is not None and method not in METHODS:
        raise loc.field("method").error(f"{method!r} is not one of {', '.join(METHODS)}")
    return model.RouteMatch(kind, path, headers, method)


def _backend(raw: Any, loc: Loc, namespace: str) -> model.BackendRef:
    ref = fields.mapping(raw, loc, ("group", "kind", "name", "namespace", "port", "weight", "subset"))
    if ref.get("group") not in (None, ""):
        raise loc.field("group").error(f"{ref['group']!r}: only the core group (\"\") is supported")
    if ref.get("kind", "Service") != "Service":
        raise loc.field("kind").error(f"{ref['kind']!r}: a backend is a Service")
    name = fields.dns_name(required(ref, "name", loc), loc.field("name"), label=True)
    where = fields.dns_name(ref.get("namespace", namespace), loc.field("namespace"), label=True)
    port = fields.port_number(required(ref, "port", loc), loc.field("port"))
    weight = bounded(ref.get("weight", 1), loc.field("weight"), 0, MAX_WEIGHT)
    subset = ()
    if ref.get("subset") is not None:
        labels = fields.parse_labels(fields.mapping(ref["subset"], loc.field("subset")), str(loc.field("subset")))
        if not labels:
            raise loc.field("subset").error("empty", "give pod labels, or leave subset out for every endpoint")
        subset = tuple(labels.items())
    return model.BackendRef(name, where, port, weight, subset)


def _rule(raw: Any, loc: Loc, namespace: str) -> model.RouteRule:
    rule = fields.mapping(raw, loc, ("matches", "backendRefs", "timeouts"))
    listed = fields.items(rule.get("matches") or [], loc.field("matches"))
    matches = tuple(_match(m, loc.field("matches").item(i)) for i, m in enumerate(listed)) or (model.RouteMatch(),)
    bloc = loc.field("backendRefs")
    backends = tuple(_backend(b, bloc.item(i), namespace)
                     for i, b in enumerate(fields.items(rule.get("backendRefs") or [], bloc)))
    if not any(b.weight > 0 for b in backends):
        raise bloc.error("no backend with a weight above 0", "give at least one backendRef with weight >= 1")
    tloc = loc.field("timeouts")
    timeouts = fields.mapping(rule.get("timeouts") or {}, tloc, ("request", "backendRequest"))

    def timeout(name: str) -> float | None:  # "0s": none
        given = timeouts.get(name)
        return None if given is None else parse_duration(given, tloc.field(name), zero=True) or None

    request, backend = timeout("request"), timeout("backendRequest")
    if request is not None and backend is not None and backend > request:
        raise tloc.field("backendRequest").error(
            f"{format_duration(backend)} is longer than request {format_duration(request)}")
    return model.RouteRule(matches, backends, request, backend)


def parse_http_route(meta: Metadata, raw: Any) -> MeshObject[model.HTTPRoute]:
    loc = meta.loc.field("spec")
    spec = fields.mapping(raw, loc, ("parentRefs", "rules"))
    assert meta.namespace is not None
    parents = fields.items(required(spec, "parentRefs", loc), loc.field("parentRefs"))
    if len(parents) != 1:
        raise loc.field("parentRefs").error(f"{len(parents)} given: exactly one Service is required")
    service, port = service_ref(parents[0], loc.field("parentRefs").item(0), meta.namespace, port=True)
    rules = fields.items(required(spec, "rules", loc), loc.field("rules"))
    if not rules:
        raise loc.field("rules").error("at least one rule is required")
    parsed = tuple(_rule(r, loc.field("rules").item(i), meta.namespace) for i, r in enumerate(rules))
    return MeshObject(model.HTTPRoute(meta.namespace, meta.name, service, port, parsed), meta.labels)


def _match_dict(match: model.RouteMatch) -> dict[str, Any]:
    out: dict[str, Any] = {"path": {"type": match.path_type, "value": match.path}}
    if match.headers:
        out["headers"] = [{"name": h.name, "value": h.value, "type": "RegularExpression" if h.regex else "Exact"}
                          for h in match.headers]
    if match.method:
        out["method"] = match.method
    return out


def _backend_dict(backend: model.BackendRef, namespace: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": backend.service}
    if backend.namespace != namespace:
        out["namespace"] = backend.namespace
    out.update(port=backend.port, weight=backend.weight)
    if backend.subset:
        out["subset"] = dict(backend.subset)
    return out


def _route_spec(route: model.HTTPRoute) -> dict[str, Any]:
    rules = []
    for rule in route.rules:
        out: dict[str, Any] = {"matches": [_match_dict(m) for m in rule.matches],
                               "backendRefs": [_backend_dict(b, route.namespace) for b in rule.backends]}
        timeouts = {name: format_duration(value) for name, value in
                    (("request", rule.timeout), ("backendRequest", rule.backend_timeout)) if value is not None}
        if timeouts:
            out["timeouts"] = timeouts
        rules.append(out)
    return {"parentRefs": [service_ref_dict(route.service, route.port)], "rules": rules}


# --- MeshTrafficPolicy ----------------------------------------------------------------

POLICY_FIELDS = ("targetRef", "retries", "timeout", "rateLimit", "circuitBreaker", "outlierDetection", "fault")


def _retries(raw: Any, loc: Loc) -> model.Retries:
    spec = fields.mapping(raw, loc, ("attempts", "perTryTimeout", "retryOn", "budgetPercent"))
    default = model.Retries()
    attempts = bounded(spec.get("attempts", default.attempts), loc.field("attempts"), 1, MAX_RETRIES)
    per_try = optional(spec, "perTryTimeout", loc, parse_duration)
    retry_on = default.retry_on
    if spec.get("retryOn") is not None:
        oloc = loc.field("retryOn")
        retry_on = tuple(fields.items(spec["retryOn"], oloc))
        for i, condition in enumerate(retry_on):
            if condition not in model.RETRY_ON:
                raise oloc.item(i).error(f"{condition!r} is not one of {', '.join(model.RETRY_ON)}")
        if not retry_on or len(set(retry_on)) != len(retry_on):
            raise oloc.error("give each condition once, at least one")
    budget = optional(spec, "budgetPercent", loc, lambda obj, where: percent(obj, where, 1))
    return model.Retries(attempts, per_try, retry_on, budget)


def _rate_limit(raw: Any, loc: Loc) -> model.RateLimit:
    spec = fields.mapping(raw, loc, ("requestsPerSecond", "burst"))
    rate = bounded(required(spec, "requestsPerSecond", loc), loc.field("requestsPerSecond"), 1)
    burst = optional(spec, "burst", loc, lambda obj, where: bounded(obj, where, 1))
    return model.RateLimit(rate, burst)


def _circuit_breaker(raw: Any, loc: Loc) -> model.CircuitBreaker:
    spec = fields.mapping(raw, loc, ("maxConnections", "maxPendingRequests"))
    if spec.get("maxConnections") is None and spec.get("maxPendingRequests") is None:
        raise loc.error("empty", "give maxConnections, maxPendingRequests or both")
    connections = optional(spec, "maxConnections", loc, lambda obj, where: bounded(obj, where, 1))
    pending = optional(spec, "maxPendingRequests", loc, lambda obj, where: bounded(obj, where, 0))
    return model.CircuitBreaker(connections, pending)


def _outlier(raw: Any, loc: Loc) -> model.OutlierDetection:
    spec = fields.mapping(raw, loc, ("consecutive5xxErrors", "interval", "baseEjectionTime"))
    default = model.OutlierDetection()
    errors = optional(spec, "consecutive5xxErrors", loc, lambda obj, where: bounded(obj, where, 1),
                      default.consecutive_5xx)
    interval = optional(spec, "interval", loc, parse_duration, default.interval)
    ejection = optional(spec, "baseEjectionTime", loc, parse_duration, default.base_ejection_time)
    return model.OutlierDetection(errors, interval, ejection)


def _fault(raw: Any, loc: Loc) -> model.Fault:
    """Istio's fault injection: a part without `percent` applies to every request."""
    spec = fields.mapping(raw, loc, ("delay", "abort"))
    if spec.get("delay") is None and spec.get("abort") is None:
        raise loc.error("empty", "give delay, abort or both")
    out = model.Fault()
    if spec.get("delay") is not None:
        dloc = loc.field("delay")
        delay = fields.mapping(spec["delay"], dloc, ("percent", "fixedDelay"))
        out = model.Fault(percent(delay.get("percent", 100), dloc.field("percent")),
                          parse_duration(required(delay, "fixedDelay", dloc), dloc.field("fixedDelay")))
    if spec.get("abort") is not None:
        aloc = loc.field("abort")
        abort = fields.mapping(spec["abort"], aloc, ("percent", "httpStatus"))
        out = model.Fault(out.delay_percent, out.delay, percent(abort.get("percent", 100), aloc.field("percent")),
                          bounded(required(abort, "httpStatus", aloc), aloc.field("httpStatus"), 400, 599))
    return out


def parse_traffic_policy(meta: Metadata, raw: Any) -> MeshObject[model.MeshTrafficPolicy]:
    loc = meta.loc.field("spec")
    spec = fields.mapping(raw, loc, POLICY_FIELDS)
    assert meta.namespace is not None
    service, _ = service_ref(required(spec, "targetRef", loc), loc.field("targetRef"), meta.namespace, port=False)
    policy = model.MeshTrafficPolicy(
        meta.namespace, meta.name, service, optional(spec, "retries", loc, _retries),
        optional(spec, "timeout", loc, parse_duration), optional(spec, "rateLimit", loc, _rate_limit),
        optional(spec, "circuitBreaker", loc, _circuit_breaker), optional(spec, "outlierDetection", loc, _outlier),
        optional(spec, "fault", loc, _fault))
    return MeshObject(policy, meta.labels)


def _fault_dict(fault: model.Fault) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if fault.delay > 0:
        out["delay"] = {"percent": shown(fault.delay_percent), "fixedDelay": format_duration(fault.delay)}
    if fault.abort_percent > 0 or fault.abort_status != model.Fault().abort_status:
        out["abort"] = {"percent": shown(fault.abort_percent), "httpStatus": fault.abort_status}
    return out


def _policy_spec(policy: model.MeshTrafficPolicy) -> dict[str, Any]:
    spec: dict[str, Any] = {"targetRef": service_ref_dict(policy.service)}
    if (retries := policy.retries) is not None:
        spec["retries"] = {"attempts": retries.attempts, "retryOn": list(retries.retry_on)}
        if retries.per_try_timeout is not None:
            spec["retries"]["perTryTimeout"] = format_duration(retries.per_try_timeout)
        if retries.budget_percent is not None:
            spec["retries"]["budgetPercent"] = shown(retries.budget_percent)
    if policy.timeout is not None:
        spec["timeout"] = format_duration(policy.timeout)
    if (rate := policy.rate_limit) is not None:
        spec["rateLimit"] = {"requestsPerSecond": rate.requests_per_second,
                             **({"burst": rate.burst} if rate.burst is not None else {})}
    if (breaker := policy.circuit_breaker) is not None:
        spec["circuitBreaker"] = {name: value for name, value in (("maxConnections", breaker.max_connections),
                                  ("maxPendingRequests", breaker.max_pending_requests)) if value is not None}
    if (outlier := policy.outlier) is not None:
        spec["outlierDetection"] = {"consecutive5xxErrors": outlier.consecutive_5xx,
                                    "interval": format_duration(outlier.interval),
                                    "baseEjectionTime": format_duration(outlier.base_ejection_time)}
    if policy.fault is not None:
        spec["fault"] = _fault_dict(policy.fault)
    return spec


# --- MeshAuthorizationPolicy ----------------------------------------------------------


def _caller(raw: Any, loc: Loc, namespace: str) -> str:
    """One `from` entry: `identity` (a SPIFFE ID) or `serviceAccount` (+ `namespace`)."""
    entry = fields.mapping(raw, loc, ("identity", "serviceAccount", "namespace"))
    if (entry.get("identity") is None) == (entry.get("serviceAccount") is None):
        raise loc.error("give either identity or serviceAccount")
    if entry.get("identity") is not None:
        if entry.get("namespace") is not None:
            raise loc.field("namespace").error("goes with serviceAccount, not identity")
        try:
            return parse_spiffe(entry["identity"]).uri
        except IdentityError as exc:
            raise loc.field("identity").error(exc.msg, exc.details) from None
    account = fields.dns_name(entry["serviceAccount"], loc.field("serviceAccount"), label=True)
    where = fields.dns_name(entry.get("namespace", namespace), loc.field("namespace"), label=True)
    return spiffe_id(where, account, DEFAULT_TRUST_DOMAIN)


def parse_authorization_policy(meta: Metadata, raw: Any) -> MeshObject[model.MeshAuthorizationPolicy]:
    loc = meta.loc.field("spec")
    spec = fields.mapping(raw, loc, ("targetRef", "action", "from"))
    assert meta.namespace is not None
    service, _ = service_ref(required(spec, "targetRef", loc), loc.field("targetRef"), meta.namespace, port=False)
    if spec.get("action", "ALLOW") != "ALLOW":
        raise loc.field("action").error(f"{spec['action']!r}: only ALLOW is supported",
                                        "list who may call; everyone else is refused (403)")
    floc = loc.field("from")
    callers = fields.items(spec.get("from") or [], floc)
    allowed = tuple(_caller(c, floc.item(i), meta.namespace) for i, c in enumerate(callers))
    if len(set(allowed)) != len(allowed):
        raise floc.error(f"an identity is listed twice: {sorted(allowed)}")
    return MeshObject(model.MeshAuthorizationPolicy(meta.namespace, meta.name, service, allowed), meta.labels)


def _authorization_spec(policy: model.MeshAuthorizationPolicy) -> dict[str, Any]:
    return {"targetRef": service_ref_dict(policy.service), "action": "ALLOW",
            "from": [{"identity": uri} for uri in policy.allowed]}


# --- PeerAuthentication ---------------------------------------------------------------

MTLS_MODES = (model.MTLS_STRICT, model.MTLS_PERMISSIVE, model.MTLS_DISABLE)


def parse_peer_authentication(meta: Metadata, raw: Any) -> MeshObject[model.PeerAuthentication]:
    loc = meta.loc.field("spec")
    spec = fields.mapping(raw if raw is not None else {}, loc, ("mtls", "selector", "portLevelMtls"))
    for name in ("selector", "portLevelMtls"):
        if spec.get(name) is not None:
            raise loc.field(name).error(f"{_UNSUPPORTED}: a PeerAuthentication applies to its whole namespace",
                                        f"remove spec.{name}")
    mtls = fields.mapping(spec.get("mtls") or {}, loc.field("mtls"), ("mode",))
    mode = mtls.get("mode", model.MTLS_PERMISSIVE)
    if mode not in MTLS_MODES:
        raise loc.field("mtls.mode").error(f"{mode!r} is not one of {', '.join(MTLS_MODES)}")
    assert meta.namespace is not None
    return MeshObject(model.PeerAuthentication(meta.namespace, meta.name, mode), meta.labels)


# --- the table MeshObject reads -------------------------------------------------------

_STORED_AS: dict[str, tuple[str, str, Callable[[Any], dict[str, Any]]]] = {  # kind: apiVersion, prefix, spec
    "HTTPRoute": (GATEWAY_API, keys.MESH_HTTP_ROUTES, _route_spec),
    "MeshTrafficPolicy": (MESH_API, keys.MESH_TRAFFIC_POLICIES, _policy_spec),
    "MeshAuthorizationPolicy": (MESH_API, keys.MESH_AUTHORIZATION_POLICIES, _authorization_spec),
    "PeerAuthentication": (ISTIO_SECURITY_API, keys.MESH_PEER_AUTHENTICATIONS,
                           lambda peer: {"mtls": {"mode": peer.mode}}),
}
