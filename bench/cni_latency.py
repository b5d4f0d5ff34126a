"""CNI latency: podnet (with its agent) against the reference bridge + host-local.

    .venv/bin/python bench/cni_latency.py [--n 50] [--warmup 3] [--json] [--no-fallback]
    .venv/bin/python bench/cni_latency.py --profile [--n 20] [--json] [--profile-out DIR]

Measures ADD, CHECK and DEL wall time (p50, p90) of each plugin executable, exec'd
directly (no `ip netns exec` per call) from a process that already lives in the
bench's simulated host namespace, from just before the spawn to the process exit:

- podnet, agent:     `podnet` + built-in `podnet-ipam`, `agentSocket` -> a running agent
- reference:         /usr/lib/cni `bridge` + `host-local` (containernetworking-plugins)
- podnet, no agent:  the plugin's in-process fallback (informative, `--no-fallback` skips)

Both configs are cniVersion 1.0.0 with the same bridge options (isGateway,
isDefaultGateway, hairpinMode, no ipMasq) and a /16 each, on separate bridges. Each phase
(ADD all containers, then CHECK all with the ADD result as prevResult, then DEL all)
runs the systems interleaved, rotating which one goes first, after a few warm-up
ADD/CHECK/DEL cycles that are not counted.

`--profile` is a separate run that explains where podnet's ADD time goes: the start-up
of the interpreter and of the Go binaries, `-X importtime` of the plugin, a per-phase
timeline of the plugin process, the agent-side time per request, and a cProfile of the
agent's request handling.

Safety: everything happens in namespaces named `pn-bench-<token>-*` (lab.Sandbox),
processes are recorded and stopped by PID, and all is torn down in a `finally`, also on
Ctrl-C or SIGTERM. The root network namespace is never changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import percentile

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

PREFIX = "pn-bench-"
REFERENCE_DIR = "/usr/lib/cni"
OPS = ("ADD", "CHECK", "DEL")
CNI_VERSION = "1.0.0"
IFNAME = "eth0"
PLUGIN_TIMEOUT = 60.0
TARGET = 1.0  # podnet/reference ADD p50 ratio to stay under
BRIDGES = ("pnbpod0", "pnbref0", "pnbinp0")  # podnet (agent), reference, podnet (no agent)


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------
def podnet_config(name: str, bridge: str, subnet: str, data_dir: str, socket_path: str) -> dict:
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "type": "podnet",
        "bridge": bridge,
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "agentSocket": socket_path,
        "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir},
    }


def reference_config(name: str, bridge: str, subnet: str, data_dir: str) -> dict:
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": False,  # the reference masquerades with iptables: keep both without
        "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir},
    }


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------
def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.5), 3),
        "p90": round(percentile(values, 0.9), 3),
        "mean": round(sum(values) / len(values), 3) if values else float("nan"),
        "min": round(min(values), 3) if values else float("nan"),
        "max": round(max(values), 3) if values else float("nan"),
    }


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Inner side: runs inside the host namespace (started with `ip netns exec HOST`)
# --------------------------------------------------------------------------------------
class BenchError(RuntimeError):
    pass


def guard_namespace(host_ns_path: str) -> None:
    """Refuse to spawn a single plugin unless we really are in the bench's namespace."""
    mine = os.stat("/proc/self/ns/net")
    host = os.stat(host_ns_path)
    if (mine.st_dev, mine.st_ino) != (host.st_dev, host.st_ino):
        raise BenchError(f"not inside {host_ns_path}: refusing to run plugins")
    try:
        init = os.stat("/proc/1/ns/net")
    except OSError:
        return
    if (init.st_dev, init.st_ino) == (mine.st_dev, mine.st_ino):
        raise BenchError("inside the root network namespace: refusing to run plugins")


def plugin_env(command: str, cid: str, netns: str, cni_path: str) -> dict:
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": IFNAME,
        "CNI_PATH": cni_path,
    }


def timed_call(
    argv: list[str], env: dict, data: bytes
) -> tuple[float, int, float, subprocess.CompletedProcess]:
    """(ms, start_ns, end_ns, proc): from just before the spawn to the process exit."""
    t0 = time.perf_counter_ns()
    proc = subprocess.run(
        argv, input=data, env=env, capture_output=True, timeout=PLUGIN_TIMEOUT, check=False
    )
    t1 = time.perf_counter_ns()
    return (t1 - t0) / 1e6, t0, t1, proc


