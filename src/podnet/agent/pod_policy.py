"""Policy inside this node's macvlan pods: the store's policy world and the local
macvlan endpoint records -> one `inet podnet-pod-policy` table in each such pod's own
network namespace (policy/pod_table.py), and their verdicts read back for `podnet flows`.

Why: a macvlan pod's packets leave and enter through the parent's driver, never
through the node's forward hook, so the node's `inet podnet-policy` does not judge
them. Which pods: every network namespace that a ready endpoint record of this node
(`endpoints/<net>/<cid>/<ifname>`, `node` = ours) attaches in macvlan mode; its
addresses are those of all this node's records naming that namespace (a multi-network
pod's table judges all its links), its pod the registered pod (policy/pods/) owning
them. A namespace no pod record owns gets the unowned drop while any policy exists:
never a selected pod left silently unenforced.

    policy thread (PolicyService)   a CNI ADD in this agent        endpoints thread (here)
      enforce(world, node_ips)        after_add -> attached(record)  endpoints/ list-then-watch
                         \\                   |                       /
                          per pod namespace: compile_pod -> stamped script; the same
                          generation as applied: skip; else one nft transaction inside
                          the namespace (the whole table, or its removal)

- Quick: a macvlan ADD programs its pod's table before it returns (endpoints/service.py
  after_add), so a pod attached while policy exists is judged before the runtime starts
  its workload: by its policy, or by the unowned drop until the orchestrator registers it.
- The node's own addresses (each pod block's first: the macvlan shim) are never
  judged, as a bridged pod's traffic with its node never crosses the forward hook.
- Skip: each applied table carries a checksum of its text (its generation set); a
  namespace first seen (agent start) is read back (one tiny set) before anything is
  written, so a restart rewrites nothing that is right; the periodic pass reads every
  pod's generation again and rebuilds a table deleted by hand.
- Fail closed as the node table: an nft error or a compile error keeps the pod's last
  good table (nft applies all or nothing) and shows in `policy.status`; the pod is
  retried on the next event and pass. Tables are removed only when the policy service
  says nothing selects a pod any more (or the last policy was deleted), never while the
  world is not known yet. A namespace that no longer exists is forgotten (no pod left
  to judge); its records go with the pod's DEL.
- Flows and counters: a pod table's NFLOG verdicts are read in its namespace
  (agent/pod_netns.py); `policy.counters` adds every pod table's counters.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.agent.pod_netns import NetnsKernel, PodFlowReaders, PodKernel
from podnet.agent.service_thread import ServiceThread, list_then_watch
from podnet.errors import PodnetError
from podnet.model.base import CorruptRecord
from podnet.model.endpoint import EndpointRecord
from podnet.store import Store
from podnet.store.base import PUT

if TYPE_CHECKING:
    from podnet.policy.compile import CompileCache
    from podnet.policy.evaluate import World

log = logging.getLogger("podnet.agent.policy")

BYPASSING_MODES = frozenset({"macvlan"})  # attachments whose traffic skips the node's forward hook
RESYNC_SECONDS = 30.0
WATCH_TIMEOUT = 1.0
MAX_SHOWN = 5


@dataclass(frozen=True)
class Target:
    """One pod namespace to judge: its path, the containers attached there, and the
    addresses of all their attachments on this node."""

    netns: str
    containers: tuple[str, ...]
    ips: tuple[str, ...]


def local_targets(records: Mapping[str, EndpointRecord], node: str) -> dict[str, Target]:
    """netns path -> Target, for every namespace a ready record of `node` attaches in a
    mode that bypasses the node's forward hook (pure)."""
    mine = [(key, r) for key, r in sorted(records.items()) if r.node == node and not r.pending and r.netns]
    bypassed = {r.netns for _key, r in mine if r.mode in BYPASSING_MODES}
    out: dict[str, Target] = {}
    for key, record in mine:
        if record.netns not in bypassed:
            continue
        cid = keys.parse_endpoint(key)[1]
        old = out.get(record.netns, Target(record.netns, (), ()))
        out[record.netns] = Target(record.netns, tuple(dict.fromkeys((*old.containers, cid))),
                                   tuple(dict.fromkeys((*old.ips, *map(_address, record.ips)))))
    return out


