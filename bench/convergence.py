"""Convergence: from a pod ADD on node A until node B, or a pod on it, reaches it.

    .venv/bin/python bench/convergence.py [--pods 100] [--nodes 3 [20 ...]]
                                          [--store sqlite [etcd]] [--json]
                                          [--fabric vxlan|host-gw|bgp] [--racks R]
                                          [--from pod|node [pod|node]]
    .venv/bin/python bench/convergence.py --fabric bgp --racks 2 --nodes 4 --from node pod

For each (nodes, store) combination a lab is built with `podnet.lab.builder.LabBuilder`
(the code behind `podnet lab up`): N nodes dealt round-robin over R racks as `lab up
--racks R` deals them, one probe pod on node B, no other pods. Node A is node0 (rack 0);
node B is the last node, with R > 1 the last node of another rack than A's. Then, one pod
at a time, on node A:

1. its namespace `pn-lab-<lab>-p-conv-<i>` is created (recorded in the lab's state file,
   so `lab down` removes it) and a TCP listener is opened inside it on port 80 (before
   the ADD: the measure is the network, not a server's start-up); node B's routing table
   is read (`ip -j route show table all`, not timed, see "New blocks");
2. t0: CNI ADD through the real path, node A's `cluster.conflist` executed the way
   libcni does (`podnet.runtime.libcni.Conflist`, each plugin exec'd under
   `nsenter --net=<node A>`, the thin `podnet` plugin -> node A's agent);
3. t_add: the ADD returned the pod's address; from a thread that lives in node B's own
   namespace (`--from node`: issue 12's "from a node in another rack") and/or one in the
   probe pod's (`--from pod`, the default and this bench's original figure), a
   non-blocking TCP connect to <address>:80 is tried every `--interval-ms` (5 ms: each
   attempt waits at most that long, then a fresh SYN is sent); with both, both poll at
   once;
4. t1: the first connect that completes, per vantage point.

Before the first pod the lab settles for `--settle` seconds (default 10; 0: none) after
`lab up` returned: the figure is a settled cluster's, not its start-up's. Measured on a
50-node etcd lab (issue 19): the first ADD on node A within a second of `lab up` took
131-448 ms in four labs of five, and 52 ms after 15 s; later ADDs 35-50 ms. Until
2026-12-07 the bench did not wait, and its whole-run p99 on etcd came from the first
pods of a run.

Reported per combination and vantage point: convergence t1 - t0 (p50, p99, max), of
which the ADD itself (t_add - t0) and the lag after the ADD returned (t1 - t_add).
Target: p99 <= 1 s (issue 12: 100 pods, from a node in another rack).

New blocks. A pod whose address falls in a block node A already holds, and node B
already routes to, is reachable as soon as its veth and address exist: the figure is the
ADD plus one poll. The first pod of a new block is different: node A leases the block,
and node B can reach it only once the fabric carried the route (vxlan, host-gw: B's agent
sees the lease and adds a route; bgp: A's agent has its BIRD announce the block and, with
R > 1 and no node-to-node mesh, the route travels BIRD on node A -> ToR of A's rack ->
spine -> ToR of B's rack -> BIRD on node B -> B's kernel, lab/routers.py). So before each
ADD the bench records the unicast routes of node B inside the cluster CIDR; a pod whose
address none of them covered is "first pod of a new block", and those and the others get
their own p50/p99/max when any exist. Blocks are the lab's `--block-prefix`: /26 on bgp,
so 100 pods cross into node A's second block (block IPAM, ipam/blocks.py: the ADD claims
it, node A's agent sees the claim and its BIRD announces it); /24 on vxlan and host-gw.

Safety: labs are named `b<hex>` (namespaces `pn-lab-b<hex>-*`); `teardown` removes
exactly what the lab recorded (namespaces, processes by pid:starttime, the routers'
BIRDs included). Teardown runs in a `finally`, also on Ctrl-C, SIGTERM or SIGHUP. The
root network namespace is never changed: the bench's own threads only enter lab
namespaces (setns per thread), and `ip -n` only reads node B's routes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import errno
import ipaddress
import json
import os
import queue
import secrets
import select
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

from benchlib import (
    BenchError,
    close_lab,
    console,
    log,
    no_interrupt,
    percentile,
    print_cleanup,
    run_bench,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

NETNS_DIR = Path("/run/netns")
PORT = 80
TARGET_P99_S = 0.1  # issue 19: p99 <= 100 ms at 50 nodes, on sqlite and on etcd (was 1 s)
GIVE_UP_S = 10.0
VANTAGES = ("pod", "node")


def summary_ms(values: list[float]) -> dict:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 0.5), 2),
        "p99": round(percentile(ms, 0.99), 2),
        "max": round(max(ms), 2) if ms else float("nan"),
        "min": round(min(ms), 2) if ms else float("nan"),
    }


# --------------------------------------------------------------------------------------
# Lab
# --------------------------------------------------------------------------------------
class BenchLab:
    """One lab built with LabBuilder; `close()` tears down exactly what it recorded."""

    def __init__(self, fabric: str, store: str) -> None:
        self.name = f"b{secrets.token_hex(3)}"
        self.fabric = fabric
        self.store = store
        self.state = None
        self.built = False
        self.phases: list[tuple[str, float]] = []

    def up(self, topology) -> None:
        from podnet.lab.builder import LabBuilder, LabOptions

        start = time.monotonic()
        builder = LabBuilder(
            topology,
            LabOptions(self.name, self.fabric, self.store, timeout=60),
            lambda step: self.phases.append((step, round(time.monotonic() - start, 2))),
        )
        self.built = True  # from here on, teardown must run even if build() raises
        self.state = builder.build()

    @property
    def data(self) -> dict:
        assert self.state is not None
        return self.state.data

    def close(self) -> list[str]:
        if not self.built:
            return []
        self.built = False
        return close_lab(self.name)


def remote_node(nodes: int, racks: int) -> str:
    """Node B: the last node, or with racks the last one outside node0's rack 0."""
    others = [i for i in range(nodes) if racks == 1 or i % racks != 0]
    return f"node{others[-1]}"