def cni_call(
    system: dict,
    command: str,
    cid: str,
    netns: str,
    prev: dict | None,
    argv: list[str] | None = None,
):
    conf = dict(system["config"])
    if prev is not None:
        conf["prevResult"] = prev
    data = json.dumps(conf).encode()
    env = plugin_env(command, cid, netns, system["cni_path"])
    ms, t0, t1, proc = timed_call(argv or [system["binary"]], env, data)
    if proc.returncode != 0:
        raise BenchError(
            f"{system['label']} {command} {cid} failed (rc {proc.returncode}): "
            f"{proc.stdout.decode(errors='replace').strip()[:600]} {proc.stderr.decode(errors='replace').strip()[-600:]}"
        )
    out = proc.stdout.decode().strip()
    return ms, (json.loads(out) if out else None), proc, t0, t1


def rotate(items: list, i: int) -> list:
    k = i % len(items)
    return items[k:] + items[:k]


def measure(spec: dict) -> dict:
    guard_namespace(spec["host_ns_path"])
    systems = spec["systems"]
    samples: dict[str, dict[str, list[float]]] = {s["key"]: {op: [] for op in OPS} for s in systems}

    # Warm-up: full cycles on their own namespaces, interleaved, not counted.
    for w in range(spec["warmup"]):
        for s in rotate(systems, w):
            cid, ns = f"warm-{s['key']}-{w}", s["warm_netns"][w]
            _, res, *_ = cni_call(s, "ADD", cid, ns, None)
            cni_call(s, "CHECK", cid, ns, res)
            cni_call(s, "DEL", cid, ns, res)
    log(f"warm-up done ({spec['warmup']} cycles per system)")

    results: dict[str, list] = {s["key"]: [None] * spec["n"] for s in systems}
    for op in OPS:
        started = time.monotonic()
        for i in range(spec["n"]):
            for s in rotate(systems, i):
                cid, ns = f"bench-{s['key']}-{i}", s["netns"][i]
                prev = results[s["key"]][i] if op != "ADD" else None
                ms, res, *_ = cni_call(s, op, cid, ns, prev)
                if op == "ADD":
                    results[s["key"]][i] = res
                samples[s["key"]][op].append(ms)
        log(f"{op}: {spec['n']} x {len(systems)} calls in {time.monotonic() - started:.1f}s")
    return {"samples": samples, "example_result": {k: v[0] for k, v in results.items()}}


# ---- profiling (inner side) ----------------------------------------------------------
PHASE_WRAPPER = """\\
import time
_T0 = time.perf_counter_ns()
import posix
import sys
sys.path.insert(0, {src!r})
from podnet.cni import plugin, wire
_T1 = time.perf_counter_ns()
_M = {{}}


def _wrap(name, fn):
    def timed(*a, **k):
        s = time.perf_counter_ns()
        _M.setdefault(name + "_start", s)
        try:
            return fn(*a, **k)
        except BaseException:
            _M[name + "_raised"] = 1
            raise
        finally:
            e = time.perf_counter_ns()
            _M[name] = _M.get(name, 0) + e - s
            _M[name + "_end"] = e
    return timed


plugin._connect = _wrap("connect", plugin._connect)
wire.send = _wrap("send", wire.send)
wire.recv_reply = _wrap("recv", wire.recv_reply)
plugin.forward = _wrap("forward", plugin.forward)
_rc = plugin.main({fallback!r})
sys.stdout.flush()
_M["t0"], _M["t1"], _M["t2"] = _T0, _T1, time.perf_counter_ns()
# As exec_main: posix._exit, no teardown. No json import: the marks are ints.
_line = "PNBENCH {{" + ",".join('"%s":%d' % kv for kv in _M.items()) + "}}\\n"
posix.write(2, _line.encode())
posix._exit(_rc)
"""


def agent_control(socket_path: str, message: dict) -> dict:
    """A control op for the agent shim, framed as the plugin frames its requests."""
    import socket

    from podnet.cni import wire

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(socket_path)
        wire.send(sock, wire.pack_request(json.dumps(message).encode()))
        code, payload = wire.recv_reply(sock)
    try:
        reply = json.loads(payload)
    except ValueError:
        reply = payload.decode(errors="replace")
    if code != 0 or not isinstance(reply, dict):
        raise BenchError(f"agent control {message} failed (code {code}): {reply}")
    return reply


def phase_marks(stderr: str, what: str) -> dict:
    """The PHASE_WRAPPER's marks; refuse a run that did not go through the agent."""
    line = next((ln for ln in stderr.splitlines() if ln.startswith("PNBENCH ")), None)
    if line is None:
        raise BenchError(f"phase wrapper ({what}) printed no marks: {stderr[-600:]}")
    marks = json.loads(line[len("PNBENCH ") :])
    needed = (
        "t0",
        "t1",
        "t2",
        "connect",
        "connect_start",
        "connect_end",
        "recv_end",
        "forward_end",
    )
    if any(k.endswith("_raised") for k in marks) or not all(k in marks for k in needed):
        raise BenchError(f"plugin ({what}) did not complete a round trip to the agent: {marks}")
    return marks


