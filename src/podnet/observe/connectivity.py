"""`podnet connectivity test`: probe a running lab the way `cilium connectivity test`
probes a cluster.

Three steps, the first and last pure:

1. `plan(lab)` turns the lab's state file (`LabState.data`: nodes, pods, outside) into
   a list of `Probe`s: which check, from which namespace, to which address, what answer
   proves the right endpoint answered.
2. `run(probes)` runs them on a bounded thread pool; each probe is one
   `nsenter --net=/run/netns/NS python -I -S probe.py SPEC` (see `probe.py`), so it
   really leaves from the source namespace, and is bounded by its timeout.
3. `summary(results)` and the CLI's table show them.

Checks (each node's *first* pod, in topology order, stands for the node; with more than
`ALL_PAIRS_MAX` nodes the pairwise checks go round a ring, both ways, instead of all
pairs):

- `pod-to-pod/same-node`: ICMP between the first two pods of a node;
- `pod-to-pod/cross-node` (`/cross-rack` when the racks differ): ICMP between nodes;
- `pod-to-node/gateway`: ICMP to the pod's own gateway (the node's pncl0, block .1); on a bgp
  lab, whose pods are routed behind a link-local gateway, `pod-to-node/own`: ICMP to its
  node's underlay address;
  macvlan lab `pod-to-node/shim`: ICMP to its node's shim (pnmv0, the block's .1), the
  macvlan parent's way to its own children;
- `pod-to-node/remote`: ICMP to another node's underlay address;
- `node-to-pod/local` and `node-to-pod/remote`: ICMP from a node to its own pod and to
  another node's pod;
- `pod-to-outside/http`: HTTP `GET /peer` at the outside world, which answers with the
  address it saw: it must be the pod's *node* underlay address (masquerade), on a
  macvlan lab the pod's own (pods sit on the network, no NAT);
- `pod-to-outside/udp`: the outside's UDP echo;
- `pmtu/cross-node`: a UDP datagram of pod MTU - 28 bytes with DF to a pod on another
  node must be answered, one byte more must be refused with EMSGSIZE;
- `served-port`: every TCP/UDP port every pod serves, from a pod on another node (the
  echo server must answer with that pod's name);
- `service/cluster-ip`, `service/node-port`: every port of every service
  (observe/service_checks.py);
- `bgp/session` (a bgp lab): every node's BGP sessions Established, from its agent
  (observe/bgp_checks.py).
`--clusterset` runs instead the checks across the clusters the lab joined
(observe/clusterset_checks.py).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from podnet.errors import PodnetError
from podnet.store.base import Store

PROBE_SCRIPT = Path(__file__).with_name("probe.py")
DEFAULT_TIMEOUT = 2.0
DEFAULT_PARALLEL = 16
ALL_PAIRS_MAX = 6
OUTSIDE_PORT = 80


class ConnectivityError(PodnetError):
    """The lab cannot be tested (missing, or not up)."""


@dataclass
class Probe:
    """One planned check: `spec` is what probe.py runs inside `netns`."""

    check: str
    source: str
    netns: str
    destination: str
    spec: dict = field(default_factory=dict)


@dataclass
class Result:
    check: str
    source: str
    destination: str
    ok: bool
    detail: str
    ms: float

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- plan


def _address(pod: dict, version: int = 4) -> str | None:
    """The pod's first address of IP `version`."""
    for ip in pod.get("ips") or []:
        address = ip.split("/")[0]
        if (":" in address) == (version == 6):
            return address
    return None


def families(lab: dict) -> tuple[int, ...]:
    """The IP versions the lab's pods speak: 4, and 6 in a dual-stack lab (`lab up --ipv6`)."""
    return (4, 6) if lab.get("ipv6") else (4,)


def _outside_sees(lab: dict, node: dict, pod: dict, version: int = 4) -> str:
    """The client address the outside world must report: the node's (masquerade), or
    on a macvlan lab the pod's own."""
    if lab.get("fabric") == "macvlan":
        return _address(pod, version) or ""
    return node["underlay6" if version == 6 else "underlay"]


