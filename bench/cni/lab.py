"""The outer side of bench/cni_latency.py: the sandbox, the agent, the systems under
test, the measuring process inside the host namespace, and the check that nothing is
left afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import BenchError, close_sandbox, log, no_interrupt
from cni.calls import BRIDGES, PREFIX, REFERENCE_DIR, podnet_config, reference_config

ROOT = Path(__file__).resolve().parent.parent.parent
# The entry point: re-run with --inner (the measuring process) and --agent-shim.
ENTRY = ROOT / "bench" / "cni_latency.py"


def prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "the benchmark needs root (it creates network namespaces)"
    for tool in ("ip",):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    for plugin in ("bridge", "host-local"):
        if not os.access(os.path.join(REFERENCE_DIR, plugin), os.X_OK):
            return f"{REFERENCE_DIR}/{plugin} is missing (apt install containernetworking-plugins)"
    return None


class Lab:
    """Sandbox + work dir + the agent; `close()` always tears all of it down."""

    def __init__(self) -> None:
        from podnet.lab.sandbox import Sandbox

        self.work = Path(tempfile.mkdtemp(prefix=PREFIX))
        os.chmod(self.work, 0o700)
        self.sandbox = Sandbox(PREFIX)
        self.host = ""
        self.agent = None
        self.started = time.monotonic()  # reset by start(): "namespaces ready in" counts from there

    def start(self, with_shim: bool = False) -> None:
        from podnet.install.cni import install_cni
        from podnet.lab.sandbox import wait_for_path

        self.started = time.monotonic()
        self.bin_dir = self.work / "bin"
        install_cni(str(self.bin_dir))
        self.socket = str(self.work / "agent.sock")
        self.host = self.sandbox.netns("host")
        store = str(self.work / "agent.db")
        argv = (
            [sys.executable, str(ENTRY), "--agent-shim", self.socket, store]
            if with_shim
            else [sys.executable, "-m", "podnet.cli", "agent", "--socket", self.socket, "--store", store, "--init"]
        )
        agent_log = self.sandbox.keep_open(open(self.work / "agent.log", "w"))  # noqa: SIM115
        self.agent = self.sandbox.spawn(self.host, argv, stdout=agent_log, stderr=subprocess.STDOUT)
        wait_for_path(self.socket, timeout=30, proc=self.agent)

    def namespaces(self, role: str, count: int) -> list[str]:
        return [self.sandbox.netns(f"{role}{i}") for i in range(count)]

    def run_inner(self, spec: dict, profile: bool, timeout: float) -> dict:
        spec_path = self.work / ("profile.json" if profile else "spec.json")
        spec_path.write_text(json.dumps(spec))
        argv = [sys.executable, str(ENTRY), "--inner", str(spec_path)]
        if profile:
            argv.append("--profile")
        proc = self.sandbox.spawn(self.host, argv, stdout=subprocess.PIPE)
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        finally:
            self.sandbox.stop(proc)
        try:
            data = json.loads(stdout.decode() or "{}")
        except ValueError:
            raise BenchError(f"the measuring process printed no JSON: {stdout[-1000:]!r}") from None
        if "error" in data or proc.returncode != 0:
            raise BenchError(
                data.get("error") or f"the measuring process exited with {proc.returncode}"
            )
        return data

    # ---- leftovers ---------------------------------------------------------------------
    def check_live_leftovers(self, systems: list[dict]) -> list[str]:
        """After the final DELs, before teardown: no veth, address or record left in
        the systems' namespaces and stores."""
        from podnet.lab.sandbox import ip
        from podnet.naming import is_tombstone

        def host_veths() -> list[dict]:
            return json.loads(ip("-n", self.host, "-j", "link", "show", "type", "veth").stdout or "[]")

        # the agent's reaper deletes DEL's retired pairs (kernel/tombstone.py) within ~2 s
        deadline = time.monotonic() + 10
        while any(is_tombstone(v["ifname"]) for v in host_veths()) and time.monotonic() < deadline:
            time.sleep(0.2)
        problems = []
        veths = host_veths()
        if veths:
            problems.append(f"host namespace still has veths: {[v['ifname'] for v in veths]}")
        for ns in [Path(p).name for s in systems for p in s["netns"] + s["warm_netns"]]:
            links = json.loads(ip("-n", ns, "-j", "link", "show").stdout or "[]")
            extra = [link["ifname"] for link in links if link["ifname"] != "lo"]
            if extra:
                problems.append(f"{ns} still has {extra}")
        nets = [(s["key"], s["config"]["name"], s["config"]["ipam"]["dataDir"]) for s in systems]
        for key, name, data_dir in nets:
            if key != "reference":
                problems += podnet_leftovers(name, data_dir)
        for key, name, data_dir in nets:
            if key == "reference":
                problems += hostlocal_leftovers(name, data_dir)
        return problems

    def close(self) -> list[str]:
        """Tear down; return what is still around afterwards (should be nothing)."""
        from podnet.lab.sandbox import ip

        problems = close_sandbox(self.sandbox)
        # Read-only look at the root namespace: none of our bridges may have landed there.
        root_links = {
            link.get("ifname")
            for link in json.loads(ip("-j", "link", "show", check=False).stdout or "[]")
        }
        strays = sorted(root_links & set(BRIDGES))
        if strays:
            problems.append(f"bench bridges found in the root namespace: {strays}")
        shutil.rmtree(self.work, ignore_errors=True)
        if self.work.exists():
            problems.append(f"{self.work} still exists")
        return problems


