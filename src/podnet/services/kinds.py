"""Service and EndpointSlice declared once for the object registry.

`podnet get svc` reads like kubectl's (TYPE, CLUSTER-IP: the primary one, EXTERNAL-IP,
PORT(S)); `podnet describe svc NS/NAME` adds, as kubectl's, the IP family policy, the
families and every cluster IP, then every port's backends with their node and
readiness. A Service is admitted through services/allocate.py in apply's own
transaction (its ClusterIP and node ports), and its claims go with it on delete.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from podnet import keys
from podnet.errors import ObjectError
from podnet.model.policy import PodRecord
from podnet.schema.fields import Loc
from podnet.schema.kind import Column, Kind, Section
from podnet.services import allocate
from podnet.services.endpoints import backing
from podnet.services.objects import EndpointSlice, Service, parse_endpoint_slice, parse_service
from podnet.store.base import Store


class StoreView(Protocol):
    store: Store


def _spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("spec") or {}


def _ports(doc: Mapping[str, Any]) -> str:
    shown = []
    for port in _spec(doc).get("ports") or []:
        node = f":{port['nodePort']}" if port.get("nodePort") else ""
        shown.append(f"{port.get('port')}{node}/{port.get('protocol', 'TCP')}")
    return ",".join(shown)


def _external(doc: Mapping[str, Any]) -> str:
    ingress = ((doc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ips = [*(_spec(doc).get("externalIPs") or []), *(i.get("ip") for i in ingress)]
    return ",".join(ips) or "<none>"


def read_service(doc: Mapping[str, Any], where: str = "stored service") -> Service:
    """A stored Service manifest, validated again as if applied."""
    return SERVICE.parse_manifest(doc, Loc(where))


def read_slice(doc: Mapping[str, Any], where: str = "stored endpoint slice") -> EndpointSlice:
    return ENDPOINT_SLICE.parse_manifest(doc, Loc(where))


def _admit(tx: Store, svc: Service, stored: Mapping[str, Any] | None) -> Service:
    return allocate.admit(tx, svc, None if stored is None else read_service(stored, svc.key))


def _release(tx: Store, stored: Mapping[str, Any]) -> None:
    try:
        svc = read_service(stored)
    except ObjectError:  # a damaged manifest must still be deletable: free by owner
        meta = stored.get("metadata") if isinstance(stored, Mapping) else None
        if isinstance(meta, Mapping):
            allocate.release_owned(tx, f"{meta.get('namespace')}/{meta.get('name')}")
        return
    allocate.release(tx, svc)


def describe_service(doc: Mapping[str, Any], view: StoreView) -> list[Section]:
    svc = read_service(doc)
    store = view.store
    pods = [PodRecord.from_json(e.json(), e.key) for e in store.list(keys.PODS)]
    slices = [read_slice(e.json(), e.key) for e in store.list(ENDPOINT_SLICE.list_prefix(svc.namespace))]
    sections: list[Section] = [("IP Family Policy", svc.ip_family_policy or "SingleStack"),
                               ("IP Families", ",".join(svc.families) or "<none>"),
                               ("IP", svc.cluster_ip or "<pending>"),
                               ("IPs", ",".join(svc.cluster_ips) or "<pending>")]
    for spec in svc.ports:
        rows = [f"{b.ip}:{b.port}  {'ready' if b.ready else 'not ready'}  node {b.node or '-'}  {b.target}"
                for b in backing(svc, spec, pods, slices)]
        title = f"Endpoints of {spec.name or spec.port}/{spec.protocol}"
        sections.append((title, rows or ["(none: connections are refused)"]))
    return sections


SERVICE = Kind(
    "Service", "v1", "services", keys.SERVICES, ("svc",), namespaced=True, name_is_label=True,
    parse=parse_service, reads=("spec", "status"), admit=_admit, release=_release, describe=describe_service,
    columns=(Column("TYPE", lambda d: _spec(d).get("type", "ClusterIP")),
             Column("CLUSTER-IP", lambda d: _spec(d).get("clusterIP", "<pending>")),
             Column("EXTERNAL-IP", _external),
             Column("PORT(S)", _ports)))
ENDPOINT_SLICE = Kind(
    "EndpointSlice", "discovery.k8s.io/v1", "endpointslices", keys.ENDPOINT_SLICES, ("eps",), namespaced=True,
    parse=parse_endpoint_slice, reads=("addressType", "endpoints", "ports"),
    columns=(Column("ADDRESSTYPE", lambda d: d.get("addressType")),
             Column("PORTS", lambda d: ",".join(str(p.get("port")) for p in d.get("ports") or []) or "<unset>"),
             Column("ENDPOINTS", lambda d: ",".join(a for e in d.get("endpoints") or []
                                                    for a in e.get("addresses") or []) or "<unset>")))

SERVICE_KINDS: tuple[Kind, ...] = (SERVICE, ENDPOINT_SLICE)
