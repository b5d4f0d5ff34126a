"""The five policy kinds `podnet apply -f FILE.yaml` accepts, as frozen values.

  v1 Namespace                          policy/namespaces/<name>
  networking.k8s.io/v1 NetworkPolicy    policy/networkpolicies/<namespace>/<name>
  podnet.io/v1 Tier                     policy/tiers/<name>
  podnet.io/v1 ClusterPolicy            policy/clusterpolicies/<name>
  podnet.io/v1 HostEndpoint             policy/hostendpoints/<name>

Each has a store key and a `to_dict()` manifest that the object registry
(objects/registry.py `parse_document`) reads back to an equal object: the store keeps
manifests, not pickles. The registry checks the envelope (apiVersion, kind, metadata);
the `parse_*` functions here read each kind's spec (rule parts: policy/rules.py).

Parsing validates everything evaluation relies on, so `evaluate` never re-checks.
Decisions worth knowing:
- NetworkPolicy follows the Kubernetes API exactly, defaults included (see
  `rules.inferred_types` and `NetworkPolicyRule`). CIDRs must not have host bits set.
- Namespace always carries `kubernetes.io/metadata.name: <name>` (as the API server
  sets it), so namespaceSelectors can pick a namespace by name.
- The built-in Tier "default" (order 1000) always exists; a document may restate it
  with order 1000 but defining it with another order is an error: policies all over
  the cluster rely on where "default" sits.
- A ClusterPolicy must select something (spec.selector with at least one part), and
  rules of a direction not in spec.types are an error: a Deny rule that is silently
  ignored is worse than a refused document. (NetworkPolicy keeps the k8s behaviour of
  ignoring them.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from podnet import keys
from podnet.errors import ObjectError
from podnet.policy.rules import (
    ClusterRule,
    NetworkPolicyRule,
    inferred_types,
    selector,
)
from podnet.policy.selectors import LabelSelector
from podnet.schema import fields
from podnet.schema.kind import Metadata, manifest

K8S_NAME_LABEL = "kubernetes.io/metadata.name"
DEFAULT_TIER = "default"
DEFAULT_TIER_ORDER = 1000
DEFAULT_POLICY_ORDER = 1000


class _Labelled:
    """Kinds whose labels are frozen on creation (they are hashed and shared)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", fields.frozen_labels(self.labels))  # type: ignore[attr-defined]


class _RuleSet(_Labelled):
    """What NetworkPolicy and ClusterPolicy share: ingress and egress rule lists."""

    ingress: tuple
    egress: tuple

    def rules(self, direction: str) -> tuple:
        return self.ingress if direction == "Ingress" else self.egress

    def _with_rules(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self.ingress:
            spec["ingress"] = [r.to_dict("from") for r in self.ingress]
        if self.egress:
            spec["egress"] = [r.to_dict("to") for r in self.egress]
        return spec


@dataclass(frozen=True)
class Namespace:
    kind: ClassVar[str] = "Namespace"
    api_version: ClassVar[str] = "v1"

    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    namespace: ClassVar[None] = None

    def __post_init__(self) -> None:
        labels = dict(self.labels)
        if labels.setdefault(K8S_NAME_LABEL, self.name) != self.name:
            raise ObjectError(f"Namespace {self.name}: label {K8S_NAME_LABEL} must be the name")
        object.__setattr__(self, "labels", fields.frozen_labels(labels))

    @property
    def key(self) -> str:
        return keys.object_key(keys.NAMESPACES, self.name)

    def to_dict(self) -> dict[str, Any]:
        return _manifest(self, None)



@dataclass(frozen=True)
class NetworkPolicy(_RuleSet):
    """A Kubernetes NetworkPolicy. `ingress`/`egress` are ignored for a direction not in
    `policy_types`, and a selected pod with no rule of a listed direction is isolated
    (deny all) in that direction."""

    kind: ClassVar[str] = "NetworkPolicy"
    api_version: ClassVar[str] = "networking.k8s.io/v1"

    name: str
    namespace: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]
    ingress: tuple[NetworkPolicyRule, ...] = ()
    egress: tuple[NetworkPolicyRule, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        return keys.object_key(keys.NETWORK_POLICIES, self.name, self.namespace)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"podSelector": self.pod_selector.to_dict(),
                                "policyTypes": list(self.policy_types)}
        return _manifest(self, self._with_rules(spec))



