"""`podnet describe KIND NAME`: an object, plus what the cluster made of it.

The object's manifest first, then its kind's own sections (schema/kind.py
`describe`): for a pod its node, addresses and the policies selecting it; for a
policy the endpoints it selects; for a node its pods. Everything is read from the
store once, as one consistent view.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from podnet.objects.store import get_one
from podnet.policy.evaluate import World
from podnet.schema.kind import Kind, Section
from podnet.store.base import Store


class ClusterView:
    """What the describe functions read, each part loaded on first use."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @cached_property
    def world(self) -> World:
        from podnet.policy.world import load_world

        return load_world(self.store)[0]


def describe(store: Store, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any]:
    """{"object": manifest, "details": [[title, text or list], ...]}."""
    doc = get_one(store, kind, name, namespace)
    sections: list[Section] = kind.describe(doc, ClusterView(store)) if kind.describe else []
    return {"object": doc, "details": [[title, value] for title, value in sections]}


def render(kind: Kind, described: dict[str, Any]) -> str:
    """kubectl-describe-like text: the header, the spec as YAML, then the sections."""
    import yaml

    doc = described["object"]
    meta = doc.get("metadata") or {}
    labels = ",".join(f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items())) or "<none>"
    lines = [f"Name:       {meta.get('name')}"]
    if kind.namespaced:
        lines.append(f"Namespace:  {meta.get('namespace')}")
    lines += [f"Kind:       {kind.kind} ({doc.get('apiVersion')})", f"Labels:     {labels}"]
    if doc.get("spec"):
        lines.append("Spec:")
        spec = yaml.safe_dump(doc["spec"], sort_keys=False, default_flow_style=False).rstrip()
        lines += [f"  {line}" for line in spec.splitlines()]
    width = max([12, *(len(title) + 2 for title, value in described["details"] if not isinstance(value, list))])
    for title, value in described["details"]:
        if isinstance(value, list):
            lines.append(f"{title}:")
            lines += [f"  {item}" for item in value]
        else:
            lines.append(f"{title}:".ljust(width) + f"{value}")
    return "\n".join(lines)
