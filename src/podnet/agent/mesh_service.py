"""The node's service mesh: a sidecar (HAProxy) for each local meshed pod, kept in step
with the cluster, its certificate issued and rotated, and what the sidecars log turned
into golden signals.

    store: pods, services, slices, readiness, namespaces, mesh/ objects, the mesh CA
      -> mesh/plan.py Planner.node(this node) -> a SidecarSpec per local meshed pod
      -> agent/mesh_sidecar.py: start / weights through the runtime API / reload / stop

- Runs on cluster nodes (`--node`). Watches the whole store (one watch, like the node
  service) and converges when a key under one of WATCHED changes, and every
  RESYNC_SECONDS (a dead sidecar is restarted, certificates due are rotated).
- The mesh CA lives in the cluster store (`mesh/ca`, made once by whichever agent
  needs it first, by compare-and-put); each agent issues its local pods' certificates
  (CERT_LIFETIME, renewed at 2/3 of it through the runtime API, without a reload).
  Who can read the store can mint identities: the store is the trust root, as etcd
  is for Kubernetes' secrets.
- A pod's network namespace comes from its endpoint record on this node (the CNI ADD
  wrote it): a pod not attached here yet is skipped until it is.
- Sidecars outlive the agent: `stop()` leaves them serving (an agent restart or
  upgrade must not fail a meshed request), and a starting agent adopts every sidecar
  its predecessor left in its work directories (mesh/sidecar_process.py) before its
  first pass, gives each a fresh certificate through the runtime API, and stops the
  ones whose pods are no longer meshed here. Their access-log lines while no agent
  listens are lost to the golden signals (HAProxy drops them), not to the requests.
  `lab down` ends them with the lab (its supervisor reaps and ends orphans).
- A pod whose sidecar cannot be built (a bad label for its identity, a configuration
  HAProxy refuses) keeps what runs and is named in `mesh.status`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podnet import keys
from podnet.agent.jitter import jittered
from podnet.agent.mesh_sidecar import Sidecar
from podnet.agent.service_thread import NodeLoopService, ServiceThread
from podnet.errors import PodnetError
from podnet.model.endpoint import decode_entries
from podnet.store import RevisionCompacted, Store
from podnet.store.base import Event, dumps

if TYPE_CHECKING:
    from podnet.agent.context import AgentContext, OpHandler
    from podnet.mesh.ca import IssuedCert, MeshCA
    from podnet.mesh.plan import SidecarPaths
    from podnet.mesh.spec import SidecarSpec
    from podnet.model.policy import PodRecord

log = logging.getLogger("podnet.agent.mesh")

WATCHED = (keys.PODS, keys.NAMESPACES, keys.SERVICES, keys.ENDPOINT_SLICES, keys.READINESS, keys.MESH,
           keys.ENDPOINTS)
RESYNC_SECONDS = 5.0
WATCH_TIMEOUT = 1.0
CERT_LIFETIME = 3600.0


class MeshService(NodeLoopService):
    def __init__(self, agent: AgentContext, cert_lifetime: float | None = None) -> None:
        self.agent = agent
        options = getattr(agent, "node_options", None)
        self.node: str | None = options.node if options else None
        self.cert_lifetime = cert_lifetime or getattr(options, "mesh_cert_lifetime", None) or CERT_LIFETIME
        self.root = agent.state.mesh_dir
        self.spread = random.random  # where in the jitter window the next pass falls (tests fix it)
        self.sidecars: dict[str, Sidecar] = {}
        self.certs: dict[str, IssuedCert] = {}
        self.problems: dict[str, str] = {}
        self.passes = 0
        self._meshless = False  # the last pass found nothing meshed anywhere (see _matters)
        self._lock = threading.Lock()
        self._ca: MeshCA | None = None
        self._kernel: Any = None
        self._sink: Any = None
        self.budgets: Any = None  # mesh/budget.py RetryBudgets, fed by the sink
        self._loop = ServiceThread("podnet-mesh", self._run, join_timeout=WATCH_TIMEOUT + 15)

    # -- AgentService

    def ops(self) -> dict[str, OpHandler]:
        return {"mesh.status": lambda _m, _f: self.status(),
                "mesh.top": lambda _m, _f: self.top(),
                "mesh.denials": lambda m, _f: self.denials(m)}

    def stop(self) -> None:
        super().stop()
        with self._lock:
            if self.sidecars:
                log.info("mesh: %d sidecar(s) left serving for the next agent to adopt", len(self.sidecars))
            self.sidecars.clear()
        if self._sink is not None:
            self._sink.stop()

    # -- ops

    def status(self) -> dict[str, Any]:
        if self.node is None:
            raise PodnetError("this agent is not a cluster node (started without --node)")
        with self._lock:
            pods = []
            for ref, car in sorted(self.sidecars.items()):
                cert = self.certs.get(ref)
                pods.append({"pod": ref, "alive": car.alive, "pid": car.state.pid, "reloads": car.state.reloads,
                             "restarts": car.state.restarts, "weight_updates": car.state.weight_updates,
                             "rotations": car.state.rotations, "last": car.state.last, "error": car.state.error,
                             "identity": cert.spiffe_id if cert else None,
                             "cert_expires": cert.not_after.timestamp() if cert else None,
                             "history": list(car.state.history), "routes": _routes_of(car.spec)})
            return {"node": self.node, "pods": pods, "problems": dict(self.problems), "passes": self.passes}

    def top(self) -> dict[str, Any]:
        return {"node": self.node, "routes": self._sink.golden.snapshot() if self._sink else []}

    def denials(self, message: dict) -> dict[str, Any]:
        kind = message.get("kind") or "all"
        return {"node": self.node, "records": self._sink.recent(kind) if self._sink else []}

    # -- the loop

    def _store(self) -> Store:
        return self.agent.service.store(self.agent.store_path)

    def _run(self) -> None:
        stop = self._loop.stopping
        revision, dirty, next_pass, passed_at = 0, True, 0.0, -1
        self._start_sink()
        self.adopt()
        while not stop.is_set():
            try:
                now = time.monotonic()
                due = now >= next_pass and not (self._meshless and self._store().revision() == passed_at)
                if dirty or due or self._renewal_due():  # (nothing meshed and nothing written: no pass)
                    revision = max(revision, self.converge())
                    dirty, next_pass, passed_at = False, self.next_pass_time(now), revision
                elif now >= next_pass:
                    next_pass = self.next_pass_time(now)
                self.enforce_budgets()
                try:
                    seen = self._store().watch_hint("", revision, WATCH_TIMEOUT)
                except RevisionCompacted:
                    dirty = True
                    continue
                if seen:
                    revision = max(revision, seen[-1].revision)
                    dirty = dirty or any(self._matters(e) for e in seen)
            except Exception as exc:  # noqa: BLE001 - keep meshing; retry on the next pass
                log.warning("mesh: %s", getattr(exc, "msg", None) or exc)
                stop.wait(1.0)

    def next_pass_time(self, now: float) -> float:
        """When the periodic pass after `now` is due: RESYNC_SECONDS +- jitter.SHARE,
        drawn each time. At a fixed 5 s, the first pod ADD woke every agent's mesh loop
        at once and a 50-node lab's agents then listed every pod in step every 5 s; the
        ADDs of those moments took twice their median (with 7 s instead, every 7 s)."""
        return now + jittered(RESYNC_SECONDS, spread=self.spread)

    def _matters(self, event: Event) -> bool:
        """Does this event change the plan? While nothing is meshed, only what could mesh
        something does: a namespace, the mesh's objects, a pod carrying the label (a
        pass lists every pod; fifty agents doing it for every ADD of a lab was quadratic)."""
        if not self._meshless:
            return event.key.startswith(WATCHED)
        from podnet.mesh.plan import MESH_LABEL

        return event.key.startswith((keys.NAMESPACES, keys.MESH)) or (
            event.key.startswith(keys.PODS) and MESH_LABEL in (event.value or ""))

    def _start_sink(self) -> None:
        try:
            from podnet.mesh.log_sink import LogSink

            self.root.mkdir(parents=True, exist_ok=True)
            from podnet.mesh.budget import RetryBudgets

            self._sink = LogSink(str(self.root / "log.sock"), getattr(self.agent, "metrics", None))
            self.budgets = RetryBudgets()
            self._sink.observers.append(self.budgets.observe)
            self._sink.start()
        except Exception as exc:  # noqa: BLE001 - the mesh works without its statistics
            log.warning("mesh: no access log sink: %s", exc)

    def adopt(self) -> int:
        """Take over the sidecars a former agent left running (module docstring); how many."""
        from podnet.mesh.sidecar_process import sidecar_pid

        adopted = 0
        for workdir in sorted(p for p in self.root.glob("*_*") if p.is_dir()) if self.root.is_dir() else []:
            pid = sidecar_pid(workdir)
            ref = workdir.name.replace("_", "/", 1)  # namespaces and pod names hold no "_"
            if pid is None or ref in self.sidecars:
                continue
            car = Sidecar(ref, f"/proc/{pid}/ns/net", workdir, self._netns())  # its endpoint's path once planned
            if car.adopt():
                with self._lock:
                    self.sidecars[ref] = car
                adopted += 1
                log.info("mesh: adopted the sidecar of %s (pid %d)", ref, pid)
        return adopted

    def converge(self) -> int:
        from podnet.mesh.objects import load_mesh
        from podnet.mesh.plan import MESH_LABEL, Planner, meshed_namespaces
        from podnet.services.watched import WatchedObjects

        store = self._store()
        namespaces = _namespace_labels(store)
        if not meshed_namespaces(namespaces) and not self.sidecars and \
                not any(MESH_LABEL in entry.value for entry in store.list(keys.PODS)):
            with self._lock:  # nothing meshed anywhere: no plan, no listing of services
                self.problems, self.passes, self._meshless = {}, self.passes + 1, True
            return store.revision()
        self._meshless = False
        watched = WatchedObjects()
        revision = watched.relist(store)
        mesh = load_mesh(store)
        specs = {}
        problems: dict[str, str] = {}
        try:
            specs = Planner(watched, meshed_namespaces(namespaces), mesh).node(self.node or "", self._paths)
        except PodnetError as exc:
            problems["plan"] = exc.msg
        netns = _local_netns(store, self.node or "")
        with self._lock:
            if specs:
                self._ensure_ca(store)
            for ref, spec in specs.items():
                pod = watched.pods.get(keys.pod(*ref.split("/", 1)))
                where = next((netns[ip] for ip in (pod.ips if pod else ()) if ip in netns), None)
                if where is None:
                    continue  # not attached on this node yet
                try:
                    car = self.sidecars.get(ref) or Sidecar(ref, where, Path(spec.stats_socket).parent, self._netns())
                    car.netns = where
                    self.sidecars[ref] = car
                    self._ensure_cert(ref, spec.cert, pod)
                    what = car.apply(spec)
                    if what != "unchanged":
                        log.info("mesh: sidecar of %s %s", ref, what)
                except PodnetError as exc:
                    problems[ref] = f"{exc.msg}{': ' + exc.details if exc.details else ''}"
            for ref in [r for r in self.sidecars if r not in specs]:
                self.sidecars.pop(ref).stop()
                self.certs.pop(ref, None)
                log.info("mesh: sidecar of %s stopped (no longer meshed here)", ref)
            self.problems = {**problems, **({"objects": "; ".join(mesh.problems)} if mesh.problems else {})}
            self.passes += 1
        return revision

    def _renewal_due(self) -> bool:
        """A certificate's renewal time has come: converge now (it rotates), not at
        the next periodic pass, which could come after it expired."""
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            return any(now >= cert.renew_at() for cert in self.certs.values())

    def enforce_budgets(self) -> None:
        """Retries off for a backend over its budget, on again below it (about once a
        second: each pass of the loop)."""
        if self.budgets is None:
            return
        from podnet.mesh.spec import budgets

        with self._lock:
            cars = [(ref, car) for ref, car in self.sidecars.items() if car.spec and car.spec.budget_map]
        for ref, car in cars:
            assert car.spec is not None
            for backend, percent in budgets(car.spec).items():
                try:
                    car.set_over_budget(car.spec, backend, self.budgets.over(ref, backend, percent))
                except (PodnetError, OSError) as exc:
                    log.warning("mesh: retry budget of %s %s: %s", ref, backend, getattr(exc, "msg", exc))

    # -- certificates and paths

    def _netns(self) -> Any:
        if self._kernel is None:
            from podnet.agent.pod_netns import NetnsKernel

            self._kernel = NetnsKernel()
        return self._kernel

    def _paths(self, pod: PodRecord) -> SidecarPaths:
        from podnet.fileio import write_atomic
        from podnet.mesh.plan import SidecarPaths
        from podnet.mesh.render import DELAY_LUA

        work = self.root / f"{pod.namespace}_{pod.name}"
        work.mkdir(parents=True, exist_ok=True)
        lua = self.root / "delay.lua"
        if not lua.exists():
            write_atomic(lua, DELAY_LUA)
        return SidecarPaths(str(work / "cert.pem"), str(self.root / "ca.pem"), str(work / "haproxy.sock"),
                            str(self.root / "log.sock"), str(lua), str(work / "budget.map"))

    def _ensure_ca(self, store: Store) -> None:
        from podnet.fileio import write_atomic
        from podnet.mesh.ca import MeshCA

        if self._ca is None:
            entry = store.get(keys.MESH_CA)
            if entry is None:
                made = MeshCA.create()
                store.compare_and_put(keys.MESH_CA, dumps(made.to_json()), 0)
                entry = store.get(keys.MESH_CA)
            assert entry is not None
            self._ca = MeshCA.from_json(entry.json(), entry.key)
            write_atomic(self.root / "ca.pem", self._ca.cert_pem())

    def _ensure_cert(self, ref: str, path: str, pod: PodRecord | None) -> None:
        from podnet.fileio import write_atomic
        from podnet.mesh.identity import identity_of_pod

        assert self._ca is not None and pod is not None
        cert = self.certs.get(ref)
        now = dt.datetime.now(dt.UTC)
        if cert is not None and now < cert.renew_at() and Path(path).exists():
            return
        issued = self._ca.issue(identity_of_pod(pod.namespace, pod.labels, where=f"pod {ref}"), self.cert_lifetime)
        self.certs[ref] = issued
        car = self.sidecars.get(ref)
        if car is not None and car.alive:  # running (or adopted): handed over without a reload
            car.rotate(path, issued.pem_bundle())
            log.info("mesh: rotated the certificate of %s (serial %x)", ref, issued.serial)
        else:
            write_atomic(Path(path), issued.pem_bundle())


def _namespace_labels(store: Store) -> dict[str, dict[str, str]]:
    """name -> labels of every stored Namespace that parses (policy/world.py's reader)."""
    from podnet.policy.world import parse_stored

    out = {}
    for entry in store.list(keys.NAMESPACES):
        try:
            namespace = parse_stored(entry.key, entry.value)
        except (PodnetError, ValueError):
            continue
        out[namespace.name] = dict(namespace.labels)
    return out


def _local_netns(store: Store, node: str) -> dict[str, str]:
    """pod address -> the network namespace its endpoint record on `node` names."""
    out = {}
    for record in decode_entries(store.list(keys.ENDPOINTS)):
        if not record.local_to(node):
            continue
        for ip in record.ips:
            try:
                out[str(ipaddress.ip_interface(ip).ip)] = record.netns
            except ValueError:
                continue
    return out


def _routes_of(spec: SidecarSpec | None) -> list[str]:
    """The routes a sidecar serves (as the access log names them)."""
    return sorted({rule.route for svc in spec.outbound for rule in svc.rules}) if spec else []