def parse_importtime(stderr: str) -> dict:
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, raw_name = line.split(":", 1)[1].split("|")
        name = raw_name.strip()
        depth = (len(raw_name) - len(raw_name.lstrip(" ")) - 1) // 2
        rows.append(
            {"module": name, "self_us": int(self_us), "cum_us": int(cum_us), "depth": depth}
        )
    return {
        "total_self_ms": round(sum(r["self_us"] for r in rows) / 1000, 3),
        "count": len(rows),
        "top_level": sorted((r for r in rows if r["depth"] == 0), key=lambda r: -r["cum_us"])[:12],
        "top_self": sorted(rows, key=lambda r: -r["self_us"])[:12],
    }


def profile_inner(spec: dict) -> dict:
    guard_namespace(spec["host_ns_path"])
    systems = {s["key"]: s for s in spec["systems"]}
    pod, ref = systems["podnet"], systems["reference"]
    m = spec["n"]
    out: dict = {}

    # 1. What a bare exec costs: the floor under every plugin call.
    base_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "VERSION"}
    # The thin plugin answers nothing itself: VERSION goes to the agent too. Point it at
    # the bench's agent (never the host's default socket, and not the slow fallback).
    pod_env = {**base_env, "PODNET_AGENT_SOCKET": pod["socket"]}
    floors = {
        "/bin/true": (["/bin/true"], base_env),
        "python3 -IS -c pass": (["/usr/bin/python3", "-IS", "-c", "pass"], base_env),
        "python3 -I -c pass (with site)": (["/usr/bin/python3", "-I", "-c", "pass"], base_env),
        "podnet VERSION (interpreter + plugin imports + agent round trip)": (
            [pod["binary"]],
            pod_env,
        ),
        "bridge VERSION (Go start-up)": ([ref["binary"]], base_env),
        "host-local VERSION (Go start-up)": ([os.path.join(REFERENCE_DIR, "host-local")], base_env),
    }
    out["floors"] = {}
    for label, (argv, env) in floors.items():
        for _ in range(3):
            proc = timed_call(argv, env, b"")[3]
            if proc.returncode != 0:  # an error path is no floor
                raise BenchError(f"{label} failed (rc {proc.returncode}): {proc.stdout[-600:]!r}")
        out["floors"][label] = summary([timed_call(argv, env, b"")[0] for _ in range(m * 2)])
    log("exec floors measured")

    # 2. -X importtime of a real ADD through the agent.
    netns = iter(pod["netns"])
    imp_runs = []
    for i in range(5):
        ns = next(netns)
        argv = ["/usr/bin/python3", "-IS", "-X", "importtime", pod["binary"]]
        _, res, proc, *_ = cni_call(pod, "ADD", f"imp-{i}", ns, None, argv=argv)
        imp_runs.append(parse_importtime(proc.stderr.decode(errors="replace")))
        cni_call(pod, "DEL", f"imp-{i}", ns, res)
    out["importtime"] = imp_runs[-1]
    out["importtime"]["total_self_ms_runs"] = [r["total_self_ms"] for r in imp_runs]
    log("importtime measured")

    # 3. Timeline of the plugin process for ADD/CHECK/DEL + agent-side time per request.
    wrapper = spec["phase_wrapper"]
    agent_control(pod["socket"], {"op": "bench", "action": "reset"})
    phases: dict[str, list[dict]] = {op: [] for op in OPS}
    walls: dict[str, list[float]] = {op: [] for op in OPS}
    adds = []
    for i in range(m):
        ns = next(netns)
        adds.append((f"ph-{i}", ns))
    results = {}
    for op in OPS:
        for cid, ns in adds:
            ms, res, proc, t0, t1 = cni_call(
                pod, op, cid, ns, results.get(cid), argv=["/usr/bin/python3", "-IS", wrapper]
            )
            if op == "ADD":
                results[cid] = res
            marks = phase_marks(proc.stderr.decode(errors="replace"), f"{op} {cid}")
            phases[op].append(
                {
                    "exec + interpreter start-up": (marks["t0"] - t0) / 1e6,
                    "podnet imports": (marks["t1"] - marks["t0"]) / 1e6,
                    "read stdin + find socket + open netns fds": (
                        marks["connect_start"] - marks["t1"]
                    )
                    / 1e6,
                    "connect": marks["connect"] / 1e6,
                    # One row: on a small machine the agent often preempts the plugin
                    # inside sendmsg, so the split between send and recv is arbitrary.
                    # It also holds the framing of the request (a few microseconds).
                    "agent round trip (send + wait for reply)": (
                        marks["recv_end"] - marks["connect_end"]
                    )
                    / 1e6,
                    "close socket + fds": (marks["forward_end"] - marks["recv_end"]) / 1e6,
                    "print result": (marks["t2"] - marks["forward_end"]) / 1e6,
                    "interpreter exit + reap": (t1 - marks["t2"]) / 1e6,
                }
            )
            walls[op].append(ms)
    agent_stats = agent_control(pod["socket"], {"op": "bench", "action": "stats"})
    out["timeline"] = {
        op: {
            "wall": summary(walls[op]),
            "phases": {k: summary([p[k] for p in phases[op]]) for k in phases[op][0]},
            "agent": {k: summary(v) for k, v in agent_stats.get(op, {}).items()},
        }
        for op in OPS
    }
    log("plugin timeline + agent-side time measured")

    # 4. cProfile of the agent's request handling (a separate pass: cProfile slows it).
    agent_control(pod["socket"], {"op": "bench", "action": "cprofile", "on": True})
    results = {}
    cp = [(f"cp-{i}", next(netns)) for i in range(m)]
    for op in OPS:
        for cid, ns in cp:
            _, res, *_ = cni_call(pod, op, cid, ns, results.get(cid))
            if op == "ADD":
                results[cid] = res
    out["cprofile_files"] = agent_control(
        pod["socket"], {"op": "bench", "action": "dump", "dir": spec["work"]}
    )
    log("agent cProfile collected")

    # 5. The reference: bridge ADD wall, and host-local alone (its delegate).
    ref_walls: dict[str, list[float]] = {op: [] for op in OPS}
    hl = {**ref, "binary": os.path.join(REFERENCE_DIR, "host-local"), "label": "host-local"}
    hl_walls: dict[str, list[float]] = {"ADD": [], "DEL": []}
    results = {}
    refs = [(f"rf-{i}", ref["netns"][i]) for i in range(m)]
    for op in OPS:
        for cid, ns in refs:
            ms, res, *_ = cni_call(ref, op, cid, ns, results.get(cid))
            if op == "ADD":
                results[cid] = res
            ref_walls[op].append(ms)
    for op in ("ADD", "DEL"):
        for i in range(m):
            ms, *_ = cni_call(hl, op, f"hl-{i}", ref["netns"][i], None)
            hl_walls[op].append(ms)
    out["reference"] = {op: summary(v) for op, v in ref_walls.items()}
    out["host_local_alone"] = {op: summary(v) for op, v in hl_walls.items()}
    log("reference measured")
    return out


