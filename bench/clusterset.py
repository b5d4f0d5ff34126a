"""Two clusters joined over a WAN (issue 17) against one cluster: cross-cluster TCP
throughput and request latency against in-cluster, the time from a ServiceExport to a
name resolvable in the other cluster, and the gateway failover time; one run.

    sudo .venv/bin/python bench/clusterset.py [--seconds 5] [--repeat 3] [--requests 2000] [--global] [--encrypt] [--json]

Builds a WAN (`podnet wan up`, 100.64.0.0/24) and two 2-node vxlan labs, west (10.244/16,
services 10.96/16, cluster DNS) and east (10.245/16, 10.97/16), with pods `a` (node0),
`b` (node1) and `web` (node1, app=web) each; both node0s and west's node1 are gateway
candidates; `podnet cluster join`. Measured, interleaved per round:
- throughput: iperf3 TCP, one stream, west b (node1) -> west a (node0), in-cluster
  (one vxlan hop) against west b -> east b (member -> gateway -> VXLAN over the WAN ->
  gateway -> member: two fabric hops and the tunnel); ratio cross / in;
- latency: `--requests` request/answer round trips of the lab echo's line protocol on
  one TCP connection from west b, to west a and to east b; p50/p90/p99 and ratio;
- export -> resolvable: a ServiceExport of `web` applied in east, west's cluster DNS
  asked every 50 ms for web.default.svc.clusterset.local from west b until it answers;
  then deleted (and waited out) for the next round;
- failover (once, last): west's gateway in charge fails as a node does (its agent
  killed with SIGKILL, its WAN link cut with `wan unplug`; the agent's death alone
  leaves its data plane carrying traffic), requests from east b to the west pod on the
  other node every 50 ms (0.5 s timeout) until one is answered: time to the first answer.
`--global`: east gets west's very ranges, and each a global CIDR (west 242.0.0.0/15,
east 242.2.0.0/15): the cross-cluster paths go to global IPs, through the gateways'
prefix NAT and, for the export, east's global-web Service (clusterset/globalnet.py).
`--encrypt`: the two join with `--encrypt`: the gateways tunnel through the gossip
fabric's encrypted sleeve (clusterset/sleeve.py) instead of VXLAN.
Everything is torn down by name (both labs, the WAN), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    BenchError,
    Iperf,
    close_lab,
    console,
    log,
    machine,
    no_interrupt,
    nsenter,
    percentile,
    print_cleanup,
    run_bench,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

RANGES = {"west": ("10.244.0.0/16", "10.96.0.0/16"), "east": ("10.245.0.0/16", "10.97.0.0/16")}
GLOBAL = {"west": "242.0.0.0/15", "east": "242.2.0.0/15"}  # --global: both clusters on west's ranges
PORT = [{"port": 80, "protocol": "TCP", "name": "http"}]
NAME = "web.default.svc.clusterset.local"
EXPORT = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 80}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: web, namespace: default}
"""
# round trips of the lab echo's line protocol on one connection: microseconds each
PINGPONG = r"""
import socket, sys, time, json
s = socket.create_connection((sys.argv[1], 80), timeout=3); s.setsockopt(6, 1, 1); f = s.makefile("rb")
out = []
for i in range(int(sys.argv[2])):
    t = time.perf_counter(); s.sendall(b"x\n"); f.readline(); out.append((time.perf_counter() - t) * 1e6)
print(json.dumps(out))
"""
PROBE = str(ROOT / "src" / "podnet" / "observe" / "probe.py")  # runs alone: python -I -S PROBE SPEC
DNS_SPEC = json.dumps({"kind": "dns", "dst": "10.96.0.10", "port": 53, "name": "web.default.svc.clusterset.local",
                       "qtype": "A", "tcp": False, "timeout": 0.5})


def podnet(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "podnet.cli", *args], capture_output=True, text=True, timeout=180,
                         check=False)
    if check and out.returncode:
        raise BenchError(f"podnet {' '.join(args)}: {(out.stderr or out.stdout).strip()[-400:]}")
    return out


