"""The agent's Prometheus metrics: one registry per agent, served as the text format
over the agent socket (op `metrics`) and, with `--metrics-addr`, over HTTP.

Why one registry per agent (not prometheus_client's global one): tests and the
in-process tools run several agents in one process, and each must count only its own.

What is measured, and where:
- CNI: the daemon times each request once (lock wait included: what the runtime sees)
  -> one histogram observe per call; a failing call also bumps the error counter by
  its CNI code (read from the error reply, so only failures pay for parsing).
- IPAM usage: addresses reserved per network, counted from the agent's store when
  scraped (no bookkeeping on the CNI path).
- Fabric (cluster nodes): each converge pass is timed, what its apply added or removed
  (route/neigh/fdb) is counted as drift repairs, and its peers' verdicts (ok/refused)
  set a gauge.
- Policy (cluster nodes): packets and bytes per rule, from nft at scrape time.
- Services (cluster nodes): ready endpoints and NAT hits per service, at scrape time
  (agent/metrics_services.py).
- Store: every call of the agent's stores, timed by a proxy around each store it opens
  (agent/store_metrics.py).
- Mesh (cluster nodes with sidecars): golden signals per service and route, counted
  from the sidecars' access log (mesh/golden.py, registered by `watch_mesh`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from podnet import keys
from podnet.agent.metrics_services import ServicesCollector
from podnet.agent.store_metrics import StoreMetrics
from podnet.errors import PodnetError
from podnet.store.base import Store

log = logging.getLogger("podnet.agent.metrics")

CNI_COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
OTHER = "other"  # a command that is none of the above (refused by skel)
# CNI requests take ~1 ms (STATUS) to ~100 ms (ADD under load); converges a few ms.
CNI_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONVERGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PEER_STATES = ("ok", "refused", "pending")


def peer_verdict(state: str) -> str:
    """A fabric's verdict on a peer ("ok", "refused: why", ...) -> its metric label."""
    if state.startswith("refused"):
        return "refused"
    return state if state in PEER_STATES else "pending"


def error_code(reply: str) -> str:
    """The CNI code of an error reply (spec error JSON), "999" if unreadable."""
    try:
        doc = json.loads(reply)
        return str(int(doc["code"]))
    except (ValueError, KeyError, TypeError):
        return "999"


class _IpamCollector:
    """Addresses reserved per network, read from the store at scrape time."""

    def __init__(self, reservations: Callable[[], Iterable[str]]) -> None:
        self.reservations = reservations  # the keys under ipam/

    def describe(self) -> list:
        return []  # computed at scrape time: nothing to check at registration

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("podnet_ipam_addresses_reserved",
                                   "IP addresses reserved per network in the agent's store", labels=["network"])
        counts: dict[str, int] = {}
        try:
            for key in self.reservations():
                parsed = keys.parse_ipam_address(key)
                if parsed is not None:
                    counts[parsed[0]] = counts.get(parsed[0], 0) + 1
        except (PodnetError, OSError) as exc:  # a scrape must not fail because the store did
            log.warning("metrics: cannot read IPAM usage: %s", exc)
            return []
        for network, count in sorted(counts.items()):
            family.add_metric([network], count)
        return [family]


class _PolicyCollector:
    """Packets and bytes per policy rule, from the node's nft counters at scrape time
    (op `policy.counters`: every rule line carries a counter and a comment naming its
    policy and rule, policy/compile.py); nothing when the node has no policy table."""

    def __init__(self, counters: Callable[[], Mapping[str, Any]]) -> None:
        self.counters = counters

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[CounterMetricFamily]:
        try:
            rows = self.counters().get("rules") or []
        except (PodnetError, OSError) as exc:  # a scrape must not fail because nft did
            log.warning("metrics: cannot read policy counters: %s", exc)
            return []
        packets = CounterMetricFamily("podnet_policy_rule_packets", "packets each policy rule decided (nft counters)",
                                      labels=["rule"])
        octets = CounterMetricFamily("podnet_policy_rule_bytes", "bytes each policy rule decided (nft counters)",
                                     labels=["rule"])
        for row in rows:
            packets.add_metric([str(row["rule"])], int(row["packets"]))
            octets.add_metric([str(row["rule"])], int(row["bytes"]))
        return [packets, octets]