@dataclass(frozen=True)
class Tier(_Labelled):
    kind: ClassVar[str] = "Tier"
    api_version: ClassVar[str] = "podnet.io/v1"

    name: str
    order: int
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    namespace: ClassVar[None] = None

    @property
    def key(self) -> str:
        return keys.object_key(keys.TIERS, self.name)

    def to_dict(self) -> dict[str, Any]:
        return _manifest(self, {"order": self.order})



DEFAULT_TIER_OBJECT = Tier(DEFAULT_TIER, DEFAULT_TIER_ORDER)


@dataclass(frozen=True)
class EndpointSelector:
    """ClusterPolicy spec.selector. Pods are selected when podSelector and/or
    namespaceSelector is given and every given one matches (AND); host endpoints when
    hostEndpointSelector is given and matches. Both halves may be given."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    host_endpoint_selector: LabelSelector | None = None

    @property
    def selects_pods(self) -> bool:
        return self.pod_selector is not None or self.namespace_selector is not None

    @property
    def selects_hosts(self) -> bool:
        return self.host_endpoint_selector is not None

    def selects_pod(self, labels: Mapping[str, str], ns_labels: Mapping[str, str]) -> bool:
        return (self.selects_pods
                and (self.pod_selector is None or self.pod_selector.matches(labels))
                and (self.namespace_selector is None
                     or self.namespace_selector.matches(ns_labels)))

    def selects_host(self, labels: Mapping[str, str]) -> bool:
        return (self.host_endpoint_selector is not None
                and self.host_endpoint_selector.matches(labels))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pod_selector is not None:
            out["podSelector"] = self.pod_selector.to_dict()
        if self.namespace_selector is not None:
            out["namespaceSelector"] = self.namespace_selector.to_dict()
        if self.host_endpoint_selector is not None:
            out["hostEndpointSelector"] = self.host_endpoint_selector.to_dict()
        return out


@dataclass(frozen=True)
class ClusterPolicy(_RuleSet):
    """A tiered, ordered, cluster-scoped policy (Calico GlobalNetworkPolicy-like)."""

    kind: ClassVar[str] = "ClusterPolicy"
    api_version: ClassVar[str] = "podnet.io/v1"

    name: str
    selector: EndpointSelector
    types: tuple[str, ...]
    ingress: tuple[ClusterRule, ...] = ()
    egress: tuple[ClusterRule, ...] = ()
    tier: str = DEFAULT_TIER
    order: int | float = DEFAULT_POLICY_ORDER
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    namespace: ClassVar[None] = None

    @property
    def key(self) -> str:
        return keys.object_key(keys.CLUSTER_POLICIES, self.name)

    @property
    def ref(self) -> str:
        return f"ClusterPolicy/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"tier": self.tier, "order": self.order,
                                "selector": self.selector.to_dict(), "types": list(self.types)}
        return _manifest(self, self._with_rules(spec))



@dataclass(frozen=True)
class HostEndpoint(_Labelled):
    """A lab node (`node`) or plain lab host (`host`) as a policy endpoint; `ips` may be
    left to the agent, which knows the host's addresses."""

    kind: ClassVar[str] = "HostEndpoint"
    api_version: ClassVar[str] = "podnet.io/v1"

    name: str
    node: str | None = None
    host: str | None = None
    ips: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    namespace: ClassVar[None] = None

    @property
    def key(self) -> str:
        return keys.object_key(keys.HOST_ENDPOINTS, self.name)

    @property
    def machine(self) -> str:
        return self.node or self.host or ""

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"node": self.node} if self.node else {"host": self.host}
        if self.ips:
            spec["ips"] = list(self.ips)
        return _manifest(self, spec)

PolicyObject = Namespace | NetworkPolicy | Tier | ClusterPolicy | HostEndpoint


def _manifest(obj: Any, spec: dict[str, Any] | None) -> dict[str, Any]:
    return manifest(obj.api_version, obj.kind, obj.name, obj.namespace, obj.labels, spec)


# --- parsing the spec of each kind (the envelope is the registry's) -----------------


def parse_namespace(meta: Metadata, spec: Any) -> Namespace:
    del spec  # a Namespace has no spec podnet reads
    if meta.labels.get(K8S_NAME_LABEL, meta.name) != meta.name:
        raise meta.loc.field(f"metadata.labels.{K8S_NAME_LABEL}").error(
            f"{meta.labels[K8S_NAME_LABEL]!r} differs from the name {meta.name!r}",
            "this label always holds the namespace name")
    return Namespace(meta.name, meta.labels)


