"""The cluster objects a node agent follows for services, kept change by change (pure):
what the service table (services/cache.py) and cluster DNS (dns/cluster.py) are built
from, and which services each change touches.

The agent feeds every stored object it watches (`feed` with watch events, `relist`
with a store listing); each change marks what it touches:

  a Service           itself
  an EndpointSlice    the service it backs (before and after the change)
  a pod               itself, and the services whose selector matches its labels,
                      before or after
  a readiness record  the services selecting the pods of that name
  a node lease        (with `track_nodes`) the pods of that node, when it comes or goes

Indexes keep these look-ups small: services by one (namespace, label, value) of their
selector, pods by each of their labels and by node, slices by the service they back.

Readiness, as Kubernetes: a pod is ready once its node judged it so (a pod without a
probe is ready from the start) and while its node is alive. With `track_nodes` a pod
whose node has no lease (its agent died and the lease expired, as Kubernetes' node
lifecycle controller marks the pods of a lost node NotReady) backs nothing, so services
and DNS stop sending clients to it within the lease TTL.

Stored objects are validated as when applied; a bad one counts as absent and is named
in `errors` until it is fixed or deleted. A Service stored under another name than its
own is refused too: its ports would take the ids of the service of that name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from podnet import keys
from podnet.errors import PodnetError
from podnet.model.policy import PodRecord, decode_pod
from podnet.model.service import Readiness
from podnet.services.kinds import read_service, read_slice
from podnet.services.objects import EndpointSlice, Service
from podnet.store.base import PUT, Event, Store

OBJECTS = (keys.SERVICES, keys.ENDPOINT_SLICES, keys.PODS, keys.READINESS)
Label = tuple[str, str, str]  # (namespace, label, value)


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _anchor(svc: Service) -> Label | None:
    """The one selector label a service is indexed under (a selector is never empty)."""
    if not svc.selector:
        return None
    label, value = min(svc.selector.items())
    return (svc.namespace, label, value)


def _read_service(raw: Any, key: str) -> Service:
    svc = read_service(raw, key)
    if svc.key != key:
        raise PodnetError(f"{key}: holds the service {svc.ref}")
    return svc


class WatchedObjects:
    """Parsed objects of the watched prefixes, their indexes, and what changed since
    `take_dirty`; see the module docstring."""

    def __init__(self, track_nodes: bool = False) -> None:
        self.track_nodes = track_nodes
        self.prefixes = (*OBJECTS, keys.NODES) if track_nodes else OBJECTS
        self.revisions: dict[str, int] = {}  # key -> revision held (bad objects too)
        self.errors: dict[str, str] = {}  # key -> why it is left out
        self.services: dict[str, Service] = {}
        self.slices: dict[str, EndpointSlice] = {}
        self.pods: dict[str, PodRecord] = {}
        self.judged: dict[str, bool] = {}  # "ns/name" -> ready, from readiness records
        self.live_nodes: set[str] = set()
        self._by_ref: dict[tuple[str, str], str] = {}  # (namespace, name) -> service key
        self._selecting: dict[Label, set[str]] = {}  # anchor label -> service keys
        self._pods_by_label: dict[Label, set[str]] = {}
        self._pods_by_ref: dict[str, set[str]] = {}  # "ns/name" -> pod keys
        self._pods_by_node: dict[str, set[str]] = {}
        self._slices_of: dict[tuple[str, str], set[str]] = {}  # (namespace, service) -> slice keys
        self._dirty: set[str] = set()  # service keys touched
        self._dirty_pods: set[str] = set()  # pod keys touched

    # -- input

    def feed(self, events: Iterable[Event]) -> None:
        """A watch's events (other prefixes are skipped)."""
        for event in events:
            if event.key.startswith(self.prefixes):
                if event.kind == PUT:
                    self.put(event.key, event.value, event.revision)
                else:
                    self.delete(event.key, event.revision)

    def relist(self, store: Store) -> int:
        """A listing of every watched prefix; the revision it reflects (the oldest
        listing's, so a watch from there misses nothing: what is held is skipped). The
        node leases are listed as hints: a lease's end comes as a delete event, and
        asking the server about each other node's lease made every agent of a 50-node
        etcd lab look up 49 leases per resync (60-100 LeaseTimeToLive a second, idle)."""
        revisions = []
        for prefix in self.prefixes:
            entries, revision = store.snapshot_hint(prefix) if prefix == keys.NODES else store.snapshot(prefix)
            self.sync(prefix, entries)
            revisions.append(revision)
        return min(revisions)

    def put(self, key: str, value: str | Any, revision: int) -> None:
        """A stored object (JSON text or already parsed) at `revision`; an older revision
        than the one held is ignored (a watch replaying what a listing already gave)."""
        held = self.revisions.get(key)
        if held is not None and revision <= held:
            return
        self.revisions[key] = revision
        if key.startswith(keys.NODES):
            self._node(key[len(keys.NODES):], alive=True)
            return  # a lease's content is not this cache's concern, only that it lives
        try:
            if isinstance(value, str) and key.startswith(keys.PODS):
                parsed: Any = decode_pod(value, key)  # (parsed once for every service of the agent)
            else:
                parsed = self._parse(key, json.loads(value) if isinstance(value, str) else value)
        except (PodnetError, ValueError) as exc:
            self._forget(key)
            self.errors[key] = f"{key}: {getattr(exc, 'msg', exc)}"
            return
        self.errors.pop(key, None)
        if parsed is not None:
            self._store(key, parsed)

    def delete(self, key: str, revision: int | None = None) -> None:
        held = self.revisions.get(key)
        if held is None or (revision is not None and revision <= held):
            return
        del self.revisions[key]
        self.errors.pop(key, None)
        if key.startswith(keys.NODES):
            self._node(key[len(keys.NODES):], alive=False)
            return
        self._forget(key)

    def sync(self, prefix: str, entries: Iterable[Any]) -> None:
        """A whole listing of `prefix` (store Entries): what changed is put, what is gone
        deleted; an unchanged revision costs a dict look-up."""
        listed = set()
        for entry in entries:
            listed.add(entry.key)
            if self.revisions.get(entry.key) != entry.revision:
                self.revisions.pop(entry.key, None)  # a listing is the truth, older or not
                self.put(entry.key, entry.value, entry.revision)
        for key in [k for k in self.revisions if k.startswith(prefix) and k not in listed]:
            self.delete(key)

    def _parse(self, key: str, raw: Any) -> Any:
        if key.startswith(keys.SERVICES):
            return _read_service(raw, key)
        if key.startswith(keys.ENDPOINT_SLICES):
            return read_slice(raw, key)
        if key.startswith(keys.PODS):
            return PodRecord.from_json(raw, key)
        if key.startswith(keys.READINESS):
            return Readiness.from_json(raw, key).ready
        return None

    def _store(self, key: str, parsed: Any) -> None:
        self._forget(key)
        if isinstance(parsed, Service):
            self.services[key] = parsed
            self._by_ref[(parsed.namespace, parsed.name)] = key
            anchor = _anchor(parsed)
            if anchor is not None:
                self._selecting.setdefault(anchor, set()).add(key)
            self._dirty.add(key)
        elif isinstance(parsed, EndpointSlice):
            self.slices[key] = parsed
            self._slices_of.setdefault((parsed.namespace, parsed.service), set()).add(key)
            self._slice_changed(parsed)
        elif isinstance(parsed, PodRecord):
            self.pods[key] = parsed
            self._pods_by_ref.setdefault(parsed.ref, set()).add(key)
            self._pods_by_node.setdefault(parsed.node, set()).add(key)
            for label, value in parsed.labels.items():
                self._pods_by_label.setdefault((parsed.namespace, label, value), set()).add(key)
            self._pod_changed(key, parsed)
        elif isinstance(parsed, bool):
            ref = keys.object_ref(keys.READINESS, key)
            self.judged[ref] = parsed
            self._ref_changed(ref)

    def _forget(self, key: str) -> None:
        """Take the object held under `key` out of every index (what it affected is dirty)."""
        if (svc := self.services.pop(key, None)) is not None:
            if self._by_ref.get((svc.namespace, svc.name)) == key:
                del self._by_ref[(svc.namespace, svc.name)]
            anchor = _anchor(svc)
            if anchor is not None:
                _discard(self._selecting, anchor, key)
            self._dirty.add(key)
        elif (piece := self.slices.pop(key, None)) is not None:
            _discard(self._slices_of, (piece.namespace, piece.service), key)
            self._slice_changed(piece)
        elif (pod := self.pods.pop(key, None)) is not None:
            _discard(self._pods_by_ref, pod.ref, key)
            _discard(self._pods_by_node, pod.node, key)
            for label, value in pod.labels.items():
                _discard(self._pods_by_label, (pod.namespace, label, value), key)
            self._pod_changed(key, pod)
        elif key.startswith(keys.READINESS):
            ref = keys.object_ref(keys.READINESS, key)
            if self.judged.pop(ref, None) is not None:
                self._ref_changed(ref)

    def _node(self, name: str, alive: bool) -> None:
        if (name in self.live_nodes) == alive:
            return  # a lease renewed: nothing changed
        if alive:
            self.live_nodes.add(name)
        else:
            self.live_nodes.discard(name)
        for key in self._pods_by_node.get(name, ()):
            self._pod_changed(key, self.pods[key])

    def _slice_changed(self, piece: EndpointSlice) -> None:
        if (key := self._by_ref.get((piece.namespace, piece.service))) is not None:
            self._dirty.add(key)

    def _pod_changed(self, key: str, pod: PodRecord) -> None:
        self._dirty_pods.add(key)
        for label, value in pod.labels.items():
            for svc_key in self._selecting.get((pod.namespace, label, value), ()):
                selector = self.services[svc_key].selector
                if selector is not None and _selects(selector, pod.labels):
                    self._dirty.add(svc_key)

    def _ref_changed(self, ref: str) -> None:
        for key in self._pods_by_ref.get(ref, ()):
            self._pod_changed(key, self.pods[key])

    # -- output

    def take_dirty(self) -> tuple[set[str], set[str]]:
        """The service keys and pod keys touched since the last call."""
        services, pods = self._dirty, self._dirty_pods
        self._dirty, self._dirty_pods = set(), set()
        return services, pods

    def inputs(self, svc: Service) -> tuple[list[PodRecord], list[EndpointSlice], dict[str, bool]]:
        """What backs `svc`: the pods its selector may match (a superset: backing()
        checks the whole selector), its slices, and the pods' readiness."""
        pods: list[PodRecord] = []
        slices: list[EndpointSlice] = []
        anchor = _anchor(svc)
        if anchor is not None:
            pods = [self.pods[k] for k in self._pods_by_label.get(anchor, ())]
        else:
            slices = [self.slices[k] for k in self._slices_of.get((svc.namespace, svc.name), ())]
        return pods, slices, {p.ref: self.ready(p) for p in pods}

    def ready(self, pod: PodRecord) -> bool:
        """Judged by the pod's node, else not ready while any pod of that name has a
        probe; never while its node is gone (with `track_nodes`)."""
        if self.track_nodes and pod.node and pod.node not in self.live_nodes:
            return False
        if pod.ref in self.judged:
            return self.judged[pod.ref]
        return not any(self.pods[k].readiness is not None for k in self._pods_by_ref.get(pod.ref, ()))

    def problems(self) -> list[str]:
        return [self.errors[k] for k in sorted(self.errors)]


def _discard(index: dict, key: Any, member: str) -> None:
    found = index.get(key)
    if found is not None:
        found.discard(member)
