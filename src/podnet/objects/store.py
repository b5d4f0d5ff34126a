"""Objects in the cluster store: apply, delete, get, label, kubectl style.

Why the store: every node's agent acts on the objects for its own endpoints, so they
live where all of them watch (the lab's shared SQLite file, or etcd). Each object is
one JSON manifest under its kind's prefix (the registry gives it). One `apply`,
`delete` or `label` is one store transaction: all the documents of a file land
together or not at all, and agents see one revision.

The "none left" marker (keys.none_left("policy")): `delete` that removes the last
NetworkPolicy or ClusterPolicy records it, in the same transaction, and `apply` of
one clears it. Only with it may a node drop its policy table; a store that merely
looks empty (a mistyped --store, a wrong etcd prefix) leaves the table in force.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podnet import keys
from podnet.errors import ObjectError
from podnet.model.policy import PodRecord
from podnet.objects.registry import kind_of_key
from podnet.policy.kinds import NAMESPACE, POD
from podnet.policy.objects import K8S_NAME_LABEL, Namespace
from podnet.schema.fields import Loc, parse_labels
from podnet.schema.kind import Kind, manifest, not_found
from podnet.store.base import Entry, Store, dumps


@dataclass(frozen=True)
class Change:
    key: str
    what: str  # created | configured | unchanged | deleted | not found | labeled

    @property
    def shown(self) -> str:
        kind = kind_of_key(self.key)
        return f"{kind.ref(self.key) if kind else self.key} {self.what}"


def apply(store: Store, objects: Sequence[Any]) -> list[Change]:
    """Create or replace every object, in one transaction (kubectl apply, whole docs)."""
    changes = []
    with store.transaction() as tx:
        if any(obj.key.startswith(keys.ENFORCING_POLICY) for obj in objects):
            tx.delete(keys.none_left("policy"))  # there is policy again
        for obj in objects:
            old = tx.get(obj.key)
            kind = kind_of_key(obj.key)
            if kind is not None and kind.admit is not None:  # what the API server fills in (a ClusterIP)
                obj = kind.admit(tx, obj, None if old is None else old.json())
            value = dumps(obj.to_dict())
            if old is not None and old.value == value:
                changes.append(Change(obj.key, "unchanged"))
                continue
            tx.put(obj.key, value)
            changes.append(Change(obj.key, "configured" if old else "created"))
    return changes


def delete(store: Store, objects: Sequence[Any]) -> list[Change]:
    """Delete every object named (its spec is not compared), in one transaction; the
    last policy deleted leaves the marker that there is none on purpose."""
    with store.transaction() as tx:
        changes = [Change(obj.key, "deleted" if _delete(tx, obj.key) else "not found") for obj in objects]
        if any(c.what == "deleted" and c.key.startswith(keys.ENFORCING_POLICY) for c in changes) and not any(
                tx.list(prefix) for prefix in keys.ENFORCING_POLICY):
            tx.put(keys.none_left("policy"), dumps({"deletedAt": time.time()}))
        return changes


def _delete(tx: Store, key: str) -> bool:
    """Delete one object and what goes with it (a Service's claims)."""
    kind = kind_of_key(key)
    if kind is not None and kind.release is not None:
        entry = tx.get(key)
        if entry is not None:
            kind.release(tx, entry.json())
    return tx.delete(key)


def get(store: Store, kind: Kind, namespace: str | None = None) -> list[dict[str, Any]]:
    """The manifests of `kind` (in `namespace` when given and the kind is namespaced)."""
    return [_manifest(kind, entry) for entry in store.list(kind.list_prefix(namespace))]


def get_one(store: Store, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any]:
    entry = store.get(kind.key(name, namespace or "default"))
    if entry is None:
        raise not_found(kind, name, namespace)
    return _manifest(kind, entry)


def _manifest(kind: Kind, entry: Entry) -> dict[str, Any]:
    """A stored object as its manifest; a record that does not carry its own name
    (a host's: `hosts/<name>`) is named by its key."""
    if kind.manifest is None:
        return entry.json()
    doc = kind.manifest(entry.json())
    meta = doc.get("metadata") or {}
    if not meta.get("name") and not kind.namespaced:
        doc["metadata"] = {**meta, "name": keys.object_ref(kind.prefix, entry.key)}
    return doc


def namespace_object(name: str, labels: Mapping[str, str]) -> Namespace:
    """A Namespace as if applied: its name and labels checked like a manifest's."""
    doc = manifest(NAMESPACE.api_version, NAMESPACE.kind, name, None, labels, None)
    return NAMESPACE.parse_manifest(doc, Loc("document 0"))


REGISTER_BATCH = 40  # records per transaction: a read and a write each, under etcd's 128 operations


def register_pods(store: Store, pods: Iterable[PodRecord], namespaces: Mapping[str, Mapping[str, str]]) -> None:
    """What an orchestrator does at pod creation: record namespaces and pods unless
    already there (a user's labels win), REGISTER_BATCH to a transaction (each record
    stands alone; one transaction for a 1,000-pod lab was more than etcd takes)."""
    records = [(ns.key, dumps(ns.to_dict())) for ns in (namespace_object(n, labels) for n, labels in namespaces.items())]
    records += [(pod.key, pod.encode()) for pod in pods]
    for start in range(0, len(records), REGISTER_BATCH):
        with store.transaction() as tx:
            for key, value in records[start : start + REGISTER_BATCH]:
                if tx.get(key) is None:  # registered once: `podnet label pod` edits it
                    tx.put(key, value)


def parse_label_changes(changes: Sequence[str]) -> tuple[dict[str, str], set[str]]:
    """kubectl label syntax: `k=v` sets, `k-` removes."""
    if not changes:
        raise ObjectError("no label changes given", "use k=v to set and k- to remove")
    sets: dict[str, str] = {}
    removes: set[str] = set()
    for change in changes:
        if change.endswith("-") and "=" not in change:
            removes.add(change[:-1])
        elif "=" in change:
            key, _, value = change.partition("=")
            sets[key] = value
        else:
            raise ObjectError(f"bad label change {change!r}", "use k=v to set and k- to remove")
    if K8S_NAME_LABEL in sets or K8S_NAME_LABEL in removes:
        raise ObjectError(f"{K8S_NAME_LABEL} is always the namespace's name and cannot be changed")
    return sets, removes


def _relabel(labels: Mapping[str, str], sets: Mapping[str, str], removes: set[str]) -> dict[str, str]:
    out = {**labels, **sets}
    for key in removes:
        out.pop(key, None)
    return out


def label(store: Store, kind: Kind, target: str, changes: Sequence[str]) -> Change:
    """Set/remove labels of a namespace (created if unknown, as every namespace a pod
    uses exists) or of a registered pod (`NS/NAME`); validated as a whole object."""
    sets, removes = parse_label_changes(changes)
    with store.transaction() as tx:
        if kind is NAMESPACE:
            entry = tx.get(NAMESPACE.key(target))
            doc = json.loads(entry.value) if entry else {"metadata": {}}
            ns = namespace_object(target, _relabel(doc["metadata"].get("labels") or {}, sets, removes))
            tx.put(ns.key, dumps(ns.to_dict()))
            return Change(ns.key, "labeled")
        if kind is POD:
            namespace, sep, name = target.partition("/")
            if not sep or not namespace or not name:
                raise ObjectError(f"pod {target!r}: give it as NAMESPACE/NAME")
            entry = tx.get(POD.key(name, namespace))
            if entry is None:
                raise ObjectError(f"pod {target} is not known", "pods are registered when they are created")
            pod = PodRecord.from_json(entry.json(), entry.key)
            labels = parse_labels(_relabel(pod.labels, sets, removes), f"Pod {target}: metadata.labels")
            updated = dataclasses.replace(pod, labels=labels)
            tx.put(updated.key, updated.encode())
            return Change(updated.key, "labeled")
    raise ObjectError(f"cannot label a {kind.kind}", "label namespace NAME or pod NS/NAME")