def topology_for(nodes: int, racks: int = 1):
    from podnet.lab import topology as topo

    raw_nodes = [{"name": f"node{i}", "rack": i % racks} for i in range(nodes)]
    probe = {"name": "probe", "namespace": "default", "node": remote_node(nodes, racks)}
    return topo.parse({"nodes": raw_nodes, "pods": [probe]})


def cluster_routes(netns: str, cluster_cidr: str) -> list[ipaddress.IPv4Network]:
    """The unicast routes of `netns` inside the cluster CIDR: the blocks it can reach
    now (whatever installed them: a fabric's agent, BIRD, the kernel for its own)."""
    from podnet.lab.state import ip

    cluster = ipaddress.ip_network(cluster_cidr)
    routes = json.loads(ip("-n", netns, "-j", "-4", "route", "show", "table", "all").stdout or "[]")
    found = []
    for route in routes:
        if route.get("type", "unicast") != "unicast" or route.get("dst", "default") == "default":
            continue
        dst = ipaddress.ip_network(route["dst"], strict=False)
        if dst.version == 4 and dst.subnet_of(cluster):
            found.append(dst)
    return found


# --------------------------------------------------------------------------------------
# Threads inside lab namespaces
# --------------------------------------------------------------------------------------
class InNamespace:
    """A thread parked in one network namespace, running the callables it is given."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.jobs: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"ns:{path}")
        self.thread.start()
        self.ready.wait(10)
        if self.error:
            raise self.error

    def _run(self) -> None:
        from podnet.kernel.netns import entered, open_netns

        try:
            fd = open_netns(self.path)
        except BaseException as exc:  # reported by the constructor
            self.error = exc
            self.ready.set()
            return
        try:
            with entered(fd):
                self.ready.set()
                while True:
                    job = self.jobs.get()
                    if job is None:
                        return
                    fn, future = job
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed back to the caller
                        future.set_exception(exc)
        finally:
            os.close(fd)

    def submit(self, fn) -> concurrent.futures.Future:
        """Run `fn` in the namespace without waiting (several threads poll at once)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.put((fn, future))
        return future

    def wait(self, future: concurrent.futures.Future, timeout: float = 60.0):
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise BenchError(f"a job in {self.path} took more than {timeout}s") from None

    def call(self, fn, timeout: float = 60.0):
        return self.wait(self.submit(fn), timeout)

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(5)


