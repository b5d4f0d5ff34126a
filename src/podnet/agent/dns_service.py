"""The agent's DNS service: one DNS server per bridge network, on the network's
nameserver address (its first IPv4 gateway, the one containers find in resolv.conf)
port 53, UDP and TCP, in the agent's own network namespace.

Why it follows the store and not the CNI path: networks and containers are written by
other processes (`podnet network`, `podnet container`), so a watch on the store is the
one place that sees all of them. The gateway address appears only when the first
container attaches (the bridge is built by ADD), so a network whose address is not
bindable yet is retried every poll interval; once bound, the sockets stay (a bridge
deleted and re-created with the same address serves again without a rebind).

Queries are answered from zones (dns/records.py) rebuilt after every change under
`networks/` or `containers/`, never from the store directly: a query is one
dictionary lookup, and a new container resolves within one watch wake-up (in-process
writes wake at once, other processes' within the store's poll, ~50 ms). A record that
does not decode is skipped (and logged once), because a bad record of one container
must not take a whole network's resolution down.

Names outside a network's zone are relayed only to an explicitly configured upstream
(`agent.dns_upstream`, else $PODNET_DNS_UPSTREAM, `IP[:PORT]`), never on internal
networks; by default they are REFUSED, so nothing leaves the namespaces podnet made.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from podnet import keys
from podnet.agent.context import state_store_path
from podnet.agent.service_thread import ServiceThread
from podnet.dns.records import Zone, build_zones, fold
from podnet.dns.server import DnsServer, format_endpoint, parse_upstream
from podnet.errors import PodnetError
from podnet.model.base import parse_json
from podnet.model.container import ContainerRecord
from podnet.model.network import NetworkRecord
from podnet.store.base import Entry, RevisionCompacted, Store

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler

log = logging.getLogger("podnet.dns")

DNS_PORT = 53
POLL = 0.5
UPSTREAM_ENV = "PODNET_DNS_UPSTREAM"

R = TypeVar("R")


@dataclass
class _Slot:
    """One network's server, or why it has none yet."""

    network: str
    address: str
    upstream: tuple[str, int] | None
    server: DnsServer | None = None
    error: str | None = None
    logged: set[str] = field(default_factory=set)