def run_inner(spec_path: str, profile: bool) -> int:
    # Stopped by the outer process (SIGTERM): unwind, so subprocess.run kills and reaps
    # the plugin it is waiting for instead of leaving it orphaned.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = profile_inner(spec) if profile else measure(spec)
    except KeyboardInterrupt:
        return 130
    except BenchError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------
# Agent shim (profiling only): the real agent with timing / cProfile around dispatch
# --------------------------------------------------------------------------------------
def run_agent_shim(socket_path: str, store_path: str) -> int:
    import cProfile
    import pstats
    import threading

    from podnet.agent import daemon

    lock = threading.Lock()
    state: dict = {"times": {}, "cprofile": False, "stats": {}}
    orig_dispatch = daemon.Agent.dispatch
    orig_handle = daemon._Handler.handle
    orig_process = daemon.AgentServer.process_request
    accepted: dict[int, int] = {}
    local = threading.local()

    def record(command: str, key: str, ns: int) -> None:
        with lock:
            state["times"].setdefault(command, {}).setdefault(key, []).append(ns / 1e6)

    def control(message: dict) -> dict:
        action = message.get("action")
        with lock:
            if action == "reset":
                state["times"] = {}
                return {}
            if action == "stats":
                return state["times"]
            if action == "cprofile":
                state["cprofile"] = bool(message.get("on"))
                return {}
            if action == "dump":
                files = {}
                for command, stats in state["stats"].items():
                    path = os.path.join(message["dir"], f"agent-{command}.pstats")
                    stats.dump_stats(path)
                    files[command] = path
                return files
        raise ValueError(f"unknown bench action {action!r}")

    def dispatch(self, meta, body, fds, uid):
        try:
            message = json.loads(meta)
        except ValueError:
            message = None  # the real dispatch answers it
        if not isinstance(message, dict):
            message = {}
        if message.get("op") == "bench":
            if uid != 0:
                return 1, json.dumps({"error": "bench control is for root only"}).encode()
            try:
                return 0, json.dumps(control(message)).encode()
            except (KeyError, TypeError, ValueError, OSError) as exc:
                return 1, json.dumps({"error": str(exc)}).encode()
        env = message.get("env") if message.get("op") == "cni" else None
        command = str(env.get("CNI_COMMAND", "?")) if isinstance(env, dict) else "?"
        local.command = command
        prof = cProfile.Profile() if state["cprofile"] else None
        t0 = time.perf_counter_ns()
        if prof:
            prof.enable()
        try:
            return orig_dispatch(self, meta, body, fds, uid)
        finally:
            if prof:
                prof.disable()
                with lock:
                    if command in state["stats"]:
                        state["stats"][command].add(prof)
                    else:
                        state["stats"][command] = pstats.Stats(prof)
            elif command != "?":
                record(command, "dispatch (service work)", time.perf_counter_ns() - t0)

    def handle(self):
        t0 = time.perf_counter_ns()
        local.command = "?"
        try:
            orig_handle(self)
        finally:
            t1 = time.perf_counter_ns()
            queued = accepted.pop(id(self.request), None)
            if local.command != "?" and not state["cprofile"]:
                record(local.command, "handler (recv + dispatch + send)", t1 - t0)
                if queued is not None:
                    record(local.command, "accept -> worker thread running", t0 - queued)

    def process_request(self, request, client_address):
        accepted[id(request)] = time.perf_counter_ns()
        return orig_process(self, request, client_address)

    daemon.Agent.dispatch = dispatch
    daemon._Handler.handle = handle
    daemon.AgentServer.process_request = process_request
    return daemon.run_agent(socket_path, store_path)


