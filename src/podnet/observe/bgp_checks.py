"""Every node's BGP sessions, asked of its agent (op `bgp.status`, read from BIRD's
control socket): for `podnet bgp status` and the `bgp/session` checks of `podnet
connectivity test` on a bgp lab (a session that is not Established fails, as does a
node that does not answer or has no session at all)."""

from __future__ import annotations

ESTABLISHED = "Established"


def collect(sockets: dict[str, str], timeout: float = 10.0) -> list[dict]:
    """node -> agent socket  =>  each node's answer (or its error), in that order."""
    from podnet.rpc.client import ask_each

    return ask_each(sockets, "bgp.status", {"sessions": []}, timeout)


def healthy(nodes: list[dict]) -> bool:
    return all(not problems(node) for node in nodes)


def problems(node: dict) -> list[str]:
    """Why one node's BGP is not well (empty: every session Established)."""
    if "error" in node:
        return [node["error"]]
    if not node.get("sessions"):
        return ["no BGP session"]
    return [f"{s['name']} ({s['neighbor']}): {s['state']}" for s in node["sessions"] if s["state"] != ESTABLISHED]


def checks(lab: dict, only: int | None = None) -> list[tuple[str, str, str, bool, str]]:
    """(check, source, destination, ok, detail) per session of every node of a bgp lab;
    a dual-stack node's IPv6 sessions are `bgp/session/ipv6`; `only`: one family's."""
    sockets = {name: info["socket"] for name, info in (lab.get("nodes") or {}).items()}
    out = []
    for node in collect(sockets, timeout=5.0):
        if "error" in node or not node.get("sessions"):
            out.append(("bgp/session", node["node"], "-", False, "; ".join(problems(node))))
            continue
        for s in node["sessions"]:
            v6 = ":" in str(s["neighbor"])
            if only is not None and only != (6 if v6 else 4):
                continue
            ok = s["state"] == ESTABLISHED
            out.append(("bgp/session/ipv6" if v6 else "bgp/session", node["node"],
                        f"{s['neighbor']} AS{s.get('neighbor_as')}", ok,
                        f"{s['state']}, {s['imported']} route(s) in, {s['exported']} out"))
    return out