class DnsService:
    """AgentService (agent/ops.py): start() runs the watch thread, stop() ends it and
    every server; op `dns.status` lists the servers for diagnostics. The store that
    `open_store()` returns is closed on stop unless `owns_store` is False (the agent's
    shared handle)."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        port: int = DNS_PORT,
        upstream: tuple[str, int] | None = None,
        poll: float = POLL,
        owns_store: bool = True,
    ) -> None:
        self._open_store = open_store
        self._owns_store = owns_store  # False: a shared handle, the agent closes it
        self.port = port
        self.upstream = upstream
        self.poll = poll
        self._zones: dict[str, Zone] = {}
        self._networks: dict[str, NetworkRecord] = {}
        self._slots: dict[str, _Slot] = {}
        self._rejected: dict[str, str] = {}  # key -> why it does not decode (logged once)
        self._lock = threading.Lock()
        self._loop = ServiceThread("podnet-dns-watch", self._run, join_timeout=poll + 5.0)
        self._stopping = self._loop.stopping

    # -- AgentService ---------------------------------------------------------------

    def ops(self) -> dict[str, OpHandler]:
        return {"dns.status": lambda _message, _fds: self.status()}

    def start(self) -> None:
        self._loop.start()  # binds every server from the agent's own namespace

    def request_stop(self) -> None:
        self._loop.signal_stop()

    def stop(self) -> None:
        self._loop.stop()
        with self._lock:
            slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            if slot.server is not None:
                slot.server.stop()

    def status(self) -> list[dict]:
        with self._lock:
            slots = sorted(self._slots.values(), key=lambda s: s.network)
            zones = self._zones
        out = []
        for slot in slots:
            zone = zones.get(slot.network)
            server = slot.server
            out.append({
                "network": slot.network,
                "address": slot.address,
                "port": server.port if server is not None else self.port,
                "serving": server is not None and server.running,
                "state": "serving" if server is not None else (slot.error or "waiting for the gateway address"),
                "upstream": None if slot.upstream is None else format_endpoint(*slot.upstream),
                "names": zone.names() if zone is not None else [],
                "stats": dict(server.stats) if server is not None else {},
            })
        return out

    # -- the watch loop ---------------------------------------------------------------

    def _run(self) -> None:
        """List, serve, watch; re-list after any change under networks/ or containers/
        and after any error (a compacted history included)."""
        store: Store | None = None
        revision, stale = 0, True
        try:
            while not self._stopping.is_set():
                try:
                    if store is None:
                        store = self._open_store()
                    if stale:
                        revision = self._refresh(store)
                        stale = False
                    self._reconcile()
                    events = store.watch_hint("", revision, self.poll)
                    if events:
                        revision = events[-1].revision
                        stale = any(e.key.startswith((keys.NETWORKS, keys.CONTAINERS)) for e in events)
                except RevisionCompacted:
                    stale = True
                except PodnetError as err:  # store busy or broken: keep serving what we have
                    stale = True
                    log.warning("dns: %s", err.msg)
                    self._stopping.wait(self.poll)
                except Exception:  # noqa: BLE001 - the watch must outlive any surprise
                    stale = True
                    log.exception("dns: watch loop error")
                    self._stopping.wait(self.poll)
        finally:
            if store is not None and self._owns_store:
                store.close()

    def _refresh(self, store: Store) -> int:
        """Re-read networks and containers; swap in new zones. Returns the revision the
        listing is at least as new as."""
        revision = store.revision()
        rejected: dict[str, str] = {}
        networks = decode(store.list(keys.NETWORKS), NetworkRecord.from_json, rejected)
        containers = decode(store.list(keys.CONTAINERS), ContainerRecord.from_json, rejected)
        for key, why in rejected.items():
            if self._rejected.get(key) != why:
                log.warning("dns: skipping %s", why)
        self._rejected = rejected
        zones = build_zones(networks, containers)
        with self._lock:
            self._zones = zones
            self._networks = {n.name: n for n in networks}
        return revision

    def _reconcile(self) -> None:
        """Servers for exactly the bridge networks that have a nameserver address:
        start the missing ones whose address is bindable, stop the stale ones."""
        with self._lock:
            networks = dict(self._networks)
        wanted: dict[str, tuple[str, tuple[str, int] | None]] = {}
        for name, network in networks.items():
            address = network.nameserver() if network.driver == "bridge" else None
            if address is not None:
                upstream = None if network.internal else self.upstream
                wanted[name] = (address, upstream)
        with self._lock:
            stale = [
                s for s in self._slots.values()
                if wanted.get(s.network) != (s.address, s.upstream)
            ]
            for slot in stale:
                del self._slots[slot.network]
            for name, (address, upstream) in wanted.items():
                self._slots.setdefault(name, _Slot(name, address, upstream))
            pending = [s for s in self._slots.values() if s.server is None]
        for slot in stale:
            if slot.server is not None:
                log.info("dns: stopped the server of network %s on %s", slot.network, slot.address)
                slot.server.stop()
        for slot in pending:
            self._try_start(slot)

    def _try_start(self, slot: _Slot) -> None:
        name = slot.network
        server = DnsServer(
            slot.address, self.port,
            lookup=lambda qname, qtype: self._zone(name).lookup(qname, qtype),
            is_local=lambda qname: self._zone(name).is_local(qname),
            allow=lambda client: self._zone(name).allows(client),
            upstream=slot.upstream, label=name,
        )
        try:
            server.start()
        except OSError as exc:
            server.stop()
            if exc.errno == errno.EADDRNOTAVAIL:
                slot.error = None  # the gateway is not on a bridge yet: normal
                return
            slot.error = f"error: cannot bind {slot.address}:{self.port}: {exc.strerror or exc}"
            if slot.error not in slot.logged:
                slot.logged.add(slot.error)
                log.warning("dns: network %s: %s", name, slot.error)
            return
        with self._lock:
            current = self._slots.get(name)
            if current is not slot:  # removed while we were binding
                server.stop()
                return
            slot.server, slot.error = server, None
        log.info("dns: serving network %s on %s:%d", name, slot.address, server.port)

    def _zone(self, network: str) -> Zone:
        zone = self._zones.get(network)
        return zone if zone is not None else Zone(network=network, domain=fold(network))


def decode(entries: Iterable[Entry], from_json: Callable[[object, str], R], rejected: dict[str, str]) -> list[R]:
    """The entries that decode (`from_json` of a record type); why each other one
    does not goes into `rejected` (key -> reason). Whatever a faulty writer left
    there, nothing raises."""
    out: list[R] = []
    for entry in entries:
        try:
            out.append(from_json(parse_json(entry.value, entry.key), entry.key))
        except PodnetError as exc:  # CorruptRecord: one bad record must not stop resolution
            rejected[entry.key] = exc.msg
    return out


def agent_upstream(agent: AgentContext) -> tuple[str, int] | None:
    """The upstream the agent was configured with (`--dns-upstream`), if any. A bad
    value disables forwarding rather than the agent: failing closed sends nothing out."""
    text = getattr(agent, "dns_upstream", None) or os.environ.get(UPSTREAM_ENV) or ""
    if not text:
        return None
    try:
        return parse_upstream(text)
    except ValueError:
        log.error("dns: ignoring the upstream %r: not IP[:PORT]; names outside the networks will be refused", text)
        return None


def dns_service(agent: AgentContext) -> DnsService:
    """The factory agent/ops.py registers. Networks and containers are written by the
    CLI into the state dir's store (agent.state.store, which is agent.store_path
    unless the agent was given another --store): read them where they are written,
    through the CNI service's handle of that file (a store of its own cost every
    agent one more watch tail and inotify instance)."""
    path = state_store_path(agent)
    return DnsService(lambda: agent.service.store(path), upstream=agent_upstream(agent), owns_store=False)
