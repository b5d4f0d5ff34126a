"""What the dashboard page draws, joined from plain dicts (pure: testable without a cluster).

Inputs: the cluster status (observe/status.py `summarize(...).to_json()`: nodes with
their agent's answer, blocks, store, degraded sentences), the lab's state file (racks,
routers, the outside world; None on real machines), the store's pods and services
(data.py reads them). Output: one JSON-able dict, the page's only model:

    {"title", "store", "counts", "degraded", "racks": [{"rack", "label", "nodes"}],
     "routers": [{"name", "racks"}], "outside": {...} | None,
     "nodes": [{"name", "rack", "health", "reasons", ...}], "links": [{"a", "b", "state", "health"}],
     "pods": [{"ref", "namespace", "name", "node", "ips", "labels", "ports", "ready", "health"}],
     "services": [{"ref", "type", "cluster_ip", "ports": [{..., "endpoints": [...]}]}]}

Health is one of ok, warn, down, unknown (the page's colours): a node is down when its
agent does not answer, warn when a peer is refused or not yet ok or it has no lease,
unknown when it is not reachable from here (real machines: only the local agent is
asked). A fabric link joins two nodes that are each other's peers; its health is the
worse of both sides' view.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from podnet.observe.status import NOT_REACHABLE

HEALTH_ORDER = ("ok", "unknown", "warn", "down")
# fields that change on every read without anything having changed (lease clocks, timings)
VOLATILE = frozenset({"lease_age_s", "lease_expires_s", "latency_ms", "time"})


def build(status: Mapping[str, Any], agents: Mapping[str, Mapping[str, Any]], lab: Mapping[str, Any] | None,
          pods: Sequence[Mapping[str, Any]], services: Sequence[Mapping[str, Any]], *, title: str,
          now: float) -> dict[str, Any]:
    """The page's model (shape in the module notes); `agents` is observe/status.py
    `ask_agents`'s answer (the fabric links come from each node's peers)."""
    lab_nodes: Mapping[str, Any] = (lab or {}).get("nodes") or {}
    degraded = [str(reason) for reason in status.get("degraded") or ()]
    nodes = [_node(row, lab_nodes.get(row["name"]) or {}, degraded) for row in status.get("nodes") or ()]
    known = {n["name"] for n in nodes}
    nodes += [_node({"name": name, "lease": False, "agent": "not in the store's leases"}, info, degraded)
              for name, info in sorted(lab_nodes.items()) if name not in known]
    health = {n["name"]: n["health"] for n in nodes}
    pod_rows = [_pod(pod, health.get(str(pod.get("node")), "unknown")) for pod in pods]
    return {"title": title, "time": now, "store": dict(status.get("store") or {}),
            "counts": dict(status.get("counts") or {}), "degraded": degraded,
            **_racks(nodes, lab), "nodes": nodes, "links": links(agents),
            "pods": sorted(pod_rows, key=lambda p: (p["node"], p["ref"])), "services": list(services)}


def node_health(row: Mapping[str, Any]) -> str:
    agent = str(row.get("agent") or "")
    if agent == NOT_REACHABLE:
        return "unknown"
    if agent != "answers":
        return "down"
    if row.get("refused") or not row.get("lease") or row.get("peers_ok", 0) != row.get("peers", 0):
        return "warn"
    return "ok"


def _node(row: Mapping[str, Any], lab_info: Mapping[str, Any], degraded: Iterable[str]) -> dict[str, Any]:
    name = str(row["name"])
    prefix = f"node {name}:"
    out = {**row, "rack": lab_info.get("rack", row.get("rack")), "health": node_health(row),
           "reasons": [r[len(prefix):].strip() for r in degraded if r.startswith(prefix)]}
    if out["reasons"] and out["health"] == "ok":
        out["health"] = "warn"
    return out


def links(agents: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One link per pair of nodes that name each other (or one side) as a peer, from
    each answering agent's `node.status` peers."""
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for name, answers in agents.items():
        status = answers.get("node.status")
        peers = status.get("peers") if isinstance(status, Mapping) else None
        for peer in peers if isinstance(peers, list) else ():
            if not isinstance(peer, Mapping) or not peer.get("name"):
                continue
            a, b = sorted((str(name), str(peer["name"])))
            seen.setdefault((a, b), {})[str(name)] = str(peer.get("state") or "pending")
    out = []
    for (a, b), states in sorted(seen.items()):
        views = [_link_health(s) for s in states.values()]
        if len(states) < 2:
            views.append("warn")  # only one side knows the other
        out.append({"a": a, "b": b, "state": "; ".join(f"{n}: {s}" for n, s in sorted(states.items())),
                    "health": worst(views)})
    return out


def _link_health(state: str) -> str:
    return "ok" if state == "ok" else "down" if state.startswith("refused") else "warn"


def worst(values: Iterable[str]) -> str:
    return max(values, key=HEALTH_ORDER.index, default="unknown")


def _pod(pod: Mapping[str, Any], node_health: str) -> dict[str, Any]:
    ready = pod.get("ready", True)
    health = node_health if node_health in ("down", "unknown") else ("ok" if ready else "warn")
    return {**pod, "health": health}


def _racks(nodes: Sequence[Mapping[str, Any]], lab: Mapping[str, Any] | None) -> dict[str, Any]:
    """Racks (nodes grouped by their lab rack; one group of everything elsewhere), the
    routers that join them, and the lab's outside world."""
    racks: dict[int, list[str]] = {}
    for node in nodes:
        rack = node.get("rack")
        racks.setdefault(rack if isinstance(rack, int) else 0, []).append(str(node["name"]))
    routers: list[dict[str, Any]] = []
    if lab is not None:
        named = sorted((lab.get("routers") or {}).keys())
        if named:  # bgp: a ToR per rack and a spine
            routers = [{"name": n, "racks": [int(n[3:])] if n[3:].isdigit() else sorted(racks)} for n in named]
        elif len(racks) > 1:
            routers = [{"name": "rtr", "racks": sorted(racks)}]
    outside = (lab or {}).get("outside") or None
    return {"racks": [{"rack": r, "label": f"rack {r}" if lab is not None else "nodes", "nodes": sorted(names)}
                      for r, names in sorted(racks.items())],
            "routers": routers, "outside": {"ip": outside.get("ip"), "underlay": outside.get("underlay")}
            if outside else None}


def digest(snapshot: Mapping[str, Any]) -> str:
    """Equal for two snapshots that differ only in clocks and timings (VOLATILE)."""
    return hashlib.sha256(json.dumps(_stable(snapshot), sort_keys=True, default=str).encode()).hexdigest()


def _stable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value


def name_flow(flow: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """A verdict as the page shows it: each address with its pod's name when it has one."""
    return {**flow, "src_name": names.get(str(flow.get("src")), ""), "dst_name": names.get(str(flow.get("dst")), "")}
