"""`podnet status`: the cluster at a glance, and what is degraded, with the reason.

Design notes:
- Two inputs, both plain dicts so the judgement is testable without a cluster:
  the store's view (`read_store`: leases, block claims, IPAM reservations of the pod
  network, object counts, backend and one measured read) and each reachable agent's
  answers (`ask_agents`: ops `node.status`, and `bgp.status` on a bgp node). `summarize`
  joins them per node and per block and lists every degraded condition as a sentence.
- Which agents are expected: on a lab, every lab node's (`expect_all`), so a lease
  with no lab agent and a lab agent that does not answer are both faults. On real
  machines only the local agent is reachable; other nodes come from their leases and
  read "not reachable from here", which is not a fault by itself.
- A block is a fault only when it is over 90% used and the pool has no free block
  left: below that, the node simply grows into another block (ipam/blocks.py).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from podnet.observe.bgp_checks import ESTABLISHED

FULL = 0.9  # a block this used, with no free block in the pool, is a fault
NOT_REACHABLE = "not reachable from here"


@dataclass
class ClusterStatus:
    """What `podnet status` prints; `degraded` empty = healthy."""

    store: dict[str, Any]
    nodes: list[dict[str, Any]]
    blocks: list[dict[str, Any]]
    pool: dict[str, Any]
    counts: dict[str, int]
    degraded: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- pure judgement


def summarize(store: Mapping[str, Any], agents: Mapping[str, Mapping[str, Any]], *, pool: str,
              expect_all: bool, now: float) -> ClusterStatus:
    """Join the store's view and the agents' answers (see the module notes for both
    shapes) into per-node and per-block rows plus every degraded condition."""
    degraded: list[str] = []
    store_ok = not store.get("error")
    if not store_ok:
        degraded.append(f"store {store.get('url')}: does not answer ({store['error']})")
    leases = {lease["name"]: lease for lease in store.get("leases") or ()}
    claims: dict[str, str] = dict(store.get("claims") or {})
    nodes = [_node(name, leases.get(name), agents.get(name), claims, now, degraded, store_ok=store_ok,
                   expect_all=expect_all)
             for name in sorted(set(leases) | set(agents))]
    blocks, pool_row = _blocks(claims, store.get("reservations") or (), pool)
    if pool_row.get("free") == 0:
        degraded += [f"block {b['block']} of node {b['node']}: {b['used']}/{b['size']} addresses used and pool "
                     f"{pool} has no free block left" for b in blocks if b["size"] and b["used"] / b["size"] > FULL]
    return ClusterStatus(store={k: v for k, v in store.items() if k not in ("leases", "claims", "reservations", "counts")},
                         nodes=nodes, blocks=blocks, pool=pool_row, counts=dict(store.get("counts") or {}),
                         degraded=degraded)


def _node(name: str, lease: Mapping[str, Any] | None, agent: Mapping[str, Any] | None, claims: Mapping[str, str],
          now: float, degraded: list[str], *, store_ok: bool, expect_all: bool) -> dict[str, Any]:
    """One node's row; its faults appended to `degraded`."""
    row: dict[str, Any] = {"name": name, "lease": lease is not None,
                           "blocks": sorted((b for b, owner in claims.items() if owner == name), key=_net)}
    if lease is not None:
        row.update(underlay_ip=lease.get("underlay_ip"), fabric=lease.get("fabric"),
                   lease_age_s=_seconds(now - lease["started"]) if lease.get("started") else None,
                   lease_expires_s=_seconds(lease["expires_at"] - now) if lease.get("expires_at") else None)
    if agent is None:
        row["agent"] = "no agent in this lab" if expect_all else NOT_REACHABLE
        if expect_all:
            degraded.append(f"node {name}: has a lease but no agent in this lab")
        return row
    answer = agent.get("node.status")
    if not isinstance(answer, Mapping):
        row["agent"] = f"does not answer: {agent.get('error') or 'no reply'}"
        live = " (its lease is still live)" if lease is not None else ""
        degraded.append(f"node {name}: agent does not answer ({agent.get('error') or 'no reply'}){live}")
        return row
    peers = answer.get("peers") or []
    row.update(agent="answers", fabric=answer.get("fabric") or row.get("fabric"), mtu=answer.get("mtu"),
               agent_blocks=list(answer.get("blocks") or ([answer["block"]] if answer.get("block") else [])),
               peers_ok=sum(1 for p in peers if p.get("state") == "ok"), peers=len(peers),
               refused=[dict(r) for r in answer.get("refused") or ()])
    row["mtu_changes"] = [dict(c) for c in answer.get("mtu_changes") or ()]
    if row["mtu_changes"] and row["mtu_changes"][-1].get("failed"):
        last = row["mtu_changes"][-1]
        degraded.append(f"node {name}: the underlay's MTU went to {last['underlay'][1]}, and "
                        f"{len(last['failed'])} pod interface(s) kept the old MTU: {'; '.join(last['failed'])}")
    if lease is None and store_ok:
        degraded.append(f"node {name}: agent answers but has no lease in the store")
    degraded += [f"node {name}: peer {r.get('name')} ({r.get('block')}) refused: {r.get('reason')}"
                 for r in row["refused"]]
    bgp = agent.get("bgp.status")
    if bgp is not None:
        row["bgp"] = _bgp(name, bgp, degraded)
    return row


