"""`lab status`: the state file, as the running lab sees it.

Read-only: each recorded process's liveness (pid and start time, from procs.json) and
each agent's own answer on its socket, so a dead agent and a wedged one look different.
"""

from __future__ import annotations

from podnet.errors import PodnetError
from podnet.lab.state import LabState, process_alive


def status(name: str) -> dict:
    """The state file, each recorded process's liveness, and each agent's answer."""
    from podnet.rpc.client import call

    state = LabState.load(name)
    procs = state.processes()
    data = dict(state.data)
    sup = procs.get("supervisor")
    data["supervisor"] = {**(data.get("supervisor") or {}), "alive": bool(sup and process_alive(sup))}
    nodes = []
    for node, info in data.get("nodes", {}).items():
        entry = procs.get(f"agent/{node}", {})
        row = {"name": node, **info, "agent_alive": process_alive(entry), "agent": None}
        for op in ("node.status", "ping"):
            try:
                row["agent"] = {"op": op, "result": call(info["socket"], op, timeout=3)}
                break
            except (PodnetError, OSError, ValueError) as exc:
                row["agent"] = {"op": op, "error": str(exc)}
        nodes.append(row)
    pods = []
    for key, info in data.get("pods", {}).items():
        entry = procs.get(info.get("echo_proc") or f"echo/{key}", {})
        pods.append({"name": key, **info, "echo_alive": process_alive(entry)})
    data["nodes"], data["pods"] = nodes, pods
    return data
