"""What `podnet peers` shows of the gossip fabric, computed from the nodes' answers to
op `gossip.status` (no I/O here: the CLI asks, this summarises): one row per peer as
each asking node sees it, the ring's ownership as each node believes it (nodes that
agree share rows, so a disagreement shows as a second group), the dead peers and
their votes, and the DNS entries with how many nodes know each.

A node's answer is the agent's JSON object with "node" added (the lab's name for it
when the agent gives no name); a node that did not answer is {"node", "error"}.
Health for scripts: every node answers and no peer is unreachable from any node."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

UNREACHABLE = "unreachable"


def node_answer(node: str, answer: Mapping[str, Any]) -> dict[str, Any]:
    """One agent's gossip.status answer, named by the agent's own name when it gives one."""
    return {**answer, "node": answer.get("name") or node}


def node_error(node: str, message: str) -> dict[str, Any]:
    return {"node": node, "error": message}


def problems(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Why the mesh is not well: nodes that did not answer, peers some node cannot reach."""
    out = []
    for node in nodes:
        if "error" in node:
            out.append(f"{node['node']}: no answer ({node['error']})")
            continue
        out.extend(f"{node['node']}: peer {peer['name']} is unreachable"
                   for peer in node.get("peers") or () if peer.get("path") == UNREACHABLE)
    return out


def exit_status(nodes: Iterable[Mapping[str, Any]]) -> int:
    """0 when every node answered and reaches every peer, 1 otherwise (`until podnet peers`)."""
    return 1 if problems(nodes) else 0


def age(last_seen: float | None, now: float) -> str:
    """Seconds since a timestamp, whole ("4s"); "-" for never. A clock ahead of ours reads 0s."""
    if last_seen is None:
        return "-"
    return f"{max(0, round(now - last_seen))}s"


def compact_blocks(cidrs: Iterable[str]) -> list[str]:
    """Adjacent blocks merged into the fewest CIDRs, in address order (IPv4 first)."""
    networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    out: list[str] = []
    for version in (4, 6):
        same = [n for n in networks if n.version == version]
        out.extend(str(n) for n in ipaddress.collapse_addresses(same))  # type: ignore[type-var]
    return out


def peer_rows(nodes: Iterable[Mapping[str, Any]], now: float) -> list[dict[str, str]]:
    """One row per (asking node, peer); one row carrying the error for a node that did not answer."""
    rows = []
    for node in nodes:
        if "error" in node:
            rows.append({"node": node["node"], "peer": "-", "connection": "-", "path": "-", "encrypted": "-",
                         "underlay": "-", "last seen": "-", "error": node["error"]})
            continue
        if not node.get("peers"):
            rows.append({"node": node["node"], "peer": "-", "connection": "no peers", "path": "-",
                         "encrypted": "-", "underlay": "-", "last seen": "-"})
        for peer in node.get("peers") or ():
            rows.append({"node": node["node"], "peer": peer["name"], "connection": _connection(peer),
                         "path": peer.get("path") or "-", "encrypted": "yes" if peer.get("encrypted") else "no",
                         "underlay": peer.get("underlay") or "-", "last seen": age(peer.get("last_seen"), now)})
    return rows


def _connection(peer: Mapping[str, Any]) -> str:
    if peer.get("direct"):
        return "direct"
    return f"via {peer['via']}" if peer.get("via") else "-"


def ring_rows(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Owner, block count and compacted CIDRs, per distinct view of the ring ("seen by":
    the nodes holding that view; one group when the ring has converged)."""
    rows = []
    for owners, seen_by in _views(nodes, lambda ring: ring.get("owners") or {}):
        for owner in sorted(owners):
            blocks = owners[owner]
            rows.append({"owner": owner, "blocks": str(len(blocks)),
                         "cidrs": ", ".join(compact_blocks(blocks)) or "-", "seen by": seen_by})
    return rows


def death_rows(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Each dead (or suspected) peer: who reclaimed its space, and each voter's vote."""
    rows = []
    for deaths, seen_by in _views(nodes, lambda ring: ring.get("deaths") or {}):
        for peer in sorted(deaths):
            death = deaths[peer]
            votes = death.get("votes") or {}
            rows.append({"peer": peer, "reclaimed by": death.get("reclaimed_by") or "not yet",
                         "votes": ", ".join(f"{voter}: {votes[voter]}" for voter in sorted(votes)) or "-",
                         "seen by": seen_by})
    return rows


def _views(nodes: Iterable[Mapping[str, Any]], part) -> list[tuple[dict, str]]:
    """Distinct values of one part of the ring across answering nodes, with who holds each."""
    groups: list[tuple[dict, list[str]]] = []
    answered = [n for n in nodes if "error" not in n]
    for node in answered:
        value = part(node.get("ring") or {})
        for held, names in groups:
            if held == value:
                names.append(node["node"])
                break
        else:
            groups.append((value, [node["node"]]))
    if len(groups) == 1 and len(answered) > 1:
        return [(groups[0][0], "all")]
    return [(value, ", ".join(names)) for value, names in groups]


def dns_rows(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The DNS entries of every node merged, with how many answering nodes know each
    (an entry known to fewer than all has not spread, or is being removed)."""
    answered = [n for n in nodes if "error" not in n]
    known: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for node in answered:
        for entry in node.get("dns") or ():
            known.setdefault((entry["name"], entry["ip"], entry.get("node") or "-"), []).append(entry)
    return [{"name": name, "ip": ip, "node": owner, "ttl": str(max(e.get("ttl") or 0 for e in entries)),
             "known to": f"{len(entries)}/{len(answered)}"}
            for (name, ip, owner), entries in sorted(known.items())]


def known_peers(status: Mapping[str, Any]) -> set[str]:
    """Every peer name an agent knows of: topology, ring members and owners, deaths."""
    ring = status.get("ring") or {}
    return ({p["name"] for p in status.get("peers") or ()} | set(ring.get("members") or ())
            | set(ring.get("owners") or {}) | set(ring.get("deaths") or {}))


def rm_refusal(status: Mapping[str, Any], peer: str) -> str | None:
    """Why the asked agent must not remove `peer` (None: go ahead): not itself, only a peer it knows."""
    name = status.get("name") or status.get("node")
    if peer == name:
        return f"peer {peer!r} is the asked node itself: ask another node to remove it"
    if peer not in known_peers(status):
        return f"peer {peer!r} is unknown to {name} (known: {', '.join(sorted(known_peers(status))) or 'none'})"
    return None


def rm_asker(nodes: Iterable[str], peer: str) -> str | None:
    """The node to ask to remove `peer`: the first that is not `peer` (None: there is none)."""
    return next((node for node in nodes if node != peer), None)


def rm_summary(answer: Mapping[str, Any]) -> str:
    blocks = compact_blocks(answer.get("blocks") or ())
    taken = f"{len(answer.get('blocks') or ())} block(s) ({', '.join(blocks)}) now owned by {answer.get('taker')}" \
        if blocks else "it owned no blocks"
    return f"removed peer {answer.get('removed')}: {taken}"