def parse_network_policy(meta: Metadata, raw: Any) -> NetworkPolicy:
    loc = meta.loc.field("spec")
    spec = fields.mapping(raw, loc, ("podSelector", "policyTypes", "ingress", "egress"))
    if spec.get("podSelector") is None:
        raise loc.field("podSelector").error("required", "{} selects every pod of the namespace")
    pod_selector = selector(spec["podSelector"], loc.field("podSelector"))
    types = inferred_types(spec.get("policyTypes"), spec.get("egress"), loc.field("policyTypes"))
    rules: dict[str, tuple[NetworkPolicyRule, ...]] = {}
    for key, peer_key in (("ingress", "from"), ("egress", "to")):
        listed = fields.items(spec.get(key) or [], loc.field(key))
        rules[key] = tuple(NetworkPolicyRule.parse(r, loc.field(key).item(i), peer_key)
                           for i, r in enumerate(listed))
    assert meta.namespace is not None
    return NetworkPolicy(meta.name, meta.namespace, pod_selector, types, rules["ingress"],
                         rules["egress"], meta.labels)


def parse_tier(meta: Metadata, raw: Any) -> Tier:
    loc = meta.loc.field("spec")
    spec = fields.mapping({} if raw is None else raw, loc, ("order",))
    if spec.get("order") is None:
        raise loc.field("order").error("required", "an integer; lower tiers are evaluated first")
    order = fields.integer(spec["order"], loc.field("order"))
    if meta.name == DEFAULT_TIER and order != DEFAULT_TIER_ORDER:
        raise loc.field("order").error(
            f"the built-in tier {DEFAULT_TIER!r} has order {DEFAULT_TIER_ORDER}",
            "create a tier of another name to run policies before or after it")
    return Tier(meta.name, order, meta.labels)


def parse_cluster_policy(meta: Metadata, raw: Any) -> ClusterPolicy:
    loc = meta.loc.field("spec")
    spec = fields.mapping(raw, loc, ("tier", "order", "selector", "types", "ingress", "egress"))
    tier = fields.dns_name(spec.get("tier", DEFAULT_TIER), loc.field("tier"), label=True)
    order = fields.number(spec.get("order", DEFAULT_POLICY_ORDER), loc.field("order"))
    sel_loc = loc.field("selector")
    parts = ("podSelector", "namespaceSelector", "hostEndpointSelector")
    if spec.get("selector") is None:
        raise sel_loc.error("required: which endpoints the policy applies to",
                            "podSelector, namespaceSelector and/or hostEndpointSelector")
    sel_obj = fields.mapping(spec["selector"], sel_loc, parts)
    given = {k: selector(sel_obj[k], sel_loc.field(k)) for k in parts
             if sel_obj.get(k) is not None}
    if not given:
        raise sel_loc.error("selects nothing: give podSelector, namespaceSelector and/or "
                            "hostEndpointSelector", "{} under one of them selects all of its kind")
    endpoints = EndpointSelector(given.get("podSelector"), given.get("namespaceSelector"),
                                 given.get("hostEndpointSelector"))
    types = inferred_types(spec.get("types"), spec.get("egress"), loc.field("types"))
    rules: dict[str, tuple[ClusterRule, ...]] = {}
    for key, peer_key, direction in (("ingress", "from", "Ingress"), ("egress", "to", "Egress")):
        listed = fields.items(spec.get(key) or [], loc.field(key))
        if listed and direction not in types:
            raise loc.field(key).error(f"has rules but spec.types does not list {direction}",
                                       f"add {direction} to spec.types")
        rules[key] = tuple(ClusterRule.parse(r, loc.field(key).item(i), peer_key)
                           for i, r in enumerate(listed))
    return ClusterPolicy(meta.name, endpoints, types, rules["ingress"], rules["egress"], tier, order,
                         meta.labels)


def parse_host_endpoint(meta: Metadata, raw: Any) -> HostEndpoint:
    loc = meta.loc.field("spec")
    spec = fields.mapping(raw, loc, ("node", "host", "ips"))
    node, host = spec.get("node"), spec.get("host")
    if (node is None) == (host is None):
        raise loc.error("give exactly one of node (a lab node) or host (a plain lab host)")
    if node is not None:
        fields.dns_name(node, loc.field("node"), label=True)
    else:
        fields.dns_name(host, loc.field("host"), label=True)
    ips_loc = loc.field("ips")
    ips = [fields.address(ip, ips_loc.item(i)) for i, ip in enumerate(fields.items(spec.get("ips") or [], ips_loc))]
    return HostEndpoint(meta.name, node, host, tuple(ips), meta.labels)