# --------------------------------------------------------------------------------------
# Outer side: the sandbox, the agent, the inner measuring process, the report
# --------------------------------------------------------------------------------------
def _raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


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
        self.problems: list[str] = []

    def start(self, with_shim: bool = False) -> None:
        from podnet.install import install_cni
        from podnet.lab.sandbox import wait_for_path

        self.bin_dir = self.work / "bin"
        install_cni(str(self.bin_dir))
        self.socket = str(self.work / "agent.sock")
        self.host = self.sandbox.netns("host")
        argv = (
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--agent-shim",
                self.socket,
                str(self.work / "agent.db"),
            ]
            if with_shim
            else [
                sys.executable,
                "-m",
                "podnet.cli",
                "agent",
                "--socket",
                self.socket,
                "--store",
                str(self.work / "agent.db"),
            ]
        )
        agent_log = self.sandbox.keep_open(open(self.work / "agent.log", "w"))  # noqa: SIM115
        self.agent = self.sandbox.spawn(self.host, argv, stdout=agent_log, stderr=subprocess.STDOUT)
        wait_for_path(self.socket, timeout=30, proc=self.agent)

    def namespaces(self, role: str, count: int) -> list[str]:
        return [self.sandbox.netns(f"{role}{i}") for i in range(count)]

    def run_inner(self, spec: dict, profile: bool, timeout: float) -> dict:
        spec_path = self.work / ("profile.json" if profile else "spec.json")
        spec_path.write_text(json.dumps(spec))
        argv = [sys.executable, str(Path(__file__).resolve()), "--inner", str(spec_path)]
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
    def check_live_leftovers(
        self,
        containers: list[str],
        podnet_nets: list[tuple[str, str]],
        hostlocal_nets: list[tuple[str, str]],
    ) -> list[str]:
        """After the final DELs, before teardown: no veth, address or record left."""
        from podnet.ipam.service import IpamService
        from podnet.lab.sandbox import ip
        from podnet.store import open_store

        problems = []
        veths = json.loads(ip("-n", self.host, "-j", "link", "show", "type", "veth").stdout or "[]")
        if veths:
            problems.append(f"host namespace still has veths: {[v['ifname'] for v in veths]}")
        for ns in containers:
            links = json.loads(ip("-n", ns, "-j", "link", "show").stdout or "[]")
            extra = [link["ifname"] for link in links if link["ifname"] != "lo"]
            if extra:
                problems.append(f"{ns} still has {extra}")
        for name, data_dir in podnet_nets:
            db = os.path.join(data_dir, "podnet.db")
            if not os.path.exists(db):
                continue
            store = open_store(db)
            try:
                held = IpamService(store).reservations(name)
                endpoints = store.list("endpoints/")
            finally:
                store.close()
            if held:
                problems.append(f"podnet network {name} still holds {[r.address for r in held]}")
            if endpoints:
                problems.append(f"podnet store still has endpoints {[e.key for e in endpoints]}")
        for name, data_dir in hostlocal_nets:
            net_dir = Path(data_dir) / name
            leaked = (
                [
                    p.name
                    for p in net_dir.glob("*")
                    if p.name != "lock" and not p.name.startswith("last_reserved_ip")
                ]
                if net_dir.exists()
                else []
            )
            if leaked:
                problems.append(f"host-local network {name} still holds {leaked}")
        return problems

    def close(self) -> list[str]:
        """Tear down; return what is still around afterwards (should be nothing)."""
        from podnet.lab.sandbox import ip

        processes = list(self.sandbox.processes)
        token = f"{self.sandbox.prefix}{self.sandbox.token}-"
        self.sandbox.close()
        problems = []
        alive = [p.pid for p in processes if p.poll() is None]
        if alive:
            problems.append(f"processes still running: {alive}")
        left = [
            line.split()[0]
            for line in ip("netns", "list", check=False).stdout.splitlines()
            if line.startswith(token)
        ]
        if left:
            problems.append(f"namespaces still present: {left}")
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