def _gateway(block: str) -> str:
    return str(ipaddress.ip_network(block, strict=False).network_address + 1)


def node_pairs(nodes: Sequence[str]) -> list[tuple[str, str]]:
    """Ordered (from, to) node pairs: all of them for a few nodes, else a ring both ways."""
    if len(nodes) <= ALL_PAIRS_MAX:
        return [(a, b) for a in nodes for b in nodes if a != b]
    ring = [(nodes[i], nodes[(i + 1) % len(nodes)]) for i in range(len(nodes))]
    return ring + [(b, a) for a, b in ring]


def _next_node(nodes: Sequence[str], node: str) -> str | None:
    if len(nodes) < 2:
        return None
    return nodes[(nodes.index(node) + 1) % len(nodes)]


def pods_by_node(lab: dict) -> dict[str, list[str]]:
    """node -> its pods with an address, in topology order."""
    pods: dict[str, dict] = lab.get("pods", {})
    return {n: [k for k, p in pods.items() if p.get("node") == n and _address(p)] for n in lab.get("nodes", {})}


def first_pods(lab: dict) -> dict[str, str]:
    """node -> the pod that stands for it (its first)."""
    return {n: keys[0] for n, keys in pods_by_node(lab).items() if keys}


def plan(lab: dict, only: int | None = None) -> list[Probe]:
    """Every probe for the lab described by its state file's data (pure): for each IP
    family the lab speaks, or `only` that one (`--family`). IPv4's checks keep their
    names; IPv6's end in `/ipv6`."""
    probes: list[Probe] = []
    for version in families(lab):
        if only in (None, version):
            probes += _plan_family(lab, version)
    return probes


