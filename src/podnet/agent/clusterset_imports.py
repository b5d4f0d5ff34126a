"""The gateway in charge's import controller: every cluster's exports read (ours and
each peer's store), the imports planned (exports.py), and our store made to hold
exactly them: derived Services (admitted like any: their ClusterIP is the clusterset
IP), their EndpointSlices, and the ServiceImports naming that IP.

Only objects labelled as derived (exports.SERVICE_NAME_LABEL) are ever changed or
deleted here: a user's own Service at a derived name is left alone and reported.
A peer's exports are read through the same code as ours, and every record read from
its store is parsed and validated as if applied here (services/watched.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from podnet import keys
from podnet.clusterset.exports import (
    GLOBAL_FOR_LABEL,
    SERVICE_NAME_LABEL,
    Exported,
    ImportPlan,
    global_service,
    globalized,
)
from podnet.clusterset.model import ClusterInfo
from podnet.errors import PodnetError
from podnet.objects import store as objects
from podnet.services.endpoints import backing
from podnet.services.objects import SliceEndpoint
from podnet.services.watched import WatchedObjects
from podnet.store.base import Store, dumps


def read_exports(store: Store, cluster: str, problems: list[str]) -> list[Exported]:
    """What `cluster` (whose store this is) exports: each ServiceExport's Service with
    its endpoints; an export without its Service is reported and skipped."""
    wanted = []
    for entry in store.list(keys.SERVICE_EXPORTS):
        namespace, _, name = entry.key[len(keys.SERVICE_EXPORTS):].partition("/")
        if namespace and name:
            wanted.append((namespace, name))
    if not wanted:
        return []
    watched = WatchedObjects()
    watched.relist(store)
    out = []
    for namespace, name in wanted:
        svc = watched.services.get(keys.object_key(keys.SERVICES, name, namespace))
        if svc is None or svc.headless or SERVICE_NAME_LABEL in svc.labels:
            problems.append(f"{cluster}: ServiceExport {namespace}/{name}: no such (non-headless, not derived) Service")
            continue
        pods, slices, ready = watched.inputs(svc)
        endpoints: dict[str, bool] = {}
        targets = []
        for spec in svc.ports:
            found = backing(svc, spec, pods, slices, ready)
            targets.append(found[0].port if found else (spec.target_port if isinstance(spec.target_port, int)
                                                        and spec.target_port else spec.port))
            for item in found:
                endpoints[item.ip] = endpoints.get(item.ip, True) and item.ready
        selector = tuple(sorted(svc.selector.items())) if svc.selector is not None else None
        out.append(Exported(cluster, namespace, name, svc.ports, tuple(targets),
                            tuple(SliceEndpoint(ip, ok) for ip, ok in sorted(endpoints.items())),
                            svc.cluster_ip if not svc.headless else "", selector))
    return out


@dataclass(frozen=True)
class _Named:
    """What objects.delete needs of an object: its key."""

    key: str


def _labelled(store: Store, prefix: str, label: str = SERVICE_NAME_LABEL) -> dict[str, Mapping]:
    """The objects under `prefix` carrying `label`: the ones this controller owns."""
    out = {}
    for entry in store.list(prefix):
        try:
            doc = entry.json()
        except ValueError:
            continue
        if label in ((doc.get("metadata") or {}).get("labels") or {}):
            out[entry.key] = doc
    return out


def sync_imports(store: Store, plans: Mapping[tuple[str, str], ImportPlan], problems: list[str]) -> list[str]:
    """Make `store` hold exactly `plans`' derived objects and imports; what changed."""
    changed: list[str] = []
    services, slices = _labelled(store, keys.SERVICES), _labelled(store, keys.ENDPOINT_SLICES)
    imports = {entry.key for entry in store.list(keys.SERVICE_IMPORTS)}
    keep: set[str] = set()
    for plan in plans.values():
        svc = plan.service()
        other = store.get(svc.key)
        if other is not None and svc.key not in services:
            problems.append(f"Service {svc.ref} exists and is not derived: the import of {plan.namespace}/{plan.name} "
                            "is not served here")
            continue
        try:
            done = objects.apply(store, [svc, *plan.slices])
        except PodnetError as exc:
            problems.append(f"import {plan.namespace}/{plan.name}: {exc.msg}")
            continue
        changed += [c.shown for c in done if c.what != "unchanged"]
        keep |= {svc.key, *(s.key for s in plan.slices)}
        stored = store.get(svc.key)
        cluster_ip = ((stored.json().get("spec") or {}).get("clusterIP") or "") if stored else ""
        key = keys.object_key(keys.SERVICE_IMPORTS, plan.name, plan.namespace)
        value = dumps(plan.import_manifest(cluster_ip))
        entry = store.get(key)
        if entry is None or entry.value != value:
            store.put(key, value)
            changed.append(f"ServiceImport {plan.namespace}/{plan.name}")
        keep.add(key)
    gone = [_Named(k) for k in (*services, *slices, *imports) if k not in keep]
    if gone:
        changed += [c.shown for c in objects.delete(store, gone) if c.what == "deleted"]
    return changed