def build_systems(lab: Lab, n: int, warmup: int, fallback: bool) -> list[dict]:
    cni_path = f"{lab.bin_dir}:{REFERENCE_DIR}"
    data = lab.work / "data"
    systems = [
        {
            "key": "podnet",
            "label": "podnet (agent)",
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
        short = {"podnet": "p", "reference": "r", "inprocess": "i"}[s["key"]]
        s["netns"] = [lab.sandbox.path(ns) for ns in lab.namespaces(f"{short}", n)]
        s["warm_netns"] = [lab.sandbox.path(ns) for ns in lab.namespaces(f"{short}w", warmup)]
    return systems


def bench(args: argparse.Namespace) -> dict:
    lab = Lab()
    outcome: dict = {}
    cleanup: list[str] = []
    try:
        t0 = time.monotonic()
        lab.start(with_shim=False)
        systems = build_systems(lab, args.n, args.warmup, not args.no_fallback)
        log(
            f"{len(lab.sandbox.namespaces)} namespaces ready in {time.monotonic() - t0:.1f}s; measuring"
        )
        spec = {
            "host_ns_path": lab.sandbox.path(lab.host),
            "n": args.n,
            "warmup": args.warmup,
            "systems": systems,
        }
        data = lab.run_inner(spec, profile=False, timeout=900)
        containers = [Path(p).name for s in systems for p in s["netns"] + s["warm_netns"]]
        cleanup = lab.check_live_leftovers(
            containers,
            [
                (s["config"]["name"], s["config"]["ipam"]["dataDir"])
                for s in systems
                if s["key"] != "reference"
            ],
            [
                (s["config"]["name"], s["config"]["ipam"]["dataDir"])
                for s in systems
                if s["key"] == "reference"
            ],
        )
        outcome = {
            "n": args.n,
            "warmup": args.warmup,
            "cniVersion": CNI_VERSION,
            "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
            "systems": {
                s["key"]: {
                    "label": s["label"],
                    "ops": {op: summary(data["samples"][s["key"]][op]) for op in OPS},
                    "samples_ms": {
                        op: [round(v, 3) for v in data["samples"][s["key"]][op]] for op in OPS
                    },
                }
                for s in systems
            },
        }
        outcome["ratios"] = {
            op: {
                q: round(
                    outcome["systems"]["podnet"]["ops"][op][q]
                    / outcome["systems"]["reference"]["ops"][op][q],
                    3,
                )
                for q in ("p50", "p90")
            }
            for op in OPS
        }
    finally:
        previous = signal.signal(
            signal.SIGINT, signal.SIG_IGN
        )  # a second Ctrl-C must not skip teardown
        try:
            cleanup += lab.close()
        finally:
            signal.signal(signal.SIGINT, previous)
    outcome["cleanup"] = {"ok": not cleanup, "problems": cleanup}
    return outcome


def profile(args: argparse.Namespace) -> dict:
    lab = Lab()
    outcome: dict = {}
    cleanup: list[str] = []
    try:
        lab.start(with_shim=True)
        m = args.n
        systems = build_systems(lab, 0, 0, fallback=False)
        systems[0]["netns"] = [lab.sandbox.path(ns) for ns in lab.namespaces("p", 5 + 2 * m)]
        systems[1]["netns"] = [lab.sandbox.path(ns) for ns in lab.namespaces("r", m)]
        from podnet.install import fallback_paths, source_root

        wrapper = lab.work / "phase_wrapper.py"
        wrapper.write_text(PHASE_WRAPPER.format(src=source_root(), fallback=fallback_paths()))
        spec = {
            "host_ns_path": lab.sandbox.path(lab.host),
            "n": m,
            "systems": systems,
            "phase_wrapper": str(wrapper),
            "work": str(lab.work),
        }
        outcome = lab.run_inner(spec, profile=True, timeout=900)
        files = outcome.pop("cprofile_files")
        outcome["cprofile"] = {command: cprofile_top(path, 22) for command, path in files.items()}
        if args.profile_out:
            os.makedirs(args.profile_out, exist_ok=True)
            for path in files.values():
                shutil.copy(path, args.profile_out)
            log(f"agent pstats copied to {args.profile_out} (python -m pstats FILE)")
        cleanup = lab.check_live_leftovers(
            [Path(p).name for s in systems for p in s["netns"]],
            [(systems[0]["config"]["name"], systems[0]["config"]["ipam"]["dataDir"])],
            [(systems[1]["config"]["name"], systems[1]["config"]["ipam"]["dataDir"])],
        )
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            cleanup += lab.close()
        finally:
            signal.signal(signal.SIGINT, previous)
    outcome["cleanup"] = {"ok": not cleanup, "problems": cleanup}
    return outcome


def cprofile_top(path: str, limit: int) -> dict:
    import pstats

    stats = pstats.Stats(path)
    calls = stats.total_calls  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.replace(str(ROOT / "src") + "/", "")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        if "/lib/python3" in short:
            short = "stdlib/" + short.split("/lib/python3", 1)[1].split("/", 1)[1]
        rows.append(
            {
                "func": f"{short}:{line}({func})",
                "calls": nc,
                "tottime_ms": tt * 1000,
                "cumtime_ms": ct * 1000,
            }
        )
    total = stats.total_tt * 1000  # type: ignore[attr-defined]
    return {
        "total_ms": round(total, 2),
        "function_calls": calls,
        "podnet_by_cumtime": sorted(
            (r for r in rows if r["func"].startswith("podnet/")), key=lambda r: -r["cumtime_ms"]
        )[:limit],
        "by_cumtime": sorted(rows, key=lambda r: -r["cumtime_ms"])[:limit],
        "by_tottime": sorted(rows, key=lambda r: -r["tottime_ms"])[:limit],
    }


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def console():
    from rich.console import Console

    # Not a terminal (make, CI, a pipe): do not squeeze the tables into 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=140)


def render_bench(outcome: dict) -> None:
    from rich.table import Table

    con = console()
    systems = outcome["systems"]
    table = Table(
        title=f"CNI latency, ms (n={outcome['n']} namespaces per system, {outcome['warmup']} warm-up, "
        f"cniVersion {outcome['cniVersion']}, {outcome['machine']['cpus']} CPUs)"
    )
    table.add_column("op")
    for key in ("podnet", "reference"):
        table.add_column(f"{systems[key]['label']}\np50", justify="right")
        table.add_column("p90", justify="right")
    table.add_column("podnet/ref\np50", justify="right")
    table.add_column("p90", justify="right")
    if "inprocess" in systems:
        table.add_column(f"{systems['inprocess']['label']}\np50", justify="right", style="dim")
        table.add_column("p90", justify="right", style="dim")
    for op in OPS:
        row = [op]
        for key in ("podnet", "reference"):
            row += [
                f"{systems[key]['ops'][op]['p50']:.1f}",
                f"{systems[key]['ops'][op]['p90']:.1f}",
            ]
        for q in ("p50", "p90"):
            r = outcome["ratios"][op][q]
            row.append(f"[{'green' if r <= TARGET else 'red'}]{r:.2f}x[/]")
        if "inprocess" in systems:
            row += [
                f"{systems['inprocess']['ops'][op]['p50']:.1f}",
                f"{systems['inprocess']['ops'][op]['p90']:.1f}",
            ]
        table.add_row(*row)
    con.print(table)
    clean = outcome["cleanup"]
    con.print(
        "cleanup: everything DELeted and torn down, nothing left"
        if clean["ok"]
        else f"[red]cleanup problems:[/] {clean['problems']}"
    )
    print(f"ADD p50 ratio: {outcome['ratios']['ADD']['p50']:.2f}x (target <= {TARGET:.1f}x)")


def render_profile(outcome: dict) -> None:
    from rich.table import Table

    con = console()
    t = Table(title="exec floors (spawn -> exit), ms")
    for col in ("what", "p50", "p90"):
        t.add_column(col, justify="right" if col != "what" else "left")
    for label, s in outcome["floors"].items():
        t.add_row(label, f"{s['p50']:.2f}", f"{s['p90']:.2f}")
    con.print(t)

    imp = outcome["importtime"]
    t = Table(
        title=f"python -X importtime of the podnet plugin during ADD: {imp['count']} modules, "
        f"sum of self {imp['total_self_ms']:.1f} ms (runs: {imp['total_self_ms_runs']})"
    )
    for col in ("top-level import", "cumulative ms", "self ms"):
        t.add_column(col, justify="right" if col != "top-level import" else "left")
    for r in imp["top_level"]:
        t.add_row(r["module"], f"{r['cum_us'] / 1000:.2f}", f"{r['self_us'] / 1000:.2f}")
    con.print(t)
    t = Table(title="the same imports by their own (self) time")
    for col in ("module", "depth", "self ms", "cumulative ms"):
        t.add_column(col, justify="right" if col != "module" else "left")
    for r in imp["top_self"]:
        t.add_row(
            r["module"], str(r["depth"]), f"{r['self_us'] / 1000:.2f}", f"{r['cum_us'] / 1000:.2f}"
        )
    con.print(t)

    for op in OPS:
        tl = outcome["timeline"][op]
        t = Table(
            title=f"podnet {op} through the agent: plugin process timeline (wall p50 {tl['wall']['p50']:.2f} ms, "
            f"p90 {tl['wall']['p90']:.2f} ms)"
        )
        for col in ("phase", "p50 ms", "p90 ms", "share of p50 wall"):
            t.add_column(col, justify="right" if col != "phase" else "left")
        for label, s in tl["phases"].items():
            t.add_row(
                label,
                f"{s['p50']:.2f}",
                f"{s['p90']:.2f}",
                f"{100 * s['p50'] / tl['wall']['p50']:.0f}%",
            )
        for label, s in tl["agent"].items():
            t.add_row(
                f"[cyan]agent: {label}[/]",
                f"{s['p50']:.2f}",
                f"{s['p90']:.2f}",
                f"{100 * s['p50'] / tl['wall']['p50']:.0f}%",
            )
        con.print(t)

    t = Table(title="reference, ms")
    for col in ("what", "p50", "p90"):
        t.add_column(col, justify="right" if col != "what" else "left")
    for op, s in outcome["reference"].items():
        t.add_row(f"bridge+host-local {op}", f"{s['p50']:.2f}", f"{s['p90']:.2f}")
    for op, s in outcome["host_local_alone"].items():
        t.add_row(f"host-local alone {op}", f"{s['p50']:.2f}", f"{s['p90']:.2f}")
    con.print(t)

    for command, prof in outcome["cprofile"].items():
        if command not in OPS:
            continue
        t = Table(
            title=f"agent cProfile, {command}: {prof['total_ms']:.0f} ms profiled in total "
            f"(all requests, with profiler overhead), {prof['function_calls']} calls"
        )
        for col in ("function", "calls", "cumtime ms", "tottime ms"):
            t.add_column(col, justify="right" if col != "function" else "left")
        for r in prof["by_cumtime"][:16]:
            t.add_row(
                r["func"][-90:], str(r["calls"]), f"{r['cumtime_ms']:.1f}", f"{r['tottime_ms']:.1f}"
            )
        con.print(t)
        t = Table(title=f"agent cProfile, {command}: by own time")
        for col in ("function", "calls", "tottime ms", "cumtime ms"):
            t.add_column(col, justify="right" if col != "function" else "left")
        for r in prof["by_tottime"][:12]:
            t.add_row(
                r["func"][-90:], str(r["calls"]), f"{r['tottime_ms']:.1f}", f"{r['cumtime_ms']:.1f}"
            )
        con.print(t)
    clean = outcome["cleanup"]
    con.print(
        "cleanup: nothing left" if clean["ok"] else f"[red]cleanup problems:[/] {clean['problems']}"
    )


# --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="container namespaces per system (default 50; 20 with --profile)",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="uncounted ADD/CHECK/DEL cycles per system"
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    parser.add_argument(
        "--no-fallback", action="store_true", help="skip the podnet in-process (no agent) row"
    )
    parser.add_argument("--profile", action="store_true", help="explain where podnet's time goes")
    parser.add_argument(
        "--profile-out", metavar="DIR", help="with --profile: keep the agent's pstats files here"
    )
    parser.add_argument("--inner", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument(
        "--agent-shim", nargs=2, metavar=("SOCKET", "STORE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.agent_shim:
        return run_agent_shim(*args.agent_shim)
    if args.inner:
        return run_inner(args.inner, args.profile)

    problem = prerequisites()
    if problem:
        print(f"cni_latency: {problem}", file=sys.stderr)
        return 2
    if args.n is None:
        args.n = 20 if args.profile else 50
    if args.n < 1 or args.warmup < 0:
        parser.error("--n must be >= 1 and --warmup >= 0")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)  # also when started with SIGINT ignored
    started = time.monotonic()
    try:
        outcome = profile(args) if args.profile else bench(args)
    except KeyboardInterrupt:
        print("cni_latency: interrupted; everything was torn down", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"cni_latency: {exc}", file=sys.stderr)
        return 1
    outcome["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(outcome, indent=2))
    elif args.profile:
        render_profile(outcome)
    else:
        render_bench(outcome)
    if not args.json:
        log(f"done in {outcome['elapsed_s']}s")
    return 0 if outcome["cleanup"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