def _plan_family(lab: dict, v: int) -> list[Probe]:
    """The probes of one IP family (`v`: 4 or 6)."""
    nodes: dict[str, dict] = lab.get("nodes", {})
    pods: dict[str, dict] = lab.get("pods", {})
    names = list(nodes)  # the topology's order (node2 before node10)
    on_node = pods_by_node(lab)
    first = first_pods(lab)
    probes: list[Probe] = []
    suffix = "/ipv6" if v == 6 else ""
    under_key, block_key = ("underlay6", "block6") if v == 6 else ("underlay", "block")

    def _address_v(pod: dict) -> str | None:
        return _address(pod, v)

    def pod_probe(check: str, src: str, dst_label: str, spec: dict) -> None:
        probes.append(Probe(check + suffix, src, pods[src]["netns"], dst_label, spec))

    def node_probe(check: str, node: str, dst_label: str, spec: dict) -> None:
        probes.append(Probe(check + suffix, node, nodes[node]["netns"], dst_label, spec))

    def pod_label(key: str) -> str:
        return f"{key} ({_address_v(pods[key])})"

    for node in names:  # same node
        if len(on_node[node]) >= 2:
            a, b = on_node[node][:2]
            pod_probe("pod-to-pod/same-node", a, pod_label(b), {"kind": "icmp", "dst": _address_v(pods[b])})
    for a, b in node_pairs([n for n in names if n in first]):
        racks = nodes[a].get("rack", 0) != nodes[b].get("rack", 0)
        pod_probe(f"pod-to-pod/{'cross-rack' if racks else 'cross-node'}", first[a], pod_label(first[b]),
                  {"kind": "icmp", "dst": _address_v(pods[first[b]])})
    for node in names:  # pods and nodes
        nxt = _next_node(names, node)
        if node in first and lab.get("fabric") == "bgp":  # routed pods: their gateway is link-local
            under = nodes[node][under_key]
            pod_probe("pod-to-node/own", first[node], f"{node} eth0 ({under})", {"kind": "icmp", "dst": under})
        elif node in first and nodes[node].get(block_key) and lab.get("fabric") == "macvlan":
            shim = _gateway(nodes[node][block_key])  # macvlan pods reach their own node through its shim
            pod_probe("pod-to-node/shim", first[node], f"{node} pnmv0 ({shim})", {"kind": "icmp", "dst": shim})
        elif node in first and nodes[node].get(block_key):
            gw = _gateway(nodes[node][block_key])
            pod_probe("pod-to-node/gateway", first[node], f"{node} pncl0 ({gw})", {"kind": "icmp", "dst": gw})
        if node in first and nxt:
            under = nodes[nxt][under_key]
            pod_probe("pod-to-node/remote", first[node], f"{nxt} eth0 ({under})", {"kind": "icmp", "dst": under})
        if node in first:
            node_probe("node-to-pod/local", node, pod_label(first[node]),
                       {"kind": "icmp", "dst": _address_v(pods[first[node]])})
        if nxt and nxt in first:
            node_probe("node-to-pod/remote", node, pod_label(first[nxt]),
                       {"kind": "icmp", "dst": _address_v(pods[first[nxt]])})
    outside = (lab.get("outside") or {}).get("ip6" if v == 6 else "ip")
    if v == 6 and not (lab.get("ipv6") or {}).get("masquerade") and lab.get("fabric") != "macvlan":
        outside = None  # IPv6 pods are not NATed (Kubernetes' default): the world has no route back
    host = f"[{outside}]" if v == 6 else outside
    for node in names:  # the outside world
        if node not in first or not outside:
            continue
        pod_probe("pod-to-outside/http", first[node], f"outside http://{host}/peer",
                  {"kind": "http", "dst": outside, "port": OUTSIDE_PORT, "path": "/peer",
                   "expect": _outside_sees(lab, nodes[node], pods[first[node]], v)})
        pod_probe("pod-to-outside/udp", first[node], f"outside {host}:{OUTSIDE_PORT}/udp",
                  {"kind": "udp", "dst": outside, "port": OUTSIDE_PORT, "expect": "outside"})
    for node in names:  # MTU across nodes
        nxt = _next_node(names, node)
        if node not in first or not nxt:
            continue
        target = next((k for k in on_node[nxt] if _udp_port(pods[k]) is not None), None)
        if target:
            port = _udp_port(pods[target])
            pod_probe("pmtu/cross-node", first[node], f"{pod_label(target)} :{port}/udp",
                      {"kind": "pmtu", "dst": _address_v(pods[target]), "port": port, "expect": _short(target)})
    for key in pods:  # every served port
        pod = pods[key]
        if not _address_v(pod):
            continue
        src = _port_client(names, on_node, pod["node"], key)
        for port in pod.get("ports", []):
            number, _, proto = str(port).partition("/")
            spec = {"kind": "udp" if proto.upper() == "UDP" else "tcp", "dst": _address_v(pod), "port": int(number),
                    "expect": _short(key)}
            label = f"{key} :{number}/{(proto or 'tcp').lower()}"
            if src in pods:
                pod_probe("served-port", src, label, spec)
            else:
                node_probe("served-port", src, label, spec)
    for key in pods:  # a pod without an address is a failure, not a silent skip
        if not _address_v(pods[key]):
            probes.append(Probe("pod-address" + suffix, key, pods[key].get("netns", ""), "-",
                                {"kind": "missing", "detail": f"the pod has no IPv{v} address in the lab state"}))
    return probes


def _short(pod_key: str) -> str:
    """The echo server's name for a pod: its name without the namespace."""
    return pod_key.rsplit("/", 1)[-1]


def _udp_port(pod: dict) -> int | None:
    for port in pod.get("ports", []):
        number, _, proto = str(port).partition("/")
        if proto.upper() == "UDP":
            return int(number)
    return None


def _port_client(names: Sequence[str], on_node: dict[str, list[str]], node: str, key: str) -> str:
    """Who probes `key`'s ports: the first pod of the next node that has pods, else
    another pod on the same node, else the node itself."""
    start = names.index(node)
    for step in range(1, len(names)):
        other = names[(start + step) % len(names)]
        if on_node[other]:
            return on_node[other][0]
    return next((k for k in on_node.get(node, []) if k != key), node)


