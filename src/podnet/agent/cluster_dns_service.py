"""Cluster DNS: the node agent answers `<svc>.<ns>.svc.<domain>` and the other names of
dns/cluster.py on port 53 inside its node's DNS pod (`--cluster-dns-netns`).

Why in a pod of its own and not on the node: pods reach DNS through the ClusterIP of
the `kube-system/kube-dns` service, which the service table translates to the DNS
pods; the translated packet crosses the node's forward hook like any pod-to-pod packet,
so NetworkPolicy treats DNS as Kubernetes does (under an egress default-deny a pod
cannot resolve until a rule allows port 53). A server on the node's own address would
be reached through the input hook, which pod policy never sees. The orchestrator (the
lab, or whatever creates pods) makes the pod and its record, labelled
`k8s-app: kube-dns`; the agent only serves in it, with its sockets made inside the
pod's namespace, so no second process needs supervising.

The zone follows services/, endpointslices/, pods, readiness/ and the node leases
change by change (dns/cluster.py ZoneCache: a changed endpoint sets again only its
service's records), within one watch wake-up, as the service table does.
A gossip node (`--fabric gossip`) also answers `<pod>.<gossip domain>` from its
`meta/gossip/dns/` keys (agent/gossip_dns.py writes them, dns/gossip_zone.py serves
them) in the same server and from the same watch.
Names outside the cluster domain go to the agent's `--dns-upstream` if one is set, else
are REFUSED. A pod namespace re-created under the same path is noticed (its identity
changes) and served again.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.agent.dns_service import DNS_PORT, agent_upstream
from podnet.agent.service_thread import ServiceThread, list_then_watch
from podnet.cluster.options import GossipOptions
from podnet.dns.cluster import ZoneCache
from podnet.dns.gossip_zone import CombinedZone, GossipZone
from podnet.dns.records import IPNetwork
from podnet.dns.server import DnsServer, format_endpoint
from podnet.errors import PodnetError
from podnet.model.service import ServiceSettings
from podnet.services import allocate

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler
    from podnet.store import Store
    from podnet.store.base import Event

log = logging.getLogger("podnet.agent.cluster_dns")

RESYNC_SECONDS = 30.0  # a listing costs a look-up per unchanged object
WATCH_TIMEOUT = 0.5  # also how soon a pod namespace that appears is served
ANY_ADDRESS = "0.0.0.0"
ANY_ADDRESS6 = "::"


def _netns_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ClusterDnsService:
    """AgentService (agent/ops.py); idle unless the agent is a node with a DNS pod."""

    def __init__(self, agent: AgentContext, port: int = DNS_PORT) -> None:
        self.agent = agent
        options = getattr(agent, "node_options", None)
        self.netns_path: str | None = options.cluster_dns_netns if options is not None else None
        self.domain = options.cluster_domain if options is not None else ""
        self.cluster_cidr = ",".join(filter(None, (options.cluster_cidr, options.cluster_cidr6))) if options else ""
        self.dual_stack = bool(options is not None and options.cluster_cidr6)  # serve on IPv6 too
        self.port = port
        self.upstream = agent_upstream(agent) if self.netns_path else None
        self.cache = ZoneCache(self.domain)
        gossip = (options.gossip or GossipOptions()) if options is not None and options.fabric == "gossip" else None
        self.gossip_zone = GossipZone(gossip.dns_domain) if gossip is not None else None
        self.problems: list[str] = []
        self._settings_problem: str | None = None
        self._server: DnsServer | None = None
        self._server6: DnsServer | None = None  # a dual-stack cluster's: the pod's IPv6 addresses (port 53 too)
        self._served: tuple[int, int] | None = None  # identity of the namespace served in
        self._error = ""
        self._lock = threading.Lock()
        self._loop = ServiceThread("podnet-cluster-dns", self._run, join_timeout=WATCH_TIMEOUT + 10)

    # -- AgentService

    def ops(self) -> dict[str, OpHandler]:
        return {"clusterdns.status": lambda _message, _fds: self.status()}

    def start(self) -> None:
        if self.netns_path:
            self._loop.start()

    def request_stop(self) -> None:
        self._loop.signal_stop()

    def stop(self) -> None:
        self._loop.stop()
        with self._lock:
            server, self._server, self._served = self._server, None, None
            server6, self._server6 = self._server6, None
        for one in (server, server6):
            if one is not None:
                one.stop()

    def status(self) -> dict[str, Any]:
        with self._lock:
            server = self._server
            return {"enabled": bool(self.netns_path), "netns": self.netns_path, "domain": self.domain,
                    "serving": server is not None and server.running,
                    "state": "serving" if server is not None else (self._error or "waiting for the DNS pod"),
                    "upstream": None if self.upstream is None else format_endpoint(*self.upstream),
                    "names": self.cache.zone.names(), "problems": list(self.problems),
                    "gossip_domain": self.gossip_zone.domain if self.gossip_zone else None,
                    "gossip_names": self.gossip_zone.names() if self.gossip_zone else 0,
                    "stats": dict(server.stats) if server is not None else {}}

    # -- the loop

    def _store(self) -> Store:
        return self.agent.service.store(self.agent.store_path)

    def _run(self) -> None:
        def converge(_periodic: bool, events: list | None) -> int:
            self._serve()
            return self.refresh(self._store(), events)

        def store() -> Store:
            self._serve()  # every watch wake-up: a DNS pod that appeared is served at once
            return self._store()

        list_then_watch(self._loop.stopping, "", store, converge, RESYNC_SECONDS, WATCH_TIMEOUT, log)

    def refresh(self, store: Store, events: list[Event] | None = None) -> int:
        """Bring the zone to the store: the watch's `events`, or (None: the first pass,
        the periodic one and any after a failure) a listing, which also reads the
        service CIDR. Returns the revision it reflects. A record that does not decode is
        left out and named in `problems`."""
        if events is None:
            revision = self.cache.relist(store)
            self.cache.zone.reverse_nets, self._settings_problem = _reverse_nets(store, self.cluster_cidr)
            if self.gossip_zone is not None:
                self.gossip_zone.relist(store.list(keys.GOSSIP_DNS))
        else:
            self.cache.feed(events)
            if self.gossip_zone is not None:
                self.gossip_zone.feed(events)
            revision = max((e.revision for e in events), default=0)
        self.cache.refresh()
        with self._lock:
            self.problems = [*filter(None, [self._settings_problem]), *self.cache.problems(),
                             *(self.gossip_zone.problems() if self.gossip_zone else ())]
        return revision

    def _serve(self) -> None:
        """A server in the DNS pod's namespace while it exists (a new one if the
        namespace was made again); nothing while it does not."""
        assert self.netns_path is not None
        identity = _netns_identity(self.netns_path)
        with self._lock:
            if identity == self._served and (identity is None or self._server is not None):
                return
            old, self._server, self._served = self._server, None, None
            old6, self._server6 = self._server6, None
        if old6 is not None:
            old6.stop()
        if old is not None:
            old.stop()
            log.info("cluster dns: %s was made again, serving anew", self.netns_path)
        if identity is None:
            return
        zones = (self.gossip_zone,) if self.gossip_zone else ()
        zone = CombinedZone((*zones, self.cache.zone, self.cache.clusterset))
        server = DnsServer(ANY_ADDRESS, self.port, zone.lookup, is_local=zone.is_local, upstream=self.upstream,
                           label=f"cluster {self.domain}", netns_path=self.netns_path)
        try:
            server.start()
        except (OSError, PodnetError) as exc:
            server.stop()
            error = f"cannot serve in {self.netns_path}: {getattr(exc, 'msg', None) or exc}"
            if error != self._error:
                log.warning("cluster dns: %s", error)
            self._error = error
            return
        server6 = self._serve6(zone, server.port) if self.dual_stack else None
        with self._lock:
            self._server, self._server6, self._served, self._error = server, server6, identity, ""
        log.info("cluster dns: serving %s on port %d in %s", self.domain, server.port, self.netns_path)


    def _serve6(self, zone: CombinedZone, port: int) -> DnsServer | None:
        """The same zone on the DNS pod's IPv6 addresses (the IPv6 ClusterIP's backends);
        IPv4 still serves when this fails, and the log says why."""
        assert self.netns_path is not None
        server = DnsServer(ANY_ADDRESS6, port, zone.lookup, is_local=zone.is_local, upstream=self.upstream,
                           label=f"cluster {self.domain} (IPv6)", netns_path=self.netns_path)
        try:
            server.start()
        except (OSError, PodnetError) as exc:
            server.stop()
            log.warning("cluster dns: no IPv6 in %s: %s", self.netns_path, getattr(exc, "msg", None) or exc)
            return None
        return server


def _reverse_nets(store: Store, cluster_cidr: str) -> tuple[tuple[IPNetwork, ...], str | None]:
    """The reverse zones that are the cluster's own (the service and pod CIDRs), and why
    the stored service settings could not be read (then the defaults stand)."""
    problem = None
    try:
        settings = allocate.settings(store)
    except (PodnetError, ValueError) as exc:
        problem, settings = f"{keys.SERVICE_SETTINGS}: {getattr(exc, 'msg', exc)}", ServiceSettings()
    # every family's service CIDR; a dual-stack cluster CIDR is given as "v4,v6"
    nets = [*settings.service_cidrs, *(c.strip() for c in (cluster_cidr or "").split(",") if c.strip())]
    return tuple(ipaddress.ip_network(net, strict=False) for net in nets), problem
