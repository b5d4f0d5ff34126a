"""The mesh objects in force, read from the store in one pass (pure given a Store):
what the control plane plans every sidecar from.

Nothing read back is trusted: each stored manifest is parsed again as if applied. One
that no longer parses (hand-edited, written by another version), sits under a key
that is not its own, or is a second policy for a target that already has one (apply
refuses that; a store written around apply could hold it) is left out and named in
`problems`. The loader never raises for them: the rest stays in force.

Precedence of routes (`routes_for`): Gateway API lets the oldest route win where
routes attached to the same service port conflict, then orders by namespace/name. The
store keeps no creation time, so routes are ordered by name: the first one's rules
come first where matches tie.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.errors import ObjectError
from podnet.mesh import model
from podnet.mesh.kinds import (
    AUTHORIZATION_POLICY,
    HTTP_ROUTE,
    PEER_AUTHENTICATION,
    TRAFFIC_POLICY,
    read,
)
from podnet.schema.kind import Kind
from podnet.store.base import Store

ServiceRef = tuple[str, str]  # (namespace, service)


@dataclass(frozen=True)
class MeshObjects:
    routes: tuple[model.HTTPRoute, ...] = ()  # by (namespace, name)
    traffic: Mapping[ServiceRef, model.MeshTrafficPolicy] = field(default_factory=dict)
    authz: Mapping[ServiceRef, tuple[model.MeshAuthorizationPolicy, ...]] = field(default_factory=dict)
    peer_auth: Mapping[str, model.PeerAuthentication] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def routes_for(self, namespace: str, service: str, port: int) -> tuple[model.HTTPRoute, ...]:
        """The routes attached to `service:port` (those without a port attach to every
        port), in precedence order: by name, standing in for age."""
        return tuple(r for r in self.routes
                     if (r.namespace, r.service) == (namespace, service) and r.port in (None, port))

    def mtls_mode(self, namespace: str) -> str:
        """The namespace's mTLS mode (PERMISSIVE without a PeerAuthentication)."""
        peer = self.peer_auth.get(namespace)
        return peer.mode if peer else model.MTLS_PERMISSIVE


def _parsed(store: Store, kind: Kind, problems: list[str]) -> list[Any]:
    """Every stored object of `kind` that still parses, in key order."""
    out = []
    for entry in store.list(kind.prefix):
        try:
            obj = read(kind, entry.json(), entry.key)
        except (ObjectError, ValueError) as exc:  # ValueError: not JSON
            problems.append(f"{entry.key}: skipped: {str(exc).removeprefix(entry.key + ': ')}")
            continue
        if obj.key != entry.key:
            problems.append(f"{entry.key}: skipped: the manifest names {obj.key}")
            continue
        out.append(obj.value)
    return sorted(out, key=lambda value: (value.namespace, value.name))


def load_mesh(store: Store) -> MeshObjects:
    problems: list[str] = []
    routes = tuple(_parsed(store, HTTP_ROUTE, problems))
    traffic: dict[ServiceRef, model.MeshTrafficPolicy] = {}
    for policy in _parsed(store, TRAFFIC_POLICY, problems):
        first = traffic.setdefault((policy.namespace, policy.service), policy)
        if first is not policy:
            problems.append(f"MeshTrafficPolicy {policy.namespace}/{policy.name}: skipped: service "
                            f"{policy.service} already has {first.namespace}/{first.name}")
    authz: dict[ServiceRef, tuple[model.MeshAuthorizationPolicy, ...]] = {}
    for auth in _parsed(store, AUTHORIZATION_POLICY, problems):
        authz[(auth.namespace, auth.service)] = (*authz.get((auth.namespace, auth.service), ()), auth)
    peer_auth: dict[str, model.PeerAuthentication] = {}
    for peer in _parsed(store, PEER_AUTHENTICATION, problems):
        first_peer = peer_auth.setdefault(peer.namespace, peer)
        if first_peer is not peer:
            problems.append(f"PeerAuthentication {peer.namespace}/{peer.name}: skipped: namespace "
                            f"{peer.namespace} already has {first_peer.namespace}/{first_peer.name}")
    return MeshObjects(routes, traffic, authz, peer_auth, tuple(problems))
