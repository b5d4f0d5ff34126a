"""One meshed pod's sidecar as a process: HAProxy in master-worker mode inside the pod's
network namespace, started by the node agent (which waits on it: PID 1 reaps nothing)
and outliving it: a restarted agent adopts it by its pid file (mesh/sidecar_process.py)
and goes on driving it, so meshed requests never notice an agent restart.

- `apply(spec)`: the configuration rendered (mesh/render.py) against what runs: the
  same text does nothing; only server weights changed goes through the runtime API
  (no reload: a canary shift drops nothing); anything else is checked (`haproxy -c`)
  and then reloaded (SIGUSR2 to the master: a new worker takes the listeners, the old
  one finishes its requests). Reloads are counted: they are meant to be rare.
- The interception table (mesh/intercept.py) goes in before HAProxy starts and is
  removed after it stops, so the pod is never redirected to a port nobody listens on.
- A certificate rotation writes the new bundle and hands it to the running workers
  through the runtime API (`set ssl cert` + `commit`), no reload.
- A dead sidecar is restarted by the next `apply` (the service's periodic pass).
- Adopted (`adopt()`): what it serves is `applied.cfg`, so the same rendering changes
  nothing and a weight change still goes through the runtime API; it is signalled by
  its checked pid; its retry-budget map is unknown until the agent sets it again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from podnet.errors import KernelError, PodnetError
from podnet.fileio import write_atomic
from podnet.mesh import render as haproxy_config
from podnet.mesh.intercept import intercept_script, removal_script
from podnet.mesh.sidecar_process import PIDFILE, end, sidecar_pid
from podnet.mesh.spec import SidecarSpec, budgets

HAPROXY = "/usr/sbin/haproxy"


@dataclass
class SidecarState:
    pid: int | None = None
    started: float = 0.0
    reloads: int = 0
    weight_updates: int = 0
    rotations: int = 0
    restarts: int = 0
    error: str | None = None
    last: str = ""  # what the last apply did
    cert_not_after: float = 0.0
    history: list[str] = field(default_factory=list)


class Sidecar:
    def __init__(self, ref: str, netns: str, workdir: Path, kernel) -> None:  # noqa: ANN001 - agent/pod_netns.PodKernel
        self.ref, self.netns, self.workdir, self.kernel = ref, netns, workdir, kernel
        self.config = workdir / "haproxy.cfg"
        self.proc: subprocess.Popen | None = None  # the master this agent started (it waits on it)
        self.adopted: int | None = None  # or the master of a former agent, by its pid
        self.text = ""
        self.spec: SidecarSpec | None = None
        self.over_budget: dict[str, bool] = {}  # backend -> retries off (mesh/budget.py); absent: unknown
        self.state = SidecarState()

    @property
    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.adopted is not None and sidecar_pid(self.workdir) == self.adopted

    @property
    def master(self) -> int | None:
        return self.proc.pid if self.proc is not None else self.adopted

    def adopt(self) -> bool:
        """Take over the sidecar a former agent left running here (True if there is one)."""
        pid = sidecar_pid(self.workdir)
        if pid is None or self.alive:
            return False
        try:
            self.text = (self.workdir / "applied.cfg").read_text()
        except OSError:
            self.text = ""  # never applied: the next apply reloads it
        self.adopted, self.over_budget = pid, {}
        self.state.pid, self.state.started = pid, (self.workdir / PIDFILE).stat().st_mtime
        return True

    def apply(self, spec: SidecarSpec) -> str:
        text = haproxy_config.render(spec)
        if self.alive and text == self.text:
            return "unchanged" if self.spec is not None else self._did("adopted", spec, text)
        same_structure = haproxy_config.structure(text) == haproxy_config.structure(self.text)
        if self.alive and same_structure and self._set_weights(spec):
            write_atomic(self.config, text)
            self.state.weight_updates += 1
            return self._did("weights set through the runtime API", spec, text)
        self._write_budget_map(spec)
        self._check(text)
        write_atomic(self.config, text)
        if self.alive:
            assert self.master is not None
            old = self._worker()
            os.kill(self.master, signal.SIGUSR2)
            self._await_worker(old)
            self.state.reloads += 1
            return self._did("reloaded", spec, text)
        self._start(spec)
        return self._did("started", spec, text)

    def rotate(self, bundle_path: str, pem: str) -> None:
        """A new certificate for the running workers, without a reload."""
        from podnet.mesh.haproxy_api import HaproxyApi

        write_atomic(Path(bundle_path), pem)
        if self.alive:
            HaproxyApi(str(self.workdir / "haproxy.sock")).update_cert(bundle_path, pem)
        self.state.rotations += 1

    def stop(self) -> None:
        """Interception off first (the pod talks directly again), then HAProxy."""
        with contextlib.suppress(PodnetError, OSError):
            self.kernel.apply(self.netns, removal_script())  # gone with its namespace, if it is
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if self.adopted is not None:
            if sidecar_pid(self.workdir) == self.adopted:
                end(self.adopted)
            self.adopted = None
        self.spec, self.text = None, ""

    # -- internals

    def _did(self, what: str, spec: SidecarSpec | None = None, text: str = "") -> str:
        """Note what was done, and with `spec` (rendered as `text`) what now serves:
        `applied.cfg` too (haproxy.cfg is written before a reload, which takes a moment
        to have a new worker serving it)."""
        if spec is not None:
            self.spec, self.text = spec, text
        write_atomic(self.workdir / "applied.cfg", self.text)
        self.state.last, self.state.error = what, None
        self.state.history = [*self.state.history[-9:], f"{time.strftime('%H:%M:%S')} {what}"]
        return what

    def _set_weights(self, spec: SidecarSpec) -> bool:
        from podnet.mesh.haproxy_api import HaproxyApi

        want = haproxy_config.weights(spec)
        api = HaproxyApi(str(self.workdir / "haproxy.sock"))
        try:
            for (backend, server), weight in want.items():
                api.set_server_weight(backend, server, weight)
        except (PodnetError, OSError):
            return False  # reload instead: the text says what the weights must be
        return True

    def _worker(self) -> str:
        """The serving worker's pid, as its runtime API says ("" if it does not answer)."""
        from podnet.mesh.haproxy_api import HaproxyApi

        try:
            info = HaproxyApi(str(self.workdir / "haproxy.sock"), timeout=1.0).command("show info")
        except (PodnetError, OSError):
            return ""
        return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Pid:")), "")

    def _await_worker(self, old: str, timeout: float = 5.0) -> None:
        """Return once a new worker answers on the runtime API (it holds the listeners):
        what is applied is then what serves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self._worker()
            if now and now != old:
                return
            time.sleep(0.02)
        self.state.error = f"no new worker within {timeout:.0f}s of the reload"

    def _write_budget_map(self, spec: SidecarSpec) -> None:
        """Every budgeted backend within its budget at (re)start: the agent flips them."""
        if spec.budget_map:
            write_atomic(Path(spec.budget_map), "".join(f"{name} 0\n" for name in budgets(spec)))
            self.over_budget = dict.fromkeys(budgets(spec), False)

    def set_over_budget(self, spec: SidecarSpec, backend: str, over: bool) -> None:
        """Stop (or allow again) `backend`'s retries now, through the runtime API."""
        from podnet.mesh.haproxy_api import HaproxyApi

        known = backend in self.over_budget
        if self.over_budget.get(backend) == over or not self.alive:
            return
        HaproxyApi(str(self.workdir / "haproxy.sock")).command(
            f"set map {spec.budget_map} {backend} {1 if over else 0}")
        self.over_budget[backend] = over
        if known or over:  # an adopted sidecar's unknown map set to "on" is no news
            self._did(f"retry budget of {backend} {'exhausted: retries off' if over else 'back: retries on'}")

    def _check(self, text: str) -> None:
        probe = self.workdir / "haproxy.cfg.new"
        write_atomic(probe, text)
        out = subprocess.run([HAPROXY, "-c", "-q", "-f", str(probe)], capture_output=True, text=True, timeout=30,
                             check=False)
        if out.returncode != 0:
            self.state.error = f"configuration refused by haproxy -c: {(out.stderr or out.stdout).strip()[-500:]}"
            raise KernelError(f"sidecar of {self.ref}: {self.state.error}")

    def _start(self, spec: SidecarSpec) -> None:
        ports = [p.port for p in spec.inbound]
        (self.workdir / "haproxy.sock").unlink(missing_ok=True)  # a dead master's: not a sign of this one
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.netns}", HAPROXY, "-W", "-db", "-f", str(self.config),
             "-p", str(self.workdir / PIDFILE)],
            stdin=subprocess.DEVNULL, stdout=open(self.workdir / "haproxy.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)  # a signal to the agent's group spares it
        self.adopted = None
        deadline = time.monotonic() + 10
        while not (self.workdir / "haproxy.sock").exists():  # listening (the stats socket comes last)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                code = self.proc.poll()
                self.stop()
                raise KernelError(f"sidecar of {self.ref} did not start (exit {code})",
                                  f"see {self.workdir / 'haproxy.log'}")
            time.sleep(0.02)
        if self.state.started:
            self.state.restarts += 1
        self.state.pid, self.state.started = self.proc.pid, time.time()
        self.kernel.apply(self.netns, intercept_script(ports))
