"""The agent keeps the isolation table (kernel/isolation.py) in step with the networks
in the store: once at start, whenever `networks/` changes (list-then-watch), every
RESYNC_SECONDS (repairing a table flushed by hand), and on demand through the
`network.sync` op, which `podnet network create|rm` call so the table is in place
when they return. The table lives in the agent's own namespace.

Fail closed: with no networks in the store the table is removed only when the store
records that the last one was removed (`network rm` writes keys.none_left("networks")).
A store that does not exist or merely looks empty (a wrong --state-dir, a fresh
store) leaves whatever table is in force alone: internal networks stay isolated.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.agent.context import state_store_path
from podnet.agent.service_thread import ServiceThread, list_then_watch
from podnet.errors import PodnetError
from podnet.kernel import isolation
from podnet.kernel.nft import Nft, NftPort
from podnet.model.network import NetworkRecord
from podnet.networks.service import SYNC_OP
from podnet.store import Store

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler

log = logging.getLogger("podnet.agent.isolation")

RESYNC_SECONDS = 30.0
WATCH_TIMEOUT = 1.0
MAX_BACKOFF = 30.0
KEPT = ("no networks in the store and no record that the last one was removed: "
        "the table in force (if any) is left as it is")


class IsolationService:
    def __init__(
        self,
        open_store: Callable[[], Store | None],
        nft: NftPort | None = None,
        resync_seconds: float = RESYNC_SECONDS,
        watch_timeout: float = WATCH_TIMEOUT,
    ) -> None:
        self._open_store = open_store
        self.nft = nft or Nft()
        self.resync_seconds = resync_seconds
        self.watch_timeout = watch_timeout
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._loop = ServiceThread("podnet-isolation", self._run, join_timeout=self.watch_timeout + 10)
        self._stop = self._loop.stopping
        self._rules: list[str] | None = None  # what this service last applied (None: nothing yet)
        self._kept = False  # the last converge left the kernel's table alone

    @classmethod
    def for_agent(cls, agent: AgentContext) -> IsolationService:
        """Networks live in the state dir's store (where the CLI writes them): the
        agent's own store unless it was started with another --store (then it is
        opened once it exists: no networks until then). The handle is the CNI
        service's, shared: one SqliteStore per file and process."""
        path = state_store_path(agent)

        def existing() -> Store | None:  # never create a state dir nobody uses
            return agent.service.store(path) if os.path.exists(path) else None

        return cls(existing)

    # -- AgentService

    def ops(self) -> dict[str, OpHandler]:
        return {SYNC_OP: lambda _message, _fds: self.converge()}

    def start(self) -> None:
        self._loop.start()

    def request_stop(self) -> None:
        self._loop.signal_stop()

    def stop(self) -> None:
        self._loop.stop()

    # -- converging

    def _open(self) -> Store | None:
        if self._store is None:
            self._store = self._open_store()  # not ours to close: the agent closes it
        return self._store

    def converge(self) -> dict[str, Any]:
        """Apply the table for the networks in the store now; report what is in force."""
        result, _revision = self._converge()
        return result

    def _say_kept(self) -> None:
        """Warn that the table in force is left alone only when there is one: a node
        that never had a network has none, and every agent of a fresh lab warned at
        start (a 100-node lab: 100 warnings that said nothing)."""
        try:
            in_force = self.nft.list_table_json(isolation.FAMILY, isolation.TABLE) is not None
        except (PodnetError, OSError):  # cannot tell: warn, as before
            in_force = True
        if in_force:
            log.warning("isolation: %s", KEPT)
        else:
            log.debug("isolation: no networks in the store and no table in force")

    def _converge(self) -> tuple[dict[str, Any], int]:
        with self._lock:
            store = self._open()
            entries, revision = store.snapshot(keys.NETWORKS) if store is not None else ([], 0)
            networks = [NetworkRecord.from_json(e.json()) for e in entries]
            kept = not networks and (store is None or store.get(keys.none_left("networks")) is None)
            if kept:  # nothing says there are no networks: leave the kernel's table as it is
                if not self._kept:  # once, when it starts
                    self._say_kept()
                rules = self._rules
            else:
                rules = isolation.apply(self.nft, networks)
                if rules != self._rules:
                    log.info("isolation: %d rule(s) for %d network(s)", len(rules), len(networks))
            self._rules, self._kept = rules, kept
        result = {
            "table": f"{isolation.FAMILY} {isolation.TABLE}",
            "networks": sorted(n.name for n in networks),
            "rules": rules,
            "kept": KEPT if kept else None,
        }
        return result, revision

    def _run(self) -> None:
        list_then_watch(self._stop, keys.NETWORKS, self._open, lambda _periodic, _events: self._converge()[1],
                        self.resync_seconds, self.watch_timeout, log, MAX_BACKOFF)
