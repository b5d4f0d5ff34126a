"""Convergence: from a pod ADD on node A until a pod on node B reaches it.

    .venv/bin/python bench/convergence.py [--pods 100] [--nodes 3 [20 ...]]
                                          [--store sqlite [etcd]] [--fabric vxlan] [--json]

For each (nodes, store) combination a lab is built with `podnet.lab.builder.LabBuilder`
(the code behind `podnet lab up`): N nodes, one probe pod on the last node (node B), no
other pods. Then, one pod at a time, on node0 (node A):

1. its namespace `pn-lab-<lab>-p-conv-<i>` is created (recorded in the lab's state file,
   so `lab down` removes it) and a TCP listener is opened inside it on port 80 (before
   the ADD: the measure is the network, not a server's start-up);
2. t0: CNI ADD through the real path, node A's `cluster.conflist` executed the way
   libcni does (`podnet.runtime.libcni.Conflist`, each plugin exec'd under
   `nsenter --net=<node A>`, the thin `podnet` plugin -> node A's agent);
3. t_add: the ADD returned the pod's address; from a thread that lives in the probe pod's
   namespace, a non-blocking TCP connect to <address>:80 is tried every `--interval-ms`
   (5 ms: each attempt waits at most that long, then a fresh SYN is sent);
4. t1: the first connect that completes.

Reported per combination: convergence t1 - t0 (p50, p99, max), of which the ADD itself
(t_add - t0) and the lag after the ADD returned (t1 - t_add). Target: p99 <= 1 s.

Routes only depend on node leases (one block per node), so a new pod on a node whose
block peers already route to is reachable as soon as its veth and address exist: the
convergence here is essentially the ADD latency plus one poll. What this bench does
not measure is a *new node* joining (lease -> peers' routes/FDB), the real fabric
convergence.

Safety: labs are named `b<hex>` (namespaces `pn-lab-b<hex>-*`); `teardown` removes
exactly what the lab recorded (namespaces, processes by pid:starttime). Teardown runs
in a `finally`, also on Ctrl-C, SIGTERM or SIGHUP. The root network namespace is never
changed: the bench's own threads only enter lab namespaces (setns per thread).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import queue
import secrets
import select
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from benchlib import BenchError, close_lab, log, percentile, run_bench

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

NETNS_DIR = Path("/run/netns")
PORT = 80
TARGET_P99_S = 1.0
GIVE_UP_S = 10.0


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


def topology_for(nodes: int):
    from podnet.lab import topology as topo

    raw_nodes = [{"name": f"node{i}", "rack": 0} for i in range(nodes)]
    probe = {"name": "probe", "namespace": "default", "node": f"node{nodes - 1}"}
    return topo.parse({"nodes": raw_nodes, "pods": [probe]})


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
                    fn, box, done = job
                    try:
                        box.append(("ok", fn()))
                    except BaseException as exc:  # handed back to the caller
                        box.append(("err", exc))
                    done.set()
        finally:
            os.close(fd)

    def call(self, fn, timeout: float = 60.0):
        box: list = []
        done = threading.Event()
        self.jobs.put((fn, box, done))
        if not done.wait(timeout):
            raise BenchError(f"a job in {self.path} took more than {timeout}s")
        kind, value = box[0]
        if kind == "err":
            raise value
        return value

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
def run_one(nodes: int, store: str, args: argparse.Namespace) -> tuple[dict, list[str]]:
    from podnet.lab import topology as topo
    from podnet.lab.state import enter
    from podnet.runtime.libcni import CniFailure, Conflist

    lab = BenchLab(args.fabric, store)
    threads: list[InNamespace] = []
    listeners: list[socket.socket] = []
    problems: list[str] = []
    result: dict = {}
    try:
        t0 = time.monotonic()
        lab.up(topology_for(nodes))
        up_s = time.monotonic() - t0
        log(f"lab {lab.name}: {nodes} nodes, store {store}, {args.fabric}, up in {up_s:.1f}s")
        node_a = lab.data["nodes"]["node0"]
        node_b = f"node{nodes - 1}"
        probe_ns = lab.data["pods"]["default/probe"]["netns"]
        prober = InNamespace(str(NETNS_DIR / probe_ns))
        threads.append(prober)
        conflist = Conflist(
            json.loads(Path(node_a["conflist"]).read_text()),
            [str(lab.state.labdir / "bin"), "/usr/lib/cni"],
            enter=enter(node_a["netns"]),
        )
        total, add, lag, tries = [], [], [], []
        for i in range(args.pods):
            ns = topo.netns_name(lab.name, f"p-conv-{i}")
            lab.state.add_netns(ns)  # recorded in the lab's state file, then created
            pod = InNamespace(str(NETNS_DIR / ns))
            listeners.append(pod.call(lambda: listen_tcp(PORT)))
            pod.close()
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
            reached, attempts = prober.call(
                lambda a=address: poll_connect(a, PORT, args.interval_ms / 1000, GIVE_UP_S),
                timeout=GIVE_UP_S + 5,
            )
            total.append(reached - start)
            add.append(added - start)
            lag.append(reached - added)
            tries.append(attempts)
            if (i + 1) % 25 == 0:
                log(f"  {i + 1}/{args.pods} pods, last {1000 * (reached - start):.1f} ms")
        result = {
            "nodes": nodes,
            "store": store,
            "fabric": args.fabric,
            "lab": lab.name,
            "node_a": "node0",
            "node_b": node_b,
            "lab_up_s": round(up_s, 2),
            "convergence_ms": summary_ms(total),
            "add_ms": summary_ms(add),
            "after_add_ms": summary_ms(lag),
            "first_try_share": round(sum(1 for t in tries if t == 1) / len(tries), 3),
            "max_attempts": max(tries),
            "samples_ms": [round(v * 1000, 2) for v in total],
        }
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for sock in listeners:
                sock.close()
            for thread in threads:
                thread.close()
            problems += lab.close()
        finally:
            signal.signal(signal.SIGINT, previous)
        for problem in problems:
            log(f"cleanup problem: {problem}")
    return result, problems


def bench(args: argparse.Namespace) -> dict:
    runs, problems = [], []
    for store in args.store:
        for nodes in args.nodes:
            result, trouble = run_one(nodes, store, args)
            runs.append(result)
            problems += trouble
    return {
        "pods": args.pods,
        "interval_ms": args.interval_ms,
        "target_p99_ms": TARGET_P99_S * 1000,
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "runs": runs,
        "cleanup": {"ok": not problems, "problems": problems},
    }


def render(outcome: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console() if sys.stdout.isatty() else Console(width=150)
    table = Table(
        title=f"convergence: pod ADD on node0 -> first TCP connect from a pod on the last node, ms "
        f"({outcome['pods']} pods, poll {outcome['interval_ms']} ms, {outcome['machine']['cpus']} CPUs)"
    )
    cols = ("nodes", "store", "fabric", "conv p50", "conv p99", "max", "ADD p50", "ADD p99")
    cols += ("after ADD p50", "p99", "1st try", "target p99")
    for col in cols:
        table.add_column(col, justify="left" if col in ("store", "fabric") else "right")
    for r in outcome["runs"]:
        c = r["convergence_ms"]
        ok = c["p99"] <= outcome["target_p99_ms"]
        table.add_row(
            str(r["nodes"]),
            r["store"],
            r["fabric"],
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
    clean = outcome["cleanup"]
    con.print(
        "cleanup: labs torn down, nothing left"
        if clean["ok"]
        else f"[red]cleanup problems:[/] {clean['problems']}"
    )
    for r in outcome["runs"]:
        print(
            f"{r['nodes']} nodes, {r['store']}: p99 {r['convergence_ms']['p99']:.0f} ms "
            f"(target <= {outcome['target_p99_ms']:.0f} ms)"
        )


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--fabric", choices=("vxlan", "host-gw"), default="vxlan")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="poll period (default 5)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.pods > 200 or any(n < 2 for n in args.nodes):
        parser.error("--pods must be 1..200 (one /24 block per node) and --nodes >= 2")
    if os.geteuid() != 0:
        print("convergence: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    if "etcd" in args.store and not shutil.which("etcd"):
        print("convergence: --store etcd needs the etcd binary", file=sys.stderr)
        return 2
    return run_bench("convergence", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
