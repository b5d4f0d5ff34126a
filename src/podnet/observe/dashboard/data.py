"""The dashboard's one data source: the cluster read the way `podnet status`, `podnet
flows` and `podnet trace` read it, never written.

- health: observe/status.py `read_store` + `ask_agents` + `summarize` (the same
  judgement as `podnet status`, so both always agree);
- topology: the lab's state file (racks, routers, the outside world) when the
  cluster is a lab; the store's leases otherwise;
- pods: the store's pod records (`policy/pods/`), their readiness, and every CNI
  endpoint no pod record names (shown by network and container ID);
- services: the store's services, each port with the addresses backing it
  (services/endpoints.py `backing`, the rule the nodes render from);
- flows: observe/flows.py `FlowCursor` over every node's `policy.flows`;
- trace: observe/trace.py `run_trace`, imported when first asked for.

The store is opened once and kept for the server's life (a SqliteStore is shared by
every thread of the process).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from podnet.defaults import DEFAULT_CLUSTER_CIDR
from podnet.errors import PodnetError
from podnet.observe.dashboard import snapshot as model
from podnet.observe.flows import FlowCursor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from podnet.model.policy import PodRecord
    from podnet.store.base import Store

PROTOCOLS = ("tcp", "udp")  # what `podnet trace` follows


class ClusterSource:
    """Snapshots, new flows and traces of one cluster (a lab, or a store and this
    machine's agent)."""

    def __init__(self, url: str, sockets: Mapping[str, str], *, lab: str | None = None,
                 pool: str = DEFAULT_CLUSTER_CIDR) -> None:
        from podnet.store import open_store

        self.url = url
        self.sockets = dict(sockets)
        self.lab = lab
        self.pool = pool
        self.store: Store = open_store(url, create=False)
        self.cursor = FlowCursor(self.sockets)
        self._names: dict[str, str] = {}  # pod address -> "ns/name", from the last snapshot
        self._lock = threading.Lock()  # one flow cursor, advanced by one caller at a time

    def close(self) -> None:
        self.store.close()

    # -- what the page shows

    def snapshot(self) -> dict[str, Any]:
        from podnet.observe.status import ask_agents, read_store, summarize

        agents = ask_agents(self.sockets, timeout=3.0)
        lab = self._lab_state()
        now = time.time()
        status = summarize(read_store(self.url), agents, pool=self.pool, expect_all=self.lab is not None, now=now)
        try:
            records, ready = self._pod_records()
            pods, services = self._pods(records, ready), self._services(records, ready)
        except (PodnetError, OSError, ValueError) as exc:  # the status already names a store that fails
            pods, services = [], []
            status.degraded.append(f"store {self.url}: cannot read pods and services ({exc})")
        self._names = {ip: pod["ref"] for pod in pods for ip in pod["ips"]}
        title = f"lab {self.lab}" if self.lab else f"cluster {self.url}"
        return model.build(status.to_json(), agents, lab, pods, services, title=title, now=now)

    def flows(self) -> list[dict[str, Any]]:
        """Verdicts logged since the last call, oldest first, addresses named."""
        with self._lock:
            found = self.cursor.fetch()
        return [model.name_flow(flow, self._names) for flow in found]

    def trace(self, src: str, dst: str, port: int | None, protocol: str, live: bool) -> dict[str, Any]:
        from podnet.observe.trace import run_trace  # (written beside this; imported when asked for)

        return run_trace(self.store, self.sockets, src, dst, port=port, protocol=protocol, live=live)

    # -- reading

    def _lab_state(self) -> dict[str, Any] | None:
        if self.lab is None:
            return None
        from podnet.lab.state import LabState

        try:
            return LabState.load(self.lab).data
        except PodnetError:
            return None  # a lab torn down under the page: the store and agents say the rest

    def _pod_records(self) -> tuple[list[PodRecord], dict[str, bool]]:
        """The pods and their readiness, as the nodes judge it (services/endpoints.py)."""
        from podnet import keys
        from podnet.model.policy import PodRecord
        from podnet.services.endpoints import judged_readiness, readiness

        records = [PodRecord.from_json(e.json(), e.key) for e in self.store.list(keys.PODS)]
        return records, readiness(records, judged_readiness(self.store.list(keys.READINESS)))

    def _pods(self, records: list[PodRecord], ready: Mapping[str, bool]) -> list[dict[str, Any]]:
        from podnet import keys
        from podnet.model.endpoint import EndpointRecord

        out = [{"ref": p.ref, "namespace": p.namespace, "name": p.name, "node": p.node,
                "ips": [ip.split("/")[0] for ip in p.ips], "labels": dict(p.labels),
                "ports": [dict(port) for port in p.ports], "ready": ready.get(p.ref, True), "kind": "pod"}
               for p in records]
        named = {ip for pod in out for ip in pod["ips"]}
        for entry in self.store.list(keys.ENDPOINTS):
            try:
                record = EndpointRecord.from_json(entry.json(), entry.key)
                network, container, ifname = keys.parse_endpoint(entry.key)
            except (PodnetError, ValueError):
                continue  # a record another release wrote: `podnet status` counts it, we cannot name it
            ips = [ip.split("/")[0] for ip in record.ips]
            if record.pending or not ips or set(ips) & named:
                continue
            out.append({"ref": f"{network}/{container[:12]}", "namespace": network, "name": container[:12],
                        "node": record.node, "ips": ips, "labels": {}, "ports": [], "ready": True,
                        "kind": f"CNI endpoint ({ifname})"})
        return out

    def _services(self, pods: list[PodRecord], ready: Mapping[str, bool]) -> list[dict[str, Any]]:
        from podnet import keys
        from podnet.services.endpoints import backing
        from podnet.services.kinds import read_service, read_slice

        slices = [read_slice(e.json(), e.key) for e in self.store.list(keys.ENDPOINT_SLICES)]
        out = []
        for entry in self.store.list(keys.SERVICES):
            svc = read_service(entry.json(), entry.key)
            ports = [{"name": spec.name, "port": spec.port, "protocol": spec.protocol,
                      "target_port": spec.target_port, "node_port": spec.node_port,
                      "endpoints": [{"ip": b.ip, "port": b.port, "ready": b.ready, "node": b.node,
                                     "target": b.target} for b in backing(svc, spec, pods, slices, ready)]}
                     for spec in svc.ports]
            out.append({"ref": svc.ref, "namespace": svc.namespace, "name": svc.name, "type": svc.type,
                        "cluster_ip": svc.cluster_ip, "external_ips": list(svc.external_ips), "ports": ports})
        return out


def trace_query(params: Mapping[str, str]) -> dict[str, Any]:
    """`/api/trace`'s query string -> run_trace's arguments; PodnetError naming the
    field that is wrong."""
    src, dst = (params.get(name, "").strip() for name in ("src", "dst"))
    for name, value in (("src", src), ("dst", dst)):
        if not value:
            raise PodnetError(f"{name} is missing", "give ns/pod, a node or an address")
    port_text = params.get("port", "").strip()
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise PodnetError(f"port {port_text!r} is not a port number", "1 to 65535, or empty")
        port = int(port_text)
    protocol = (params.get("protocol") or "tcp").strip().lower()
    if protocol not in PROTOCOLS:
        raise PodnetError(f"protocol {protocol!r} is not known", f"one of {', '.join(PROTOCOLS)}")
    live_text = (params.get("live") or "").strip().lower()
    if live_text not in ("", "0", "1", "false", "true", "no", "yes", "on", "off"):
        raise PodnetError(f"live {live_text!r} is not yes or no")
    return {"src": src, "dst": dst, "port": port, "protocol": protocol,
            "live": live_text in ("1", "true", "yes", "on")}
