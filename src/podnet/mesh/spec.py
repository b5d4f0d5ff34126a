"""What one sidecar must do, resolved (pure, frozen): the input of mesh/render.py.

mesh/plan.py builds it from the cluster (pods, services, endpoints, the mesh objects);
render.py turns it into an HAProxy configuration without looking anything up. Names of
backends and servers are chosen here once, so a weight change is recognised as one
(the runtime API changes it, no reload).
"""

from __future__ import annotations

from dataclasses import dataclass

from podnet.mesh.model import Fault, MeshTrafficPolicy, RouteMatch

INBOUND_PORT = 15006
OUTBOUND_PORT = 15001
SIDECAR_UID = 1337  # the sidecar's own traffic is never intercepted (nft meta skuid)


@dataclass(frozen=True)
class Server:
    """One endpoint of a backend: `meshed` endpoints get mTLS (their sidecar terminates
    it), others plain TCP; `identity` is the CN its certificate must carry."""

    name: str
    ip: str
    port: int
    weight: int = 1  # 0..256, HAProxy's server weight
    meshed: bool = False
    identity: str = ""


@dataclass(frozen=True)
class Backend:
    name: str  # be_<service>_<rule>: stable across weight changes
    servers: tuple[Server, ...]
    policy: MeshTrafficPolicy | None = None  # retries, per-try timeout, breaker, ejection
    timeout: float | None = None  # the rule's or the policy's request timeout (504 beyond)


@dataclass(frozen=True)
class Rule:
    """One HTTPRoute rule, resolved: its matches and the backend its weighted refs became."""

    matches: tuple[RouteMatch, ...]
    backend: str
    route: str  # "ns/name#index", what the access log and `mesh top` show


@dataclass(frozen=True)
class OutboundService:
    """A service meshed clients call at `cluster_ip:port` (HTTP), and how."""

    ref: str  # "ns/name:port"
    cluster_ip: str
    port: int
    rules: tuple[Rule, ...]  # first match wins; the last is the default route
    fault: Fault | None = None


@dataclass(frozen=True)
class Authz:
    """One MeshAuthorizationPolicy in force on a port: the CNs it lets in."""

    policy: str  # "ns/name", named in the 403
    service: str  # "ns/name" of the service it targets
    allowed: tuple[str, ...]


@dataclass(frozen=True)
class InboundPort:
    """A port the app serves, and the services selecting the pod on it: their rate
    limits (per service: the calling sidecar says which, `x-podnet-service`) and their
    authorization policies (every one must let the caller in: a pod behind two
    services answers only who both allow)."""

    port: int
    services: tuple[str, ...] = ()  # "ns/name"
    rate_limits: tuple[tuple[str, int], ...] = ()  # (service, requests per second per sidecar)
    authz: tuple[Authz, ...] = ()


@dataclass(frozen=True)
class SidecarSpec:
    pod: str  # "ns/name"
    identity: str  # this pod's CN
    mtls: str  # PERMISSIVE | STRICT | DISABLE (its namespace's PeerAuthentication)
    inbound: tuple[InboundPort, ...]
    outbound: tuple[OutboundService, ...]
    backends: tuple[Backend, ...]
    cert: str  # path of this pod's cert+key bundle
    ca: str  # path of the mesh CA's certificate
    stats_socket: str  # the runtime API (weights, certificates)
    log_socket: str  # the node agent's access log sink (UNIX datagram)
    lua: str = ""  # path of the fault-delay action script ("" when no delay is used)
    budget_map: str = ""  # backend -> 1 while over its retry budget (mesh/budget.py flips it)


def budgets(spec: SidecarSpec) -> dict[str, float]:
    """backend -> its retry budget in percent, for the backends that have one."""
    return {b.name: b.policy.retries.budget_percent for b in spec.backends
            if b.policy and b.policy.retries and b.policy.retries.budget_percent}
