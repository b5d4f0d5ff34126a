"""The node's part in a clusterset: every pass (PASS_SECONDS), from the records of our
store (clusterset/records.py) and, on the gateway in charge, each peer's store:

    elect          take / refresh / give up `clusterset/active-gateway` (a TTL key)
    plan_node      routes to the peers' ranges (via the gateway, or through the tunnel
                   on the gateway itself), the tunnel, the no-masquerade set (plan.py)
    apply          pncs0, routes of protocol 80, `ip podnet-clusterset` (kernel.py)
    imports        on the gateway in charge only (one writer a cluster): every cluster's
                   ServiceExports -> our ServiceImports, derived Services and their
                   EndpointSlices, local endpoints first; with a global CIDR, our
                   exports' global-<name> Services (agent/clusterset_imports.py)

- Runs on cluster nodes (`--node`); a cluster that joined nothing costs one listing of
  `clusterset/` a pass and holds nothing (what an earlier pass made is removed).
- A peer's store is opened lazily (its URL from `clusterset/peers/<name>`, never
  created) and read only by our gateway in charge, for the peer's gateway in charge; a
  peer whose store does not answer keeps its routes out and is named in the status.
- A pass that fails keeps what the kernel holds (the last good plan) and says why.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.agent.service_thread import ChangeWait, NodeLoopService, ServiceThread
from podnet.clusterset.plan import plan_node
from podnet.clusterset.records import LocalView, elect, read_active, read_local_at
from podnet.errors import PodnetError
from podnet.model.cluster import NodeLease
from podnet.store import Store, open_store

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler
    from podnet.clusterset.model import ActiveGateway, ClusterPeer

log = logging.getLogger("podnet.agent.clusterset")

PASS_SECONDS = 1.0
QUIET_RESYNC_SECONDS = 30.0  # with no clusterset: its records read again even when nothing changed
RTT_EVERY = 5  # passes between two measures of each tunnel's round trip (the gateway in charge)


class ClustersetService(NodeLoopService):
    def __init__(self, agent: AgentContext) -> None:
        self.agent = agent
        options = getattr(agent, "node_options", None)
        self.node: str | None = options.node if options else None
        self._kernel: Any = None
        self._remote: dict[str, Store] = {}
        self._held = False  # this node holds clusterset state from an earlier pass
        self._tunnels: dict[str, dict[str, Any]] = {}  # peer -> its gateway and the round trip to it
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"node": self.node, "passes": 0}
        self._loop = ServiceThread("podnet-clusterset", self._run, join_timeout=PASS_SECONDS + 10)

    # -- AgentService

    def ops(self) -> dict[str, OpHandler]:
        return {"clusterset.status": lambda _m, _f: self.status()}

    def stop(self) -> None:
        """The kernel state stays: an agent restart must not cut the clusterset's
        flows (the next agent takes it over as it is). The encrypted tunnel forwards
        in this process, so it stops here (clusterset/sleeve.py)."""
        super().stop()
        if self._kernel is not None:
            self._kernel.sleeve.stop()
        for store in self._remote.values():
            store.close()
        self._remote.clear()

    def status(self) -> dict[str, Any]:
        if self.node is None:
            raise PodnetError("this agent is not a cluster node (started without --node)")
        with self._lock:
            return dict(self._status)

    # -- the loop

    def _run(self) -> None:
        stop = self._loop.stopping
        changes = ChangeWait(keys.CLUSTERSET)
        while not stop.is_set():
            quiet = False
            try:
                quiet = self.converge(changes)
            except PodnetError as exc:
                self._note(error=f"{exc.msg}{': ' + exc.details if exc.details else ''}")
                log.warning("clusterset: %s", exc.msg)
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                self._note(error=f"{type(exc).__name__}: {exc}")
                log.exception("clusterset: pass failed")
            if not quiet:
                stop.wait(PASS_SECONDS)
                continue
            # no clusterset here: nothing to keep up until its records change (or the resync)
            resync = time.monotonic() + QUIET_RESYNC_SECONDS
            try:
                store = self.agent.service.store(self.agent.store_path)
                while not stop.is_set() and time.monotonic() < resync and not changes.wait(store, PASS_SECONDS, stop):
                    pass
            except PodnetError:
                stop.wait(PASS_SECONDS)

    def converge(self, changes: ChangeWait | None = None) -> bool:
        """One pass; True when this store has no clusterset to keep up (`changes`,
        from the loop: marked with the revision the records were read at)."""
        store: Store = self.agent.service.store(self.agent.store_path)
        view, revision = read_local_at(store)
        if changes is not None:
            changes.mark(revision)
        if not view.peers or view.me is None:
            if self._held:
                self._kernel_port().remove()
                self._held = False
            self._note(me=view.me.name if view.me else None, peers={}, active=None, role="none",
                       problems=view.problems + ([] if view.me or not view.peers else
                                                 ["peers are recorded but clusterset/self is not"]), error=None)
            return True
        lease_entry = store.get(keys.node(self.node or ""))
        if lease_entry is None:
            self._note(error="this node has no lease yet", problems=view.problems)
            return False
        lease = NodeLease.from_json(lease_entry.json())
        active = elect(store, view, lease.name, lease.underlay_ip)
        here = active is not None and active.node == lease.name
        remote = {p.name: self._remote_active(p, view) for p in view.peers} if here else {}
        imports: list[str] = []
        if here:
            imports = self._sync_imports(store, view)
            stale = set(self._tunnels) != set(remote) or any(t["rtt_ms"] is None for t in self._tunnels.values())
            if stale or self._status.get("passes", 0) % RTT_EVERY == 0:
                self._tunnels = _round_trips(remote)
        else:
            self._tunnels = {}
        plan = plan_node(lease.name, lease.underlay_if, view.me, view.peers, active, remote)
        report = self._kernel_port().apply(view.me, plan, view.secrets, view.problems)
        self._held = True
        if report:
            log.info("clusterset: %s", "; ".join([*(f"+{a}" for a in report.added),
                                                  *(f"-{r}" for r in report.removed)]))
        self._note(me=view.me.name, peers=plan.peers, role="gateway" if here else "member", error=None,
                   active=active.to_json() if active else None, problems=view.problems,
                   candidates=sorted(view.candidates), tunnel=bool(plan.tunnel),
                   sleeve=self._kernel_port().sleeve.stats() if plan.sleeve else None,
                   imports=imports or self._status.get("imports", []), tunnels=self._tunnels)
        return False

    def _sync_imports(self, store: Store, view: LocalView) -> list[str]:
        """Our imports made to match every cluster's exports, our exports' global IPs
        served (with a global CIDR), and the peers' pods mirrored for our policy
        selectors; what this pass changed."""
        from podnet.agent.clusterset_imports import (
            exported_everywhere,
            mirror_pods,
            sync_global_services,
            sync_imports,
        )
        from podnet.clusterset.exports import plan_imports

        assert view.me is not None
        sources = [(view.me, store), *((p.info, self._remote[p.name]) for p in view.peers if p.name in self._remote)]
        exported = exported_everywhere(sources, view.me.name, view.problems)
        changed = sync_imports(store, plan_imports(view.me.name, exported), view.problems)
        changed += sync_global_services(store, view.me, exported, view.problems)
        changed += mirror_pods(store, [p.name for p in view.peers], sources[1:], view.problems)
        if changed:
            log.info("clusterset imports: %s", "; ".join(changed))
        return changed

    def _remote_active(self, peer: ClusterPeer, view: LocalView) -> ActiveGateway | None:
        try:
            store = self._remote.get(peer.name)
            if store is None:
                store = self._remote[peer.name] = open_store(peer.store, create=False)
            active, _ = read_active(store, view.problems, f"{peer.name}: ")
            return active
        except PodnetError as exc:
            view.problems.append(f"{peer.name}: its store {peer.store} does not answer: {exc.msg}")
            stale = self._remote.pop(peer.name, None)
            if stale is not None:
                stale.close()
            return None

    def _kernel_port(self) -> Any:
        if self._kernel is None:
            from podnet.clusterset.kernel import ClustersetKernel
            from podnet.kernel.nft import Nft

            self._kernel = ClustersetKernel(Nft())
        return self._kernel

    def _note(self, **fields: Any) -> None:
        with self._lock:
            self._status.update(fields, passes=self._status.get("passes", 0) + 1, at=time.time())


def _round_trips(remote: dict[str, ActiveGateway | None]) -> dict[str, dict[str, Any]]:
    """Each peer's gateway in charge and one ICMP round trip to its tunnel address (the
    path the tunnel rides), or why there is none."""
    from podnet.observe.probe import icmp

    out: dict[str, dict[str, Any]] = {}
    for peer, theirs in sorted(remote.items()):
        if theirs is None:
            out[peer] = {"gateway": None, "rtt_ms": None, "detail": "no gateway in charge known"}
            continue
        started = time.monotonic()
        try:
            ok, detail = icmp(theirs.address, 0.5)
        except OSError as exc:
            ok, detail = False, exc.strerror or str(exc)
        rtt = round((time.monotonic() - started) * 1000, 3) if ok else None
        out[peer] = {"gateway": theirs.node, "address": theirs.address, "rtt_ms": rtt, "detail": detail}
    return out