def node_addresses(blocks: Iterable[str]) -> tuple[str, ...]:
    """This node's own address on its pods' links: each pod block's first address (a
    macvlan node's shim, fabric/macvlan.shim_address; a bridge's gateway)."""
    return tuple(str(ipaddress.ip_network(block, strict=False)[1]) for block in blocks)


def _node_of(text: str) -> str | None:
    """The `node` an unreadable record names, if that much of it can be read."""
    try:
        node = json.loads(text).get("node")
    except (ValueError, AttributeError):
        return None
    return node if isinstance(node, str) else None


def _may_bypass(text: str) -> bool:
    """Could this stored text be a record in a bypassing mode? A record is JSON that
    names its mode, so one naming none of them is not (nor a pod's link, unless that
    pod has such a record too). The periodic listing decodes only these until this node
    has a macvlan pod: fifty agents decoding every endpoint record of a 1,000-pod lab
    every 30 s were a tenth of their CPU while its pods attached."""
    return any(mode in text for mode in BYPASSING_MODES)


def _address(ip: str) -> str:
    """A record's "10.1.0.5/24" as the address alone (a malformed one is kept as it is,
    for compile_pod to name)."""
    try:
        return str(ipaddress.ip_interface(ip).ip)
    except ValueError:
        return ip


def pod_of(world: World, ips: Iterable[str]) -> tuple[str, str] | None:
    """(namespace, name) of the registered pod owning the first of `ips` that a pod
    owns; compile_pod then drops it whole if that pod does not own them all."""
    for ip in ips:
        for ep in world.endpoints:
            if ep.kind == "pod" and ep.namespace is not None and ip in ep.ips:
                return ep.namespace, ep.name
    return None


@dataclass
class PodState:
    generation: int | None = None  # what the kernel holds: 0 no table, None not known yet
    cache: CompileCache | None = None
    pod: str = ""  # whom the table judges, for status
    error: str | None = None