def exported_everywhere(stores: Iterable[tuple[ClusterInfo, Store]], me: str,
                        problems: list[str]) -> list[Exported]:
    """Every cluster's exports; another cluster's on its global IPs when it has a
    global CIDR (exports.globalized)."""
    out = []
    for info, store in stores:
        try:
            found = read_exports(store, info.name, problems)
        except PodnetError as exc:
            problems.append(f"{info.name}: its exports cannot be read: {exc.msg}")
            continue
        if info.global_cidr and info.name != me:
            found = [globalized(item, info.layout()) for item in found]
        out += found
    return out


def sync_global_services(store: Store, me: ClusterInfo, exported: Iterable[Exported],
                         problems: list[str]) -> list[str]:
    """Make `store` hold a `global-<name>` Service for each of our exports (exports.
    global_service; none without a global CIDR), and no other; what changed."""
    want = []
    if me.global_cidr:
        for item in exported:
            if item.cluster != me.name:
                continue
            svc = global_service(item, me.layout())
            if svc is None:
                problems.append(f"ServiceExport {item.namespace}/{item.name}: no global IP (it needs a selector, a "
                                "ClusterIP, and a name short enough for global-<name>)")
            else:
                want.append(svc)
    have = _labelled(store, keys.SERVICES, GLOBAL_FOR_LABEL)
    changed: list[str] = []
    for svc in want:
        if store.get(svc.key) is not None and svc.key not in have:
            problems.append(f"Service {svc.ref} exists and is not podnet's: the global IP of {svc.namespace}/"
                            f"{svc.labels[GLOBAL_FOR_LABEL]} is not served")
            continue
        try:
            changed += [c.shown for c in objects.apply(store, [svc]) if c.what != "unchanged"]
        except PodnetError as exc:
            problems.append(f"global IP of {svc.namespace}/{svc.labels[GLOBAL_FOR_LABEL]}: {exc.msg}")
    gone = [_Named(k) for k in have if k not in {s.key for s in want}]
    if gone:
        changed += [c.shown for c in objects.delete(store, gone) if c.what == "deleted"]
    return changed


CLUSTER_LABEL = "podnet.io/cluster"  # on another cluster's pods, as policy selectors see them


def mirror_pods(store: Store, peers: Iterable[str], answering: Iterable[tuple[ClusterInfo, Store]],
                problems: list[str]) -> list[str]:
    """Every answering peer's pods as `policy/remotepods/<cluster>/<ns>/<name>` in our
    store (their labels plus podnet.io/cluster, no node; a peer with a global CIDR's
    at their global IPs, the sources we see): peers for our policy selectors
    (policy/world.py). A peer whose store does not answer keeps what was
    mirrored (an outage must not open or close anything); a cluster that is no peer any
    more loses its pods. One transaction; what changed."""
    from dataclasses import replace

    from podnet.model.policy import PodRecord

    want: dict[str, str] = {}
    fresh: set[str] = set()
    for info, remote in answering:
        cluster = info.name
        fresh.add(cluster)
        for entry in remote.list(keys.PODS):
            try:
                pod = PodRecord.from_json(entry.json(), f"{cluster}: {entry.key}")
            except (PodnetError, ValueError) as exc:
                problems.append(f"{cluster}: {getattr(exc, 'msg', exc)}")
                continue
            ips = pod.ips if not info.global_cidr else _global_ips(info, pod.ips)
            mirrored = replace(pod, node="", readiness=None, ips=ips, labels={**pod.labels, CLUSTER_LABEL: cluster})
            want[keys.remote_pod(cluster, pod.namespace, pod.name)] = mirrored.encode()
    known = set(peers)
    changed = []
    with store.transaction() as tx:
        for entry in tx.list(keys.REMOTE_PODS):
            cluster = entry.key[len(keys.REMOTE_PODS):].split("/", 1)[0]
            if entry.key in want:
                value = want.pop(entry.key)
                if entry.value != value:
                    tx.put(entry.key, value)
                    changed.append(f"~{entry.key}")
            elif cluster not in known or cluster in fresh:
                tx.delete(entry.key)
                changed.append(f"-{entry.key}")
        for key, value in want.items():
            tx.put(key, value)
            changed.append(f"+{key}")
    return changed


def _global_ips(info: ClusterInfo, ips: Iterable[str]) -> tuple[str, ...]:
    layout = info.layout()
    out = []
    for ip in ips:
        try:
            out.append(layout.pod_ip(ip.split("/")[0]))
        except ValueError:
            continue  # not in its cluster CIDR (another family): not reachable from here
    return tuple(out)
