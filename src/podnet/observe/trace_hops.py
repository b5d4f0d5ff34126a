"""The hops of `podnet trace`, in the order a packet meets them, from what the nodes
said (agent/trace_service.py `trace.hops`) and the policy verdict (pure: no kernel,
no store, no socket).

    source pod: route -> veth -> bridge        (source node)
    service: dnat (the candidates, the one chosen)
    policy egress                              (source node's forward hook)
    node route -> neigh -> fdb + encap (vxlan) | neigh (host-gw) | bgp next hop
    remote node: route -> policy ingress -> deliver (the destination's host veth)

A hop is {"node", "kind", "where", "detail", "ok", "confirmed"}; `confirmed` stays None
until a live probe's trace events (`confirm`) say yes or no.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.observe.trace_parse import TraceEvent, dnat_choice, dropped_by, seen_devices

Hop = dict[str, Any]


def hop(node: str | None, kind: str, where: str, detail: str, ok: bool = True) -> Hop:
    return {"node": node, "kind": kind, "where": where, "detail": detail, "ok": bool(ok), "confirmed": None}


@dataclass(frozen=True)
class Judgement:
    """One direction of the policy decision, and the table line that enforces it."""

    direction: str  # egress | ingress
    node: str | None  # where it is enforced
    allowed: bool
    reason: str
    comment: str | None  # the rule line's comment (None: nothing isolates)


def _route_text(route: Mapping[str, Any] | None) -> str:
    if not route:
        return "no route"
    if route.get("error"):
        return f"no route: {route['error']}"
    via = f" via {route['gateway']}" if route.get("gateway") else ""
    extra = f" ({route['prefix']}, proto {route['proto']}{', onlink' if route.get('onlink') else ''})" \
        if route.get("prefix") else ""
    return f"dev {route.get('dev')}{via}{extra}"


def _route_ok(route: Mapping[str, Any] | None) -> bool:
    return bool(route) and not route.get("error") and bool(route.get("dev"))  # type: ignore[union-attr]


def source_hops(node: str | None, pod: str, dst_ip: str, facts: Mapping[str, Any]) -> list[Hop]:
    """The source pod's own route, its veth pair and bridge."""
    side = facts.get("pod") or {}
    if not side:
        return [hop(node, "route", pod, f"{pod} is no pod of {node}: its node did not find it", False)]
    out = [hop(node, "route", f"{pod} (pod)", f"{dst_ip} {_route_text(side.get('route'))}", _route_ok(side.get("route")))]
    veth = side.get("veth")
    out.append(hop(node, "veth", f"{pod} eth0 <-> {veth}", f"host veth {veth}", bool(veth)))
    bridge = side.get("bridge")
    if bridge:
        out.append(hop(node, "bridge", str(bridge), f"{veth} is a port of bridge {bridge}"))
    else:  # a routed attachment (the bgp fabric): the node routes the pod's /32 to its veth
        out[-1]["detail"] += " (routed: no bridge, the node answers for the pod's gateway)"
    return out


def dnat_hop(node: str | None, service: Mapping[str, Any], facts: Mapping[str, Any],
             names: Mapping[str, str], following: str | None) -> Hop:
    dnat = facts.get("dnat")
    where = f"inet podnet-svc {dnat['chain']}" if dnat else "inet podnet-svc"
    front = f"{service['name']} {service['ip']}:{service['port']}"
    if not dnat or not dnat.get("targets"):
        return hop(node, "dnat", where, f"{front}: no frontend with a backend in the node's table "
                                        "(no ready endpoint: refused)", False)
    listed = ", ".join(label(t, names) for t in dnat["targets"])
    text = f"{front} -> one of {len(dnat['targets'])} (numgen random): {listed}"
    if following:
        text += f"; following {label(following, names)}"
    return hop(node, "dnat", where, text)


def label(target: str, names: Mapping[str, str]) -> str:
    name = names.get(target.rsplit(":", 1)[0])
    return f"{name} {target}" if name else target


def policy_hop(j: Judgement, rules: Mapping[str, Any]) -> Hop:
    where = f"inet podnet-policy ({j.direction})"
    detail = j.reason
    ok = j.allowed
    if j.comment:
        line = rules.get(j.comment)
        if line is None:
            detail += f"; rule line {j.comment!r} not asked"
        elif line.get("present"):
            detail += f"; live rule {j.comment!r}: {line.get('packets', 0)} packets so far"
        else:
            detail += f"; rule line {j.comment!r} is NOT in the node's table"
            ok = ok and j.allowed  # a missing allow line drops as well: said, judged by --live
    return hop(j.node, "policy", where, detail, ok)


def fabric_hops(node: str | None, facts: Mapping[str, Any], peer_underlay: str | None) -> list[Hop]:
    """The source node's route to the destination and what carries it to the peer."""
    route = facts.get("route")
    kind = "bgp" if route and route.get("proto") == "bird" else "route"
    out = [hop(node, kind, f"{node} route", _route_text(route), _route_ok(route))]
    if not _route_ok(route):
        return out
    neigh = facts.get("neigh")
    if neigh:
        # over vxlan the entry must be there (no ARP across the overlay); elsewhere ARP resolves it on demand
        resolved = bool(neigh.get("lladdr"))
        ok = resolved or (not facts.get("vxlan") and neigh.get("state") not in ("failed", "incomplete"))
        text = f"{neigh['ip']} lladdr {neigh['lladdr']} ({neigh.get('state')})" if resolved \
            else f"{neigh['ip']}: {neigh.get('state')}" + (", resolved by ARP on the first packet" if ok else "")
        out.append(hop(node, "neigh", f"{neigh['dev']}", text, ok))
    vx, fdb = facts.get("vxlan"), facts.get("fdb")
    if vx:
        dst = (fdb or {}).get("dst")
        ok = bool(dst) and (peer_underlay is None or dst == peer_underlay)
        want = f" (the peer's lease says {peer_underlay})" if peer_underlay and dst != peer_underlay else ""
        out.append(hop(node, "fdb", vx["dev"], f"{(fdb or {}).get('mac')} dst {dst or 'missing'}{want}", ok))
        out.append(hop(node, "encap", f"{vx['dev']} over {vx.get('underlay')}",
                       f"VXLAN VNI {vx.get('vni')}, {vx.get('local')} -> {dst} udp/{vx.get('port')}", ok))
    elif route.get("gateway") and peer_underlay is not None and route.get("gateway") != peer_underlay:
        out[0]["ok"] = False
        out[0]["detail"] += f" (the peer's lease says {peer_underlay})"
    return out