class Clusters:
    def __init__(self, tag: str, global_cidrs: bool = False, encrypt: bool = False) -> None:
        self.global_cidrs, self.encrypt = global_cidrs, encrypt
        self.names = {"west": f"w{tag}", "east": f"e{tag}"}
        self.wan = f"b{tag}"
        self.work = Path(tempfile.mkdtemp(prefix="pn-bench-cs-"))
        self.state: dict[str, dict] = {}

    def up(self) -> None:
        podnet("wan", "up", self.wan)
        for role, (pods, services) in RANGES.items():
            if self.global_cidrs:
                pods, services = RANGES["west"]
            topo = {"nodes": [{"name": "node0"}, {"name": "node1"}],
                    "pods": [{"name": n, "namespace": "default", "node": node, "labels": {"app": app}, "ports": PORT}
                             for n, node, app in (("a", "node0", "client"), ("b", "node1", "client"),
                                                  ("web", "node1", "web"))]}
            path = self.work / f"{role}.json"
            path.write_text(json.dumps(topo))
            podnet("lab", "up", "--lab", self.names[role], "-f", str(path), "--cluster-cidr", pods,
                   "--service-cidr", services, *(() if role == "west" else ("--no-cluster-dns",)))
        for role, node in (("west", "node0"), ("east", "node0"), ("west", "node1")):
            podnet("cluster", "gateway", "add", node, "--wan", self.wan, "--lab", self.names[role])
        if self.global_cidrs:
            for role, name in self.names.items():
                podnet("cluster", "init", "--lab", name, "--global-cidr", GLOBAL[role])
        podnet("cluster", "join", self.names["east"], "--peer-lab", self.names["east"], "--lab", self.names["west"],
               *(("--encrypt",) if self.encrypt else ()))
        from podnet.lab.state import state_file

        self.state = {role: json.loads(state_file(name).read_text()) for role, name in self.names.items()}
        deadline = time.monotonic() + 60
        while not all(self.healthy(r) for r in self.names):
            if time.monotonic() > deadline:
                raise BenchError("the clusterset did not become healthy within 60 s")
            time.sleep(0.5)

    def status(self, role: str) -> dict:
        return json.loads(podnet("cluster", "status", "--lab", self.names[role], "-o", "json", check=False).stdout)

    def healthy(self, role: str) -> bool:
        status = self.status(role)
        return not status["problems"] and bool(status["active"])

    def netns(self, role: str, pod: str) -> str:
        return self.state[role]["pods"][f"default/{pod}"]["netns"]

    def ip(self, role: str, pod: str) -> str:
        return self.state[role]["pods"][f"default/{pod}"]["ips"][0].split("/")[0]

    def reach(self, role: str, pod: str) -> str:
        """The address the other cluster calls the pod on (its global IP with --global)."""
        if not self.global_cidrs:
            return self.ip(role, pod)
        from podnet.clusterset.globalnet import layout

        return layout(GLOBAL[role], *RANGES["west"]).pod_ip(self.ip(role, pod))

    def in_pod(self, role: str, pod: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*nsenter(self.netns(role, pod)), *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def apply(self, role: str, verb: str) -> None:
        path = self.work / "export.yaml"
        path.write_text(EXPORT)
        podnet(verb, "-f", str(path), "--lab", self.names[role])

    def close(self) -> list[str]:
        problems = []
        for name in self.names.values():
            problems += close_lab(name)
        out = podnet("wan", "down", self.wan, check=False)
        if out.returncode:
            problems.append(f"wan down {self.wan}: {out.stderr.strip()[-300:]}")
        return problems


def latency(cs: Clusters, target: str, requests: int) -> list[float]:
    out = cs.in_pod("west", "b", sys.executable, "-c", PINGPONG, target, str(requests))
    if out.returncode:
        raise BenchError(f"request loop to {target}: {out.stderr.strip()[-300:]}")
    return [us / 1000 for us in json.loads(out.stdout)]


def export_to_resolvable(cs: Clusters) -> float:
    started = time.monotonic()
    cs.apply("east", "apply")
    try:
        while time.monotonic() - started < 30:
            out = cs.in_pod("west", "b", sys.executable, "-I", "-S", PROBE, DNS_SPEC, timeout=10)
            if out.returncode == 0 and json.loads(out.stdout).get("detail", "").startswith("answer "):
                return round(time.monotonic() - started, 3)
            time.sleep(0.05)
        raise BenchError(f"{NAME} was not resolvable in west within 30 s")
    finally:
        cs.apply("east", "delete")
        gone = time.monotonic()
        while "NXDOMAIN" not in cs.in_pod("west", "b", sys.executable, "-I", "-S", PROBE, DNS_SPEC, timeout=10).stdout \
                and time.monotonic() - gone < 30:
            time.sleep(0.2)


def failover(cs: Clusters) -> dict:
    from podnet.lab.state import lab_dir

    gone = cs.status("west")["active"]["node"]
    target = cs.reach("west", "a" if gone == "node1" else "b")  # a pod on the node that stays
    entry = json.loads((lab_dir(cs.names["west"]) / "procs.json").read_text())[f"agent/{gone}"]
    probe = ("import socket, sys; s = socket.create_connection((sys.argv[1], 80), timeout=0.5); "
             "s.sendall(b'x\\n'); s.settimeout(0.5); print(s.recv(100).decode().strip())")
    os.kill(entry["pid"], signal.SIGKILL)  # the node fails: its agent and its WAN link
    podnet("wan", "unplug", cs.wan, "--lab", cs.names["west"], "--node", gone)
    killed = time.monotonic()
    tries = 0
    while time.monotonic() - killed < 30:
        tries += 1
        if cs.in_pod("east", "b", sys.executable, "-c", probe, target, timeout=5).returncode == 0:
            return {"gateway": gone, "seconds": round(time.monotonic() - killed, 2), "tries": tries,
                    "now": cs.status("west")["active"]}
        time.sleep(0.05)
    raise BenchError("west was not reachable again within 30 s of its gateway's agent dying")


def bench(args: argparse.Namespace) -> dict:
    import secrets

    cs, iperf = Clusters(secrets.token_hex(2), args.global_cidrs, args.encrypt), Iperf()
    problems: list[str] = []
    outcome: dict = {}
    try:
        started = time.monotonic()
        cs.up()
        log(f"clusterset {cs.names} over WAN {cs.wan} up and healthy in {time.monotonic() - started:.1f}s")
        servers = {"in-cluster": ("west", "a"), "cross-cluster": ("east", "b")}
        for role, pod in servers.values():
            iperf.server(cs.netns(role, pod), cs.ip(role, pod))
        runs: dict[str, list] = {k: [] for k in servers}
        lat: dict[str, list[float]] = {k: [] for k in servers}
        resolvable: list[float] = []
        for r in range(args.repeat):
            for path in list(servers)[r % 2:] + list(servers)[:r % 2]:
                role, pod = servers[path]
                target = cs.ip(role, pod) if role == "west" else cs.reach(role, pod)
                runs[path].append(Iperf.client(cs.netns("west", "b"), target, args.seconds))
                lat[path] += latency(cs, target, args.requests)
                log(f"round {r + 1} {path}: {runs[path][-1]['gbps']:.2f} Gbit/s, "
                    f"p50 {percentile(lat[path][-args.requests:], 0.5):.3f} ms")
            resolvable.append(export_to_resolvable(cs))
            log(f"round {r + 1}: export -> resolvable in west {resolvable[-1]} s")
        gbps = {k: statistics.median(run["gbps"] for run in v) for k, v in runs.items()}
        quant = {k: {q: round(percentile(v, p), 3) for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
                 for k, v in lat.items()}
        outcome = {"global": args.global_cidrs, "encrypt": args.encrypt, "seconds": args.seconds,
                   "repeat": args.repeat, "requests": args.requests, "machine": machine(),
                   "throughput_gbps": {k: [round(run["gbps"], 3) for run in v] for k, v in runs.items()},
                   "median_gbps": {k: round(v, 3) for k, v in gbps.items()},
                   "throughput_ratio": round(gbps["cross-cluster"] / gbps["in-cluster"], 3),
                   "latency_ms": quant,
                   "latency_ratio_p50": round(quant["cross-cluster"]["p50"] / quant["in-cluster"]["p50"], 3),
                   "export_to_resolvable_s": resolvable, "failover": failover(cs)}
    finally:
        with no_interrupt():
            problems += iperf.close()
            problems += cs.close()
    outcome["cleanup"] = {"ok": not problems, "problems": problems}
    return outcome


def render(outcome: dict) -> None:
    from rich.table import Table

    con = console()
    how = (" on global IPs (both clusters on the same ranges)" if outcome.get("global") else "") + (
        ", encrypted tunnel" if outcome.get("encrypt") else "")
    table = Table(title=f"west b -> in-cluster (west a) and cross-cluster (east b{how}), {outcome['repeat']} rounds")
    for col in ("path", "iperf3 Gbit/s (median)", "runs", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for path, lat in outcome["latency_ms"].items():
        table.add_row(path, f"{outcome['median_gbps'][path]:.2f}",
                      " ".join(f"{g:.2f}" for g in outcome["throughput_gbps"][path]),
                      *(f"{lat[q]:.3f}" for q in ("p50", "p90", "p99")))
    con.print(table)
    con.print(f"cross / in-cluster: throughput {outcome['throughput_ratio']}x, p50 latency "
              f"{outcome['latency_ratio_p50']}x")
    con.print(f"ServiceExport in east -> {NAME} resolvable in west: {outcome['export_to_resolvable_s']} s")
    fo = outcome["failover"]
    con.print(f"gateway failover: {fo['gateway']}'s agent killed -> east reaches west again after {fo['seconds']} s "
              f"({fo['tries']} probes; now {fo['now']['node'] if fo['now'] else '-'})")
    print_cleanup(con, outcome, "cleanup: both labs and the WAN torn down, no namespace left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="iperf3 -t per run (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, interleaved (default 3)")
    parser.add_argument("--requests", type=int, default=2000, help="round trips per latency run (default 2000)")
    parser.add_argument("--global", dest="global_cidrs", action="store_true",
                        help="both clusters on the same ranges, reached on global IPs")
    parser.add_argument("--encrypt", action="store_true", help="join with --encrypt (the sleeve, not VXLAN)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeat < 1 or args.requests < 10:
        parser.error("--seconds must be > 0, --repeat >= 1, --requests >= 10")
    if os.geteuid() != 0:
        print("clusterset: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    return run_bench("clusterset", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