class AgentMetrics:
    """The metrics of one agent. `reservations` lists the IPAM keys of its store
    (None: no IPAM gauge, e.g. a node service's fake agent in unit tests)."""

    def __init__(self, reservations: Callable[[], Iterable[str]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        cni = Histogram("podnet_cni_request_duration_seconds", "CNI requests served by the agent, by command",
                        ["command"], registry=r, buckets=CNI_BUCKETS)
        self._cni = {command: cni.labels(command) for command in (*CNI_COMMANDS, OTHER)}  # no lookup per call
        self.cni_errors = Counter("podnet_cni_errors", "CNI requests that failed, by command and CNI error code",
                                  ["command", "code"], registry=r)
        self.converge = Histogram("podnet_fabric_converge_duration_seconds",
                                  "one fabric converge pass (store -> kernel), by kind of pass",
                                  ["pass"], registry=r, buckets=CONVERGE_BUCKETS)
        self.drift = Counter("podnet_fabric_drift_repairs", "fabric kernel entries a converge pass had to add "
                             "or remove", ["kind", "action"], registry=r)
        self.peers = Gauge("podnet_fabric_peers", "peer nodes by the fabric's verdict on their lease",
                           ["state"], registry=r)
        self.store = StoreMetrics(r)
        self._mesh: Any = None  # the mesh's golden signals (watch_mesh)
        if reservations is not None:
            r.register(_IpamCollector(reservations))

    def timed_store(self, store: Store) -> Store:
        """`store` with its calls timed into this registry (CniService's `wrap_store`)."""
        return self.store.timed(store)

    def watch_services(self, counters: Callable[[], Mapping[str, Any]]) -> None:
        """Scrape the node's services too (`counters`: the op `services.counters`)."""
        self.registry.register(ServicesCollector(counters))

    def watch_policy(self, counters: Callable[[], Mapping[str, Any]]) -> None:
        """Scrape the node's policy counters too (`counters`: the op `policy.counters`)."""
        self.registry.register(_PolicyCollector(counters))

    def watch_mesh(self, collector: Any) -> None:
        """Scrape the mesh's golden signals too (mesh/golden.py `Golden`, fed by the
        access log sink); a later sink's collector replaces an earlier one."""
        if self._mesh is not None:
            self.registry.unregister(self._mesh)
        self._mesh = collector
        self.registry.register(collector)

    def cni_done(self, command: str, seconds: float, failed_reply: str | None) -> None:
        """One CNI request served; `failed_reply` is the error reply when it failed."""
        label = command if command in self._cni else OTHER
        self._cni[label].observe(seconds)
        if failed_reply is not None:
            self.cni_errors.labels(label, error_code(failed_reply)).inc()

    def fabric_pass(self, seconds: float, repair: bool, added: Iterable[str], removed: Iterable[str],
                    peers: Mapping[str, str]) -> None:
        """One converge pass: its time, what it changed in the kernel (entries are
        "route ...", "neigh ...", "fdb ..."), and the verdict on each peer."""
        self.converge.labels("repair" if repair else "change").observe(seconds)
        for action, entries in (("added", added), ("removed", removed)):
            for entry in entries:
                self.drift.labels(entry.split(" ", 1)[0], action).inc()
        counts = dict.fromkeys(PEER_STATES, 0)
        for state in peers.values():
            counts[peer_verdict(state)] += 1
        for state, count in counts.items():
            self.peers.labels(state).set(count)

    def render(self) -> str:
        """The text exposition format (what /metrics serves)."""
        return generate_latest(self.registry).decode()


class MetricsAddrError(PodnetError):
    """--metrics-addr cannot be served (the agent exits 2: a usage error)."""


def parse_addr(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:9100` for IPv6) -> (host, port); ValueError with the reason."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise ValueError(f"--metrics-addr: {text!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics-addr: port {port!r} is not a number from 1 to 65535")
    return host, int(port)


def serve_http(metrics: AgentMetrics, addr: str) -> Callable[[], None]:
    """Serve `metrics` on http://addr/metrics on a daemon thread; return a stopper.
    MetricsAddrError when the address is malformed or cannot be bound (it names the address)."""
    from prometheus_client import start_http_server

    try:
        host, port = parse_addr(addr)
        server, thread = start_http_server(port, host, registry=metrics.registry)
    except ValueError as exc:
        raise MetricsAddrError(str(exc)) from None
    except OSError as exc:
        raise MetricsAddrError(f"--metrics-addr {addr}: cannot listen there: {exc.strerror or exc}") from None
    log.info("metrics on http://%s/metrics", addr)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
