"""The profile benchmark (`--profile`): where podnet's ADD time goes. Measured from
inside the host namespace: the exec floors, `-X importtime` of the plugin, a per-phase
timeline of the plugin process (PHASE_WRAPPER) with the agent-side time per request,
a cProfile of the agent's request handling (through the agent shim), and the reference
plugins for comparison."""

from __future__ import annotations

import argparse
import json
import os
import shutil

from benchlib import BenchError, log
from cni.calls import OPS, REFERENCE_DIR, cni_call, guard_namespace, summary, timed_call
from cni.lab import ROOT, Lab, build_systems, run_in_lab
from cni.shim import agent_control

# The plugin run through this wrapper reports when each of its phases began and ended
# (one PNBENCH line on stderr), and otherwise behaves as the installed `podnet`.
PHASE_WRAPPER = """\\
import time
_T0 = time.perf_counter_ns()
import posix
import sys
sys.path.insert(0, {src!r})
from podnet.cni import plugin
from podnet.rpc import wire
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


def python_plugin(binary: str) -> str:
    """The Python plugin: `binary` itself, or `podnet-python` beside it when `podnet` is
    the compiled shim (install_cni)."""
    from podnet.install.cni import FALLBACK_NAME, is_shim

    return os.path.join(os.path.dirname(binary), FALLBACK_NAME) if is_shim(binary) else binary


def profile_inner(spec: dict) -> dict:
    """Inner side (in the host namespace): every measurement of the profile."""
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
        "podnet-python VERSION (interpreter + plugin imports + agent round trip)": (
            [python_plugin(pod["binary"])],
            pod_env,
        ),
        "bridge VERSION (Go start-up)": ([ref["binary"]], base_env),
        "host-local VERSION (Go start-up)": ([os.path.join(REFERENCE_DIR, "host-local")], base_env),
    }
    if python_plugin(pod["binary"]) != pod["binary"]:
        floors["podnet shim VERSION (C start-up + agent round trip)"] = ([pod["binary"]], pod_env)
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
        argv = ["/usr/bin/python3", "-IS", "-X", "importtime", python_plugin(pod["binary"])]
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


def profile(args: argparse.Namespace) -> dict:
    """Outer side: the lab with the agent shim, the measuring process, the outcome."""

    def work(lab: Lab) -> tuple[dict, list[dict]]:
        m = args.n
        systems = build_systems(lab, 0, 0, fallback=False)
        systems[0]["netns"] = [lab.sandbox.path(ns) for ns in lab.namespaces("p", 5 + 2 * m)]
        systems[1]["netns"] = [lab.sandbox.path(ns) for ns in lab.namespaces("r", m)]
        from podnet.install.cni import fallback_paths, source_root

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
        return outcome, systems

    return run_in_lab(True, work)


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
