"""Policy objects, namespaces and pod labels in the cluster store.

Why the store: every node's agent compiles the policies for its own endpoints, so the
objects must live where all of them watch (the lab's shared SQLite file, or etcd).
Each object is one JSON manifest under its kind's prefix (objects.py gives the key):

    policy/namespaces/<name>              policy/networkpolicies/<ns>/<name>
    policy/clusterpolicies/<name>         policy/tiers/<name>
    policy/hostendpoints/<name>           policy/pods/<ns>/<name>

`policy/pods/...` is what an orchestrator knows of a pod and CNI does not: its labels
and named ports (plus node and addresses). The lab registers its pods there; `podnet
label pod` edits them. One `apply`/`delete`/`label` is one store transaction: all the
documents of a file land together or not at all, and agents see one revision.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from podnet.policy.objects import PolicyError, PolicyObject, parse_document
from podnet.store.base import PUT, Store

PREFIX = "policy/"
PODS = "policy/pods/"
SETTINGS = "policy/settings"  # {"logAllowed": bool}: log allowed new flows too
AS_OF = ""  # load_world's cache: the revision it reflects, under a key no object has
NAME_LABEL = "kubernetes.io/metadata.name"

# kind -> store prefix; and what a user may type for it in `podnet get KIND`
KINDS: dict[str, str] = {
    "Namespace": "policy/namespaces/",
    "NetworkPolicy": "policy/networkpolicies/",
    "ClusterPolicy": "policy/clusterpolicies/",
    "Tier": "policy/tiers/",
    "HostEndpoint": "policy/hostendpoints/",
    "Pod": PODS,
}
NAMESPACED = {"NetworkPolicy", "Pod"}
ALIASES: dict[str, str] = {
    alias: kind
    for kind, aliases in {
        "Namespace": ("namespace", "namespaces", "ns"),
        "NetworkPolicy": ("networkpolicy", "networkpolicies", "netpol"),
        "ClusterPolicy": ("clusterpolicy", "clusterpolicies", "cp"),
        "Tier": ("tier", "tiers"),
        "HostEndpoint": ("hostendpoint", "hostendpoints", "hep"),
        "Pod": ("pod", "pods", "po"),
    }.items()
    for alias in aliases
}


def kind_of(text: str) -> str:
    """`networkpolicy`, `netpol`, `NetworkPolicies`... -> "NetworkPolicy"."""
    kind = ALIASES.get(text.lower())
    if kind is None:
        names = ", ".join(sorted(KINDS))
        raise PolicyError(f"unknown kind {text!r}", f"one of: {names} (or their short names)")
    return kind


@dataclass(frozen=True)
class PodRecord:
    """What policy needs to know of a pod that CNI does not tell: labels, named ports."""

    namespace: str
    name: str
    node: str = ""
    ips: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Mapping[str, Any], ...] = ()  # {"name", "port", "protocol"}

    @property
    def key(self) -> str:
        return f"{PODS}{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels)},
                "spec": {"nodeName": self.node, "ports": [dict(p) for p in self.ports]},
                "status": {"podIPs": list(self.ips)}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PodRecord:
        meta, spec = doc.get("metadata", {}), doc.get("spec", {})
        return cls(meta["namespace"], meta["name"], spec.get("nodeName", ""),
                   tuple(doc.get("status", {}).get("podIPs", [])), dict(meta.get("labels") or {}),
                   tuple(spec.get("ports", [])))


@dataclass(frozen=True)
class Change:
    key: str
    what: str  # created | configured | unchanged | deleted | not found | labeled

    @property
    def shown(self) -> str:
        kind = next((k for k, p in KINDS.items() if self.key.startswith(p)), "?")
        return f"{kind.lower()}/{self.key.split('/', 2)[2]} {self.what}"


def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def apply(store: Store, objects: Sequence[PolicyObject]) -> list[Change]:
    """Create or replace every object, in one transaction (kubectl apply, whole docs)."""
    changes = []
    with store.transaction() as tx:
        for obj in objects:
            value = _dump(obj.to_dict())
            old = tx.get(obj.key)
            if old is not None and old.value == value:
                changes.append(Change(obj.key, "unchanged"))
                continue
            tx.put(obj.key, value)
            changes.append(Change(obj.key, "configured" if old else "created"))
    return changes


def delete(store: Store, objects: Sequence[PolicyObject]) -> list[Change]:
    """Delete every object named (its spec is not compared), in one transaction."""
    with store.transaction() as tx:
        return [Change(obj.key, "deleted" if tx.delete(obj.key) else "not found") for obj in objects]


def get(store: Store, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
    """The stored manifests of `kind` (in `namespace` when given and namespaced)."""
    prefix = KINDS[kind]
    if namespace and kind in NAMESPACED:
        prefix += f"{namespace}/"
    return [json.loads(entry.value) for entry in store.list(prefix)]


def register_pods(store: Store, pods: Iterable[PodRecord], namespaces: Mapping[str, Mapping[str, str]]) -> None:
    """What an orchestrator does at pod creation: record namespaces and pods unless
    already there (a user's labels win), in one transaction."""
    with store.transaction() as tx:
        for name, labels in namespaces.items():
            ns = namespace_object(name, labels)
            if tx.get(ns.key) is None:
                tx.put(ns.key, _dump(ns.to_dict()))
        for pod in pods:
            if tx.get(pod.key) is None:  # registered once: `podnet label pod` edits it
                tx.put(pod.key, _dump(pod.to_dict()))


def namespace_object(name: str, labels: Mapping[str, str]) -> PolicyObject:
    return parse_document({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": name, "labels": dict(labels)}}, 0)


def parse_label_changes(changes: Sequence[str]) -> tuple[dict[str, str], set[str]]:
    """kubectl label syntax: `k=v` sets, `k-` removes."""
    if not changes:
        raise PolicyError("no label changes given", "use k=v to set and k- to remove")
    sets: dict[str, str] = {}
    removes: set[str] = set()
    for change in changes:
        if change.endswith("-") and "=" not in change:
            removes.add(change[:-1])
        elif "=" in change:
            key, _, value = change.partition("=")
            sets[key] = value
        else:
            raise PolicyError(f"bad label change {change!r}", "use k=v to set and k- to remove")
    if NAME_LABEL in sets or NAME_LABEL in removes:
        raise PolicyError(f"{NAME_LABEL} is always the namespace's name and cannot be changed")
    return sets, removes


def label(store: Store, kind: str, target: str, changes: Sequence[str]) -> Change:
    """Set/remove labels of a namespace (created if unknown, as every namespace a pod
    uses exists) or of a registered pod (`NS/NAME`); validated as a whole object."""
    sets, removes = parse_label_changes(changes)
    with store.transaction() as tx:
        if kind == "Namespace":
            key = f"{KINDS['Namespace']}{target}"
            entry = tx.get(key)
            doc = json.loads(entry.value) if entry else namespace_object(target, {}).to_dict()
            labels = dict(doc["metadata"].get("labels") or {})
            labels.update(sets)
            for k in removes:
                labels.pop(k, None)
            obj = namespace_object(target, labels)  # validates keys and values
            tx.put(obj.key, _dump(obj.to_dict()))
            return Change(obj.key, "labeled")
        if kind == "Pod":
            ns, sep, name = target.partition("/")
            if not sep or not ns or not name:
                raise PolicyError(f"pod {target!r}: give it as NAMESPACE/NAME")
            entry = tx.get(f"{PODS}{ns}/{name}")
            if entry is None:
                raise PolicyError(f"pod {target} is not known", "pods are registered when they are created")
            pod = PodRecord.from_dict(json.loads(entry.value))
            labels = {**pod.labels, **sets}
            for k in removes:
                labels.pop(k, None)
            namespace_object("check", labels)  # the same key/value rules as any label
            updated = PodRecord(pod.namespace, pod.name, pod.node, pod.ips, labels, pod.ports)
            tx.put(updated.key, _dump(updated.to_dict()))
            return Change(updated.key, "labeled")
    raise PolicyError(f"cannot label a {kind}", "label namespace NAME or pod NS/NAME")


def load_world(store: Store, parsed: dict[str, tuple[int, Any]] | None = None,
               events: Sequence[Any] | None = None) -> tuple[Any, int]:
    """The policy world (policy/evaluate.py World) and the revision it reflects.

    `parsed` (kept by the caller) maps a key to (revision, parsed object): an unchanged
    entry is not parsed again and yields the very same object, which the compiler's
    cache relies on. With `events` (the watch events since the world `parsed` holds),
    only those keys are applied, and the store is not listed: one change among 10k
    objects costs one parse. Without them, one consistent snapshot is read. Host
    endpoints without explicit addresses get their underlay address: a node's from its
    lease, a plain lab host's from `hosts/<name>`."""
    cache: dict[str, tuple[int, Any]] = {} if parsed is None else parsed

    def parse(key: str, revision: int, value: str) -> None:
        doc = json.loads(value)
        cache[key] = (revision, doc if key.startswith(PODS) else parse_document(doc, 0))

    as_of = cache.get(AS_OF, (0, None))[0]  # the revision the cache reflects
    if events is not None and as_of:
        revision = as_of
        for event in events:
            if event.revision <= as_of:
                continue  # already in the cache: a listing since then saw it (or its undoing)
            revision = max(revision, event.revision)
            if event.key == SETTINGS or not event.key.startswith(PREFIX):
                continue
            if event.kind == PUT and event.value is not None:
                parse(event.key, event.revision, event.value)
            else:
                cache.pop(event.key, None)
    else:
        with store.transaction():
            entries, revision = store.list(PREFIX), store.revision()
        live = {AS_OF}
        for entry in entries:
            if entry.key == SETTINGS:
                continue
            live.add(entry.key)
            hit = cache.get(entry.key)
            if hit is None or hit[0] != entry.revision:
                parse(entry.key, entry.revision, entry.value)
        for key in [k for k in cache if k not in live]:
            del cache[key]
    cache[AS_OF] = (revision, None)
    return _world(store, cache), revision


def _world(store: Store, cache: Mapping[str, tuple[int, Any]]) -> Any:
    from podnet.policy.compile import endpoints_from_pods
    from podnet.policy.evaluate import Endpoint, World
    from podnet.policy.objects import HostEndpoint

    objects = [obj for key, (_rev, obj) in cache.items() if key != AS_OF and not key.startswith(PODS)]
    pods = [doc for key, (_rev, doc) in cache.items() if key.startswith(PODS)]
    hosts = []
    for obj in objects:
        if isinstance(obj, HostEndpoint) and not obj.ips:
            where = f"nodes/{obj.node}" if obj.node else f"hosts/{obj.host}"  # a node's lease, a host's record
            ip = (store.get_json(where) or {}).get("underlay_ip")
            hosts.append(Endpoint("host", obj.name, None, (ip,) if ip else (), obj.labels, (), obj.machine))
    return World.build(objects, endpoints_from_pods(pods, hosts))