def podnet_leftovers(name: str, data_dir: str) -> list[str]:
    from podnet.ipam.service import IpamService
    from podnet.store import open_store

    db = os.path.join(data_dir, "podnet.db")
    if not os.path.exists(db):
        return []
    store = open_store(db)
    try:
        held = IpamService(store).reservations(name)
        endpoints = store.list("endpoints/")
    finally:
        store.close()
    problems = []
    if held:
        problems.append(f"podnet network {name} still holds {[r.address for r in held]}")
    if endpoints:
        problems.append(f"podnet store still has endpoints {[e.key for e in endpoints]}")
    return problems


def hostlocal_leftovers(name: str, data_dir: str) -> list[str]:
    net_dir = Path(data_dir) / name
    leaked = (
        [p.name for p in net_dir.glob("*") if p.name != "lock" and not p.name.startswith("last_reserved_ip")]
        if net_dir.exists()
        else []
    )
    return [f"host-local network {name} still holds {leaked}"] if leaked else []


def run_in_lab(with_shim: bool, work: Callable[[Lab], tuple[dict, list[dict]]]) -> dict:
    """Start a lab, let `work` measure in it (returning its outcome and the systems it
    used), check the systems left nothing, and always tear the lab down (a second
    Ctrl-C cannot skip that); the outcome gets the verdict under "cleanup"."""
    lab = Lab()
    cleanup: list[str] = []
    try:
        lab.start(with_shim=with_shim)
        outcome, systems = work(lab)
        cleanup = lab.check_live_leftovers(systems)
    finally:
        with no_interrupt():
            cleanup += lab.close()
    outcome["cleanup"] = {"ok": not cleanup, "problems": cleanup}
    return outcome


def build_systems(lab: Lab, n: int, warmup: int, fallback: bool, python: bool = False) -> list[dict]:
    """The systems under test, in this order: the installed `podnet` (the compiled shim
    when install_cni could build it), the reference, then optionally `podnet-python`
    (the Python plugin the shim stands in for, same agent, its own network) and the
    no-agent fallback."""
    from podnet.install.cni import FALLBACK_NAME, is_shim

    cni_path = f"{lab.bin_dir}:{REFERENCE_DIR}"
    data = lab.work / "data"
    shim = is_shim(lab.bin_dir / "podnet")
    systems = [
        {
            "key": "podnet",
            "label": "podnet shim (agent)" if shim else "podnet (agent)",
            "binary": str(lab.bin_dir / "podnet"),
            "socket": lab.socket,
            "config": podnet_config(
                "pnb-podnet", BRIDGES[0], "10.231.0.0/16", str(data / "podnet"), lab.socket
            ),
        },
        {
            "key": "reference",
            "label": "bridge + host-local",
            "binary": os.path.join(REFERENCE_DIR, "bridge"),
            "config": reference_config(
                "pnb-ref", BRIDGES[1], "10.232.0.0/16", str(data / "host-local")
            ),
        },
    ]
    if python and shim:
        systems.append(
            {
                "key": "python",
                "label": "podnet python (agent)",
                "binary": str(lab.bin_dir / FALLBACK_NAME),
                "socket": lab.socket,
                "config": podnet_config(
                    "pnb-python", BRIDGES[3], "10.234.0.0/16", str(data / "python"), lab.socket
                ),
            }
        )
    elif python:
        log("no compiled shim (no C compiler?): `podnet` is the Python plugin; no separate python row")
    if fallback:
        systems.append(
            {
                "key": "inprocess",
                "label": "podnet (no agent)",
                "binary": str(lab.bin_dir / "podnet"),
                # No agent listens here: the plugin falls back to in-process work.
                "config": podnet_config(
                    "pnb-inproc",
                    BRIDGES[2],
                    "10.233.0.0/16",
                    str(data / "inprocess"),
                    str(lab.work / "no-agent.sock"),
                ),
            }
        )
    for s in systems:
        s["cni_path"] = cni_path
        short = {"podnet": "p", "reference": "r", "inprocess": "i", "python": "y"}[s["key"]]
        s["netns"] = [lab.sandbox.path(ns) for ns in lab.namespaces(f"{short}", n)]
        s["warm_netns"] = [lab.sandbox.path(ns) for ns in lab.namespaces(f"{short}w", warmup)]
    return systems
