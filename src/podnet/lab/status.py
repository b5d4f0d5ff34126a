"""`lab status`: the state file, as the running lab sees it.

Read-only: each recorded process's liveness (pid and start time, from procs.json) and
each agent's own answer on its socket, so a dead agent and a wedged one look different;
each node's refused peer leases (name, block, reason) are lifted out of that answer.
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
        row["refused"] = refused_peers(row["agent"])
        row["fastpath"] = fastpath_of(row["agent"])
        nodes.append(row)
    pods = []
    for key, info in data.get("pods", {}).items():
        entry = procs.get(info.get("echo_proc") or f"echo/{key}", {})
        pods.append({"name": key, **info, "echo_alive": process_alive(entry)})
    data["nodes"], data["pods"] = nodes, pods
    dns = data.get("cluster_dns")
    if dns:
        for node, pod in (dns.get("pods") or {}).items():
            socket = next((row.get("socket") for row in nodes if row["name"] == node), None)
            try:
                pod["server"] = call(socket, "clusterdns.status", timeout=3)["state"] if socket else "no agent"
            except (PodnetError, OSError, ValueError, KeyError, TypeError) as exc:
                pod["server"] = f"unknown: {exc}"
    return data


def refused_peers(agent: dict | None) -> list[dict[str, str]]:
    """The peer leases a node's agent refused, from its node.status answer (none when
    it did not answer it); only well-formed rows, every field a string."""
    result = (agent or {}).get("result")
    rows = result.get("refused") if isinstance(result, dict) else None
    if not isinstance(rows, list):
        return []
    fields = ("name", "block", "reason")
    return [{f: row[f] for f in fields} for row in rows
            if isinstance(row, dict) and all(isinstance(row.get(f), str) for f in fields)]


def fastpath_of(agent: dict | None) -> dict[str, object]:
    """A node's fast path (`--fastpath`) from its node.status answer: mode, state, pods
    and blocks it carries, error; {} when the agent did not say."""
    result = (agent or {}).get("result")
    found = result.get("fastpath") if isinstance(result, dict) else None
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if k in ("mode", "state", "pods", "blocks", "inbound", "known_pods", "tunnel", "error")
            and isinstance(v, (str, int)) and not isinstance(v, bool)}


def fastpath_text(found: dict[str, object]) -> str:
    """One cell: "kernel", "ebpf on, 2 pods, 1 blocks", "ebpf off (this node enforces policy)"."""
    if not found:
        return "-"
    if found.get("mode") != "ebpf":
        return str(found.get("mode", "-"))
    text = f"ebpf {found.get('state', '?')}"
    if found.get("state") == "on":
        text += f", {found.get('pods', 0)} pods, {found.get('blocks', 0)} blocks"
        if found.get("inbound") not in (None, "on"):
            text += f", inbound: {found['inbound']}"
        if found.get("tunnel") not in (None, "none"):
            text += f", tunnel {found['tunnel']}"
    if found.get("error"):
        text += f": {found['error']}"
    return text
