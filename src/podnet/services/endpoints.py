"""Which addresses back a service, and on which port (pure).

A service with a selector is backed by the pods it selects in its namespace (their
records, written by the orchestrator: labels, IPs, node, named ports); one without a
selector by the EndpointSlices labelled with its name (a VM, a plain host). A port's
`targetPort` name is looked up in each pod's own ports, so two pods may serve one
service port on different numbers, as in Kubernetes; a pod without that name does not
back that port. Readiness is given by the caller (pod readiness records); a pod
nobody has judged yet counts as ready, as a pod without a readiness probe does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from podnet import keys
from podnet.errors import PodnetError
from podnet.model.policy import PodRecord
from podnet.model.service import Readiness
from podnet.services.objects import EndpointSlice, Service, ServicePortSpec
from podnet.store.base import Entry


@dataclass(frozen=True, order=True)
class Backing:
    """One address behind one service port."""

    ip: str
    port: int
    ready: bool
    node: str = ""
    target: str = ""  # "pod ns/name", or "slice ns/name" for a slice's endpoint


def judged_readiness(entries: Iterable[Entry]) -> dict[str, bool]:
    """"ns/name" -> ready, from the `readiness/` records nodes published (a record that
    cannot be read is left out: the pod's node rewrites it at the next flip)."""
    out = {}
    for entry in entries:
        try:
            out[keys.object_ref(keys.READINESS, entry.key)] = Readiness.from_json(entry.json(), entry.key).ready
        except (PodnetError, ValueError):
            continue
    return out


def readiness(pods: Iterable[PodRecord], judged: Mapping[str, bool]) -> dict[str, bool]:
    """What `backing` takes: a pod with a probe is not ready until its node judged it."""
    return {**{p.ref: False for p in pods if p.readiness is not None}, **judged}


def pod_port(pod: PodRecord, spec: ServicePortSpec) -> int | None:
    if isinstance(spec.target_port, int):
        return spec.target_port
    for entry in pod.ports:
        if entry.get("name") == spec.target_port and entry.get("protocol", "TCP") == spec.protocol:
            port = entry.get("port")
            return port if isinstance(port, int) else None
    return None


def _slice_port(piece: EndpointSlice, spec: ServicePortSpec) -> int | None:
    for port in piece.ports:
        if port.protocol == spec.protocol and port.name == spec.name:
            return port.port
    return None


def backing(svc: Service, spec: ServicePortSpec, pods: Iterable[PodRecord], slices: Iterable[EndpointSlice],
            ready: Mapping[str, bool] | None = None) -> tuple[Backing, ...]:
    """Every address backing one port of `svc`, sorted; `ready` maps "ns/name" of a
    pod to its readiness (absent: ready)."""
    ready = ready or {}
    out: list[Backing] = []
    if svc.selector is not None:
        for pod in pods:
            if pod.namespace != svc.namespace or not selects(svc.selector, pod.labels):
                continue
            port = pod_port(pod, spec)
            if port is None:
                continue
            ref = f"{pod.namespace}/{pod.name}"
            out += [Backing(ip, port, ready.get(ref, True), pod.node, f"pod {ref}") for ip in pod.ips]
    else:
        for piece in slices:
            if piece.namespace != svc.namespace or piece.service != svc.name:
                continue
            port = _slice_port(piece, spec)
            if port is None:
                continue
            out += [Backing(e.address, port, e.ready, e.node, f"slice {piece.namespace}/{piece.name}")
                    for e in piece.endpoints]
    return tuple(sorted(set(out)))


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Service selector is equality on every label given (never empty: parsing
    turns `{}` into no selector, as the API server stores it)."""
    return all(labels.get(k) == v for k, v in selector.items())
