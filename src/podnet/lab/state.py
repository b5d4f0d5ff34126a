"""A lab's state file, its paths, and how to reach what it records.

Everything is recorded in the state file `/run/podnet/lab-L.json` *before* it is
created (namespaces, sockets, the lab directory), and processes right after they are
spawned (by the supervisor, in `<labdir>/procs.json`), so `teardown` removes exactly
those by name and pid ("pid:starttime") even after `lab up` crashed. The root
namespace is never changed.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from podnet.errors import PodnetError
from podnet.fileio import write_atomic
from podnet.kernel.netns import loopback_up
from podnet.lab import topology as topo
from podnet.procs import owner_alive

RUN_DIR = Path("/run/podnet")
NETNS_DIR = Path("/run/netns")


class LabError(PodnetError):
    """A lab could not be built, found or torn down."""


def state_file(name: str) -> Path:
    return RUN_DIR / f"lab-{name}.json"


def lab_dir(name: str) -> Path:
    return RUN_DIR / f"lab-{name}"


def node_socket(lab: str, node: str) -> str:
    return str(RUN_DIR / f"lab-{lab}-{node}.sock")


def enter(ns: str) -> list[str]:
    """argv prefix running a command in namespace `ns` (network only, same mounts)."""
    return ["nsenter", f"--net={NETNS_DIR / ns}", "--"]


def run(argv: list[str], check: bool = True, timeout: float = 30,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (`stdin`: its input); with `check`, a failure is a LabError carrying
    its stderr, and so is one that outlived `timeout` (whatever `check` says: `lab up`
    then tears down)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, input=stdin)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)} did not finish in {timeout:g}s",
                       "the machine may be overloaded (uptime), or the kernel busy with namespaces") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed", proc.stderr.strip())
    return proc


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["ip", *args], check=check)


class LabState:
    """The state file: written atomically after every change, by `lab up` only."""

    def __init__(self, name: str, data: dict) -> None:
        self.name = name
        self.data = data

    @classmethod
    def create(cls, name: str, **meta: object) -> LabState:
        data = {"name": name, "phase": "building", "labdir": str(lab_dir(name)), "namespaces": [],
                "sockets": [], "nodes": {}, "pods": {}, "outside": {}, "etcd": [], "created": time.time(),
                **meta}
        state = cls(name, data)
        state.save()
        return state

    @classmethod
    def load(cls, name: str) -> LabState:
        path = state_file(name)
        try:
            return cls(name, json.loads(path.read_text()))
        except FileNotFoundError:
            raise LabError(f"no lab named {name!r}", f"{path} does not exist") from None
        except ValueError as exc:
            raise LabError(f"{path} is not valid JSON: {exc}") from None

    def save(self) -> None:
        path = state_file(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.data, separators=(",", ":")))  # teardown needs all of it

    @property
    def labdir(self) -> Path:
        return Path(self.data["labdir"])

    def processes(self) -> dict[str, dict]:
        """What the supervisor recorded (name -> pid, owner, argv, exit)."""
        try:
            return json.loads((self.labdir / "procs.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def add_netns(self, ns: str) -> str:
        """Record, then create, a namespace with lo up."""
        self.data["namespaces"].append(ns)
        self.save()
        _create_netns(ns)
        return ns

    def add_netns_batch(self, names: list[str]) -> None:
        """Record every namespace with one save, then create them all with one `ip
        -batch` and set their lo up from this process: two `ip` processes per namespace
        cost ~5 ms of CPU, about a tenth of the machine's CPU in a 1,000-pod lab's pods
        phase (docs/architecture.md). `ip -batch` stops at the first failure; every name
        is recorded, so `lab down` deletes whatever was made."""
        self.data["namespaces"].extend(names)
        self.save()
        if not names:
            return
        run(["ip", "-batch", "-"], timeout=30 + 0.05 * len(names),
            stdin="".join(f"netns add {ns}\n" for ns in names))
        for ns in names:
            try:
                loopback_up(str(NETNS_DIR / ns))
            except PodnetError as exc:
                raise LabError(f"namespace {ns}: {exc.msg}", exc.details) from None


def _create_netns(ns: str) -> None:
    ip("netns", "add", ns)
    ip("-n", ns, "link", "set", "lo", "up")


def process_alive(entry: dict) -> bool:
    """Is a process entry of procs.json still that very process (pid and start time)?"""
    owner = entry.get("owner")
    return bool(owner) and owner_alive(owner)


def resolve_target(name: str, target: str) -> str:
    """`NODE`, `NS/POD`, or a lab role (out, rtr, fab0, etcd0) -> its namespace."""
    state = LabState.load(name)
    if "/" in target:
        dns = state.data.get("cluster_dns") or {}
        pod = state.data.get("pods", {}).get(target) or next(
            (p for p in (dns.get("pods") or {}).values() if target == f"{dns.get('namespace')}/{p['name']}"), None)
        if pod is None:
            raise LabError(f"no pod {target!r} in lab {name}", f"pods: {', '.join(state.data.get('pods', {}))}")
        return pod["netns"]
    node = state.data.get("nodes", {}).get(target) or (state.data.get("hosts") or {}).get(target)
    if node is not None:
        return node["netns"]
    ns = topo.netns_name(name, target)
    if ns in state.data.get("namespaces", []):
        return ns
    raise LabError(f"no node {target!r} in lab {name}",
                   f"nodes: {', '.join(state.data.get('nodes', {}))}; pods are NS/POD; also out, rtr, fab<r>")
