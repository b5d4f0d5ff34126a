"""`podnet trace SRC DST`: the path one packet takes, hop by hop, read from the live
kernel of the nodes involved (agent op `trace.hops`), with the policy verdict of the
reference semantics (policy/evaluate.py) checked against the rule lines in force.

    run_trace(store, sockets, src, dst, port, protocol, live)
      resolve SRC (ns/pod or IP) and DST (ns/pod, svc/ns/name or a ClusterIP, or IP)
      source node: trace.hops  -> pod route, veth, bridge, DNAT candidates, route, ...
      follow one backend (the one conntrack/nftrace chose with --live)
      decide(world, ...)        -> egress on the source node, ingress on the destination's
      destination node: trace.hops -> route, host veth
      --live: trace.arm on each node involved, trace.send from the source pod,
              trace.collect -> confirm each hop, name the rule that dropped it

The result is a JSON-able dict (the dashboard draws it; `podnet trace -o json` prints
it), its shape fixed in `run_trace`'s docstring.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from podnet import keys
from podnet.errors import PodnetError
from podnet.observe import trace_hops as th
from podnet.observe.trace_parse import (
    TraceEvent,
    dnat_choice,
    first_packet,
    isolating_policies,
    rule_comment,
)
from podnet.store.base import Store

PROBE_PORTS = (40000, 60000)  # the live probe's source port: random in this range, fixed for the probe
PROBE_TIMEOUT = 2.0
DEFAULT_PORT = 80


class TraceError(PodnetError):
    pass


def run_trace(store: Store, sockets: dict[str, str], src: str, dst: str, port: int | None = None,
              protocol: str = "tcp", live: bool = False) -> dict:
    """{"src": {"name", "ip", "node"}, "dst": {...}, "service": {"name", "ip", "port",
    "endpoints"} | None, "port", "protocol", "live", "hops": [{"node", "kind", "where",
    "detail", "ok", "confirmed"}], "verdict": "delivered"|"dropped"|"unknown",
    "died_at": index into hops | None, "reason"}."""
    from podnet.policy.world import load_world

    protocol = protocol.lower()
    if protocol not in ("tcp", "udp"):
        raise TraceError(f"protocol {protocol!r}: tcp or udp")
    world, _revision = load_world(store)
    source = _resolve_pod_or_ip(world, src, "SRC")
    service = _resolve_service(store, dst, port, protocol)
    target = {"name": service["name"], "ip": service["ip"], "node": None} if service \
        else _resolve_pod_or_ip(world, dst, "DST")
    if service:
        port = service["port"]
    elif port is None:
        port = _default_port(world, target["ip"])
    names = {ip: f"{ep.namespace}/{ep.name}" if ep.namespace else ep.name for ep in world.endpoints for ip in ep.ips}
    trace = _Trace(store, sockets, source, target, service, int(port), protocol, names)
    trace.run(world, live)
    return trace.result(live)


class _Trace:
    def __init__(self, store: Store, sockets: dict[str, str], source: dict, target: dict, service: dict | None,
                 port: int, protocol: str, names: dict[str, str]) -> None:
        self.store, self.sockets, self.source, self.target = store, sockets, source, target
        self.service, self.port, self.protocol, self.names = service, port, protocol, names
        self.hops: list[th.Hop] = []
        self.probe: dict[str, Any] = {}

    def ask(self, node: str | None, op: str, timeout: float = 10, **message: Any) -> dict:
        from podnet.rpc.client import call

        if node is None or node not in self.sockets:
            raise TraceError(f"node {node!r} cannot be asked here", f"known nodes: {', '.join(sorted(self.sockets))}")
        return call(self.sockets[node], op, timeout=timeout, **message)  # type: ignore[return-value]

    def run(self, world: Any, live: bool) -> None:
        src_node, src_ip = self.source["node"], self.source["ip"]
        if src_node is None:
            raise TraceError(f"SRC {self.source['name']} is no pod of the cluster",
                             "trace starts in a pod: give ns/name or a pod's IP")
        svc = {"ip": self.service["ip"], "port": self.service["port"]} if self.service else None
        dst_ip, dst_port = self.target["ip"], self.port
        facts = self.ask(src_node, "trace.hops", src=src_ip, dst=dst_ip, port=dst_port, protocol=self.protocol,
                         service=svc)
        self.source["netns"] = (facts.get("pod") or {}).get("netns")
        probe: dict[str, Any] = {}
        events: dict[str | None, list[TraceEvent]] = {}
        if live and self.source["netns"]:
            targets = [t.rpartition(":")[0] for t in (facts.get("dnat") or {}).get("targets") or []]
            involved = {src_node, self.target["node"], *(_node_of(world, t) for t in targets)} - {None}
            probe, events = self._probe(src_node, sorted(involved), src_ip, dst_ip, dst_port)
        self.hops = th.source_hops(src_node, self.source["name"], dst_ip, facts)
        backend_ip, backend_port = dst_ip, dst_port
        if self.service:
            targets = (facts.get("dnat") or {}).get("targets") or []
            chosen = probe.get("chosen") or dnat_choice(events.get(src_node, []))
            following = chosen if chosen in targets else _prefer_remote(targets, world, src_node)
            self.service["endpoints"] = [th.label(t, self.names) for t in targets]
            self.hops.append(th.dnat_hop(src_node, self.service, facts, self.names, following))
            if following is None:
                return
            backend_ip, _, p = following.rpartition(":")
            backend_port = int(p) if p.isdigit() else dst_port
            self.target = {"name": self.names.get(backend_ip, backend_ip), "ip": backend_ip,
                           "node": _node_of(world, backend_ip)}
            facts = self.ask(src_node, "trace.hops", src=src_ip, dst=backend_ip, port=backend_port,
                             protocol=self.protocol, service=None)
        egress, ingress = self._judge(world, src_ip, backend_ip, backend_port)
        rules = self.ask(src_node, "trace.rules", comments=[egress.comment]) if egress.comment else {}
        self.hops.append(th.policy_hop(egress, rules))
        dst_node = self.target["node"]
        if not egress.allowed:
            self._drop(egress)
        elif dst_node == src_node:
            self._ingress(ingress, dst_node)
            self.hops += th.destination_hops(dst_node, self.target["name"], backend_ip, facts, arrived=False)
        else:
            self.hops += th.fabric_hops(src_node, facts, self._underlay(dst_node))
            if dst_node is not None and dst_node in self.sockets:
                remote = self.ask(dst_node, "trace.hops", src=src_ip, dst=backend_ip, port=backend_port,
                                  protocol=self.protocol, service=None)
                self.hops.append(th.destination_hops(dst_node, self.target["name"], backend_ip, remote)[0])
                if self._ingress(ingress, dst_node):
                    self.hops += th.destination_hops(dst_node, self.target["name"], backend_ip, remote)[1:]
        if live:
            th.confirm(self.hops, events, probe, src_node)
            self.probe = probe

    def _probe(self, src_node: str, nodes: list[str], src_ip: str, dst_ip: str,
               dst_port: int) -> tuple[dict[str, Any], dict[str | None, list[TraceEvent]]]:
        """Arm nftrace on the nodes involved, send the probe from the source pod, collect (always)."""
        sport = random.randrange(*PROBE_PORTS)
        armed: dict[str | None, str] = {}
        events: dict[str | None, list[TraceEvent]] = {}
        probe: dict[str, Any] = {}
        try:
            for node in nodes:
                armed[node] = self.ask(node, "trace.arm", src=src_ip, sport=sport, protocol=self.protocol)["token"]
            probe = self.ask(src_node, "trace.send", timeout=PROBE_TIMEOUT + 10, src=src_ip, dst=dst_ip, port=dst_port, protocol=self.protocol, sport=sport,
                             wait=PROBE_TIMEOUT)
        finally:
            for node, token in armed.items():
                try:
                    reply = self.ask(node, "trace.collect", token=token)
                    events[node] = first_packet([TraceEvent(**e) for e in reply["events"]])
                except PodnetError:
                    events[node] = []
        return probe, events

    def _ingress(self, ingress: th.Judgement, node: str | None) -> bool:
        rules = self.ask(node, "trace.rules", comments=[ingress.comment]) if ingress.comment else {}
        self.hops.append(th.policy_hop(ingress, rules))
        if not ingress.allowed:
            self._drop(ingress)
        return ingress.allowed

    def _drop(self, j: th.Judgement) -> None:
        rule = j.comment or "the default verdict"
        self.hops.append(th.hop(j.node, "drop", f"inet podnet-policy ({j.direction})",
                                f"dropped by {rule!r}: {j.reason}", False))

    def _judge(self, world: Any, src_ip: str, dst_ip: str, port: int) -> tuple[th.Judgement, th.Judgement]:
        from podnet.policy.evaluate import decide

        decision = decide(world, src_ip, dst_ip, port, self.protocol.upper())
        out = []
        for direction, v, ep_ip, node in (("egress", decision.egress, src_ip, self.source["node"]),
                                          ("ingress", decision.ingress, dst_ip, self.target["node"])):
            rule = asdict(v.rule) if v.rule else None
            comment = rule_comment(rule, direction, self.names.get(ep_ip, ep_ip), isolating_policies(v.reason))
            out.append(th.Judgement(direction, node, v.allowed, v.reason, comment))
        return out[0], out[1]

    def _underlay(self, node: str | None) -> str | None:
        if node is None:
            return None
        raw = self.store.get_json(keys.node(node))
        return raw.get("underlay_ip") if isinstance(raw, Mapping) else None

    def result(self, live: bool) -> dict:
        verdict, died_at, reason = th.verdict(self.hops)
        probe = self.probe
        if live and probe.get("result") in ("answered", "connected") and verdict == "unknown":
            verdict, reason = "delivered", "the probe was answered from outside the cluster's pods"
        elif live and probe and verdict == "delivered":
            reason += f"; probe: {probe.get('result')}" + (f" by {probe['answer']}" if probe.get("answer") else "")
            if probe.get("result") in ("refused", "timeout"):
                reason += f" (the pod got it: does anything listen on {self.protocol}/{self.port}?)"
        elif live and probe and verdict == "dropped":
            reason += f" (the probe: {probe.get('result')})"
        return {"src": {k: self.source[k] for k in ("name", "ip", "node")},
                "dst": {k: self.target[k] for k in ("name", "ip", "node")},
                "service": self.service, "port": self.port, "protocol": self.protocol, "live": live,
                "hops": self.hops, "verdict": verdict, "died_at": died_at, "reason": reason}


# -- resolving SRC and DST


def _resolve_pod_or_ip(world: Any, text: str, what: str) -> dict[str, Any]:
    try:
        ip = str(ipaddress.ip_address(text))
    except ValueError:
        ep = next((e for e in world.endpoints if e.kind == "pod" and f"{e.namespace}/{e.name}" == text), None)
        if ep is None or not ep.ips:
            raise TraceError(f"{what} {text!r}: no such pod (ns/name) and no IP address",
                             "pods: podnet get pods; services: svc/NS/NAME") from None
        return {"name": text, "ip": ep.ips[0], "node": ep.node, "netns": None}
    ep = world.endpoint_at(ipaddress.ip_address(ip))
    if ep is None:
        return {"name": ip, "ip": ip, "node": None, "netns": None}
    return {"name": f"{ep.namespace}/{ep.name}" if ep.namespace else ep.name, "ip": ip, "node": ep.node,
            "netns": None}


def _resolve_service(store: Store, text: str, port: int | None, protocol: str) -> dict[str, Any] | None:
    """The service DST names (svc/NS/NAME, NS/NAME when no pod has that name, or one of
    its virtual IPs); None: DST is no service."""
    from podnet.observe.service_probe import ServiceProbeError, frontends
    from podnet.services.kinds import read_service

    services = [read_service(e.json(), e.key) for e in store.list(keys.SERVICES)]
    if text.startswith("svc/"):
        wanted = text
    elif "/" in text and any(f"{s.namespace}/{s.name}" == text for s in services):
        wanted = f"svc/{text}"
    else:
        try:
            address = str(ipaddress.ip_address(text))
        except ValueError:
            return None
        if not any(address in (s.cluster_ip, *s.external_ips) for s in services):
            return None
        wanted = address
    try:
        name, found = frontends(store, wanted)
    except ServiceProbeError as exc:
        raise TraceError(f"DST {text!r}: {exc.msg}", exc.details) from None
    match = [f for f in found if f.protocol == protocol and port in (None, f.port)]
    if not match:
        ports = ", ".join(f"{f.port}/{f.protocol}" for f in found)
        raise TraceError(f"--port/--protocol: service {name} has no port {port or ''}/{protocol}", f"its ports: {ports}")
    return {"name": name, "ip": match[0].ip, "port": match[0].port, "endpoints": []}


def _default_port(world: Any, ip: str) -> int:
    ep = world.endpoint_at(ipaddress.ip_address(ip))
    return ep.ports[0].port if ep is not None and ep.ports else DEFAULT_PORT


def _node_of(world: Any, ip: str) -> str | None:
    ep = world.endpoint_at(ipaddress.ip_address(ip))
    return ep.node if ep is not None else None


def _prefer_remote(targets: list[str], world: Any, src_node: str | None) -> str | None:
    """Without a probe the backend is a coin toss: follow one on another node (the
    longer path), else the first."""
    remote = [t for t in targets if _node_of(world, t.rpartition(":")[0]) not in (src_node, None)]
    return (remote or targets or [None])[0]
