"""BGP sessions and BIRD memory at N nodes: Calico's node-to-node full mesh against
two route reflectors (issue 12; Calico advises reflectors beyond 50-100 nodes).

    .venv/bin/python bench/bgp_scale.py                   # 50 nodes, ~1-2 min
    .venv/bin/python bench/bgp_scale.py --nodes 10 [--repeat 3] [--json]

No agents (50 of them are too heavy for a 2-CPU machine): only what the bgp fabric
runs per node. N namespaces `pn-bench-<token>-n<i>` hang on one bridge (namespace
`pn-bench-<token>-sw`, one veth each; eth0 172.30.0.<i+1>/24 inside the node). Node i
holds block 10.244.<i>.0/26. Each node's BIRD gets what `agent --fabric bgp` would give
it: the BirdSpec of `fabric.bgp.bird_spec` (from the node's lease, the others' leases
and the BGP objects), rendered by `bgp.render`, run by `bgp.bird.BirdDaemon` (started
with `-R` in the node's namespace, stopped by its checked PID). Two scenarios per round,
in the same run, the order alternating between rounds:

- mesh: no BGP objects, Calico's default node-to-node iBGP mesh (N-1 sessions a node);
- rr:   the lab's route reflector recipe (`lab.routers.reflector_objects`): node0 and
        node1 reflectors (cluster ID 244.0.0.1, label route-reflector=true), no mesh,
        one BGPPeer `peerSelector: has(route-reflector)`; a client has 2 sessions, a
        reflector N-1.

Measured, through each BIRD's control socket (`bgp.birdc.BirdControl`):
- sessions: BGP protocols on every BIRD (each peering counts on both ends), and unique
  peerings (half of that); all must be Established;
- convergence: from the first BIRD's start until every session is Established and
  every BIRD knows all N blocks (`show route count`: N networks), and until every
  node's kernel routes the N-1 other blocks (proto bird) straight to their nodes (a
  reflected route keeps its originator's next hop); BIRD's own delays dominate
  (connect delay 5 s, the `-R` recovery before its kernel sync);
- memory, after `--settle` seconds: `show memory` "Total" (effective + allocator
  overhead), VmRSS and RssAnon of /proc/<pid>/status (VmRSS includes the binary's and
  libraries' pages, shared by every BIRD); sum, median and max over nodes, and in the
  rr scenario for reflectors and clients apart.
Ratios mesh / rr for sessions, memory and convergence; with `--repeat`, medians over
rounds.

Safety: everything lives in `pn-bench-<token>-*` namespaces (lab.Sandbox) and a temp
dir `/tmp/pn-bench-*`; the veths are created inside the switch namespace; BIRDs are
stopped by their PID (checked against the command line naming their own control
socket), namespaces deleted by name, in a `finally`, also on Ctrl-C, SIGTERM or SIGHUP
(a second Ctrl-C during teardown is ignored). The root network namespace is never
changed. Exit status 1 if anything is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchlib import (
    BenchError,
    close_sandbox,
    console,
    log,
    machine,
    no_interrupt,
    print_cleanup,
    run_bench,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

if TYPE_CHECKING:
    from podnet.bgp.bird import BirdDaemon
    from podnet.bgp.birdc import Line
    from podnet.bgp.model import BirdSpec
    from podnet.model.cluster import NodeLease

PREFIX = "pn-bench-"
UNDERLAY = ipaddress.IPv4Network("172.30.0.0/24")
CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
BLOCK_PREFIX = 26
MAX_NODES = 250  # one /24 underlay, one 10.244.<i>.0/26 block per node
REFLECTORS = 2  # node0 and node1 in the rr scenario
SCENARIOS = ("mesh", "rr")
BIRD_ROUTE_PROTO = "bird"  # what `ip route` calls proto 12
_SIZE = re.compile(r"([\d.]+)\s*(B|kB|MB|GB)")
_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3}  # BIRD's print_size divides by 1024


@dataclass
class Node:
    """One simulated node: its namespace, lease, and BIRD (while a scenario runs)."""

    index: int
    netns: str
    lease: NodeLease
    fd: int  # the namespace, open: BIRD is started from a thread entered into it
    daemon: BirdDaemon | None = None
    spec: BirdSpec | None = None
    pid: int | None = None


def parse_memory_total(lines: list[Line]) -> tuple[int, int]:
    """`show memory`'s Total line -> (effective, overhead) in bytes."""
    for line in lines:
        text = line.text.strip()
        if text.startswith("Total:"):
            sizes = _SIZE.findall(text)
            if len(sizes) != 2:
                raise BenchError(f"unexpected `show memory` total: {text!r}")
            effective, overhead = (round(float(n) * _UNITS[unit]) for n, unit in sizes)
            return effective, overhead
    raise BenchError("no Total line in `show memory`")


