"""The service mesh's objects as the control plane uses them (pure, frozen).

Users write them in shapes they know: `HTTPRoute` is the Gateway API's, attached to
a Service as GAMMA (the Gateway API for meshes) does; `MeshTrafficPolicy` gathers what
Istio spreads over DestinationRule and VirtualService (retries, timeouts, rate limit,
circuit breaking, outlier ejection, fault injection); `MeshAuthorizationPolicy` is
Istio's AuthorizationPolicy reduced to ALLOW by identity; `PeerAuthentication` is
Istio's, for the mTLS mode. mesh/kinds.py parses manifests into these; the sidecar
renderer (mesh/render.py) reads only these.

Durations are seconds (float); percentages 0-100.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PATH_PREFIX, PATH_EXACT = "PathPrefix", "Exact"
MTLS_PERMISSIVE, MTLS_STRICT, MTLS_DISABLE = "PERMISSIVE", "STRICT", "DISABLE"
RETRY_ON = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx")


@dataclass(frozen=True)
class HeaderMatch:
    name: str  # lower-cased
    value: str
    regex: bool = False  # type: RegularExpression (else Exact)


@dataclass(frozen=True)
class RouteMatch:
    """One `matches` entry: every given part must hold (an empty match: everything)."""

    path_type: str = PATH_PREFIX
    path: str = "/"
    headers: tuple[HeaderMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True)
class BackendRef:
    """A Service (in the route's namespace unless given), its port, a weight, and
    optionally a subset: only the endpoints whose pods carry these labels."""

    service: str
    namespace: str
    port: int
    weight: int = 1
    subset: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RouteRule:
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    backends: tuple[BackendRef, ...] = ()
    timeout: float | None = None  # timeouts.request
    backend_timeout: float | None = None  # timeouts.backendRequest (per try)


@dataclass(frozen=True)
class HTTPRoute:
    """Routes for the requests to `service:port` (the parentRef) from meshed clients."""

    namespace: str
    name: str
    service: str  # parentRefs[0]: kind Service, in the route's namespace
    port: int | None  # None: every port of the service
    rules: tuple[RouteRule, ...]


@dataclass(frozen=True)
class Retries:
    attempts: int = 2
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = ("5xx", "connect-failure")
    budget_percent: float | None = None  # retries at most this share of requests


@dataclass(frozen=True)
class RateLimit:
    requests_per_second: int
    burst: int | None = None


@dataclass(frozen=True)
class CircuitBreaker:
    max_connections: int | None = None  # per endpoint
    max_pending_requests: int | None = None  # queued beyond that: 503


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx: int = 5
    interval: float = 1.0  # health re-check of an ejected endpoint
    base_ejection_time: float = 10.0


@dataclass(frozen=True)
class Fault:
    delay_percent: float = 0.0
    delay: float = 0.0
    abort_percent: float = 0.0
    abort_status: int = 503


@dataclass(frozen=True)
class MeshTrafficPolicy:
    """What clients (retries, timeout, breaker, ejection, fault) and the service's own
    sidecars (rate limit) apply to requests for `service`."""

    namespace: str
    name: str
    service: str
    retries: Retries | None = None
    timeout: float | None = None
    rate_limit: RateLimit | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier: OutlierDetection | None = None
    fault: Fault | None = None


@dataclass(frozen=True)
class MeshAuthorizationPolicy:
    """Only these identities may call `service` (ALLOW); others get 403 naming this policy."""

    namespace: str
    name: str
    service: str
    allowed: tuple[str, ...] = field(default_factory=tuple)  # SPIFFE IDs


@dataclass(frozen=True)
class PeerAuthentication:
    """The mTLS mode of a namespace's meshed pods (`name` "default" by convention)."""

    namespace: str
    name: str
    mode: str = MTLS_PERMISSIVE
