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
  restart changes nothing that was right). A difference is applied only onto the
  generation it was computed against: its transaction deletes that generation's
  counter (nft refuses the whole transaction when the kernel holds another one, and
  the table is then applied whole), so a change costs one transaction and no read.
  Every RESYNC_SECONDS (and on `policy.sync`) the generation is read back (the table's
  named counters, not the 10k-rule table) and a table deleted or replaced by hand is
  rebuilt whole. (A single rule deleted by hand inside a chain is not detected until that
  chain changes or the agent restarts.)
- Scripts run through libnftables in the agent (kernel/libnft.py): no process per
  change; nft's own cache of the ruleset (every chain and set: about 2 us a set,
  1 us a chain in nft 1.0.6) is still read once per transaction.
- Fail closed: the table lives in the kernel, so the node keeps enforcing while the
  agent is down or the store is unreachable; the agent never deletes it when it stops.
  It goes only when the store records that the last NetworkPolicy/ClusterPolicy was
  deleted (keys.none_left("policy"), written by `podnet delete`): a store that merely
  looks empty (a mistyped --store, a wrong etcd prefix) keeps it. A policy set that
  cannot be built (a ClusterPolicy naming a missing tier, a policy record that does
  not parse, any exception), and a script nft refuses, keep the last good table; bad
  pod records are left out (policy/world.py) while the rest still applies. Each is
  shown in `policy.status` (`error`) and logged once per distinct text.
- The node's pod block (its lease) is handed to the compiler: addresses of it that no
  local pod owns are dropped (policy/compile.py).
- Same-node pod traffic is bridged: the service turns bridge-nf-call-iptables (and
  ip6tables) on in the node's namespace so the forward hook sees it.
- A reader thread takes NFLOG group LOG_GROUP: each logged packet becomes a flow record
  naming its rule (the log prefix); `policy.flows` returns them from a cursor.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.agent.pod_netns import PodKernel
from podnet.agent.pod_policy import PodPolicy, node_addresses
from podnet.agent.pod_policy import error_text as _text
from podnet.agent.service_thread import ServiceThread, list_then_watch
from podnet.errors import KernelError, PodnetError
from podnet.fabric import fastpath
from podnet.kernel import sysctl
from podnet.kernel.libnft import LibNft
from podnet.kernel.nft import NftPort
from podnet.model.base import CorruptRecord
from podnet.model.cluster import NodeLease
from podnet.model.policy import PolicySettings
from podnet.store import Store

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler
    from podnet.policy.compile import Compiled

log = logging.getLogger("podnet.agent.policy")

RESYNC_SECONDS = 30.0
WATCH_TIMEOUT = 1.0
MAX_BACKOFF = 10.0
FLOW_BUFFER = 20000
VERDICTS = {"A": "allow", "D": "deny", "L": "log", "P": "pass"}
BRIDGE_NF = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")
MAX_SHOWN = 5  # problems shown in status (and the log) at once
KEPT = ("the store holds no NetworkPolicy or ClusterPolicy and no record that the last policy was "
        "deleted (a wrong --store or etcd prefix?): the table in force stays; `podnet delete` of the "
        "last policy, or `nft delete table inet podnet-policy` on this node, removes it")


def flow_record(seq: int, packet: Any, node: str) -> dict[str, Any]:
    """A logged packet as `podnet flows` shows it: the prefix's first letter is the
    verdict, the rest names the rule (policy/compile.py)."""
    letter, _, rule = packet.prefix.strip().partition(" ")
    return {"seq": seq, "time": round(packet.time, 3), "node": node,
            "verdict": VERDICTS.get(letter, letter), "rule": rule, "protocol": packet.protocol,
            "src": packet.src, "dst": packet.dst, "sport": packet.sport, "dport": packet.dport}