def _bgp(name: str, bgp: Mapping[str, Any], degraded: list[str]) -> str:
    """`established/total` sessions (or the error); a session not Established is a fault."""
    if "error" in bgp:
        degraded.append(f"node {name}: BGP status unknown ({bgp['error']})")
        return "unknown"
    sessions = bgp.get("sessions") or []
    degraded += [f"node {name}: BGP session {s.get('name')} ({s.get('neighbor')}) is {s.get('state')}"
                 for s in sessions if s.get("state") != ESTABLISHED]
    return f"{sum(1 for s in sessions if s.get('state') == ESTABLISHED)}/{len(sessions)} established"


def _blocks(claims: Mapping[str, str], reservations: Any, pool: str) -> tuple[list[dict], dict[str, Any]]:
    """Per claimed block: owner, addresses used and size (no network, gateway or
    broadcast); the pool's claimed and free blocks (free = neither claimed nor holding
    a reservation, as ipam/blocks.py picks them)."""
    net = ipaddress.IPv4Network(pool)
    nets = {block: _net(block) for block in claims}
    sizes = sorted({n.prefixlen for n in nets.values() if n.subnet_of(net)})
    used = dict.fromkeys(nets, 0)
    occupied: set[ipaddress.IPv4Network] = set()
    for address in reservations:
        ip = ipaddress.IPv4Address(address)
        for block, block_net in nets.items():
            if ip in block_net:
                used[block] += 1
        if sizes and ip in net:
            occupied.add(ipaddress.IPv4Network(f"{ip}/{sizes[0]}", strict=False))
    blocks = [{"block": block, "node": claims[block], "used": used[block],
               "size": max(nets[block].num_addresses - 3, 0)} for block in sorted(nets, key=nets.get)]
    row: dict[str, Any] = {"cidr": str(net), "block_prefix": sizes[0] if sizes else None}
    if len(sizes) == 1:
        in_pool = {n for n in nets.values() if n.subnet_of(net)}
        row.update(claimed=len(in_pool), free=2 ** (sizes[0] - net.prefixlen) - len(in_pool | occupied))
    return blocks, row


def _net(block: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(block)


def _seconds(value: float) -> float:
    return round(max(value, 0.0), 1)


# ---------------------------------------------------------------- the thin I/O


def backend_of(url: str) -> dict[str, Any]:
    """The store's backend and members, from its URL alone (etcd: the endpoints)."""
    if url.startswith("etcd://"):
        return {"backend": "etcd", "members": url[len("etcd://"):].partition("/")[0].split(",")}
    return {"backend": "memory" if url.startswith("memory://") else "sqlite", "members": []}


def read_store(url: str) -> dict[str, Any]:
    """The store's view for `summarize`; a store that fails gives its error instead."""
    from podnet import keys
    from podnet.cluster.leases import CLUSTER_NETWORK, list_claims, parse_leases
    from podnet.errors import PodnetError
    from podnet.store import open_store

    out: dict[str, Any] = {"url": url, **backend_of(url)}
    try:
        with open_store(url, create=False) as store:
            start = time.perf_counter()
            entries = store.list(keys.NODES)
            out["latency_ms"] = round((time.perf_counter() - start) * 1000, 2)
            expiry = {e.key: e.expires_at for e in entries}
            out["leases"] = [{**lease.to_json(), "expires_at": expiry.get(lease.key)} for lease in parse_leases(entries)]
            out["claims"] = list_claims(store)
            found = (keys.parse_ipam_address(e.key) for e in store.list(keys.ipam_addresses(CLUSTER_NETWORK)))
            out["reservations"] = [f[1] for f in found if f is not None and _is_ipv4(f[1])]
            out["counts"] = {what: len(store.list(prefix)) for what, prefix in (
                ("pods", keys.ENDPOINTS), ("policies", keys.NETWORK_POLICIES),
                ("cluster policies", keys.CLUSTER_POLICIES), ("services", keys.SERVICES))}
    except (PodnetError, OSError, ValueError) as exc:
        out["error"] = getattr(exc, "msg", None) or str(exc)
    return out


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def ask_agents(sockets: Mapping[str, str], timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """node -> its agent's answers, keyed by the node name the agent gives (a real
    machine's hostname need not be its node name): `node.status`, and `bgp.status`
    on a bgp node; `error` when the agent does not answer."""
    from podnet.errors import PodnetError
    from podnet.rpc.client import call

    out: dict[str, dict[str, Any]] = {}
    for node, sock in sockets.items():
        try:
            answer = call(sock, "node.status", timeout=timeout)
        except (PodnetError, OSError, ValueError) as exc:
            out[node] = {"socket": sock, "error": getattr(exc, "msg", None) or str(exc)}
            continue
        name = answer.get("node") if isinstance(answer, dict) and answer.get("node") else node
        row: dict[str, Any] = {"socket": sock, "node.status": answer}
        if isinstance(answer, dict) and answer.get("fabric") == "bgp":
            try:
                row["bgp.status"] = call(sock, "bgp.status", timeout=timeout)
            except (PodnetError, OSError, ValueError) as exc:
                row["bgp.status"] = {"error": getattr(exc, "msg", None) or str(exc)}
        out[str(name)] = row
    return out
