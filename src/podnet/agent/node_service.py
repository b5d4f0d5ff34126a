"""The node service: this node's lease, its pod network, and its fabric routes.

With `--node NAME` the agent joins a cluster through the shared store: it claims a
block of the cluster CIDR and leases `nodes/<name>` (cluster/leases.py), renews it
every ttl/3, prepares the node (ip_forward, bridge pncl0 with the block's gateway, the
fabric's device) and renders `net.d/cluster.conflist`, which the lab waits for. Then
it converges the fabric (fabric/) from the peers' leases: list-then-watch on `nodes/`
for fast reaction, plus a repair pass that brings back anything deleted by hand (when:
agent/node_repair.py). A peer whose lease vanished loses its routes here, and its block
claim and IPAM reservations and endpoint records (network "cluster") are freed: they
live in the cluster store, which the conflist names (`ipam.store`), not in the node's
own state dir.

A peer's lease is trusted only for a block of the cluster CIDR that the peer holds
the claim of under `blocks/` (read here with the leases, checked by the fabric's pure
`valid_peers`). A refused lease gets no route, is logged once per change of its
verdict, is listed with its reason in op node.status (`refused`), and frees nothing
when it goes away.

Without --node the service does nothing. A graceful stop keeps the lease: a restarted
agent gets its block back, and peers keep their routes to its pods meanwhile; only
expiry (or a deleted lease) reclaims a node.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from podnet import fileio, keys
from podnet.agent import doctor, mtu_follow, node_blocks
from podnet.agent.metrics import AgentMetrics
from podnet.agent.node_conflist import BRIDGE, render_conflist, to_macvlan
from podnet.agent.node_repair import RepairClock
from podnet.agent.node_underlay import Underlay, detect_underlay, pod_gso
from podnet.agent.service_thread import ServiceThread
from podnet.cluster import leases
from podnet.cluster.leases import CLUSTER_NETWORK, Claim
from podnet.cluster.options import NodeOptions
from podnet.errors import PodnetError
from podnet.hostjoin.reserve import list_hosts
from podnet.hostjoin.routes import node_routes
from podnet.kernel.rtnl_watch import KernelChanges
from podnet.model.cluster import NodeLease
from podnet.naming import is_host_veth
from podnet.store import RevisionCompacted, Store
from podnet.store.base import Event

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from podnet.agent.context import AgentContext, OpHandler
    from podnet.fabric.base import FabricContext, RouteNetwork
    from podnet.kernel.rtnl import RtnlSocket

log = logging.getLogger("podnet.agent.node")

CONFLIST = "cluster.conflist"
WATCH_TIMEOUT = 1.0
WATCHED = (keys.NODES, keys.BLOCKS, keys.BGP_CONFIGURATIONS, keys.BGP_PEERS, keys.GOSSIP_ROUTING,
           keys.HOSTS)  # the fabric's inputs (hosts: `podnet host join`'s routes back)
MAX_BACKOFF = 10.0
REFUSED = "refused: "  # how a fabric's verdict on a peer starts when it refused the lease


class NodeService:
    def __init__(self, agent: AgentContext) -> None:
        self.agent = agent
        self.options: NodeOptions | None = getattr(agent, "node_options", None)
        self.claim: Claim | None = None
        self.fabric: RouteNetwork | None = None
        self.ctx: FabricContext | None = None
        self.peers: dict[str, NodeLease] = {}
        self.peer_state: dict[str, str] = {}
        self.partial: dict[str, str] = {}  # an accepted peer's family the fabric cannot route: why
        self.claims: dict[str, str] = {}  # block -> node, as last read (a vanished peer's blocks are freed)
        self.blocks: tuple[str, ...] = ()  # this node's blocks, its lease's first
        self._parsed = leases.ParsedRecords()  # the loop's leases and claims, parsed once per change
        self._lock = threading.Lock()
        self._loop = ServiceThread("podnet-node", self._run, join_timeout=WATCH_TIMEOUT + 10)
        # the lease is renewed on a thread of its own: the node loop's passes (pyroute2 dumps, a
        # hundred peers joining) could hold it past the TTL on a busy machine, and a live node's
        # lease expired (its block taken, its pods' reservations freed under an ADD: a 100-node lab)
        self._lease_loop = ServiceThread("podnet-node-lease", self._keep_lease, join_timeout=10)
        self._lease_lost = threading.Event()
        self._repair_now = threading.Event()
        self.passes = 0  # converge passes done (a repair asked for waits for the next)
        self.mtu_changes: list[Any] = []  # agent/mtu_follow.MtuChange, the last few
        self.mtu_look = mtu_follow.UnderlayLook()
        self.kernel_changes = KernelChanges(is_host_veth)  # started by the loop's thread; pods' veths aside
        self.repair_clock = RepairClock(self.kernel_changes)
        self.long_ops = ("node.doctor",)  # --fix waits for a repair pass
        self._ipr: IPRoute | None = None
        self._rtnl: RtnlSocket | None = None  # the fabric's writer (`_writer`)
        # the agent's registry; a private one for fakes of the agent (unit tests)
        self.metrics: AgentMetrics = getattr(agent, "metrics", None) or AgentMetrics()

    # -- AgentService

    def ops(self) -> dict[str, OpHandler]:
        return {"node.status": lambda _message, _fds: self.status(),
                "node.doctor": lambda message, _fds: doctor.examine(self, bool(message.get("fix"))),
                "bgp.status": lambda _message, _fds: self.bgp_status()}

    def bgp_status(self) -> dict[str, Any]:
        """The bgp fabric's BIRD and sessions; an error on a node of another fabric."""
        from podnet.fabric.bgp import BgpFabric

        if not isinstance(self.fabric, BgpFabric):
            raise PodnetError(f"node {self.options.node if self.options else '?'} does not run the bgp fabric")
        return {"node": self.options.node if self.options else None, **self.fabric.status()}

    @property
    def name(self) -> str | None:
        return self.options.node if self.options else None

    def request_repair(self, timeout: float) -> bool:
        """Have the loop run its repair pass now (`podnet doctor --fix`); True once a
        pass that started after this call has finished."""
        with self._lock:
            seen = self.passes
        self._repair_now.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            with self._lock:
                if self.passes >= seen + 2 or (self.passes > seen and not self._repair_now.is_set()):
                    return True
        return False

    def start(self) -> None:
        if self.options is not None:
            self._loop.start()
            self._lease_loop.start()

    def request_stop(self) -> None:
        self._loop.signal_stop()
        self._lease_loop.signal_stop()

    def stop(self) -> None:
        self._lease_loop.stop()
        self._loop.stop()
        if self._ipr is not None:
            with contextlib.suppress(Exception):  # opened by the (now joined) loop thread
                self._ipr.close()
            self._ipr = None
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None
        self.mtu_look.close()
        self.kernel_changes.close()

    def status(self) -> dict[str, Any]:
        opts = self.options
        if opts is None:
            raise PodnetError("this agent is not a cluster node (started without --node)")
        with self._lock:
            own = self.claim.lease if self.claim else None
            peers = [
                {"name": p.name, "block": p.block, "underlay_ip": p.underlay_ip,
                 "state": self.peer_state.get(p.name, "pending"),
                 **({"block6": p.block6, "underlay_ip6": p.underlay_ip6} if p.block6 else {}),
                 **({"partial": self.partial[p.name]} if p.name in self.partial else {})}
                for p in sorted(self.peers.values(), key=lambda p: p.name)
            ]
            mtu = self.fabric.mtu(self.ctx.underlay_mtu) if self.fabric and self.ctx else None
            changes = [c.to_json() for c in self.mtu_changes]
        refused = [{"name": p["name"], "block": p["block"], "reason": p["state"].removeprefix(REFUSED)}
                   for p in peers if p["state"].startswith(REFUSED)]
        return {"node": opts.node, "block": own.block if own else None, "blocks": list(self.blocks),
                **({"block6": own.block6} if own and own.block6 else {}),
                "fabric": opts.fabric, "peers": peers, "refused": refused, "mtu": mtu, "mtu_changes": changes,
                "fastpath": self.fabric.fastpath_status() if self.fabric else {"mode": opts.fastpath}}

    # -- the loop

    def _store(self) -> Store:
        return self.agent.service.store(self.agent.store_path)

    def _run(self) -> None:
        stop = self._loop.stopping
        backoff = 0.5
        revision, dirty = 0, True
        # The pass every REPAIR_SECONDS, as before, where it watches more than the kernel (never
        # started, take() is always True): the eBPF fast path learns pods (their veths, their
        # ARP) there, and bgp's pass brings back a BIRD that died (no route changes meanwhile:
        # graceful restart keeps them)
        opts = self.options
        if getattr(opts, "fastpath", "kernel") != "ebpf" and getattr(opts, "fabric", "") != "bgp":
            self.kernel_changes.start()
        while not stop.is_set():
            try:
                if self.claim is None:
                    self._join()
                    dirty = True
                if self._lease_lost.is_set():  # (the lease thread renews it; a loss is claimed again here)
                    self._lease_lost.clear()
                    self._renew()
                if self._repair_now.is_set():  # `podnet doctor --fix`: the repair pass, now
                    self._repair_now.clear()
                    self.repair_clock.force()
                repair = self.repair_clock.due()
                if dirty or repair:
                    revision = self._converge(repair=repair)
                    dirty = False
                    with self._lock:
                        self.passes += 1
                if self.ctx is not None:
                    mtu_follow.follow(self)
                wait = max(0.05, min(WATCH_TIMEOUT, self.repair_clock.wait()))
                try:
                    seen = self._store().watch_hint("", revision, wait)
                    if seen:
                        self.repair_clock.saw(seen, lambda key: node_blocks.in_blocks(key, self.blocks))
                        revision = max(revision, seen[-1].revision)
                        dirty = dirty or any(e.key.startswith(WATCHED) or self._borrowing(e) for e in seen)
                except RevisionCompacted:
                    dirty = True
                backoff = 0.5
            except Exception as exc:  # noqa: BLE001 - keep the node alive; retry with backoff
                log.warning("node: %s", getattr(exc, "msg", None) or exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _iproute(self) -> IPRoute:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()  # this thread lives in the agent's (the node's) namespace
        return self._ipr

    def _writer(self) -> RtnlSocket:
        """The fabric's netlink writer, in this thread's namespace (the node's): its own
        changes are no drift for the repair pass to look for."""
        if self._rtnl is None:
            from podnet.kernel.rtnl import RtnlSocket

            self._rtnl = RtnlSocket()
            self.kernel_changes.ignore_sender(self._rtnl.port)
        return self._rtnl

    def _underlay(self) -> Underlay:
        assert self.options is not None
        return detect_underlay(self._iproute(), self.options.underlay)

    def _pod_gso(self, ipr: IPRoute) -> int:
        assert self.options is not None and self.fabric is not None
        return pod_gso(ipr, self.options.underlay, self.fabric.gso_cap)

    def _join(self) -> None:
        from podnet.fabric import FABRICS

        opts = self.options
        assert opts is not None
        fabric = FABRICS[opts.fabric]()
        fabric.use_fastpath(opts.fastpath, self.pod_bridge)
        found = self._underlay()
        store = self._store()
        if self.macvlan:
            self._configure_segment(store, fabric)
        started = time.time()

        pools = opts.pools

        def make(block: str) -> NodeLease:
            twin = pools.twin(block)
            return NodeLease(opts.node, block, str(found.address.ip), opts.underlay, opts.fabric,
                             fabric.backend_data(opts.node), started, dict(opts.labels),
                             block6=str(twin) if twin else None,
                             underlay_ip6=str(found.address6.ip) if found.address6 and twin else None)

        own = store.get_json(keys.node(opts.node)) or {}
        previous = self._previous_block()
        if self.gossip:
            block = node_blocks.ring_block(store, opts.node, own.get("block") or previous)
            claim = leases.publish(store, make(block), opts.lease_ttl)
        else:
            claim = leases.acquire(store, opts.node, opts.cluster_cidr, opts.block_prefix,
                                   opts.lease_ttl, make, preferred=previous)
        if claim.lease.block not in (own.get("block"), previous):
            # A block this node never had: whatever a former (dead) owner left is stale.
            stale = leases.free_block_addresses(store, claim.lease.block)
            if stale:
                log.info("node %s: freed %d stale address(es) in new block %s", opts.node, len(stale),
                         claim.lease.block)
        from podnet.fabric.base import FabricContext

        with self._lock:
            self.claim, self.fabric = claim, fabric
            self.ctx = FabricContext(claim.lease, found.address, found.mtu, ipaddress.IPv4Network(opts.cluster_cidr),
                                     opts.block_prefix, found.prefixes, pools.v6, found.address6 if pools.v6 else None)
        log.info("node %s: block %s (fabric %s, underlay %s mtu %d)", opts.node, claim.lease.block,
                 opts.fabric, found.address, found.mtu)
        self._prepare()

    def _configure_segment(self, store: Store, fabric: Any) -> None:
        """The macvlan fabric's pod segment (the cluster CIDR) and router; the router's
        block is kept for it and plain hosts before this node claims any."""
        import ipaddress

        opts = self.options
        assert opts is not None
        fabric.configure(opts.cluster_cidr, opts.segment_gateway, opts.pools)
        kept = ipaddress.IPv4Network(f"{fabric.gateway}/{opts.block_prefix}", strict=False)
        holder = leases.keep_for_hosts(store, kept)
        if holder != leases.HOSTS_OWNER:
            raise PodnetError(f"the segment router's block {kept} is claimed by node {holder}",
                              "macvlan keeps that block for the router and plain hosts: free it or pick "
                              "another --segment-gateway")

    @property
    def macvlan(self) -> bool:
        """Pods are macvlans on the underlay's L2 segment (fabric/macvlan.py)."""
        return self.options is not None and self.options.fabric == "macvlan"

    @property
    def gossip(self) -> bool:
        """The gossip fabric: its ring owns the blocks (agent/gossip_service.py writes
        their claims, without TTL) and decides a dead peer's fate, not the lease."""
        return self.options is not None and self.options.fabric == "gossip"

    def _previous_block(self) -> str | None:
        """The block this node had before a restart, from its rendered conflist."""
        try:
            doc = json.loads((self.agent.state.net_d / CONFLIST).read_text())
            return str(doc["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None

    def _keep_lease(self) -> None:
        """Renew the lease every ttl/3, counted from the start of the last renewal (one
        that waited long for the store is followed by the next at once); a lease found
        gone is for the node loop to claim again."""
        assert self.options is not None
        stop, period = self._lease_loop.stopping, self.options.lease_ttl / 3
        due = time.monotonic() + period
        while not stop.wait(max(0.0, due - time.monotonic())):
            due = time.monotonic() + period
            claim = self.claim
            if claim is None:
                continue
            try:
                if not leases.renew(self._store(), claim, blocks=not self.gossip):
                    self._lease_lost.set()  # the loop wakes: its own lease's key went (a watched event)
            except Exception as exc:  # noqa: BLE001 - the next turn tries again; the TTL is the judge
                log.warning("node: cannot renew the lease: %s", getattr(exc, "msg", None) or exc)
            took = time.monotonic() - (due - period)
            if took > period:
                log.warning("node %s: renewing the lease took %.1fs (ttl %gs)", self.options.node, took,
                            self.options.lease_ttl)

    def _renew(self) -> None:
        assert self.claim is not None and self.options is not None
        if not leases.renew(self._store(), self.claim, blocks=not self.gossip):
            log.warning("node %s: lease of %s was lost; claiming again", self.options.node, self.claim.lease.block)
            with self._lock:
                self.claim = None
            self._join()

    @property
    def routed(self) -> bool:
        """Pods are /32s behind their own veths (the bgp fabric), not bridge ports."""
        return self.options is not None and self.options.fabric == "bgp"

    @property
    def pod_bridge(self) -> str | None:
        """The bridge the node's pods are ports of (None: routed pods)."""
        return None if self.routed or self.macvlan else BRIDGE

    def _affinity(self) -> dict[str, Any]:
        """`ipam.blockAffinity` of the conflist: growth for every fabric; borrowing only
        for routed pods (a bridge port cannot hold another node's block's address)."""
        opts = self.options
        assert opts is not None
        return {"node": opts.node, "pool": opts.cluster_cidr, "blockSize": opts.block_prefix,
                **({"pool6": opts.cluster_cidr6} if opts.cluster_cidr6 else {}),
                "strictAffinity": opts.strict_affinity or not self.routed, "ttl": opts.lease_ttl,
                **({"ring": True} if self.gossip else {})}

    def _prepare(self) -> None:
        """Node-local plumbing that must exist before the first pod: forwarding, the
        fabric device, the bridge with its blocks' gateways (not for routed pods), then
        the conflist."""
        from podnet.kernel import sysctl

        assert self.ctx is not None and self.fabric is not None and self.options is not None
        sysctl.ensure("net.ipv4.ip_forward", 1)  # this thread's namespace: the node's
        if self.ctx.cluster6 is not None:
            sysctl.ensure("net.ipv6.conf.all.forwarding", 1)
        ipr = self._iproute()
        self.fabric.forget_kernel_state()  # setup may make a device again: the next pass reads
        self.fabric.setup(ipr, self.ctx)
        block = self.ctx.own.network
        mtu = self.fabric.mtu(self.ctx.underlay_mtu)
        if self.pod_bridge:
            self._bridge_gateways(ipr, mtu)
        twin = self.ctx.twin(block)
        doc = render_conflist(str(block), self.options.cluster_cidr, mtu, self.agent.socket_path,
                              self.agent.store_path, self._pod_gso(ipr), self.options.cluster_dns,
                              self.options.cluster_domain, self._affinity(), self.routed,
                              block6=str(twin) if twin else None, cluster_cidr6=self.options.cluster_cidr6,
                              ipv6_masquerade=self.options.ipv6_masquerade)
        if self.macvlan:
            doc = self._macvlan_conflist(doc)
        self._write_conflist(doc)

    def _macvlan_conflist(self, doc: dict[str, Any]) -> dict[str, Any]:
        from podnet.cluster.dualstack import gateway6_of
        from podnet.fabric.macvlan import shim_address
        from podnet.services.allocate import settings

        assert self.ctx is not None and self.options is not None
        try:
            service_cidrs: tuple[str, ...] = settings(self._store()).service_cidrs
        except Exception as exc:  # noqa: BLE001 - a bad settings record: pods without the service route
            log.warning("node: macvlan pods get no service route: %s", getattr(exc, "msg", exc))
            service_cidrs = ()
        shims = {4: str(shim_address(self.ctx.own.block))}
        if (twin := self.ctx.twin(self.ctx.own.block)) is not None:
            shims[6] = str(gateway6_of(twin))
        return to_macvlan(doc, self.options.underlay, self.fabric.segments(), shims, service_cidrs)  # type: ignore[union-attr]

    def _bridge_gateways(self, ipr: IPRoute, mtu: int) -> None:
        assert self.ctx is not None and self.options is not None
        node_blocks.sync_bridge_gateways(ipr, BRIDGE, mtu, (self.ctx.own.block, *self.blocks), self.ctx.cluster,
                                         lambda: node_blocks.held(self._store(), self.options.node),
                                         self.ctx.pools)

    def _write_conflist(self, doc: dict[str, Any]) -> None:
        path = self.agent.state.net_d / CONFLIST
        text = json.dumps(doc, indent=2) + "\n"
        try:
            if path.read_text() == text:
                return
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.write_atomic(path, text)  # readers see the whole file or none
        log.info("wrote %s", path)

    def _converge(self, repair: bool) -> int:
        """Peers from the store -> kernel; free what vanished peers held."""
        assert self.fabric is not None and self.ctx is not None
        started = time.perf_counter()
        store = self._store()
        entries, revision = store.snapshot_hint(keys.NODES)  # a peer's end comes as a delete event
        current = {lease.name: lease for lease in self._parsed.leases(entries) if lease.name != self.ctx.own.name}
        if not self.gossip:  # the gossip fabric's ring reclaims and gives back space
            for name, gone in self.peers.items():
                if name not in current:
                    self._reclaim(store, gone)
            if repair:
                self._release_empty_blocks(store)
        claims = self._parsed.claims(store)
        from podnet.fabric.base import own_blocks

        mine = own_blocks(self.ctx, claims)
        if self.gossip:
            mine = node_blocks.in_use(store, mine, self.ctx)
        with self._lock:
            self.claims, self.blocks = claims, mine
        if repair:
            self._prepare()
        if self.gossip:
            from podnet.fabric.gossip import GossipFabric, Routing

            if isinstance(self.fabric, GossipFabric):
                self.fabric.routing = Routing.from_json(store.get_json(keys.GOSSIP_ROUTING))
        want = self.fabric.desired(self.ctx, current.values(), claims)
        want.routes |= node_routes(list_hosts(store), self.ctx, claims)
        report = self.fabric.apply(self._iproute(), want, trust=not repair,  # the repair pass reads the kernel
                                   writer=self._writer())
        if report:
            log.info("fabric %s: added %s removed %s", self.fabric.name, report.added, report.removed)
        daemon = self.fabric.sync(self.ctx, current.values(), want, self.agent.state.bird_dir, store)
        if daemon not in ("", "unchanged"):
            log.info("fabric %s: routing daemon %s", self.fabric.name, daemon)
        for name, state in want.peers.items():
            if state != self.peer_state.get(name):
                (log.info if state == "ok" else log.warning)("peer %s: %s", name, state)
        with self._lock:
            self.peers, self.peer_state, self.partial = current, dict(want.peers), dict(want.partial)
        self.metrics.fabric_pass(time.perf_counter() - started, repair, report.added, report.removed, want.peers)
        return revision

    def _reclaim(self, store: Store, gone: NodeLease) -> None:
        node_blocks.reclaim(store, self.ctx, gone, self.claims)  # ctx: set at join, before any _converge

    def _release_empty_blocks(self, store: Store) -> None:
        """Give back this node's blocks that emptied (never its lease's block)."""
        from podnet.ipam.blocks import release_empty

        opts, ctx = self.options, self.ctx
        assert opts is not None and ctx is not None
        released = release_empty(store, opts.node, ctx.own.block, CLUSTER_NETWORK, ctx.cluster, ctx.block_prefix)
        if released:
            log.info("node %s: released empty block(s) %s", opts.node, ", ".join(released))

    def _borrowing(self, event: Event) -> bool:
        return self.routed and self.options is not None and node_blocks.borrowing_event(
            event, self.options.node, self.blocks, getattr(self.fabric, "borrowed", ()))
