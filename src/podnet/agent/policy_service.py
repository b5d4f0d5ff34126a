"""The node's policy enforcement: the store's policy objects and pods -> this node's
`inet podnet-policy` table (policy/compile.py), and the verdicts NFLOG reports back.

- Runs on cluster nodes (`podnet agent --node`), and on plain hosts (`--policy-host
  NAME`, only that host's HostEndpoint): the objects live in the shared cluster store
  under `policy/` (objects/store.py), pods are registered there by the
  orchestrator (the lab), nodes' addresses come from their leases, hosts' from
  `hosts/<name>`.
- List-then-watch on `policy/`; every change recompiles and applies the *difference*
  to the table in force (one nft transaction, stamped with a generation number). At
  start the whole table is applied, unless the kernel already holds exactly it (a
  restart changes nothing that was right); every RESYNC_SECONDS the generation is read back
  (one tiny set, not the 10k-rule table) and a table deleted or replaced by hand is
  rebuilt whole. (A single rule deleted by hand inside a chain is not detected until
  that chain changes or the agent restarts.)
- Fail closed: the table lives in the kernel, so the node keeps enforcing while the
  agent is down or the store is unreachable; a policy set that cannot be built (say, a
  ClusterPolicy naming a missing tier) keeps the last good table and is reported in
  `policy.status`. The agent never deletes the table when it stops.
- Same-node pod traffic is bridged: the service turns bridge-nf-call-iptables (and
  ip6tables) on in the node's namespace so the forward hook sees it.
- A reader thread takes NFLOG group LOG_GROUP: each logged packet becomes a flow record
  naming its rule (the log prefix); `policy.flows` returns them from a cursor.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.agent.service_thread import ServiceThread, list_then_watch
from podnet.errors import KernelError, PodnetError
from podnet.kernel import sysctl
from podnet.kernel.nft import Nft, NftPort
from podnet.model.policy import PolicySettings
from podnet.store import Store

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler
    from podnet.policy.compile import Compiled

log = logging.getLogger("podnet.agent.policy")

POLICY_PREFIXES = (keys.NETWORK_POLICIES, keys.CLUSTER_POLICIES)  # what makes a table needed
RESYNC_SECONDS = 30.0
WATCH_TIMEOUT = 1.0
MAX_BACKOFF = 10.0
FLOW_BUFFER = 20000
VERDICTS = {"A": "allow", "D": "deny", "L": "log", "P": "pass"}
BRIDGE_NF = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


def flow_record(seq: int, packet: Any, node: str) -> dict[str, Any]:
    """A logged packet as `podnet flows` shows it: the prefix's first letter is the
    verdict, the rest names the rule (policy/compile.py)."""
    letter, _, rule = packet.prefix.strip().partition(" ")
    return {"seq": seq, "time": round(packet.time, 3), "node": node,
            "verdict": VERDICTS.get(letter, letter), "rule": rule, "protocol": packet.protocol,
            "src": packet.src, "dst": packet.dst, "sport": packet.sport, "dport": packet.dport}


class PolicyService:
    def __init__(self, agent: AgentContext, nft: NftPort | None = None,
                 resync_seconds: float = RESYNC_SECONDS) -> None:
        self.agent = agent
        options = getattr(agent, "node_options", None)
        # whose endpoints this agent enforces: its cluster node, or a plain host
        self.node: str | None = options.node if options is not None else getattr(agent, "policy_host", None)
        self.nft = nft or Nft()
        self.resync_seconds = resync_seconds
        self._lock = threading.Lock()
        self._loop = ServiceThread("podnet-policy", self._run, join_timeout=WATCH_TIMEOUT + 10)
        self._reader = ServiceThread("podnet-flows", self._read_flows, join_timeout=3)
        self.applied: Compiled | None = None
        self.error: str | None = None
        self.stats: dict[str, Any] = {}
        self.flows: collections.deque[dict[str, Any]] = collections.deque(maxlen=FLOW_BUFFER)
        self._seq = 0
        self._parsed: dict[str, tuple[int, Any]] = {}  # store key -> (revision, parsed object)
        self._generation = 0  # stamped into the table on every apply (see converge)
        self._empty = False  # known: no policy at all, no table (see _any_policy)
        self._cache: Any = None  # policy.compile.CompileCache

    # -- AgentService

    def ops(self) -> dict[str, OpHandler]:
        return {
            "policy.status": lambda _m, _f: self.status(),
            # incremental like a watch event; {"full": true} re-applies the whole table
            "policy.sync": lambda message, _f: self.converge(full=bool(message.get("full"))),
            "policy.flows": lambda message, _f: self.recent(int(message.get("since", 0) or 0),
                                                            int(message.get("limit", 1000) or 1000)),
            "policy.counters": lambda _m, _f: self.counters(),
        }

    def start(self) -> None:
        if self.node is not None:
            self._loop.start()
            self._reader.start()

    def stop(self) -> None:
        self._loop.stop()
        self._reader.stop()

    # -- state

    def _store(self) -> Store:
        return self.agent.service.store(self.agent.store_path)

    def status(self) -> dict[str, Any]:
        with self._lock:
            compiled = self.applied
            return {
                "node": self.node,
                "table": "inet podnet-policy" if compiled else None,
                "chains": len(compiled.chains) if compiled else 0,
                "rules": sum(len(c) for c in compiled.chains.values()) if compiled else 0,
                "sets": len(compiled.sets) if compiled else 0,
                "error": self.error,
                **self.stats,
            }

    def counters(self) -> dict[str, Any]:
        """Packets and bytes per rule (the nft counters, summed by the rule's comment:
        one rule of a policy may be several lines), busiest first; on demand only, as it
        lists the whole table."""
        from podnet.policy.compile import FAMILY, TABLE

        doc = self.nft.list_table_json(FAMILY, TABLE) or {"nftables": []}
        totals: dict[str, list[int]] = {}
        for item in doc["nftables"]:
            rule = item.get("rule")
            if not rule or "comment" not in rule:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    entry = totals.setdefault(rule["comment"], [0, 0])
                    entry[0] += int(expr["counter"].get("packets", 0))
                    entry[1] += int(expr["counter"].get("bytes", 0))
        rows = [{"rule": k, "packets": v[0], "bytes": v[1]} for k, v in totals.items()]
        rows.sort(key=lambda r: (-r["packets"], r["rule"]))
        return {"node": self.node, "rules": rows}

    def recent(self, since: int, limit: int) -> dict[str, Any]:
        with self._lock:
            items = [f for f in self.flows if f["seq"] > since][:limit]
            return {"flows": items, "next": items[-1]["seq"] if items else max(since, 0),
                    "node": self.node}

    # -- converging

    def converge(self, full: bool = False, events: list | None = None) -> dict[str, Any]:
        from podnet.policy.compile import CompileCache, compile_node
        from podnet.policy.world import load_world

        assert self.node is not None
        with self._lock:
            started = time.monotonic()
            store = self._store()
            if (self._empty or self.applied is None) and not self._any_policy(store, events):
                return self._no_policy(store)
            try:
                world, revision = load_world(store, self._parsed, events)
                if not world.network_policies and not world.cluster_policies:
                    return self._no_policy(store)  # the last one was deleted
                settings = PolicySettings.from_json(store.get_json(keys.POLICY_SETTINGS) or {})
                if self._cache is None:
                    self._cache = CompileCache()
                compiled = compile_node(world, self.node, settings.log_allowed, self._cache)
            except PodnetError as exc:  # keep the last good table: fail closed
                self.error = exc.msg
                log.warning("policy: cannot build the policy, keeping the table in force: %s", exc.msg)
                return self.status_unlocked(revision=None)
            compiled_ms = (time.monotonic() - started) * 1000
            if not full and self.applied is not None and not self._intact():
                full = True  # the table was deleted or replaced by hand: rebuild it
            if full or self.applied is None:
                script = compiled.render()
                generation = zlib.crc32(script.encode())
                if self.applied is None and self._generation_in_kernel() == generation:
                    script = ""  # a restart: the kernel already holds exactly this table
            else:
                script = compiled.diff(self.applied)
                generation = zlib.crc32(f"{self._generation}\n{script}".encode()) if script else self._generation
            if script:
                self.nft.apply(script + compiled.stamp(generation))
            self._generation = generation  # only once the kernel holds it
            self.applied, self.error, self._empty = compiled, None, False
            self.stats = {"revision": revision, "compile_ms": round(compiled_ms, 1),
                          "apply_ms": round((time.monotonic() - started) * 1000 - compiled_ms, 1),
                          "full": full, "changed": bool(script), "endpoints": len(world.endpoints)}
            return self.status_unlocked(revision=revision)

    def _any_policy(self, store: Store, events: list | None) -> bool:
        """Is there any policy at all? Without one nothing is compiled and no table is
        kept (every flow is allowed, as without podnet policy): most clusters start so,
        and fifty lab agents then skip compiling their pods' registrations."""
        if events is not None and self._empty:
            return any(e.key.startswith(POLICY_PREFIXES) for e in events)
        return any(store.list(prefix) for prefix in POLICY_PREFIXES)

    def _no_policy(self, store: Store) -> dict[str, Any]:
        from podnet.policy.compile import FAMILY, TABLE

        if self.applied is not None or not self._empty:  # a table from before: remove it
            self.nft.apply(f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")
        self.applied, self.error, self._generation, self._empty = None, None, 0, True
        self._parsed.clear()  # relisted when a policy appears
        revision = store.revision()
        self.stats = {"revision": revision, "compile_ms": 0.0, "apply_ms": 0.0, "full": False, "endpoints": 0}
        return self.status_unlocked(revision=revision)

    def _generation_in_kernel(self) -> int | None:
        """The generation the table in the kernel was stamped with. A full table's
        generation is the checksum of its text, so an agent restarted on an unchanged
        policy finds its own table and changes nothing; a difference chains the
        previous generation with the script."""
        from podnet.policy.compile import FAMILY, GENERATION_SET, TABLE

        try:
            found = self.nft.set_elements(FAMILY, TABLE, GENERATION_SET)
        except PodnetError:
            return None
        return found[0] if found and isinstance(found[0], int) else None

    def _intact(self) -> bool:
        """Does the kernel still hold our last apply? One small set is read, not the
        (possibly 10k-rule) table."""
        return self._generation_in_kernel() == self._generation

    def status_unlocked(self, revision: int | None) -> dict[str, Any]:
        compiled = self.applied
        return {"revision": revision, "error": self.error,
                "rules": sum(len(c) for c in compiled.chains.values()) if compiled else 0}

    def _bridge_netfilter(self) -> None:
        for name in BRIDGE_NF:
            try:
                sysctl.ensure(name, 1)  # this thread lives in the node's namespace
            except KernelError as exc:
                log.warning("policy: cannot enable %s (same-node traffic unfiltered): %s", name, exc)

    def _run(self) -> None:
        self._bridge_netfilter()

        def converge(_periodic: bool, events: list | None) -> int:
            # a periodic pass applies the difference too, after checking the kernel still
            # holds our last apply (_intact); only a lost table is rebuilt whole
            result = self.converge(full=self.applied is None, events=events)
            if result.get("revision") is None:  # could not build: keep watching for a fix
                return self._store().revision()
            return int(result["revision"])

        list_then_watch(self._loop.stopping, keys.POLICY, self._store, converge, self.resync_seconds,
                        WATCH_TIMEOUT, log, MAX_BACKOFF)

    def _read_flows(self) -> None:
        from podnet.kernel.nflog import NflogReader
        from podnet.policy.compile import LOG_GROUP

        assert self.node is not None
        try:
            reader = NflogReader(LOG_GROUP)
        except OSError as exc:
            log.warning("policy: cannot read NFLOG group %d (no flow verdicts): %s", LOG_GROUP, exc)
            return
        with reader:
            while not self._reader.stopping.is_set():
                packets = reader.read(0.5)
                if not packets:
                    continue
                with self._lock:
                    for packet in packets:
                        self._seq += 1
                        self.flows.append(flow_record(self._seq, packet, self.node))
