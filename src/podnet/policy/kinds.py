"""The policy domain's kinds, declared once for the object registry (objects/registry.py).

Namespace, NetworkPolicy, ClusterPolicy, Tier and HostEndpoint are applied by users;
Pod is registered by the orchestrator (the lab) and only labelled by users. Each
declaration names its store prefix, short names, `podnet get` columns and what
`podnet describe` adds: for a policy, the endpoints it selects; for a pod or host
endpoint, the policies that select it (the same judgement as policy/evaluate.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from podnet import keys
from podnet.errors import ObjectError
from podnet.policy import evaluate
from podnet.policy.evaluate import Endpoint, World
from podnet.policy.objects import (
    parse_cluster_policy,
    parse_host_endpoint,
    parse_namespace,
    parse_network_policy,
    parse_tier,
)
from podnet.schema.kind import Column, Kind, Section


class PolicyView(Protocol):
    """What a describe function reads: the policy world as the store has it."""

    @property
    def world(self) -> World: ...


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("spec") or {}


def _name(doc: Mapping[str, Any]) -> tuple[str, str | None]:
    meta = doc.get("metadata") or {}
    return meta.get("name", ""), meta.get("namespace")


def _refs(endpoints: list[Endpoint]) -> list[str]:
    return [ep.ref for ep in endpoints] or ["(none)"]


def policies_selecting(world: World, ep: Endpoint) -> list[str]:
    """Every ClusterPolicy (in evaluation order) and NetworkPolicy that applies to `ep`."""
    out = [f"ClusterPolicy {cp.name} (tier {cp.tier}, order {cp.order}, {', '.join(cp.types)})"
           for cp in world.cluster_policies if evaluate.selects(world, cp, ep)]
    if ep.kind == "pod":
        out += [f"NetworkPolicy {np.ref} ({', '.join(np.policy_types)})" for np in world.network_policies
                if np.namespace == ep.namespace and np.pod_selector.matches(ep.labels)]
    return out or ["(none: everything is allowed)"]


def _endpoint(world: World, ref: str) -> Endpoint | None:
    try:
        return world.endpoint(ref)
    except ObjectError:  # not in the world (yet): nothing to say
        return None


def describe_namespace(doc: Mapping[str, Any], view: PolicyView) -> list[Section]:
    name, _ = _name(doc)
    world = view.world
    pods = [ep for ep in world.endpoints if ep.namespace == name]
    return [("Pods", [f"{ep.name}  {', '.join(ep.ips) or '-'}  node {ep.node or '-'}" for ep in pods]
             or ["(none)"]),
            ("NetworkPolicies", [np.name for np in world.network_policies if np.namespace == name]
             or ["(none)"])]


def describe_network_policy(doc: Mapping[str, Any], view: PolicyView) -> list[Section]:
    name, namespace = _name(doc)
    world = view.world
    policy = next((p for p in world.network_policies if (p.namespace, p.name) == (namespace, name)), None)
    if policy is None:
        return []
    selected = [ep for ep in world.endpoints if ep.namespace == policy.namespace
                and policy.pod_selector.matches(ep.labels)]
    return [("Policy types", ", ".join(policy.policy_types)),
            ("Rules", f"{len(policy.ingress)} ingress, {len(policy.egress)} egress"),
            ("Selects", _refs(selected))]


def describe_cluster_policy(doc: Mapping[str, Any], view: PolicyView) -> list[Section]:
    name, _ = _name(doc)
    world = view.world
    policy = next((p for p in world.cluster_policies if p.name == name), None)
    if policy is None:
        return []
    tier = next(t for t in world.tiers if t.name == policy.tier)
    return [("Tier", f"{tier.name} (order {tier.order})"), ("Order", str(policy.order)),
            ("Types", ", ".join(policy.types)),
            ("Rules", f"{len(policy.ingress)} ingress, {len(policy.egress)} egress"),
            ("Selects", _refs([ep for ep in world.endpoints if evaluate.selects(world, policy, ep)]))]


def describe_tier(doc: Mapping[str, Any], view: PolicyView) -> list[Section]:
    name, _ = _name(doc)
    policies = [f"{p.order}  {p.name}" for p in view.world.cluster_policies if p.tier == name]
    return [("ClusterPolicies (in order)", policies or ["(none)"])]


def describe_host_endpoint(doc: Mapping[str, Any], view: PolicyView) -> list[Section]:
    name, _ = _name(doc)
    ep = _endpoint(view.world, name)
    if ep is None:
        return []
    return [("Addresses", ", ".join(ep.ips) or "(not known yet: no lease or host record)"),
            ("Selected by", policies_selecting(view.world, ep))]


def describe_pod(doc: Mapping[str, Any], view: PolicyView) -> list[Section]:
    name, namespace = _name(doc)
    sections: list[Section] = [("IPs", ", ".join((doc.get("status") or {}).get("podIPs") or []) or "-")]
    ep = _endpoint(view.world, f"{namespace}/{name}")
    if ep is not None:
        sections.append(("Selected by", policies_selecting(view.world, ep)))
    return sections


NAMESPACE = Kind(
    "Namespace", "v1", "namespaces", keys.NAMESPACES, ("ns",), name_is_label=True,
    parse=parse_namespace, describe=describe_namespace)
NETWORK_POLICY = Kind(
    "NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", keys.NETWORK_POLICIES, ("netpol",),
    namespaced=True, parse=parse_network_policy, describe=describe_network_policy,
    columns=(Column("POD-SELECTOR", lambda d: _compact(_spec(d).get("podSelector", {}))),
             Column("TYPES", lambda d: ",".join(_spec(d).get("policyTypes") or []))))
CLUSTER_POLICY = Kind(
    "ClusterPolicy", "podnet.io/v1", "clusterpolicies", keys.CLUSTER_POLICIES, ("cp",),
    parse=parse_cluster_policy, describe=describe_cluster_policy,
    columns=(Column("TIER", lambda d: _spec(d).get("tier", "default")),
             Column("ORDER", lambda d: _spec(d).get("order")),
             Column("SELECTOR", lambda d: _compact(_spec(d).get("selector", {})))))
TIER = Kind(
    "Tier", "podnet.io/v1", "tiers", keys.TIERS, name_is_label=True, parse=parse_tier,
    describe=describe_tier, columns=(Column("ORDER", lambda d: _spec(d).get("order")),))
HOST_ENDPOINT = Kind(
    "HostEndpoint", "podnet.io/v1", "hostendpoints", keys.HOST_ENDPOINTS, ("hep",),
    parse=parse_host_endpoint, describe=describe_host_endpoint,
    columns=(Column("NODE", lambda d: _spec(d).get("node") or _spec(d).get("host")),
             Column("IPS", lambda d: _spec(d).get("ips"))))
POD = Kind(
    "Pod", "v1", "pods", keys.PODS, ("po",), namespaced=True, describe=describe_pod,
    columns=(Column("NODE", lambda d: _spec(d).get("nodeName")),
             Column("IPS", lambda d: (d.get("status") or {}).get("podIPs"))))

# in the order `podnet apply` reports what it knows
POLICY_KINDS: tuple[Kind, ...] = (NAMESPACE, NETWORK_POLICY, TIER, CLUSTER_POLICY, HOST_ENDPOINT, POD)
