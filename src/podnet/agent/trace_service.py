"""`podnet trace` on one node: the facts of a packet's path from this node's live kernel,
and (with --live) a traced probe.

Ops (observe/trace.py asks them and puts the hops in order):
- `trace.hops` {src, dst, port, protocol, service: {ip, port}|null}: the source
  pod's route and veth when the source is a pod of this node (its endpoint record names
  its namespace and host veth), the service's DNAT candidates in `inet podnet-svc`, the
  node's route to the destination as the pod's packet gets it (`route get ... iif
  <bridge>`) with the FIB entry's protocol, the neighbour entry of the next hop, the
  FDB entry and VXLAN device (VNI, underlay addresses) when it leaves through one, the
  destination pod's host veth when it lives here.
- `trace.rules` {comments}: whether each policy rule line (by its comment) is in
  `inet podnet-policy`, and its packet counter.
- `trace.arm` {src, sport, protocol}: a temporary table `inet pntrace-<token>` whose
  prerouting chain (priority -350, before conntrack and DNAT) sets nftrace on the
  probe's packets only (its source address and fixed source port), and `nft monitor`
  reading the trace events; returns the token once the monitor has shown a change of
  that table (so no event is missed).
- `trace.send` {src, dst, port, protocol, sport, wait}: the probe, from a socket opened
  in the namespace of this node's pod with address `src` (its endpoint record's, never
  a path the client names), bound to that source port; its outcome and the conntrack
  entry's DNAT target.
- `trace.collect` {token}: stop the monitor, delete the table, return the events.
A token left armed is disarmed after ARM_TTL seconds, and all on stop.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from podnet.agent.context import AgentContext, OpHandler
from podnet.errors import KernelError, PodnetError
from podnet.observe.trace_parse import (
    TRACE_TABLE_PREFIX,
    conntrack_reply_source,
    dnat_candidates,
    longest_match,
    parse_trace,
    protocol_name,
)

ARM_TTL = 30.0
READY_TIMEOUT = 3.0
SETTLE = 0.3  # after the probe: time for the last events to reach the monitors


@dataclass
class _Armed:
    table: str
    monitor: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    since: float = field(default_factory=time.monotonic)


class TraceService:
    def __init__(self, agent: AgentContext) -> None:
        self.agent = agent
        options = getattr(agent, "node_options", None)
        self.node: str | None = options.node if options is not None else None
        self.long_ops = ("trace.arm", "trace.send", "trace.collect")
        self._armed: dict[str, _Armed] = {}
        self._lock = threading.Lock()

    def ops(self) -> dict[str, OpHandler]:
        return {"trace.hops": lambda m, _f: self.hops(m),
                "trace.rules": lambda m, _f: self.rules([str(c) for c in m.get("comments") or []]),
                "trace.arm": lambda m, _f: self.arm(str(m["src"]), int(m["sport"]), str(m.get("protocol", "tcp"))),
                "trace.send": lambda m, _f: self.send(m),
                "trace.collect": lambda m, _f: self.collect(str(m["token"]))}

    def start(self) -> None:
        pass

    def request_stop(self) -> None:
        pass

    def stop(self) -> None:
        for token in list(self._armed):
            self._disarm(token)

    # -- the static facts

    def hops(self, m: dict[str, Any]) -> dict[str, Any]:
        from pyroute2 import IPRoute

        src, dst = str(m["src"]), str(m["dst"])
        out: dict[str, Any] = {"node": self.node}
        pods = self._local_pods()
        with IPRoute() as ipr:
            names = {int(link["index"]): str(link.get("IFLA_IFNAME")) for link in ipr.get_links()}
            masters = {str(link.get("IFLA_IFNAME")): names.get(int(link.get("IFLA_MASTER") or 0))
                       for link in ipr.get_links()}
            if src in pods:
                out["pod"] = self._pod_side(pods[src], dst, masters)
            service = m.get("service")
            if service:
                doc = _nft_json("podnet-svc")
                out["dnat"] = dnat_candidates(doc, service["ip"], m.get("protocol", "tcp"), int(service["port"]))
            side = out.get("pod") or {}
            iif = (side.get("bridge") or side.get("veth")) if src in pods else None  # routed pods: the veth
            out["route"] = _route(ipr, dst, src if iif else None, iif, names)
            if out["route"]:
                out.update(_next_hop(ipr, out["route"], dst, names))
            if dst in pods:
                out["deliver"] = {"veth": (pods[dst].get("veth") or ""), "bridge": masters.get(pods[dst].get("veth")),
                                  "netns": pods[dst]["netns"]}
        return out

    def rules(self, comments: list[str]) -> dict[str, Any]:
        """comment -> {present, packets} of the policy rule lines asked for."""
        from podnet.kernel.nft import counter_totals

        counters = counter_totals(_nft_json("podnet-policy"))
        return {c: {"present": c in counters, "packets": counters[c][0] if c in counters else 0} for c in comments}

    def _local_pods(self) -> dict[str, dict[str, Any]]:
        """ip -> {netns, veth} of this node's pods (their endpoint records)."""
        from podnet import keys
        from podnet.cluster.leases import CLUSTER_NETWORK
        from podnet.endpoints.service import read_record

        store = self.agent.service.store(self.agent.store_path)
        out = {}
        for entry in store.list(keys.endpoints(CLUSTER_NETWORK)):
            record = read_record(entry.value)
            if record is None or record.pending or (self.node and record.node and record.node != self.node):
                continue
            for ip in record.ips:
                out[ip.split("/")[0]] = {"netns": record.netns, "veth": record.host_links[0] if record.host_links
                                         else None}
        return out

    def _pod_side(self, pod: dict[str, Any], dst: str, masters: dict[str, str | None]) -> dict[str, Any]:
        from pyroute2 import IPRoute

        from podnet.kernel import netns

        fd = netns.open_netns(pod["netns"])
        try:
            with netns.entered(fd):
                ipr = IPRoute()
            with ipr:
                names = {int(link["index"]): str(link.get("IFLA_IFNAME")) for link in ipr.get_links()}
                route = _route(ipr, dst, None, None, names)
        finally:
            os.close(fd)
        return {"netns": pod["netns"], "route": route, "veth": pod.get("veth"), "bridge": masters.get(pod.get("veth"))}

    # -- the live probe

    def arm(self, src: str, sport: int, protocol: str) -> dict[str, Any]:
        ipaddress.ip_address(src)  # only an address reaches the script
        if protocol not in ("tcp", "udp"):
            raise PodnetError(f"protocol {protocol!r}: tcp or udp")
        self._expire()
        token = secrets.token_hex(4)
        table = f"{TRACE_TABLE_PREFIX}{token}"
        monitor = subprocess.Popen(["nft", "monitor"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        armed = _Armed(table, monitor)
        armed.reader = threading.Thread(target=self._read, args=(armed,), name="podnet-trace", daemon=True)
        armed.reader.start()
        with self._lock:
            self._armed[token] = armed
        try:
            family = "ip6" if ":" in src else "ip"
            _nft(f"add table inet {table}\n"
                 f"add chain inet {table} pre {{ type filter hook prerouting priority -350; policy accept; }}\n"
                 f"add rule inet {table} pre {family} saddr {src} meta l4proto {protocol} th sport {int(sport)} "
                 "meta nftrace set 1\n")
            deadline = time.monotonic() + READY_TIMEOUT
            tick = 0
            while not armed.ready.wait(0.1):  # the monitor may subscribe after the table came: poke it
                if time.monotonic() > deadline:
                    raise KernelError("nft monitor did not start", f"no event for table {table} in {READY_TIMEOUT} s")
                tick += 1
                _nft(f"add chain inet {table} ready{tick}\n")
        except BaseException:
            self._disarm(token)
            raise
        return {"token": token, "node": self.node}

    def _read(self, armed: _Armed) -> None:
        assert armed.monitor.stdout is not None
        for line in armed.monitor.stdout:
            if line.startswith("add ") and f" {armed.table} " in f"{line.rstrip()} ":
                armed.ready.set()
            elif line.startswith("trace id"):
                armed.lines.append(line.rstrip("\n"))

    def send(self, m: dict[str, Any]) -> dict[str, Any]:
        from podnet.kernel import netns

        dst, port, protocol = str(m["dst"]), int(m["port"]), str(m.get("protocol", "tcp"))
        sport, timeout = int(m["sport"]), float(m.get("wait", 2.0))
        pod = self._local_pods().get(str(m["src"]))
        if pod is None:  # only a pod of this node, found by its endpoint record: never a path a client names
            raise PodnetError(f"{m['src']} is no pod of node {self.node}", "trace.send runs on the source pod's node")
        fd = netns.open_netns(pod["netns"])
        try:
            with netns.entered(fd):
                sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET,
                                     socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM)
        finally:
            os.close(fd)
        result, answer = _probe(sock, dst, port, protocol, sport, timeout)
        return {"result": result, "answer": answer, "chosen": _conntrack_choice(protocol, m.get("src"), sport)}

    def collect(self, token: str) -> dict[str, Any]:
        if token not in self._armed:
            raise PodnetError(f"no armed trace {token!r} on {self.node}", "it expired or was collected")
        time.sleep(SETTLE)
        lines = self._disarm(token)
        return {"node": self.node, "events": [e.to_json() for e in parse_trace(lines)]}

    def _disarm(self, token: str) -> list[str]:
        with self._lock:
            armed = self._armed.pop(token, None)
        if armed is None:
            return []
        with contextlib.suppress(PodnetError):  # never created, or gone already
            _nft(f"delete table inet {armed.table}\n")
        armed.monitor.terminate()
        try:
            armed.monitor.wait(timeout=3)
        except subprocess.TimeoutExpired:
            armed.monitor.kill()
            armed.monitor.wait()
        if armed.reader is not None:
            armed.reader.join(timeout=3)
        return list(armed.lines)

    def _expire(self) -> None:
        old = [t for t, a in self._armed.items() if time.monotonic() - a.since > ARM_TTL]
        for token in old:
            self._disarm(token)


def _probe(sock: socket.socket, dst: str, port: int, protocol: str, sport: int,
           timeout: float) -> tuple[str, str]:
    """(outcome, first word of the answer): answered, connected, refused, timeout, or the error."""
    with sock:
        sock.settimeout(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", sport))
            if protocol == "tcp":
                sock.connect((dst, port))
                sock.sendall(b"podnet-trace\n")
            else:
                sock.sendto(b"podnet-trace", (dst, port))
            data = sock.recv(256)
        except ConnectionRefusedError:
            return "refused", ""
        except TimeoutError:
            return ("connected", "") if protocol == "tcp" and _connected(sock) else ("timeout", "")
        except OSError as exc:
            return exc.strerror or type(exc).__name__, ""
        answer = data.decode(errors="replace").split(" ", 1)[0].strip()
        return "answered", answer


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _conntrack_choice(protocol: str, src: Any, sport: int) -> str | None:
    argv = ["conntrack", "-L", "-p", protocol, "--sport", str(sport)]
    if src:
        argv += ["--orig-src", str(src)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return next((c for c in map(conntrack_reply_source, proc.stdout.splitlines()) if c), None)


def _nft(script: str) -> None:
    from podnet.kernel.nft import Nft

    Nft().apply(script)


def _nft_json(table: str) -> dict | None:
    from podnet.kernel.nft import Nft

    try:
        return Nft().list_table_json("inet", table)
    except PodnetError:
        return None


def _route(ipr: Any, dst: str, src: str | None, iif: str | None, names: dict[int, str]) -> dict[str, Any] | None:
    """The kernel's route for `dst` (as a packet from `src` arriving on `iif` gets it),
    with the matching FIB entry's prefix and protocol."""
    from pyroute2.netlink.exceptions import NetlinkError

    kw: dict[str, Any] = {"dst": dst}
    if iif:
        index = next((i for i, n in names.items() if n == iif), None)
        if index is not None and src:
            kw.update(src=src, iif=index)
    try:
        got = ipr.route("get", **kw)
    except NetlinkError as exc:
        return {"error": str(exc.args[1] if len(exc.args) > 1 else exc)}
    if not got:
        return None
    msg = got[0]
    table = [{"dst": f"{r.get('RTA_DST') or '0.0.0.0'}/{r['dst_len']}", "proto": r["proto"],
              "gateway": r.get("RTA_GATEWAY"), "onlink": bool(r["flags"] & 4)}
             for r in ipr.get_routes(family=socket.AF_INET6 if ":" in dst else socket.AF_INET, table=254)]
    fib = longest_match(table, dst) or {}
    return {"dev": names.get(int(msg.get("RTA_OIF") or 0), ""), "gateway": msg.get("RTA_GATEWAY"),
            "prefsrc": msg.get("RTA_PREFSRC"), "prefix": fib.get("dst"), "proto": protocol_name(fib.get("proto")),
            "onlink": fib.get("onlink", False), "local": msg["type"] == 2}


def _next_hop(ipr: Any, route: dict[str, Any], dst: str, names: dict[int, str]) -> dict[str, Any]:
    """The neighbour entry of the route's next hop, and for a VXLAN device its FDB entry
    for that MAC with the device's VNI and underlay addresses."""
    dev, hop = route.get("dev"), route.get("gateway") or dst
    if not dev or route.get("local"):
        return {}
    index = next((i for i, n in names.items() if n == dev), None)
    out: dict[str, Any] = {}
    neigh = [n for n in ipr.get_neighbours(ifindex=index) if n.get("NDA_DST") == hop] if index else []
    if neigh:
        n = neigh[0]
        out["neigh"] = {"ip": hop, "dev": dev, "lladdr": n.get("NDA_LLADDR"), "state": _nud(n["state"])}
    else:
        out["neigh"] = {"ip": hop, "dev": dev, "lladdr": None, "state": "none"}
    link = ipr.link("get", index=index)[0] if index else None
    info = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) if link else None
    if info == "vxlan":
        data = link.get(("IFLA_LINKINFO", "IFLA_INFO_DATA"))
        out["vxlan"] = {"dev": dev, "vni": data.get("IFLA_VXLAN_ID"), "local": data.get("IFLA_VXLAN_LOCAL"),
                        "port": data.get("IFLA_VXLAN_PORT"),
                        "underlay": names.get(int(data.get("IFLA_VXLAN_LINK") or 0), "")}
        mac = out["neigh"]["lladdr"]
        fdb = [f for f in ipr.fdb("dump", ifindex=index) if mac and f.get("NDA_LLADDR") == mac]
        out["fdb"] = {"mac": mac, "dev": dev, "dst": fdb[0].get("NDA_DST") if fdb else None}
    return out


def _nud(state: int) -> str:
    names = {0x80: "permanent", 0x02: "reachable", 0x04: "stale", 0x08: "delay", 0x10: "probe", 0x20: "failed",
             0x40: "noarp", 0x01: "incomplete"}
    return "|".join(n for bit, n in names.items() if state & bit) or "none"