# ----------------------------------------------------------------------------- run


def probe_argv(netns: str, spec: dict) -> list[str]:
    """The command running one probe inside `netns`."""
    from podnet.lab.state import enter

    return [*enter(netns), sys.executable, "-I", "-S", str(PROBE_SCRIPT), json.dumps(spec)]


def run_probe(probe: Probe, timeout: float = DEFAULT_TIMEOUT) -> Result:
    """Run one probe in its namespace; every failure becomes a failed Result."""
    def result(ok: bool, detail: str, ms: float) -> Result:
        return Result(probe.check, probe.source, probe.destination, ok, detail, ms)

    if probe.spec.get("kind") == "missing":
        return result(False, probe.spec.get("detail", ""), 0.0)
    start = time.monotonic()
    try:
        proc = subprocess.run(probe_argv(probe.netns, {**probe.spec, "timeout": timeout}),
                              capture_output=True, text=True, timeout=timeout + 5, check=False)
    except subprocess.TimeoutExpired:
        return result(False, f"probe process did not finish within {timeout + 5:g}s", (time.monotonic() - start) * 1000)
    elapsed = round((time.monotonic() - start) * 1000, 1)
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        return result(bool(answer["ok"]), str(answer["detail"]), float(answer["ms"]))
    except (ValueError, IndexError, KeyError, TypeError):
        err = proc.stderr.strip().splitlines()
        return result(False, f"probe failed (exit {proc.returncode}): {err[-1] if err else 'no output'}", elapsed)


def run(probes: Sequence[Probe], timeout: float = DEFAULT_TIMEOUT, parallel: int = DEFAULT_PARALLEL,
        progress: Callable[[Result], None] | None = None) -> list[Result]:
    """Run every probe, at most `parallel` at once; results in plan order."""
    if not probes:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(probes)))) as pool:
        futures = [pool.submit(run_probe, p, timeout) for p in probes]
        results = []
        for future in futures:
            results.append(future.result())
            if progress:
                progress(results[-1])
    return results


def load_lab(name: str) -> dict:
    """The lab's state file data; refuses a lab that is not up."""
    from podnet.lab.state import LabState

    data = LabState.load(name).data
    if data.get("phase") != "up":
        raise ConnectivityError(f"lab {name!r} is {data.get('phase', 'unknown')}, not up",
                                f"wait for `podnet lab up` to finish, or `podnet lab down --name {name}`")
    return data


def test_lab(name: str, timeout: float = DEFAULT_TIMEOUT, parallel: int = DEFAULT_PARALLEL,
             store: Store | None = None, clusterset: bool = False, family: int | None = None) -> list[Result]:
    """Plan and run every check against lab `name`; with its cluster store, every
    service too (observe/service_checks.py); with `clusterset`, only the checks across
    the clusters it joined (observe/clusterset_checks.py)."""
    lab = load_lab(name)
    if clusterset:
        from podnet.observe import clusterset_checks

        if store is None:
            raise ConnectivityError("--clusterset needs the lab's store")
        planned, judged = clusterset_checks.plan(lab, store)
        return [Result(*j, 0.0) for j in judged] + run([Probe(*p) for p in planned], timeout, parallel)
    if family == 6 and 6 not in families(lab):
        raise ConnectivityError(f"lab {name!r} has no IPv6 (it was built without --ipv6)")
    probes = plan(lab, family)
    if store is not None:
        from podnet.observe.service_checks import probes as service_probes
        from podnet.observe.service_checks import service_targets

        probes += [Probe(*planned) for planned in service_probes(lab, service_targets(store), first_pods(lab), family)]
    results = run(probes, timeout, parallel)
    if lab.get("fabric") == "bgp":
        from podnet.observe.bgp_checks import checks

        results += [Result(*check, 0.0) for check in checks(lab, family)]
    return results


test_lab.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def summary(results: Iterable[Result]) -> tuple[int, int]:
    """(passed, failed)."""
    results = list(results)
    passed = sum(1 for r in results if r.ok)
    return passed, len(results) - passed