def destination_hops(node: str | None, pod: str, dst_ip: str, facts: Mapping[str, Any],
                     arrived: bool = True) -> list[Hop]:
    """The destination node's route to its pod (when the packet came from another
    node), then the pod's host veth."""
    out = []
    if arrived:
        route = facts.get("route")
        out.append(hop(node, "route", f"{node} route", f"{dst_ip} {_route_text(route)}", _route_ok(route)))
    deliver = facts.get("deliver")
    if deliver:
        out.append(hop(node, "deliver", f"{deliver.get('veth')} -> {pod} eth0",
                       f"host veth {deliver.get('veth')} " + (f"on bridge {deliver['bridge']}" if deliver.get("bridge")
                                                              else "(routed)"), bool(deliver.get("veth"))))
    else:
        out.append(hop(node, "deliver", pod, f"{dst_ip} is no pod of {node}", False))
    return out


def verdict(hops: Sequence[Hop]) -> tuple[str, int | None, str]:
    """(verdict, died_at, reason) from the hops as they stand."""
    drops = [i for i, h in enumerate(hops) if h["kind"] == "drop"]
    for i, h in enumerate(hops):
        if (drops and i == drops[0]) or (not drops and (not h["ok"] or h["confirmed"] is False)):
            return "dropped", i, f"{h['kind']} at {h['where']} on {h['node']}: {h['detail']}"
    if hops and hops[-1]["kind"] == "deliver":
        return "delivered", None, "every hop is in place" + (
            " and confirmed" if all(h["confirmed"] for h in hops) else "")
    return "unknown", None, "the path leaves the cluster's pods"


# -- --live: what the traced probe confirms


def confirm(hops: list[Hop], events: Mapping[str | None, Sequence[TraceEvent]], probe: Mapping[str, Any],
            src_node: str | None) -> None:
    """Mark each hop confirmed (True/False) from the nodes' trace events of the probe's
    first packet and the probe's outcome, and append a drop hop where it died."""
    answered = probe.get("result") in ("answered", "connected")
    drop_at: tuple[str | None, TraceEvent] | None = None
    for node, evs in events.items():
        d = dropped_by(evs)
        if d is not None and drop_at is None:
            drop_at = (node, d)
    for h in hops:
        evs = events.get(h["node"]) or []
        iifs, oifs = seen_devices(evs)
        kind = h["kind"]
        if answered:
            h["confirmed"] = True
        elif kind in ("veth", "bridge") or (kind == "route" and h["where"].endswith("(pod)")):
            h["confirmed"] = bool(evs)  # the packet reached the node from the pod's bridge
        elif kind == "dnat":
            h["confirmed"] = dnat_choice(evs) is not None
        elif kind == "policy":
            h["confirmed"] = bool(evs)  # the packet reached this node's forward hook
        elif kind in ("route", "bgp"):
            dev = h["detail"].split("dev ", 1)[1].split()[0] if "dev " in h["detail"] else ""
            h["confirmed"] = dev in oifs
        elif kind in ("neigh", "fdb", "encap"):
            later = [n for n in events if n != h["node"] and events[n]]
            h["confirmed"] = bool(later)
        elif kind == "deliver":  # the packet left the node towards the pod (its veth, or the pod's bridge)
            bridge = h["detail"].split("on bridge ", 1)[1].split()[0] if "on bridge " in h["detail"] else None
            h["confirmed"] = bool(oifs & {h["where"].split()[0], bridge})
    if answered or (drop_at is None and hops and all(h["confirmed"] for h in hops)):
        return  # delivered (an unanswered UDP datagram or a refused connection reached the pod too)
    hops[:] = [h for h in hops if h["kind"] != "drop"]  # the kernel's word replaces the model's
    if drop_at is not None:
        node, e = drop_at
        rule = e.comment or e.text
        at = next((i for i, h in enumerate(hops) if h["node"] == node and h["kind"] == "policy" and not h["ok"]),
                  None)
        drop = hop(node, "drop", f"{e.table} {e.chain}", f"dropped by {rule!r} (nftrace, verdict {e.verdict})",
                   False)
        drop["confirmed"] = True
        if at is not None:
            hops[at]["confirmed"] = True
            del hops[at + 1:]
        hops.append(drop)
        return
    last = max((i for i, h in enumerate(hops) if h["confirmed"]), default=-1)
    where = hops[last] if last >= 0 else None
    text = f"the probe got {probe.get('result')}; no trace event after " + (
        f"{where['kind']} at {where['where']}" if where else "it left the source pod")
    drop = hop(where["node"] if where else src_node, "drop", where["where"] if where else "source pod", text, False)
    drop["confirmed"] = False
    del hops[last + 1:]
    hops.append(drop)
