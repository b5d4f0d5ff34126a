"""The gossip fabric's control plane in the agent: the node's peer, its copy of the
ring, and the mirror between its local store and the cluster's documents.

With `--fabric gossip` (and `--store none`: the store is the node's own) the agent
runs a GossipPeer on TCP 6783 (gossip/peers.py), seeded with `--peer`. Each round
(every TICK, and at once when the gossip brings a change) it:
- copies the documents peers changed into the store and the store's changes out
  (agent/gossip_mirror.py, the latter from a watch on the store, its own thread);
- keeps the ring (agent/gossip_ring.py): the initial split, votes and reclaims
  (gossip/ring_sync.py), space requests and donations, the dead peers' leftovers, and
  the `blocks/` claims the node's IPAM and fabric read;
- writes `meta/gossip/routing` (peer -> first hop, from the topology's shortest
  paths), which the node service's fabric (fabric/gossip.py) routes by; the node
  service watches the store, so a changed path is routed within one of its passes;
- saves the ring and the documents under STATE_DIR/gossip/ (a restarted node keeps
  its writes' places in the order, and a whole cluster restarted keeps its objects).

Ops: `gossip.status` (peers, connections, ring, names) and `gossip.rm` (`podnet peers
rm`: a gone peer's space now, without the grace period; refused for a live peer).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from podnet import fileio, keys
from podnet.agent.gossip_dns import GossipDns
from podnet.agent.gossip_mirror import DOC_PREFIX, StoreMirror, replicated
from podnet.agent.gossip_probe import FastPathProbe
from podnet.agent.gossip_ring import RingDuties, ring_from_file
from podnet.agent.service_thread import ServiceThread
from podnet.cluster import leases as cluster_leases
from podnet.cluster.options import GossipOptions
from podnet.errors import PodnetError
from podnet.fabric.vxlan import DEVICE as VXLAN_DEVICE
from podnet.gossip.blocks import BlockSpace
from podnet.gossip.connection import Change
from podnet.gossip.lww import DocumentError
from podnet.gossip.ring_parts import RingError, peer_name
from podnet.gossip.ring_sync import RingSync
from podnet.store import RevisionCompacted, Store

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler
    from podnet.agent.gossip_sleeve import GossipSleeve
    from podnet.gossip.peers import GossipPeer
    from podnet.model.cluster import NodeLease

log = logging.getLogger("podnet.gossip")

TICK = 0.5
PROBE_EVERY = 1.0  # seconds between fast-path echoes to each direct peer
FULL_PASS = 5.0  # seconds between passes that re-check everything (a hand-deleted claim comes back)
SAVE_EVERY = 1.0
PASSWORD_ENV = "PODNET_GOSSIP_PASSWORD"


class GossipService:
    def __init__(self, agent: AgentContext) -> None:
        self.agent = agent
        opts = getattr(agent, "node_options", None)
        self.options = opts if opts is not None and opts.fabric == "gossip" else None
        self.gossip: GossipOptions = (opts.gossip if opts is not None else None) or GossipOptions()
        self.peer: GossipPeer | None = None
        self.sync: RingSync | None = None
        self.mirror: StoreMirror | None = None
        self.duties: RingDuties | None = None
        self.space: BlockSpace | None = None
        self.dns: GossipDns | None = None
        self.sleeve: GossipSleeve | None = None
        self.carried: frozenset[str] = frozenset()
        self.probe = FastPathProbe(VXLAN_DEVICE)
        self._vteps: dict[str, str] = {}
        self._next_probe = 0.0
        self._wake = threading.Event()
        self._pending: set[str] = set()
        self._docs_changed = False
        self._inputs: tuple = ()
        self._next_full = 0.0
        self._pending_lock = threading.Lock()
        self._ready = threading.Event()
        self._secured = False
        self._saved: tuple[str, str] | None = None
        self._saved_at = 0.0
        self._loop = ServiceThread("podnet-gossip", self._run, join_timeout=15)
        self._watcher = ServiceThread("podnet-gossip-store", self._watch_store, join_timeout=5)

    # -- AgentService
    def ops(self) -> dict[str, OpHandler]:
        return {"gossip.status": lambda _message, _fds: self.status(),
                "gossip.rm": lambda message, _fds: self.remove(message.get("peer"))}

    def start(self) -> None:
        if self.options is not None:
            self._loop.start()

    def request_stop(self) -> None:
        self._loop.signal_stop()
        self._watcher.signal_stop()
        self._wake.set()

    def stop(self) -> None:
        self.request_stop()
        self._loop.stop()
        self._watcher.stop()

    # -- the loop
    def _store(self) -> Store:
        return self.agent.service.store(self.agent.store_path)

    def _run(self) -> None:
        stop = self._loop.stopping
        delay = 0.5
        while not stop.is_set():
            try:
                self._setup()
                break
            except (OSError, PodnetError, RingError, ValueError) as exc:
                log.error("gossip: cannot start: %s (again in %.0fs)", getattr(exc, "msg", None) or exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 10.0)
        if stop.is_set():
            return
        self._watcher.start()
        try:
            while not stop.is_set():
                self._wake.wait(TICK)
                self._wake.clear()
                try:
                    self._round()
                except Exception as exc:  # noqa: BLE001 - keep the node in the mesh; retry next round
                    log.warning("gossip: %s", getattr(exc, "msg", None) or exc)
                    stop.wait(TICK)
        finally:
            self.probe.close()
            if self.sleeve is not None:
                self.sleeve.stop()
            if self.peer is not None:
                self.peer.stop()
            self._save(force=True)

    def _setup(self) -> None:
        from podnet.gossip.peers import GossipPeer

        opts = self.options
        assert opts is not None
        g = self.gossip
        self.space = BlockSpace.of(opts.cluster_cidr, opts.block_prefix)
        ring, docs = self._load()
        self.sync = RingSync(opts.node, ring, g.reclaim_grace)
        password = None if g.key_file else (g.password or os.environ.get(PASSWORD_ENV) or None)
        self._secured = bool(g.key_file or password)
        self.peer = GossipPeer(opts.node, ("0.0.0.0", g.port), list(g.peers), password, g.key_file,
                               on_change=self._on_change, get_ring=self.sync.get_ring, merge_ring=self._merge_ring,
                               may_connect=lambda peer: self.sync is not None and self.sync.ring().accepts(peer))
        if docs:
            try:
                self.peer.restore(docs)
            except DocumentError as exc:
                log.warning("gossip: saved documents not restored: %s", exc)
        store = self._store()
        self.mirror = StoreMirror(store, self.peer)
        self.duties = RingDuties(opts.node, self.space, self.sync, store, self.peer, g.ipalloc_init, bool(g.peers),
                                 self.peer.timing.dead_after)
        self.dns = GossipDns(opts.node, self.peer, store, g.dns_domain)
        applied, published = self.mirror.first_sync()
        self.peer.start()
        self._ready.set()
        log.info("gossip %s: listening on %s, seeds %s, %d document(s) in, %d out", opts.node,
                 self.peer.address, ", ".join(self.peer.seeds) or "none", applied, published)

    def _round(self) -> None:
        """Votes, reclaims and the partition hold every round (they follow the clock);
        the rest only when something it reads changed (a document, the ring, the
        store, the paths) or every FULL_PASS seconds, which keeps an idle node idle."""
        assert self.peer and self.sync and self.mirror and self.duties
        with self._pending_lock:
            pending, self._pending = self._pending, set()
            docs_changed, self._docs_changed = self._docs_changed, False
        self.mirror.apply_all(sorted(pending))
        hops = self.peer.next_hops()
        reachable = set(hops)
        before = self.sync.ring()
        self.duties.claim_initial()
        self.sync.tick(reachable)
        held = self.duties.hold(reachable)
        self.duties.bury()
        store, now = self._store(), time.monotonic()
        fast_down = self._probe_round(hops, now)
        inputs = (self.sync.ring(), store.revision(), tuple(sorted(hops.items())), fast_down)
        if docs_changed or inputs != self._inputs or now >= self._next_full:
            leases = {lease.name: lease for lease in cluster_leases.list_leases(store)}
            own = leases.get(self.duties.name)
            self.duties.answer_requests(reachable, [own.block] if own else [])
            if not held:
                self.duties.ask_for_space(reachable)
            if self.dns is not None:
                self.dns.sync(dead=frozenset(self.duties.buried))
            self.duties.write_claims()
            self._vteps = {name: str(cluster_leases.vtep_ip_of(lease.block)) for name, lease in leases.items()
                           if hops.get(name) == name}
            self._write_routing(self._sleeve_round(hops, leases, fast_down))
            self._next_full = now + FULL_PASS
            self._inputs = (self.sync.ring(), store.revision(), tuple(sorted(hops.items())), fast_down)
        if self.sync.ring() != before:
            self.peer.push()
        self._save()

    def _probe_round(self, hops: dict[str, str], now: float) -> frozenset[str]:
        """One fast-path echo per direct peer every PROBE_EVERY seconds; the direct
        peers that have not answered for a while (agent/gossip_probe.py). Not needed
        with a secret: the sleeve carries everything then."""
        if self._secured:
            return frozenset()
        if now >= self._next_probe:
            self._next_probe = now + PROBE_EVERY
            self.probe.round({p: v for p, v in self._vteps.items() if hops.get(p) == p})
        return self.probe.down() & {p for p, first in hops.items() if first == p}

    def _sleeve_round(self, hops: dict[str, str], leases: dict[str, NodeLease],
                      fast_down: frozenset[str]) -> frozenset[str]:
        """With a secret the sleeve carries every peer, else the peers whose fast path
        is down (agent/gossip_sleeve.py)."""
        own = leases.get(self.options.node) if self.options else None
        if (not self._secured and not fast_down and self.sleeve is None) or self.peer is None or own is None:
            return frozenset()  # (no lease yet: the sleeve's address is the lease block's)
        from podnet.agent.gossip_sleeve import GossipSleeve

        if self.sleeve is None:
            self.sleeve = GossipSleeve(own.name, self._fabric_mtu())
        else:
            self.sleeve.follow_mtu(self._fabric_mtu())
        secrets = {p: secret for p, first in hops.items() if first == p
                   and (secret := self.peer.session_secret(p)) is not None} if self._secured else None
        return self.sleeve.sync(hops, secrets, leases, cluster_leases.list_claims(self._store()), own.block,
                                fast_down, self.options.pools)

    def _fabric_mtu(self) -> int:
        """The node's pod MTU, as its conflist says (the fabric's, from the underlay)."""
        from podnet.agent.node_service import CONFLIST

        try:
            return int(json.loads((self.agent.state.net_d / CONFLIST).read_text())["plugins"][0]["mtu"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return 1420

    def _write_routing(self, sleeve: frozenset[str]) -> None:
        assert self.peer is not None
        self.carried = sleeve
        value = {"via": self.peer.next_hops(), "sleeve": sorted(sleeve)}
        store = self._store()
        if store.get_json(keys.GOSSIP_ROUTING) != value:
            store.put_json(keys.GOSSIP_ROUTING, value)

    def _watch_store(self) -> None:
        stop = self._watcher.stopping
        store = self._store()
        revision = store.revision()
        assert self.mirror is not None
        for entry in (e for prefix in ("",) for e in store.list(prefix) if replicated(e.key)):
            self.mirror.publish(entry.key)  # what changed between first_sync and this watch
        while not stop.is_set():
            try:
                events = store.watch("", revision, 1.0)
            except RevisionCompacted:
                revision = store.revision()
                for entry in store.list(""):
                    self.mirror.publish(entry.key)
                continue
            except Exception as exc:  # noqa: BLE001 - a store hiccup: try again
                log.warning("gossip: store watch: %s", getattr(exc, "msg", None) or exc)
                stop.wait(1.0)
                continue
            for event in events:
                revision = max(revision, event.revision)
                if replicated(event.key):
                    try:
                        self.mirror.publish(event.key)
                    except (PodnetError, DocumentError, ValueError) as exc:
                        log.warning("gossip: %s not published: %s", event.key, getattr(exc, "msg", None) or exc)

    # -- peer callbacks (the peer's thread)
    def _on_change(self, change: Change) -> None:
        doc_keys = [k for k in change.keys if k.startswith(DOC_PREFIX)]
        if change.keys:
            with self._pending_lock:
                self._pending.update(doc_keys)
                self._docs_changed = True
        self._wake.set()

    def _merge_ring(self, blob: object) -> None:
        assert self.sync is not None
        self.sync.merge_ring(blob)
        self._wake.set()

    # -- saved state
    def _load(self) -> tuple[Any, list]:
        assert self.space is not None
        directory = self.agent.state.gossip_dir
        ring = self.space.empty_ring()
        try:
            ring = ring_from_file(json.loads((directory / "ring.json").read_text()), self.space)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, RingError) as exc:
            log.warning("gossip: %s/ring.json not used (%s): the peers will bring the ring", directory, exc)
        docs: list = []
        try:
            raw = json.loads((directory / "documents.json").read_text())
            docs = raw if isinstance(raw, list) else []
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("gossip: %s/documents.json not used (%s)", directory, exc)
        return ring, docs

    def _save(self, force: bool = False) -> None:
        if self.sync is None or self.peer is None:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY:
            return
        self._saved_at = now
        ring = json.dumps(self.sync.get_ring(), sort_keys=True)
        docs = json.dumps(self.peer.snapshot(), sort_keys=True)
        if (ring, docs) == self._saved:
            return
        directory = self.agent.state.gossip_dir
        directory.mkdir(parents=True, exist_ok=True)
        fileio.write_atomic(directory / "ring.json", ring)
        fileio.write_atomic(directory / "documents.json", docs)
        self._saved = (ring, docs)

    # -- ops
    def _need_ready(self) -> None:
        if self.options is None:
            raise PodnetError("this agent does not run the gossip fabric (--fabric gossip)")
        if not self._ready.is_set():
            raise PodnetError("the gossip peer is not started yet (see the agent's log)")

    def status(self) -> dict[str, Any]:
        from podnet.agent.gossip_status import describe

        self._need_ready()
        assert self.peer and self.sync and self.space
        return describe(self.peer, self.sync.ring(), self.space, self._store(), self.gossip, self._secured,
                        self.carried)

    def remove(self, peer: object) -> dict[str, Any]:
        self._need_ready()
        assert self.peer and self.sync and self.space and self.options
        me = self.options.node
        try:
            name = peer_name(peer, "peer")
        except RingError as exc:
            raise PodnetError(str(exc)) from None
        if name == me:
            raise PodnetError(f"peer {name} is the node asked: ask another peer to remove it")
        hops = self.peer.next_hops()
        if name in hops:
            via = hops[name]
            raise PodnetError(f"peer {name} is alive ({'connected' if via == name else 'reachable via ' + via})",
                              "stop its agent first: `peers rm` is for peers that are gone for good")
        ring = self.sync.ring()
        if name not in ring.members() and name not in ring.owners():
            raise PodnetError(f"peer {name} is not a member of the ring", "see `podnet peers status`")
        blocks = [str(b) for b in self.space.owned(ring, name)]
        try:
            self.sync.change(lambda r: r.remove(name, me))
        except RingError as exc:
            raise PodnetError(str(exc)) from None
        self.peer.push()
        self._wake.set()
        log.info("gossip %s: removed %s by request; its %d block(s) are mine", me, name, len(blocks))
        return {"removed": name, "taker": me, "blocks": blocks}