def listen_tcp(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(64)
    return sock


def poll_connect(address: str, port: int, interval: float, give_up: float) -> tuple[float, int]:
    """(monotonic time of the first completed connect, attempts)."""
    deadline = time.monotonic() + give_up
    attempts = 0
    while True:
        attempts += 1
        started = time.monotonic()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            rc = sock.connect_ex((address, port))
            if rc == 0:
                return time.monotonic(), attempts
            if rc == errno.EINPROGRESS:
                _, writable, _ = select.select([], [sock], [], interval)
                if writable and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    return time.monotonic(), attempts
        finally:
            sock.close()
        now = time.monotonic()
        if now > deadline:
            raise BenchError(f"{address}:{port} not reachable after {give_up}s ({attempts} tries)")
        rest = interval - (now - started)
        if rest > 0:
            time.sleep(rest)


# --------------------------------------------------------------------------------------
# One combination
# --------------------------------------------------------------------------------------
def timings(samples: list[dict]) -> dict:
    """The three figures of a set of samples (t0, t_add, t1 each)."""
    return {
        "convergence_ms": summary_ms([s["t1"] - s["t0"] for s in samples]),
        "add_ms": summary_ms([s["t_add"] - s["t0"] for s in samples]),
        "after_add_ms": summary_ms([s["t1"] - s["t_add"] for s in samples]),
    }


def by_round(samples: list[dict], rounds: int) -> dict:
    """Issue 19: the pods in `rounds` consecutive batches, each batch's p50 and p99; the
    median of those and their spread, and the p99's ratio to the target."""
    from benchlib import median_spread

    size = max(1, len(samples) // max(1, rounds))
    batches = [samples[i * size:(i + 1) * size] for i in range(rounds)]
    batches = [b for b in batches if b]
    p99 = median_spread([summary_ms([s["t1"] - s["t0"] for s in b])["p99"] for b in batches], 2)
    p50 = median_spread([summary_ms([s["t1"] - s["t0"] for s in b])["p50"] for b in batches], 2)
    return {"n": len(batches), "pods_each": size, "p50_ms": p50, "p99_ms": p99,
            "p99_ratio_to_target": round(p99["median"] / (TARGET_P99_S * 1000), 2)}


def vantage_result(base: dict, vantage: str, samples: list[dict]) -> dict:
    """One row of the report: a vantage point's samples, split by block when a pod
    started a block node B had no route to."""
    tries = [s["tries"] for s in samples]
    new = [s for s in samples if s["new_block"]]
    result = {
        **base,
        "from": vantage,
        **timings(samples),
        "rounds": by_round(samples, base.get("rounds", 1)),
        "first_try_share": round(sum(1 for t in tries if t == 1) / len(tries), 3),
        "max_attempts": max(tries),
        "new_block_pods": [s["pod"] for s in new],
        "samples_ms": [round((s["t1"] - s["t0"]) * 1000, 2) for s in samples],
    }
    if new:
        result["by_block"] = {
            "new_block": timings(new),
            "others": timings([s for s in samples if not s["new_block"]]),
        }
    return result


def run_one(nodes: int, store: str, args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    from podnet.lab import topology as topo
    from podnet.lab.state import enter
    from podnet.runtime.libcni import CniFailure, Conflist

    lab = BenchLab(args.fabric, store)
    threads: list[InNamespace] = []
    listeners: list[socket.socket] = []
    problems: list[str] = []
    results: list[dict] = []
    try:
        t0 = time.monotonic()
        lab.up(topology_for(nodes, args.racks))
        up_s = time.monotonic() - t0
        racks = f" in {args.racks} racks" if args.racks > 1 else ""
        log(
            f"lab {lab.name}: {nodes} nodes{racks}, store {store}, {args.fabric}, up in {up_s:.1f}s"
            + (f", settling {args.settle:g}s" if args.settle else "")
        )
        time.sleep(args.settle)
        node_a = lab.data["nodes"]["node0"]
        node_b = remote_node(nodes, args.racks)
        b_netns = lab.data["nodes"][node_b]["netns"]
        paths = {"pod": lab.data["pods"]["default/probe"]["netns"], "node": b_netns}
        probers: dict[str, InNamespace] = {}
        for vantage in args.vantages:
            probers[vantage] = InNamespace(str(NETNS_DIR / paths[vantage]))
            threads.append(probers[vantage])
        conflist = Conflist(
            json.loads(Path(node_a["conflist"]).read_text()),
            [str(lab.state.labdir / "bin"), "/usr/lib/cni"],
            enter=enter(node_a["netns"]),
        )
        samples: dict[str, list[dict]] = {v: [] for v in args.vantages}
        for i in range(args.pods):
            ns = topo.netns_name(lab.name, f"p-conv-{i}")
            lab.state.add_netns(ns)  # recorded in the lab's state file, then created
            pod = InNamespace(str(NETNS_DIR / ns))
            listeners.append(pod.call(lambda: listen_tcp(PORT)))
            pod.close()
            known = cluster_routes(b_netns, topo.CLUSTER_CIDR)
            start = time.monotonic()
            try:
                res = conflist.add(
                    f"conv-{i}",
                    str(NETNS_DIR / ns),
                    "eth0",
                    args=f"K8S_POD_NAMESPACE=conv;K8S_POD_NAME=c{i}",
                )
            except CniFailure as exc:
                raise BenchError(f"ADD of pod {i} on node0 failed: {exc}") from None
            added = time.monotonic()
            address = res["ips"][0]["address"].split("/")[0]
            futures = {
                vantage: prober.submit(
                    lambda a=address: poll_connect(a, PORT, args.interval_ms / 1000, GIVE_UP_S)
                )
                for vantage, prober in probers.items()
            }
            new_block = not any(ipaddress.ip_address(address) in net for net in known)
            for vantage, future in futures.items():
                reached, attempts = probers[vantage].wait(future, GIVE_UP_S + 5)
                samples[vantage].append(
                    {
                        "pod": i,
                        "t0": start,
                        "t_add": added,
                        "t1": reached,
                        "tries": attempts,
                        "new_block": new_block,
                        "address": address,
                    }
                )
            if new_block:
                log(f"  pod {i} ({address}) started a block {node_b} had no route to")
            if (i + 1) % 25 == 0:
                last = max(s[-1]["t1"] for s in samples.values()) - start
                log(f"  {i + 1}/{args.pods} pods, last {1000 * last:.1f} ms")
        base = {
            "nodes": nodes,
            "store": store,
            "fabric": args.fabric,
            "racks": args.racks,
            "lab": lab.name,
            "node_a": "node0",
            "node_b": node_b,
            "rack_a": node_a["rack"],
            "rack_b": lab.data["nodes"][node_b]["rack"],
            "lab_up_s": round(up_s, 2),
            "rounds": args.rounds,
        }
        results = [vantage_result(base, v, samples[v]) for v in args.vantages]
    finally:
        with no_interrupt():
            for sock in listeners:
                sock.close()
            for thread in threads:
                thread.close()
            problems += lab.close()
        for problem in problems:
            log(f"cleanup problem: {problem}")
    return results, problems


def bench(args: argparse.Namespace) -> dict:
    runs, problems = [], []
    for store in args.store:
        for nodes in args.nodes:
            results, trouble = run_one(nodes, store, args)
            runs += results
            problems += trouble
    return {
        "pods": args.pods,
        "interval_ms": args.interval_ms,
        "settle_s": args.settle,
        "racks": args.racks,
        "from": args.vantages,
        "target_p99_ms": TARGET_P99_S * 1000,
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "runs": runs,
        "cleanup": {"ok": not problems, "problems": problems},
    }


def where_from(run: dict) -> str:
    return run["node_b"] if run["from"] == "node" else f"pod@{run['node_b']}"


def render(outcome: dict) -> None:
    from rich.table import Table

    con = console(150)
    # The original table, unchanged, unless racks or vantage points were asked for.
    extended = outcome.get("racks", 1) != 1 or outcome.get("from", ["pod"]) != ["pod"]
    source = "a pod on the last node"
    if extended:
        source = "node B or a pod on it" + (" (another rack)" if outcome["racks"] > 1 else "")
    table = Table(
        title=f"convergence: pod ADD on node0 -> first TCP connect from {source}, ms "
        f"({outcome['pods']} pods, poll {outcome['interval_ms']} ms, {outcome['machine']['cpus']} CPUs)"
    )
    cols = ("nodes", "store", "fabric") + (("racks", "from") if extended else ())
    cols += ("conv p50", "conv p99", "max", "ADD p50", "ADD p99")
    cols += ("after ADD p50", "p99", "1st try", "target p99")
    for col in cols:
        table.add_column(col, justify="left" if col in ("store", "fabric", "from") else "right")
    for r in outcome["runs"]:
        c = r["convergence_ms"]
        ok = c["p99"] <= outcome["target_p99_ms"]
        where = (str(r["racks"]), where_from(r)) if extended else ()
        table.add_row(
            str(r["nodes"]),
            r["store"],
            r["fabric"],
            *where,
            f"{c['p50']:.1f}",
            f"[{'green' if ok else 'red'}]{c['p99']:.1f}[/]",
            f"{c['max']:.1f}",
            f"{r['add_ms']['p50']:.1f}",
            f"{r['add_ms']['p99']:.1f}",
            f"{r['after_add_ms']['p50']:.2f}",
            f"{r['after_add_ms']['p99']:.2f}",
            f"{100 * r['first_try_share']:.0f}%",
            f"<= {outcome['target_p99_ms']:.0f}",
        )
    con.print(table)
    render_blocks(con, outcome, extended)
    print_cleanup(con, outcome, "cleanup: labs torn down, nothing left")
    for r in outcome["runs"]:
        what = f"{r['nodes']} nodes, {r['store']}"
        if extended:
            what += f", {r['fabric']}, {r['racks']} rack(s), from {where_from(r)}"
        if r.get("by_block"):
            new = r["by_block"]["new_block"]["convergence_ms"]
            what += (
                f" (new blocks, {new['n']} pods: p99 {new['p99']:.0f} ms, max {new['max']:.0f} ms)"
            )
        rounds = r.get("rounds") or {}
        per_round = ""
        if rounds.get("n", 0) > 1:
            p99 = rounds["p99_ms"]
            per_round = (f"; p99 of {rounds['n']} rounds of {rounds['pods_each']} pods: {p99['median']:.1f} ms "
                         f"({p99['min']:.1f}-{p99['max']:.1f}), {rounds['p99_ratio_to_target']:.2f}x the target")
        print(
            f"{what}: p99 {r['convergence_ms']['p99']:.1f} ms "
            f"(target <= {outcome['target_p99_ms']:.0f} ms){per_round}"
        )


def render_blocks(con, outcome: dict, extended: bool) -> None:
    """First pods of a block node B had no route to, against the others."""
    from rich.table import Table

    split = [r for r in outcome["runs"] if r.get("by_block")]
    if not split:
        if extended:
            con.print("new blocks: none (every pod's address was in a block node B routed to)")
        return
    table = Table(title="by block: first pod of a block node B had no route to, vs the others, ms")
    for col in ("nodes", "store", "fabric", "racks", "from", "pods", "block"):
        table.add_column(
            col, justify="left" if col in ("store", "fabric", "from", "block") else "right"
        )
    for col in (
        "conv p50",
        "conv p99",
        "max",
        "ADD p50",
        "after ADD p50",
        "after p99",
        "after max",
    ):
        table.add_column(col, justify="right")
    for r in split:
        for kind, label in (("new_block", "new"), ("others", "others")):
            part = r["by_block"][kind]
            c, lag = part["convergence_ms"], part["after_add_ms"]
            table.add_row(
                str(r["nodes"]),
                r["store"],
                r["fabric"],
                str(r["racks"]),
                where_from(r),
                str(c["n"]),
                label,
                *(f"{v:.1f}" for v in (c["p50"], c["p99"], c["max"], part["add_ms"]["p50"])),
                *(f"{v:.2f}" for v in (lag["p50"], lag["p99"], lag["max"])),
            )
    con.print(table)


def main(argv: list[str] | None = None) -> int:
    from podnet.lab.routers import MAX_BGP_RACKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100, help="pods added on node A (default 100)")
    parser.add_argument(
        "--nodes", type=int, nargs="+", default=[3], help="lab size(s), e.g. --nodes 3 20"
    )
    parser.add_argument(
        "--store",
        nargs="+",
        choices=("sqlite", "etcd"),
        default=["sqlite"],
        help="cluster store(s), e.g. --store sqlite etcd",
    )
    parser.add_argument("--fabric", choices=("vxlan", "host-gw", "bgp"), default="vxlan")
    parser.add_argument(
        "--racks",
        type=int,
        default=1,
        help="racks, as `lab up --racks` (default 1); > 1: node B is in another rack than A "
        "(bgp: a ToR per rack and a spine running BIRD, no node-to-node mesh)",
    )
    parser.add_argument(
        "--from",
        dest="vantages",
        nargs="+",
        choices=VANTAGES,
        default=["pod"],
        help="where the connects start: node B's own namespace and/or the probe pod on it "
        "(default pod; both: polled at once)",
    )
    parser.add_argument("--interval-ms", type=float, default=5.0, help="poll period (default 5)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the pods in this many consecutive batches, each with its p99 (default 3)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds between `lab up` and the first pod (default 10; 0: none)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    args.vantages = list(dict.fromkeys(args.vantages))
    if args.rounds < 1 or args.rounds > args.pods:
        parser.error("--rounds must be between 1 and --pods")
    if not 0 <= args.settle <= 600:
        parser.error("--settle must be between 0 and 600 seconds")
    if args.pods < 1 or args.pods > 1000 or any(n < 2 for n in args.nodes):
        parser.error("--pods must be 1..1000 (nodes grow into more blocks) and --nodes >= 2")
    if args.racks < 1 or any(n < args.racks for n in args.nodes):
        parser.error("--racks must be between 1 and the number of nodes")
    if args.fabric == "bgp" and args.racks > MAX_BGP_RACKS:
        parser.error(f"--fabric bgp takes at most {MAX_BGP_RACKS} racks")
    if os.geteuid() != 0:
        print("convergence: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    if "etcd" in args.store and not shutil.which("etcd"):
        print("convergence: --store etcd needs the etcd binary", file=sys.stderr)
        return 2
    if args.fabric == "bgp" and not shutil.which("bird"):
        print("convergence: --fabric bgp needs BIRD (bird, birdc)", file=sys.stderr)
        return 2
    return run_bench("convergence", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
