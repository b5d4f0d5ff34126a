"""The cluster's own kinds for the object registry: Node, read from the node leases.

Nodes are not applied by users: each agent publishes its lease (`nodes/<name>`). The
registry shows a lease as a manifest, so `podnet get nodes` and `podnet describe node
NAME` read like the other kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnet import keys
from podnet.model.cluster import NodeLease
from podnet.policy.kinds import PolicyView, policies_selecting
from podnet.schema.kind import Column, Kind, Section, manifest


def node_manifest(raw: Any) -> dict[str, Any]:
    """A stored lease as a podnet.io/v1 Node manifest."""
    lease = NodeLease.from_json(raw)
    return manifest("podnet.io/v1", "Node", lease.name, None, dict(lease.labels), {
        "block": lease.block, "underlayIP": lease.underlay_ip, "underlayInterface": lease.underlay_if,
        "fabric": lease.fabric, "backend": dict(lease.backend), "started": lease.started,
        **({"block6": lease.block6} if lease.block6 else {}),
        **({"underlayIP6": lease.underlay_ip6} if lease.underlay_ip6 else {})})


def describe_node(doc: Mapping[str, Any], view: PolicyView) -> list[Section]:
    name = (doc.get("metadata") or {}).get("name")
    world = view.world
    pods = [f"{ep.namespace}/{ep.name}  {', '.join(ep.ips) or '-'}" for ep in world.endpoints
            if ep.kind == "pod" and ep.node == name]
    sections: list[Section] = [("Pods", pods or ["(none)"])]
    for ep in world.endpoints:
        if ep.kind == "host" and ep.node == name:
            sections.append((f"Host endpoint {ep.name}", policies_selecting(world, ep)))
    return sections


def _spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("spec") or {}


NODE = Kind(
    "Node", "podnet.io/v1", "nodes", keys.NODES, ("no",), name_is_label=True, manifest=node_manifest,
    describe=describe_node,
    columns=(Column("BLOCK", lambda d: _spec(d).get("block")),
             Column("BLOCK6", lambda d: _spec(d).get("block6") or "-"),
             Column("UNDERLAY", lambda d: _spec(d).get("underlayIP")),
             Column("FABRIC", lambda d: _spec(d).get("fabric"))))

CLUSTER_KINDS: tuple[Kind, ...] = (NODE,)