def resident(pid: int) -> dict[str, int]:
    """VmRSS (counts the binary's and libraries' pages, shared by all BIRDs) and RssAnon
    (its own heap and stacks) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            fields[key] = int(value.split()[0]) * 1024
    if len(fields) != 2:
        raise BenchError(f"no VmRSS/RssAnon for pid {pid}")
    return {"rss": fields["VmRSS"], "rss_anon": fields["RssAnon"]}


class Cluster:
    """The N namespaces on one bridge and the BIRDs of the running scenario."""

    def __init__(self, count: int) -> None:
        from podnet.lab.sandbox import Sandbox

        self.count = count
        self.sandbox = Sandbox(PREFIX)
        # short: a control socket's path is limited to 108 bytes
        self.tmp = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.nodes: list[Node] = []
        self.started: list[
            tuple[int, Path]
        ] = []  # every BIRD's pid and socket, for the leftover check

    def build(self) -> None:
        """The namespaces, the bridge, and every node's ARP entries for the others.

        Why static ARP: the kernel's neighbour table is one for all namespaces, and
        beyond gc_thresh3 (1024 on this machine, a root sysctl we leave alone) no entry
        can be created ("neighbor table overflow"): the mesh needs N * (N-1) = 2450 at
        50 nodes, so a few dozen sessions stayed in Connect for minutes, and other labs
        on the machine lost ARP too. Permanent entries are exempt from that limit."""
        from podnet.kernel import netns
        from podnet.lab.sandbox import ip
        from podnet.model.cluster import NodeLease

        sw = self.sandbox.netns("sw")
        ip("-n", sw, "link", "add", "br0", "type", "bridge")
        ip("-n", sw, "link", "set", "br0", "up")
        hosts = list(UNDERLAY.hosts())[: self.count]
        macs = [f"02:50:00:00:{i >> 8:02x}:{i & 255:02x}" for i in range(self.count)]
        for i, host in enumerate(hosts):
            ns = self.sandbox.netns(f"n{i}")
            # created in the switch namespace, its peer moved straight into the node's
            peer = ["peer", "name", "eth0", "netns", ns, "address", macs[i]]
            ip("-n", sw, "link", "add", f"p{i}", "type", "veth", *peer)
            ip("-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{host}/{UNDERLAY.prefixlen}", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            neighbours = "".join(
                f"neigh replace {other} lladdr {mac} dev eth0 nud permanent\n"
                for other, mac in zip(hosts, macs, strict=True)
                if other != host
            )
            batch = ["ip", "-n", ns, "-batch", "-"]
            subprocess.run(batch, input=neighbours, text=True, capture_output=True, check=True)
            lease = NodeLease(
                name=f"node{i}",
                block=f"10.244.{i}.0/{BLOCK_PREFIX}",
                underlay_ip=str(host),
                underlay_if="eth0",
                fabric="bgp",
            )
            self.nodes.append(Node(i, ns, lease, netns.open_netns(self.sandbox.path(ns))))

    # -- one scenario

    def start(self, scenario: str) -> float:
        """Every node's BIRD on the fabric's own BirdSpec for `scenario`; the time the
        first one was started (monotonic)."""
        from dataclasses import replace

        from podnet.bgp.bird import BirdDaemon
        from podnet.bgp.kinds import read_configuration, read_peer
        from podnet.bgp.render import render
        from podnet.fabric.base import FabricContext
        from podnet.fabric.bgp import bird_spec
        from podnet.kernel import netns
        from podnet.lab import routers
        from podnet.lab import topology as topo

        docs = []
        if scenario == "rr":  # what `lab up` applies for `routeReflector: true` nodes
            docs = routers.reflector_objects(
                [
                    topo.Node(n.lease.name, 0, n.index, n.index, n.index < REFLECTORS)
                    for n in self.nodes
                ]
            )
        configs = [read_configuration(d, "bench") for d in docs if d["kind"] == "BGPConfiguration"]
        peers = [read_peer(d, "bench") for d in docs if d["kind"] == "BGPPeer"]
        labels = {routers.REFLECTOR_LABEL: "true"} if scenario == "rr" else {}
        leases = [
            replace(n.lease, labels=labels if n.index < REFLECTORS else {}) for n in self.nodes
        ]
        for node in self.nodes:
            ctx = FabricContext(
                own=leases[node.index],
                underlay=ipaddress.IPv4Interface(f"{node.lease.underlay_ip}/{UNDERLAY.prefixlen}"),
                underlay_mtu=1500,
                cluster=CLUSTER,
                block_prefix=BLOCK_PREFIX,
            )
            others = [lease for lease in leases if lease.name != node.lease.name]
            node.spec = bird_spec(ctx, others, configs, peers)
            node.daemon = BirdDaemon(self.tmp / scenario / f"n{node.index}")
        t0 = time.monotonic()
        for node in self.nodes:
            # BIRD is forked from this thread, so it lives in the node's namespace
            with netns.entered(node.fd):
                node.daemon.ensure(render(node.spec))
            node.pid = node.daemon.pid()
            if node.pid is None:
                raise BenchError(f"{node.netns}: BIRD started but has no pid")
            self.started.append((node.pid, node.daemon.ctl))
        return t0

    def converged(self, node: Node) -> bool:
        """Every session of this BIRD Established and all N blocks in its table."""
        from podnet.bgp.birdc import BirdError

        try:
            sessions = [p for p in node.daemon.control.protocols() if p["proto"] == "BGP"]
            if len(sessions) != len(node.spec.neighbors) or any(
                p["info"] != "Established" for p in sessions
            ):
                return False
            return node.daemon.control.routes_count()["networks"] >= self.count
        except BirdError:
            return False

    def kernel_routes(self, node: Node) -> int:
        """How many other nodes' blocks this node's kernel routes, by BIRD, straight to
        that node (a reflected route keeps its originator's next hop). Other proto bird
        routes (the node's own block, where BIRD installs it as a blackhole) do not count."""
        out = subprocess.run(
            ["ip", "-n", node.netns, "-j", "route", "show", "proto", BIRD_ROUTE_PROTO],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        via = {r["dst"]: r.get("gateway") for r in json.loads(out or "[]")}
        return sum(
            via.get(other.lease.block) == other.lease.underlay_ip
            for other in self.nodes
            if other is not node
        )

    def wait(self, t0: float, timeout: float) -> dict:
        """Poll until BIRD, then the kernels, have converged; seconds since t0."""
        deadline = t0 + timeout
        self._until(deadline, self.converged, lambda n: f"BIRD not converged: {self.describe(n)}")
        bird_s = time.monotonic() - t0
        self._until(
            deadline,
            lambda n: self.kernel_routes(n) == self.count - 1,
            lambda n: f"{self.kernel_routes(n)} of {self.count - 1} blocks in the kernel",
        )
        return {"bird_s": round(bird_s, 2), "kernel_s": round(time.monotonic() - t0, 2)}

    def _until(
        self, deadline: float, done: Callable[[Node], bool], why: Callable[[Node], str]
    ) -> None:
        pending = list(self.nodes)
        while pending:
            pending = [n for n in pending if not done(n)]
            if pending and time.monotonic() > deadline:
                raise BenchError(
                    f"{len(pending)} nodes not converged in time, e.g. {pending[0].netns}: {why(pending[0])}"
                )
            if pending:
                time.sleep(0.05)

    def describe(self, node: Node) -> str:
        from podnet.bgp.birdc import BirdError

        try:
            rows = [p for p in node.daemon.control.protocols() if p["proto"] == "BGP"]
            up = sum(p["info"] == "Established" for p in rows)
            return (
                f"{up}/{len(node.spec.neighbors)} sessions Established, "
                f"{node.daemon.control.routes_count()['networks']} networks"
            )
        except BirdError as exc:
            return str(exc)

    def measure(self, node: Node) -> dict:
        """One BIRD's sessions and memory."""
        control = node.daemon.control
        rows = [p for p in control.protocols() if p["proto"] == "BGP"]
        effective, overhead = parse_memory_total(control.command("show memory"))
        return {
            "node": node.lease.name,
            "reflector": node.spec.rr_cluster_id is not None,
            "sessions": len(rows),
            "established": sum(p["info"] == "Established" for p in rows),
            "bird_total": effective + overhead,
            "bird_effective": effective,
            "bird_overhead": overhead,
            **resident(node.pid),
            "kernel_routes": self.kernel_routes(node),
        }

    def stop(self) -> list[str]:
        """Every BIRD of the scenario down by its checked PID, its routes (kept by
        `persist`) flushed so the next scenario starts from empty kernels."""
        from podnet.lab.sandbox import ip

        problems = []
        for node in self.nodes:
            if node.daemon is None:
                continue
            with contextlib.suppress(OSError):
                node.daemon.stop()  # waits for the process itself, by its checked pid
            if node.pid is not None and _is_bird(node.pid, node.daemon.ctl):
                problems.append(f"BIRD pid {node.pid} in {node.netns} still running")
            ip("-n", node.netns, "route", "flush", "proto", BIRD_ROUTE_PROTO, check=False)
            node.daemon, node.pid = None, None
        return problems

    def close(self) -> list[str]:
        problems = self.stop()
        for node in self.nodes:
            os.close(node.fd)
        problems += close_sandbox(self.sandbox)
        left = [pid for pid, ctl in self.started if _is_bird(pid, ctl)]
        if left:
            problems.append(f"BIRD processes still running: {left}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.tmp.exists():
            problems.append(f"{self.tmp} still present")
        return problems


def _is_bird(pid: int, ctl: Path) -> bool:
    try:
        return str(ctl) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split(
            "\0"
        )
    except OSError:
        return False


def spread(values: list[float]) -> dict:
    return (
        {"sum": sum(values), "median": statistics.median(values), "max": max(values)}
        if values
        else {}
    )


def summarize(rows: list[dict]) -> dict:
    """Sessions and memory of a set of nodes (sum, median, max)."""
    return {
        "nodes": len(rows),
        "sessions": spread([r["sessions"] for r in rows]),
        "bird_total": spread([r["bird_total"] for r in rows]),
        "rss": spread([r["rss"] for r in rows]),
        "rss_anon": spread([r["rss_anon"] for r in rows]),
    }


def run_scenario(cluster: Cluster, scenario: str, args: argparse.Namespace) -> dict:
    t0 = cluster.start(scenario)
    started_s = time.monotonic() - t0
    times = cluster.wait(t0, args.timeout)
    time.sleep(args.settle)
    rows = [cluster.measure(n) for n in cluster.nodes]
    bad = [
        f"{r['node']}: {r['established']}/{r['sessions']} Established, {r['kernel_routes']} routes"
        for r in rows
        if r["established"] != r["sessions"] or r["kernel_routes"] != cluster.count - 1
    ]
    if bad:
        raise BenchError(
            f"{scenario}: after settling, expected {cluster.count - 1} routes: {bad[:5]}"
        )
    sessions = sum(r["sessions"] for r in rows)
    result = {
        "scenario": scenario,
        "sessions": sessions,
        "peerings": sessions // 2,
        "start_s": round(started_s, 2),
        **times,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "all": summarize(rows),
        "nodes": rows,
    }
    if scenario == "rr":
        result["reflectors"] = summarize([r for r in rows if r["reflector"]])
        result["clients"] = summarize([r for r in rows if not r["reflector"]])
    log(
        f"{scenario}: {sessions} sessions ({sessions // 2} peerings), BIRD converged {times['bird_s']}s, "
        f"kernels {times['kernel_s']}s (BIRDs started in {started_s:.1f}s), BIRD total "
        f"{result['all']['bird_total']['sum'] / 2**20:.1f} MiB, RSS {result['all']['rss']['sum'] / 2**20:.1f} MiB"
    )
    return result


def median_of(rounds: list[dict], path: tuple[str, ...]) -> float:
    values = []
    for r in rounds:
        for key in path:
            r = r[key]
        values.append(r)
    return statistics.median(values)


FIGURES = {  # ratio name -> path into a scenario's result
    "sessions": ("sessions",),
    "bird_total_sum": ("all", "bird_total", "sum"),
    "bird_total_median": ("all", "bird_total", "median"),
    "rss_sum": ("all", "rss", "sum"),
    "rss_median": ("all", "rss", "median"),
    "rss_anon_sum": ("all", "rss_anon", "sum"),
    "bird_s": ("bird_s",),
    "kernel_s": ("kernel_s",),
}


def bench(args: argparse.Namespace) -> dict:
    if not shutil.which("bird"):
        raise BenchError("BIRD 2 (Debian bird2) is not installed")
    cluster = Cluster(args.nodes)
    rounds: dict[str, list[dict]] = {s: [] for s in SCENARIOS}
    problems: list[str] = []
    outcome: dict = {
        "machine": machine(),
        "nodes": args.nodes,
        "reflectors": REFLECTORS,
        "repeat": args.repeat,
    }
    try:
        t0 = time.monotonic()
        cluster.build()
        log(
            f"{args.nodes} namespaces on one bridge in {time.monotonic() - t0:.1f}s ({cluster.sandbox.token})"
        )
        for i in range(args.repeat):
            for scenario in SCENARIOS if i % 2 == 0 else reversed(SCENARIOS):
                rounds[scenario].append(run_scenario(cluster, scenario, args))
                problems += cluster.stop()
    finally:
        with no_interrupt():
            problems += cluster.close()
        for problem in problems:
            log(f"cleanup problem: {problem}")
    outcome["scenarios"] = {
        s: {"rounds": rs, "median": {k: median_of(rs, p) for k, p in FIGURES.items()}}
        for s, rs in rounds.items()
    }
    if not args.per_node:
        for rs in rounds.values():
            for r in rs:
                r.pop("nodes")
    mesh, rr = (outcome["scenarios"][s]["median"] for s in SCENARIOS)
    outcome["ratios_mesh_rr"] = {k: round(mesh[k] / rr[k], 2) if rr[k] else None for k in FIGURES}
    outcome["cleanup"] = {"ok": not problems, "problems": problems}
    return outcome


def render_outcome(outcome: dict) -> None:
    from rich.table import Table

    con = console(180)

    def mib(d: dict) -> str:
        return f"{d['sum'] / 2**20:.1f} / {d['median'] / 2**10:.0f} / {d['max'] / 2**10:.0f}"

    table = Table(
        title=f"BGP at {outcome['nodes']} nodes: full mesh vs {outcome['reflectors']} route reflectors "
        f"({outcome['machine']['cpus']} CPUs, {outcome['repeat']} round(s), last round shown; "
        "memory: sum MiB / median KiB / max KiB)"
    )
    for col in (
        "scenario",
        "nodes",
        "BGP sessions (sum / median / max per node)",
        "peerings",
        "converged: BIRD / kernel",
        "BIRD show memory Total",
        "BIRD VmRSS",
        "BIRD RssAnon",
        "load 1m",
    ):
        table.add_column(col, justify="right")
    for name, scenario in outcome["scenarios"].items():
        last = scenario["rounds"][-1]
        med = scenario["median"]
        groups = [("all", last["all"])]
        if name == "rr":
            groups += [("reflectors", last["reflectors"]), ("clients", last["clients"])]
        for group, s in groups:
            first = group == "all"
            sessions = s["sessions"]
            table.add_row(
                name if first else f"  {group}",
                str(s["nodes"]),
                f"{sessions['sum']} / {sessions['median']:g} / {sessions['max']}",
                str(last["peerings"]) if first else "",
                f"{med['bird_s']:.2f} / {med['kernel_s']:.2f} s" if first else "",
                mib(s["bird_total"]),
                mib(s["rss"]),
                mib(s["rss_anon"]),
                f"{last['loadavg_1m']:.2f}" if first else "",
            )
    con.print(table)
    ratios = outcome["ratios_mesh_rr"]
    con.print(
        "mesh / rr: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if v is not None)
    )
    con.print(
        "convergence: median over rounds, from the first BIRD's start; BIRD Total = effective + overhead"
    )
    print_cleanup(con, outcome, "cleanup: no namespace, BIRD or temp dir left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50, help=f"nodes (3..{MAX_NODES}, default 50)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of both scenarios, order alternating (default 1)",
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds after convergence before memory is read"
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds a scenario may take to converge"
    )
    parser.add_argument(
        "--per-node", action="store_true", help="with --json: every node's figures too"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable results only")
    args = parser.parse_args(argv)
    if not REFLECTORS < args.nodes <= MAX_NODES or args.repeat < 1:
        parser.error(f"--nodes must be in {REFLECTORS + 1}..{MAX_NODES} and --repeat >= 1")
    if os.geteuid() != 0:
        print("bgp_scale: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    return run_bench("bgp_scale", bench, args, render_outcome)


if __name__ == "__main__":
    sys.exit(main())