class PolicyService:
    def __init__(self, agent: AgentContext, nft: NftPort | None = None,
                 resync_seconds: float = RESYNC_SECONDS, pod_kernel: PodKernel | None = None) -> None:
        self.agent = agent
        options = getattr(agent, "node_options", None)
        # whose endpoints this agent enforces: its cluster node, or a plain host
        self.node: str | None = options.node if options is not None else getattr(agent, "policy_host", None)
        self.nft = nft or LibNft()
        self.resync_seconds = resync_seconds
        self._lock = threading.Lock()
        self._loop = ServiceThread("podnet-policy", self._run, join_timeout=WATCH_TIMEOUT + 10)
        self._reader = ServiceThread("podnet-flows", self._read_flows, join_timeout=3)
        self.applied: Compiled | None = None
        self.error: str | None = None
        self.stats: dict[str, Any] = {}
        self.flows: collections.deque[dict[str, Any]] = collections.deque(maxlen=FLOW_BUFFER)
        self._seq = 0
        # numbers start at 1 again when the agent restarts: readers keep a cursor per
        # boot (observe/flows.py), so the reply names this one
        self.boot = secrets.token_hex(4)
        self._parsed: dict[str, tuple[int, Any]] = {}  # store key -> (revision, parsed object)
        self._generation = 0  # stamped into the table on every apply (see converge)
        self._empty = False  # known: no policy at all, no table (see _any_policy)
        self._kept = False  # no policy in the store, but a table in force that stays (_no_policy)
        self._logged: str | None = None  # the last error logged (each distinct one once)
        self._block: tuple[str, ...] = ()  # this node's pod block, from its lease (_pod_nets)
        self._cache: Any = None  # policy.compile.CompileCache
        self._counted: tuple[Compiled | None, int] = (None, 0)  # (table, its lines): _rules
        # a cluster node's macvlan pods, which the forward hook never sees: a table in each
        self.pods = PodPolicy(self._store, self.node, pod_kernel, self._record_flows, store_path=agent.store_path) \
            if options is not None and self.node else None
        if self.pods is not None and hasattr(agent.service, "after_add"):  # (a test's agent may lack it)
            agent.service.after_add.append(self.pods.attached)  # a pod's table stands before its ADD returns

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
        if self.pods is not None:
            self.pods.start()

    def request_stop(self) -> None:
        self._loop.signal_stop()
        self._reader.signal_stop()
        if self.pods is not None:
            self.pods.signal_stop()

    def stop(self) -> None:
        self._loop.stop()
        self._reader.stop()
        if self.pods is not None:
            self.pods.stop()

    # -- state

    def _store(self) -> Store:
        return self.agent.service.store(self.agent.store_path)

    def status(self) -> dict[str, Any]:
        with self._lock:
            compiled = self.applied
            return {
                "node": self.node,
                "table": "inet podnet-policy" if compiled or self._kept else None,
                "chains": len(compiled.chains) if compiled else 0,
                "rules": self._rules(compiled),
                "sets": len(compiled.sets) if compiled else 0,
                "error": self._errors(),
                **self.stats, **(self.pods.status() if self.pods else {}),
            }

    def counters(self) -> dict[str, Any]:
        """Packets and bytes per rule (the nft counters, summed by the rule's comment:
        one rule of a policy may be several lines), busiest first; on demand only, as it
        lists the whole table."""
        from podnet.kernel.nft import counter_totals
        from podnet.policy.compile import FAMILY, TABLE

        totals = counter_totals(self.nft.list_table_json(FAMILY, TABLE))
        if self.pods is not None:
            self.pods.add_counters(totals)  # the macvlan pods' own tables
        rows = [{"rule": k, "packets": v[0], "bytes": v[1]} for k, v in totals.items()]
        rows.sort(key=lambda r: (-r["packets"], r["rule"]))
        return {"node": self.node, "rules": rows}

    def recent(self, since: int, limit: int) -> dict[str, Any]:
        with self._lock:
            items = [f for f in self.flows if f["seq"] > since][:limit]
            return {"flows": items, "next": items[-1]["seq"] if items else max(since, 0),
                    "node": self.node, "boot": self.boot}

    # -- converging

    def converge(self, full: bool = False, events: list | None = None) -> dict[str, Any]:
        """Bring the kernel's table to the store's policy. Never raises for what the
        store or nft holds: a failure keeps the table in force (fail closed) and is
        reported in status and, once per distinct error, in the log."""
        assert self.node is not None
        with self._lock:
            try:
                return self._converge(full, events)
            except PodnetError as exc:
                self._report([_text(exc)], "keeping the table in force")
            except Exception as exc:  # noqa: BLE001 - a bug must not stop enforcement updates
                self._parsed.clear()  # neither cache can be trusted after it: rebuild both
                self._cache = None
                self._report([f"internal error: {exc!r}"], "keeping the table in force", exc)
            return self.status_unlocked(revision=None)

    def _converge(self, full: bool, events: list | None) -> dict[str, Any]:
        from podnet.policy.compile import CompileCache, compile_node
        from podnet.policy.world import load_world

        assert self.node is not None
        started, wall = time.monotonic(), time.time()
        store = self._store()
        if (self._empty or self.applied is None) and not self._any_policy(store, events):
            return self._no_policy(store, events)
        problems: list[str] = []  # records left out or kept at their last good version
        try:
            world, revision = load_world(store, self._parsed, events, problems)
            world_ms = (time.monotonic() - started) * 1000
        except PodnetError as exc:
            self._report([*problems, _text(exc)], "keeping the table in force")
            return self.status_unlocked(revision=None)
        if not world.network_policies and not world.cluster_policies:
            return self._no_policy(store, events, problems)  # the last one went
        settings = PolicySettings.from_json(store.get_json(keys.POLICY_SETTINGS) or {})
        if self._cache is None:
            self._cache = CompileCache()
        compiled = compile_node(world, self.node, settings.log_allowed, self._cache, self._pod_nets(store))
        compiled_ms = (time.monotonic() - started) * 1000
        if self.pods is not None:  # each macvlan pod's own table (agent/pod_policy.py)
            self.pods.enforce(world, settings.log_allowed, node_addresses(self._block))
        if not full and self.applied is not None and events is None and not self._intact():
            full = True  # the table was deleted or replaced by hand: rebuild it
        timing: dict[str, float] = {}
        try:
            changed = self._apply(compiled, full, timing)
        except PodnetError as exc:  # nft refused it: the kernel keeps the table it had
            self._report([*problems, f"nft refused the policy table: {_text(exc)}"], "keeping the table in force")
            return self.status_unlocked(revision=None)
        self.applied, self._empty, self._kept = compiled, False, False
        self._report(problems, "left out or kept at their last good version")
        # the times of this pass (bench/policy_scale.py shows where a change's time goes):
        # compile_ms = world_ms (the store's objects) + the compile; apply_ms = the rest,
        # of which diff_ms renders the script and nft_ms runs it; started/finished: wall
        # clock, comparable with the writer's
        self.stats = {"revision": revision, "compile_ms": round(compiled_ms, 1),
                      "apply_ms": round((time.monotonic() - started) * 1000 - compiled_ms, 1),
                      "world_ms": round(world_ms, 1), "diff_ms": round(timing.get("diff_ms", 0.0), 1),
                      "nft_ms": round(timing.get("nft_ms", 0.0), 1),
                      "started": wall, "finished": time.time(),
                      "full": full or changed == "full", "changed": bool(changed),
                      "endpoints": len(world.endpoints)}
        return self.status_unlocked(revision=revision)

    def _apply(self, compiled: Compiled, full: bool, timing: dict[str, float]) -> str:
        """Apply `compiled` as the difference to the table in force, or whole; a
        refused difference is tried once more as the whole table (nft refuses it when
        the kernel's table drifted: the difference names the generation it applies
        to). Returns what was applied: "", "diff" or "full"; PodnetError when nft
        refuses the whole table. `timing` gets diff_ms and nft_ms."""
        fastpath.policy_enforced(True)  # before the table: the fast path would skip it
        if not full and self.applied is not None:
            began = time.monotonic()
            script = compiled.diff(self.applied)
            timing["diff_ms"] = (time.monotonic() - began) * 1000
            if not script:
                return ""
            generation = zlib.crc32(f"{self._generation}\n{script}".encode())
            try:
                began = time.monotonic()
                self.nft.apply(script + compiled.stamp(generation, previous=self._generation))
                timing["nft_ms"] = (time.monotonic() - began) * 1000
            except PodnetError as exc:
                log.warning("policy: nft refused a change (%s); applying the whole table", _text(exc))
            else:
                self._generation = generation  # only once the kernel holds it
                return "diff"
        script = compiled.render()
        generation = zlib.crc32(script.encode())
        if self.applied is None and self._generation_in_kernel() == generation:
            self._generation = generation
            return ""  # a restart: the kernel already holds exactly this table
        began = time.monotonic()
        self.nft.apply(script + compiled.stamp(generation))
        timing["nft_ms"] = (time.monotonic() - began) * 1000
        self._generation = generation
        return "full"

    def _report(self, problems: list[str], context: str, exc: BaseException | None = None) -> None:
        """Status shows the problems now; the log gets each distinct text once."""
        shown = problems[:MAX_SHOWN] + ([f"and {len(problems) - MAX_SHOWN} more"] if len(problems) > MAX_SHOWN else [])
        self.error = "; ".join(shown) or None
        if self.error is not None and self.error != self._logged:
            log.warning("policy: %s: %s", context, self.error, exc_info=exc)
        self._logged = self.error

    def _pod_nets(self, store: Store) -> tuple[str, ...]:
        """This node's pod block (and its IPv6 twin), from its lease (kept while the lease is away: the
        addresses stay this node's until another block is leased): its addresses that
        no local pod owns are dropped. A plain host (--policy-host) has none."""
        if getattr(self.agent, "node_options", None) is None:
            return ()
        key = keys.node(self.node or "")
        try:
            raw = store.get_json(key)
            if raw is not None:
                lease = NodeLease.from_json(raw, key)
                self._block = (lease.block, lease.block6) if lease.block6 else (lease.block,)
        except CorruptRecord as exc:
            log.warning("policy: %s (the unowned-address check keeps block %s)", exc.msg, self._block or "none")
        return self._block

    def _any_policy(self, store: Store, events: list | None) -> bool:
        """Is there any policy at all? Without one nothing is compiled and no table is
        kept (every flow is allowed, as without podnet policy): most clusters start so,
        and fifty lab agents then skip compiling their pods' registrations."""
        if events is not None and self._empty:
            return any(e.key.startswith(keys.ENFORCING_POLICY) for e in events)
        return any(store.list(prefix) for prefix in keys.ENFORCING_POLICY)

    def _no_policy(self, store: Store, events: list | None, problems: list[str] | None = None) -> dict[str, Any]:
        """No policy in the store. The table goes only when the store records that the
        last policy was deleted (`podnet delete` writes the marker): a store that just
        looks empty (a mistyped --store, a wrong etcd prefix, keys deleted by hand)
        leaves the table in force, and status says so."""
        from podnet.policy.compile import FAMILY, TABLE

        revision = store.revision()
        self._parsed.clear()  # relisted when a policy appears (events were not applied to it)
        self.stats = {"revision": revision, "compile_ms": 0.0, "apply_ms": 0.0, "full": False, "endpoints": 0}
        problems = list(problems or ())
        if not self._empty:
            if store.get(keys.none_left("policy")) is not None:
                self.nft.apply(f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")
                self.applied, self._generation, self._empty, self._kept = None, 0, True, False
            elif self.applied is not None or (self._kept and events is not None) or self._table_in_kernel():
                self._kept = True
                problems.append(KEPT)
            else:  # nothing enforced here, nothing to keep
                self.applied, self._generation, self._empty, self._kept = None, 0, True, False
            if self._empty and self.pods is not None:  # no table here: none in the macvlan pods either
                self.pods.enforce(None)
            if self._empty:  # no policy on this node: the fabric's fast path may skip its forward hook
                fastpath.policy_enforced(False)
        self._report(problems, "no policy in the store")
        return self.status_unlocked(revision=revision)

    def _table_in_kernel(self) -> bool:
        """Does this namespace hold a policy table? When nft cannot tell, assume it
        does: keeping it is the safe side."""
        from podnet.policy.compile import FAMILY, TABLE

        try:
            return self.nft.list_counters_json(FAMILY, TABLE) is not None
        except PodnetError:
            return True

    def _generation_in_kernel(self) -> int | None:
        """The generation the table in the kernel was stamped with (its generation
        counter, policy/table.py; the listing reads no rule, set or element). A full
        table's generation is the checksum of its text, so an agent restarted on an
        unchanged policy finds its own table and changes nothing; a difference chains
        the previous generation with the script."""
        from podnet.policy.compile import FAMILY, TABLE
        from podnet.policy.table import stamped_generation

        try:
            return stamped_generation(self.nft.list_counters_json(FAMILY, TABLE))
        except PodnetError:
            return None

    def _intact(self) -> bool:
        """Does the kernel still hold our last apply? One small set is read, not the
        (possibly 10k-rule) table."""
        return self._generation_in_kernel() == self._generation

    def _errors(self) -> str | None:
        """The node table's problems and its macvlan pods' (agent/pod_policy.py)."""
        return "; ".join(filter(None, (self.error, self.pods and self.pods.error()))) or None

    def status_unlocked(self, revision: int | None) -> dict[str, Any]:
        compiled = self.applied
        return {"revision": revision, "error": self._errors(), "rules": self._rules(compiled)}

    def _rules(self, compiled: Compiled | None) -> int:
        """The table's lines, counted once per table (status is polled, the table has 10k)."""
        if compiled is None:
            return 0
        if self._counted[0] is not compiled:
            self._counted = (compiled, sum(len(c) for c in compiled.chains.values()))
        return self._counted[1]

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
                if packets:
                    self._record_flows(packets)

    def _record_flows(self, packets: list) -> None:
        """Logged packets (of the node's table or a pod's) into the flow buffer."""
        assert self.node is not None
        with self._lock:
            for packet in packets:
                self._seq += 1
                self.flows.append(flow_record(self._seq, packet, self.node))