class PodPolicy:
    """The pod tables of one node. `enforce` comes from the policy service's thread,
    `attached` from a CNI ADD's, endpoint changes from this object's own thread; one
    lock orders them."""

    def __init__(self, store: Callable[[], Store], node: str, kernel: PodKernel | None = None,
                 on_flows: Callable[[list], None] | None = None,
                 resync_seconds: float = RESYNC_SECONDS, store_path: str = "") -> None:
        self._store_fn = store
        self.store_path = store_path  # the cluster store: only its attachments are this service's
        self.node = node
        self.kernel: PodKernel = kernel or NetnsKernel()
        self.resync_seconds = resync_seconds
        self._lock = threading.Lock()
        self._records: dict[str, EndpointRecord] = {}
        self._unreadable: dict[str, str] = {}  # endpoint key -> why it cannot be read
        self._revision = 0
        self._world: World | None = None
        self._log_allowed = False
        self._node_ips: tuple[str, ...] = ()
        self._told = False  # has the policy service told us the world yet? (else: touch nothing)
        self.pods: dict[str, PodState] = {}  # netns -> what we applied there
        self.readers = PodFlowReaders(self.kernel, on_flows)
        self._logged: str | None = None
        self._loop = ServiceThread("podnet-pod-policy", self._run, join_timeout=WATCH_TIMEOUT + 10)
        self._wake = threading.Event()  # a macvlan ADD here: start watching endpoints

    # -- lifecycle

    def start(self) -> None:
        self._loop.start()
        self.readers.start()

    def signal_stop(self) -> None:
        self._loop.signal_stop()
        self._wake.set()
        self.readers.signal_stop()

    def stop(self) -> None:
        self._loop.stop()
        self.readers.stop()

    # -- from the policy service

    def enforce(self, world: World | None, log_allowed: bool = False, node_ips: tuple[str, ...] = ()) -> None:
        """The policy world now in force (None: no policy at all, and the last one was
        deleted: no table anywhere); bring every local macvlan pod to it. `node_ips`:
        this node's own addresses (node_addresses), whose traffic is never judged."""
        with self._lock:
            self._world, self._log_allowed, self._told = world, log_allowed, True
            self._node_ips = node_ips
            self._sync(verify=False)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"pod_tables": sum(1 for s in self.pods.values() if s.generation),
                    "macvlan_pods": len(self.pods)}

    def error(self) -> str | None:
        with self._lock:
            return self._error_text()

    def add_counters(self, totals: dict[str, tuple[int, int]]) -> None:
        """Add every pod table's (packets, bytes) per rule comment to `totals` (the
        node table's, kernel/nft.counter_totals): a rule judging both bridged and
        macvlan pods of this node stays one row. On demand only: each table is listed
        whole (policy.counters, and so each metrics scrape)."""
        from podnet.kernel.nft import counter_totals

        with self._lock:
            tables = [netns for netns, state in self.pods.items() if state.generation]
        for netns in tables:
            try:
                doc = self.kernel.list_table(netns)
            except PodnetError:  # gone meanwhile, or nft failed: its counters are not shown
                continue
            for rule, (packets, octets) in counter_totals(doc).items():
                old = totals.get(rule, (0, 0))
                totals[rule] = (old[0] + packets, old[1] + octets)

    # -- endpoints

    def refresh(self, events: list | None = None) -> int:
        """Read this node's endpoint records (all, or only `events`' keys) and sync;
        returns the revision they reflect."""
        store = self._store_fn()
        with self._lock:
            if events is None:
                entries, self._revision = store.snapshot(keys.ENDPOINTS)
                self._records.clear()
                self._unreadable.clear()
                rest = []
                for entry in entries:
                    if _may_bypass(entry.value):
                        self._read(entry.key, entry.value)
                    else:
                        rest.append(entry)
                if local_targets(self._records, self.node):  # a pod of ours: its other links too
                    for entry in rest:
                        self._read(entry.key, entry.value)
            else:
                for event in events:
                    self._revision = max(self._revision, event.revision)
                    self._records.pop(event.key, None)
                    self._unreadable.pop(event.key, None)
                    if event.kind == PUT and event.value is not None:
                        self._read(event.key, event.value)
            self._sync(verify=events is None)
            return self._revision

    def attached(self, store: str, key: str, record: EndpointRecord) -> None:
        """A CNI ADD in this agent just built `record` (endpoints/service.py
        after_add): program its pod's table before the ADD returns, so a pod attached
        while policy exists is never reachable unjudged. Never raises: a failure shows
        in status, and the endpoints watch retries."""
        if store != self.store_path or record.mode not in BYPASSING_MODES or record.node != self.node:
            return
        self._wake.set()
        try:
            with self._lock:
                self._records[key] = record
                if self._told:
                    target = local_targets({k: r for k, r in self._records.items() if r.netns == record.netns},
                                           self.node)[record.netns]
                    self._converge(target, self.pods.setdefault(record.netns, PodState()))
                    self._report()
        except Exception:  # noqa: BLE001 - the attachment stands; the watch retries its table
            log.exception("policy: cannot program the table of the macvlan pod in %s", record.netns)

    def _read(self, key: str, value: str) -> None:
        try:
            keys.parse_endpoint(key)
            self._records[key] = EndpointRecord.decode(value, key)
        except (CorruptRecord, PodnetError, ValueError) as exc:
            if _node_of(value) in (None, self.node):  # another node's bad record is not ours to judge
                self._unreadable[key] = getattr(exc, "msg", str(exc))

    # -- converging

    def _sync(self, verify: bool) -> None:
        """Every local macvlan pod to the world told; `verify`: read each pod's
        generation back first (a table changed by hand is rebuilt)."""
        if not self._told:
            return
        targets = local_targets(self._records, self.node)
        for netns, target in targets.items():
            state = self.pods.setdefault(netns, PodState())
            if verify:
                state.generation = None
            self._converge(target, state)
        for netns in [n for n in self.pods if n not in targets]:  # no macvlan attachment left there
            state = self.pods[netns]
            if state.generation == 0 or self._apply(netns, state, None) is not False:
                del self.pods[netns]
        self._report()

    def _converge(self, target: Target, state: PodState) -> None:
        from podnet.policy.compile import CompileCache
        from podnet.policy.pod_table import compile_pod

        world = self._world
        compiled = None
        if world is not None:
            found = pod_of(world, target.ips)
            namespace, name = found or ("", f"unregistered container {target.containers[0][:12]}")
            state.pod = f"{namespace}/{name}" if found else name
            state.cache = state.cache or CompileCache()
            try:
                compiled = compile_pod(world, namespace, name, target.ips, log_allowed=self._log_allowed,
                                       cache=state.cache, node_ips=self._node_ips)
            except PodnetError as exc:
                state.error = f"pod table of {state.pod} not rebuilt (the last good one stays): {error_text(exc)}"
                return
        self._apply(target.netns, state, compiled)

    def _apply(self, netns: str, state: PodState, compiled: Any) -> bool | None:
        """Take `netns` to `compiled` (None: no table) unless it holds it already.
        True: applied; None: nothing to do, or the namespace is gone; False: nft
        refused (the last good table stays, the error is noted)."""
        from podnet.errors import InvalidNetNS
        from podnet.policy.pod_table import stamped_script

        script, generation = stamped_script(compiled)
        try:
            if state.generation is None:
                state.generation = self.kernel.generation(netns) or 0
            changed = state.generation != generation
            if changed:
                self.kernel.apply(netns, script)
        except InvalidNetNS as exc:
            if not os.path.exists(netns):  # the pod is gone: nothing left to judge
                state.generation, state.error = 0, None
                self.readers.close(netns)
                return None
            state.error = f"pod table of {state.pod or netns}: {error_text(exc)}"
            return False
        except PodnetError as exc:
            state.generation = None  # read it back next time: nft applies all or nothing
            state.error = (f"nft refused the pod table of {state.pod or netns} (the last good one stays): "
                           f"{error_text(exc)}")
            return False
        state.generation, state.error = generation, None
        if generation:  # also for a table found right at start: its verdicts are read too
            self.readers.open(netns)
        else:
            self.readers.close(netns)
        return True if changed else None

    def _error_text(self) -> str | None:
        problems = [s.error for _n, s in sorted(self.pods.items()) if s.error]
        problems += [f"{why} (if it is a macvlan pod's, that pod gets no table)" for _k, why in sorted(self._unreadable.items())]
        shown = problems[:MAX_SHOWN] + ([f"and {len(problems) - MAX_SHOWN} more"] if len(problems) > MAX_SHOWN else [])
        return "; ".join(shown) or None

    def _report(self) -> None:
        text = self._error_text()
        if text is not None and text != self._logged:
            log.warning("policy: macvlan pods: %s", text)
        self._logged = text

    def _run(self) -> None:
        def converge(_periodic: bool, events: list | None) -> int:
            return self.refresh(events)

        # Most nodes never hold a macvlan pod: no watch until one does (at start, or a
        # macvlan ADD in this agent wakes the thread), so they pay no idle polling.
        while not self._loop.stopping.is_set():
            try:
                self.refresh(None)
            except Exception as exc:  # noqa: BLE001 - the store may be down at start: retry
                log.warning("policy: macvlan pods: %s", getattr(exc, "msg", None) or exc)
            with self._lock:
                if self.pods or local_targets(self._records, self.node):
                    break
            self._wake.wait(self.resync_seconds)
            self._wake.clear()

        list_then_watch(self._loop.stopping, keys.ENDPOINTS, self._store_fn, converge, self.resync_seconds,
                        WATCH_TIMEOUT, log)

def error_text(exc: PodnetError) -> str:
    """A PodnetError as one line for status and the log."""
    return f"{exc.msg}: {exc.details}" if exc.details else exc.msg
