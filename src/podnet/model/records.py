"""Which record type lives under which key: `decode(key, text)` for any stored value.

For tools and tests that walk a whole store (the golden tests read stores written by
earlier releases through it). Policy object manifests are not records: the object
registry (podnet.objects) parses them.
"""

from __future__ import annotations

from typing import Any

from podnet import keys
from podnet.model.base import CorruptRecord, parse_json
from podnet.model.cluster import BlockClaim, HostRecord, NodeLease
from podnet.model.container import ContainerRecord
from podnet.model.endpoint import EndpointRecord
from podnet.model.ipam import Reservation
from podnet.model.network import NetworkRecord
from podnet.model.policy import PodRecord, PolicySettings
from podnet.model.service import PortClaim, Readiness, ServiceClaim, ServiceSettings
from podnet.store.base import Entry

RECORD_TYPES: dict[str, type] = {
    keys.NODES: NodeLease,
    keys.BLOCKS: BlockClaim,
    keys.ENDPOINTS: EndpointRecord,
    keys.NETWORKS: NetworkRecord,
    keys.CONTAINERS: ContainerRecord,
    keys.HOSTS: HostRecord,
    keys.PODS: PodRecord,
    keys.POLICY_SETTINGS: PolicySettings,
    keys.CLUSTER_IPS: ServiceClaim,
    keys.NODE_PORTS: PortClaim,
    keys.SERVICE_SETTINGS: ServiceSettings,
    keys.READINESS: Readiness,
}


def decode(entry: Entry) -> Any:
    """The record an entry holds; a str for the plain-text families (round-robin
    marks, remembered store paths); None for policy manifests (not records)."""
    if entry.key.startswith(keys.IPAM):
        if keys.parse_ipam_address(entry.key) is not None:
            return Reservation.from_entry(entry)
        return entry.value
    if entry.key.startswith(keys.STORES):
        path = parse_json(entry.value, entry.key)
        if not isinstance(path, str):
            raise CorruptRecord(f"{entry.key}: expected a path")
        return path
    for prefix, record in RECORD_TYPES.items():
        exact = prefix in (keys.POLICY_SETTINGS, keys.SERVICE_SETTINGS)
        if entry.key.startswith(prefix) and (not exact or entry.key == prefix):
            return record.from_json(parse_json(entry.value, entry.key), entry.key)
    if entry.key.startswith((keys.POLICY, keys.SERVICES, keys.ENDPOINT_SLICES,
                             keys.BGP_CONFIGURATIONS, keys.BGP_PEERS)):  # object manifests
        return None
    raise CorruptRecord(f"{entry.key!r} belongs to no key family")
