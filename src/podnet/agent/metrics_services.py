"""The metrics of a node's service load balancer: ready endpoints and NAT hits per
service, read at scrape time through op `services.counters` (agent/services_service.py).

Endpoints come from the plan the kernel's table was rendered from (the agent's own
memory: never fails); NAT hits from the table's named counters, one per service port
(`hits-<id>`, commented with the port's ref "ns/name:port", services/render.py), which
every DNAT rule of that port counts into. NAT rules see only the first packet of a
connection (conntrack does the rest): the hits are new connections DNATed, and their
first packets' bytes. Listing only the counters (`nft list counters table`) costs
O(service ports), never the whole table with its maps. A failing nft drops the two NAT
families, never the endpoints gauge or the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from podnet.errors import PodnetError
from podnet.kernel.nft import counter_totals
from podnet.services.plan import ServicePort

log = logging.getLogger("podnet.agent.metrics")


def service_of(ref: str) -> str:
    """A service port's ref ("ns/name:port") -> its service ("ns/name")."""
    return ref.rpartition(":")[0] or ref


def service_counters(node: str | None, ports: Iterable[ServicePort],
                     read_counters: Callable[[], dict | None]) -> dict[str, Any]:
    """The reply of op `services.counters`: per service its ready endpoints (distinct
    backend addresses over its ports) and, unless nft failed (`nat_error`), its NAT
    packets and bytes (its ports' counters summed)."""
    ports = list(ports)
    endpoints: dict[str, set[str]] = {}
    for sp in ports:
        endpoints.setdefault(service_of(sp.ref), set()).update(b.ip for b in sp.backends)
    rows: dict[str, dict[str, Any]] = {svc: {"service": svc, "endpoints": len(ips)} for svc, ips in endpoints.items()}
    nat_error = None
    try:
        totals = counter_totals(read_counters()) if ports else {}  # no port applied: no counter, no nft run
    except (PodnetError, OSError) as exc:
        nat_error = str(exc)
        totals = {}
    if nat_error is None:
        for row in rows.values():
            row["packets"] = row["bytes"] = 0
        for ref, (packets, octets) in totals.items():
            row = rows.setdefault(service_of(ref), {"service": service_of(ref), "endpoints": 0})
            row["packets"] = row.get("packets", 0) + packets
            row["bytes"] = row.get("bytes", 0) + octets
    return {"node": node, "services": [rows[svc] for svc in sorted(rows)], "nat_error": nat_error}


class ServicesCollector:
    """`podnet_service_endpoints{service}` and `podnet_service_nat_packets_total` /
    `_bytes_total{service}`, from `counters` (the op `services.counters`) at scrape time."""

    def __init__(self, counters: Callable[[], Mapping[str, Any]]) -> None:
        self.counters = counters

    def describe(self) -> list:
        return []  # computed at scrape time

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        try:
            reply = self.counters()
        except (PodnetError, OSError) as exc:  # a scrape must not fail because a service did
            log.warning("metrics: cannot read the services' counters: %s", exc)
            return []
        rows = reply.get("services") or []
        endpoints = GaugeMetricFamily("podnet_service_endpoints", "ready endpoints of each service, as this node's "
                                      "load balancer applies them", labels=["service"])
        for row in rows:
            endpoints.add_metric([str(row["service"])], int(row["endpoints"]))
        if reply.get("nat_error"):
            log.warning("metrics: cannot read the services' NAT counters: %s", reply["nat_error"])
            return [endpoints]
        packets = CounterMetricFamily("podnet_service_nat_packets", "connections this node DNATed to each "
                                      "service's endpoints (first packets; nft counters)", labels=["service"])
        octets = CounterMetricFamily("podnet_service_nat_bytes", "bytes of the first packets this node DNATed to "
                                     "each service's endpoints (nft counters)", labels=["service"])
        for row in rows:
            packets.add_metric([str(row["service"])], int(row.get("packets", 0)))
            octets.add_metric([str(row["service"])], int(row.get("bytes", 0)))
        return [endpoints, packets, octets]
