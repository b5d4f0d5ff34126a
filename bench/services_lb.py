"""Service load balancing at scale: first-packet latency, endpoint-change time and
ClusterIP throughput while 100, 1k and 10k Services exist (issue 11, "Benchmarks").

    .venv/bin/python bench/services_lb.py [--services 100,1000,10000] [--seconds 5] [--no-cluster-dns] [--json]

A 2-node lab (host-gw): `client` on node0, `server` on node1 behind the Service
`bench/svc`; `moving` selects spare-0 and, while labelled `pool=m`, spare-1; N-2
generated Services select other pods, applied with ONE `podnet apply -f` per N, then
the bench waits until every agent reports a revision >= the apply's. Measured in the
same run (medians of `--repeat` interleaved rounds; ratios against the smallest N):
new TCP connections per second and p99 connect time to the ClusterIP (and to the pod
IP); the time from one endpoint change (spare-1 relabelled in the store) until both
agents applied it, with the agents' own figure; iperf3 through the ClusterIP and to
the pod IP. A child under `nsenter --net=` a scratch namespace runs the agent's own
ServicesService on the lab's store: the full table's load time, and one change (fed as
the agent's watch feeds it: the events since the last pass) split into plan (events
into the incremental plan), the rest of the converge (render, stamp) and nft (the one
transaction, through libnftables). `--no-cluster-dns` leaves the agents' cluster DNS
out (its zone follows the same changes, in the same interpreter). bench/README.md has
the details.

Targets: conn/s and p99 at the largest N within 1.1x of the smallest (iptables
kube-proxy: p99 x4.7 from 5k to 30k); one endpoint change <= 50 ms; ClusterIP/pod
throughput >= 0.95x.

Safety: the lab is `v<hex>` (namespaces `pn-lab-v<hex>-*`), the scratch namespace a
lab.Sandbox (`pn-bench-<hex>-svc`); both are torn down by recorded names in a finally,
also on Ctrl-C/SIGTERM; processes are stopped by PID; the root namespace is never
changed (the only nft the bench runs is the child's, in the scratch namespace).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    BenchError,
    Iperf,
    close_lab,
    close_sandbox,
    console,
    log,
    machine,
    no_interrupt,
    nsenter,
    percentile,
    print_cleanup,
    run_bench,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

TARGET_LATENCY_RATIO = 1.1
TARGET_CHANGE_MS = 50.0
TARGET_TPUT_RATIO = 0.95
ECHO_PORT = 80
IPERF_PORT = 5201
NS = "bench"
HTTP = [{"port": ECHO_PORT, "protocol": "TCP", "name": "http"}]


def _pod(name: str, node: int, labels: dict) -> dict:
    return {"name": name, "namespace": NS, "node": f"node{node}", "labels": labels, "ports": HTTP}


TOPOLOGY = {
    "nodes": [{"name": "node0"}, {"name": "node1"}],
    "namespaces": [{"name": NS}],
    "pods": [
        {"name": "client", "namespace": NS, "node": "node0", "labels": {"app": "client"}},
        _pod("server", 1, {"app": "server"}),
        *[_pod(f"other-{k}", k % 2, {"app": f"other-{k}", "tier": "other", "half": "ab"[k // 2]}) for k in range(4)],
        _pod("spare-0", 0, {"app": "spare", "pool": "m"}),
        _pod("spare-1", 1, {"app": "spare"}),
    ],
    "services": [
        {"metadata": {"name": "svc", "namespace": NS}, "spec": {"selector": {"app": "server"}, "ports": [
            {"name": "http", "port": ECHO_PORT, "targetPort": "http"},
            {"name": "iperf", "port": IPERF_PORT, "targetPort": IPERF_PORT}]}},
        {"metadata": {"name": "moving", "namespace": NS},
         "spec": {"selector": {"pool": "m"}, "ports": [{"port": ECHO_PORT, "targetPort": "http"}]}},
    ],
}
FIXED = len(TOPOLOGY["services"])
SELECTORS = ({"tier": "other"}, {"half": "a"}, {"half": "b"})  # 4, 2, 2 backends; else one other-k
CONNECT = (  # connections opened, used and closed (reset: no TIME_WAIT) for argv[3] seconds
    "import json,socket,struct,sys,time\n"
    "dst=(sys.argv[1],int(sys.argv[2])); want=sys.argv[4].encode(); end=time.monotonic()+float(sys.argv[3])\n"
    "linger=struct.pack('ii',1,0); ms=[]; fail=wrong=0; start=time.monotonic()\n"
    "while time.monotonic()<end:\n"
    "    t=time.monotonic()\n"
    "    try:\n"
    "        s=socket.create_connection(dst,timeout=1)\n"
    "    except OSError:\n"
    "        fail+=1; continue\n"
    "    ms.append((time.monotonic()-t)*1000)\n"
    "    try:\n"
    "        s.sendall(b'x\\n'); wrong+=not s.recv(100).startswith(want)\n"
    "    except OSError:\n"
    "        fail+=1\n"
    "    s.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,linger); s.close()\n"
    "print(json.dumps({'rate':len(ms)/(time.monotonic()-start),'fail':fail,'wrong':wrong,"
    "'ms':[round(x,4) for x in ms]}))\n"
)


def generated(start: int, stop: int) -> list[dict]:
    """Services gen-<start>..gen-<stop-1>: one TCP port each, backed by other pods."""
    docs = []
    for i in range(start, stop):
        selector = SELECTORS[i % 4] if i % 4 < 3 else {"app": f"other-{(i // 4) % 4}"}
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"gen-{i}", "namespace": NS},
                     "spec": {"selector": selector, "ports": [{"port": ECHO_PORT, "targetPort": "http"}]}})
    return docs


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = f"v{secrets.token_hex(3)}"
        self.built = False
        self.data: dict = {}
        self.store = None
        self.present = 0  # generated services in the store
        self.labelled = False  # spare-1 carries pool=m

    def up(self, tmp: Path) -> None:
        import yaml

        from podnet.lab import topology as topo
        from podnet.lab.builder import LabBuilder, LabOptions
        from podnet.store import open_store

        path = tmp / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(TOPOLOGY))
        builder = LabBuilder(topo.load(path), LabOptions(self.name, "host-gw", "sqlite", timeout=60,
                                                         cluster_dns=self.args.cluster_dns))
        self.built = True
        self.data = builder.build().data
        self.store = open_store(self.data["store_url"])

    def close(self) -> list[str]:
        if self.store is not None:
            self.store.close()
        if not self.built:
            return []
        self.built = False
        return close_lab(self.name)

    def pod_ip(self, name: str) -> str:
        return self.data["pods"][f"{NS}/{name}"]["ips"][0].split("/")[0]

    def pod_ns(self, name: str) -> str:
        return self.data["pods"][f"{NS}/{name}"]["netns"]

    def cluster_ip(self, name: str) -> str:
        from podnet.objects.store import get_one
        from podnet.services.kinds import SERVICE

        return get_one(self.store, SERVICE, name, NS)["spec"]["clusterIP"]

    def status(self) -> dict[str, dict]:
        from podnet.rpc.client import call

        return {node: call(entry["socket"], "services.status", timeout=30)  # type: ignore[misc]
                for node, entry in self.data["nodes"].items()}

    def converged(self, want: int, timeout: float = 180, poll: float = 0.003) -> float:
        """Seconds until every node's agent reports a revision >= `want`."""
        from podnet.rpc.client import call

        start = time.monotonic()
        pending = {entry["socket"] for entry in self.data["nodes"].values()}
        while pending:
            for sock in list(pending):
                if (call(sock, "services.status", timeout=30).get("revision") or 0) >= want:  # type: ignore[union-attr]
                    pending.discard(sock)
            if time.monotonic() - start > timeout:
                raise BenchError(f"agents did not apply revision {want} within {timeout:.0f} s")
            if pending:
                time.sleep(poll)
        return time.monotonic() - start

    def set_services(self, n: int, tmp: Path) -> dict:
        """N services in all: apply (or delete) the generated ones in one command."""
        from podnet.objects import store as objects
        from podnet.objects.registry import parse_documents

        assert self.store is not None
        want = max(n - FIXED, 0)
        started = time.monotonic()
        how = "none"
        if want > self.present:
            path = tmp / "services.yaml"
            path.write_text("\n---\n".join(json.dumps(d) for d in generated(self.present, want)))  # JSON is YAML
            out = subprocess.run([sys.executable, "-m", "podnet.cli", "apply", "-f", str(path), "--lab", self.name],
                                 capture_output=True, text=True, timeout=600, check=False)
            path.unlink()
            if out.returncode != 0:
                raise BenchError(f"podnet apply -f ({want - self.present} services): {out.stderr.strip()[-400:]}")
            how = f"podnet apply -f, {want - self.present} services"
        elif want < self.present:
            objects.delete(self.store, parse_documents(generated(want, self.present)))
            how = f"store API delete, {self.present - want} services"
        applied = time.monotonic() - started
        self.present = want
        converge = self.converged(self.store.revision(), poll=0.02)
        status = self.status()
        return {"how": how, "apply_s": round(applied, 2), "agents_s": round(converge, 2),
                "agents": {node: {k: s.get(k) for k in ("service_ports", "backends", "applied", "ms")}
                           for node, s in status.items()}}

    def connect(self, ip: str, seconds: float) -> dict:
        argv = [*nsenter(self.pod_ns("client")), sys.executable, "-c", CONNECT, ip, str(ECHO_PORT), str(seconds),
                "server "]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
        if out.returncode != 0:
            raise BenchError(f"connection client failed: {out.stderr.strip()[-300:]}")
        data = json.loads(out.stdout)
        if data["fail"] or data["wrong"] or not data["ms"]:
            raise BenchError(f"to {ip}: {data['fail']} failed and {data['wrong']} answered by another pod "
                             f"of {len(data['ms'])} connections")
        return {"conn_per_s": round(data["rate"], 1), "p50_ms": round(percentile(data["ms"], 0.5), 3),
                "p99_ms": round(percentile(data["ms"], 0.99), 3)}

    def toggle(self) -> None:
        from podnet.objects.store import label
        from podnet.policy.kinds import POD

        label(self.store, POD, f"{NS}/spare-1", ["pool-"] if self.labelled else ["pool=m"])
        self.labelled = not self.labelled

    def change_time(self, rounds: int) -> dict:
        """One endpoint of `moving` joins or leaves; time until both agents applied it."""
        assert self.store is not None
        e2e, write, agent_ms, how = [], [], [], set()
        for _ in range(rounds):
            before = {node: s["backends"] for node, s in self.status().items()}
            start = time.monotonic()
            self.toggle()
            written = time.monotonic()
            self.converged(self.store.revision())
            e2e.append((time.monotonic() - start) * 1000)
            write.append((written - start) * 1000)
            status = self.status()
            step = 1 if self.labelled else -1
            for node, s in status.items():
                if s["backends"] != before[node] + step:
                    raise BenchError(f"{node}: {before[node]} -> {s['backends']} backends, not {step:+d}")
            agent_ms.append(max(s["ms"] for s in status.values()))
            how |= {s["applied"] for s in status.values()}
            time.sleep(0.05)
        if self.labelled:  # back to the state the next N starts from (not timed)
            self.toggle()
            self.converged(self.store.revision())
        return {"end_to_end_ms": [round(t, 1) for t in e2e], "median_ms": round(statistics.median(e2e), 1),
                "max_ms": round(max(e2e), 1), "write_ms": round(statistics.median(write), 1),
                "agent_ms": round(statistics.median(agent_ms), 1), "agent_max_ms": round(max(agent_ms), 1),
                "watch_ms": round(statistics.median(t - a for t, a in zip(e2e, agent_ms, strict=True)), 1),
                "applied": sorted(how)}

    def replica(self, scratch: str, toggles: int) -> dict:
        """The agent's ServicesService, run by a child in the scratch namespace."""
        argv = [*nsenter(scratch), sys.executable, str(Path(__file__).resolve()), "--inner",
                self.data["store_url"], str(toggles)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if out.returncode != 0:
            raise BenchError(f"replica in {scratch} failed: {out.stderr.strip()[-600:]}")
        self.converged(self.store.revision())  # the lab's agents saw its toggles too
        return json.loads(out.stdout)


def inner(store_url: str, toggles: int) -> int:
    """Child (in the scratch namespace): load the whole table as a new agent would, then
    time `toggles` endpoint changes (an even number: spare-1 ends as it was), each fed to
    the service as the agent's watch feeds it (the events since the last pass)."""
    from types import SimpleNamespace

    from podnet.agent.services_service import ServicesService
    from podnet.kernel.libnft import LibNft
    from podnet.lab.topology import CLUSTER_CIDR
    from podnet.model.policy import PodRecord
    from podnet.objects.store import label
    from podnet.policy.kinds import POD
    from podnet.store import open_store

    class TimedNft(LibNft):
        def apply(self, script: str) -> None:
            started = time.monotonic()
            super().apply(script)
            step.update(nft_ms=(time.monotonic() - started) * 1000, script_lines=script.count("\n"))

    store = open_store(store_url, create=False)
    agent = SimpleNamespace(node_options=SimpleNamespace(node="node0", cluster_cidr=CLUSTER_CIDR),
                            service=SimpleNamespace(store=lambda _path: store), store_path=store_url)
    svc = ServicesService(agent, nft=TimedNft())  # type: ignore[arg-type]
    read, refresh = svc._read, svc.cache.refresh
    step: dict = {}

    def timed_read(events):  # the events (or a listing) into the incremental plan
        started = time.monotonic()
        out = read(events)
        step["plan_ms"] = (time.monotonic() - started) * 1000
        return out

    def timed_refresh():  # planning again the services whose inputs changed
        started = time.monotonic()
        out = refresh()
        step["plan_ms"] += (time.monotonic() - started) * 1000
        return out

    svc._read = timed_read  # type: ignore[method-assign]
    svc.cache.refresh = timed_refresh  # type: ignore[method-assign]

    def converge(full: bool, events: list | None = None) -> dict:
        step.clear()
        started = time.monotonic()
        status = svc.converge(full=full, events=events)
        total = (time.monotonic() - started) * 1000
        if status.get("problems") or "nft_ms" not in step:
            raise SystemExit(f"replica: {status.get('problems')}")
        return {"total_ms": round(total, 1), "plan_ms": round(step["plan_ms"], 1),
                "rest_ms": round(total - step["plan_ms"] - step["nft_ms"], 1), "nft_ms": round(step["nft_ms"], 1),
                "script_lines": step["script_lines"], "applied": status.get("applied")}

    full = converge(full=True)
    revision = svc.stats["revision"]
    entry = store.get(POD.key("spare-1", NS))
    pool = entry is not None and PodRecord.from_json(entry.json(), entry.key).labels.get("pool") == "m"
    changes = []
    for _ in range(toggles):
        label(store, POD, f"{NS}/spare-1", ["pool-"] if pool else ["pool=m"])
        pool = not pool
        events = store.watch("", revision, 5.0)
        revision = max(e.revision for e in events)
        changes.append(converge(full=False, events=events))
    store.close()
    print(json.dumps({"full": full, "in_process": svc.nft.in_process,  # type: ignore[attr-defined]
                      "change": {k: round(statistics.median(c[k] for c in changes), 1)
                                 for k in ("total_ms", "plan_ms", "rest_ms", "nft_ms")}
                      | {"script_lines": changes[-1]["script_lines"],
                         "applied": sorted({c["applied"] for c in changes})}}))
    return 0


def measure(bench: Bench, rounds: int, seconds: float) -> dict:
    """Interleaved rounds of the four measurements (the first one rotates)."""
    vip, direct = bench.cluster_ip("svc"), bench.pod_ip("server")
    client = bench.pod_ns("client")
    jobs = {"svc_conn": lambda: bench.connect(vip, seconds), "pod_conn": lambda: bench.connect(direct, seconds),
            "svc_gbps": lambda: Iperf.client(client, vip, seconds)["gbps"],
            "pod_gbps": lambda: Iperf.client(client, direct, seconds)["gbps"]}
    names = list(jobs)
    got: dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % 4:] + names[:r % 4]:
            got[name].append(jobs[name]())

    def med(name: str, field: str) -> float:
        return statistics.median(x[field] for x in got[name])

    return {"rounds": got, "conn_per_s": round(med("svc_conn", "conn_per_s"), 1),
            "p99_ms": round(med("svc_conn", "p99_ms"), 3), "p50_ms": round(med("svc_conn", "p50_ms"), 3),
            "pod_conn_per_s": round(med("pod_conn", "conn_per_s"), 1), "pod_p99_ms": round(med("pod_conn", "p99_ms"), 3),
            "svc_gbps": round(statistics.median(got["svc_gbps"]), 3),
            "pod_gbps": round(statistics.median(got["pod_gbps"]), 3),
            # a stall (another process, an agent's resync) only ever slows a round: the best
            # round shows the data path alone
            "best_conn_per_s": max(x["conn_per_s"] for x in got["svc_conn"]),
            "best_p99_ms": min(x["p99_ms"] for x in got["svc_conn"])}


def run(args: argparse.Namespace) -> dict:
    import tempfile

    from podnet.lab.sandbox import Sandbox

    bench = Bench(args)
    iperf = Iperf()
    sandbox = Sandbox("pn-bench-")
    outcome: dict = {"services": {}, "seconds": args.seconds, "repeat": args.repeat, "machine": machine()}
    problems: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            t0 = time.monotonic()
            bench.up(tmp)
            assert bench.store is not None
            bench.converged(bench.store.revision(), poll=0.02)
            log(f"lab {bench.name} up in {time.monotonic() - t0:.1f}s; ClusterIP {bench.cluster_ip('svc')}")
            scratch = sandbox.netns("svc")
            iperf.server(bench.pod_ns("server"), bench.pod_ip("server"))
            for n in args.services:
                entry = {"load": bench.set_services(n, tmp)}
                log(f"{n} services: {entry['load']['how']} in {entry['load']['apply_s']}s, "
                    f"agents {entry['load']['agents_s']}s; measuring")
                entry.update(measure(bench, args.repeat, args.seconds))
                entry["change"] = bench.change_time(args.changes)
                entry["replica"] = bench.replica(scratch, 6)
                entry["tput_ratio"] = round(entry["svc_gbps"] / entry["pod_gbps"], 3)
                outcome["services"][str(n)] = entry
                log(f"{n} services: {entry['conn_per_s']:.0f} conn/s, p99 {entry['p99_ms']:.3f} ms (best round "
                    f"{entry['best_conn_per_s']:.0f}, {entry['best_p99_ms']:.3f} ms), "
                    f"change {entry['change']['median_ms']} ms (max {entry['change']['max_ms']}), "
                    f"ClusterIP {entry['svc_gbps']:.2f} / pod {entry['pod_gbps']:.2f} Gbit/s, "
                    f"full load {entry['replica']['full']['total_ms'] / 1000:.1f}s")
        base = outcome["services"][str(min(args.services))]
        for entry in outcome["services"].values():
            entry["conn_ratio"] = round(entry["conn_per_s"] / base["conn_per_s"], 3)
            entry["p99_ratio"] = round(entry["p99_ms"] / base["p99_ms"], 3)
    finally:
        with no_interrupt():
            problems += iperf.close()
            problems += close_sandbox(sandbox)
            problems += bench.close()
    outcome["cleanup"] = {"ok": not problems, "problems": problems}
    return outcome


def render(outcome: dict) -> None:
    from rich.table import Table

    rows = outcome["services"]
    top = str(max(int(n) for n in rows))

    def mark(ok: bool, text: str) -> str:
        return f"[{'green' if ok else 'red'}]{text}[/]"

    m = outcome["machine"]
    table = Table(title=f"services at scale ({m['cpus']} CPUs, {m['kernel']}; medians of {outcome['repeat']} "
                        f"x {outcome['seconds']} s)")
    for col in ("services", "table ports n0/n1", "apply", "agents", "full load (nft)", "conn/s", "vs min",
                "connect p50/p99", "vs min", "pod conn/s", "endpoint change med/max", "agent ms", "ClusterIP Gbit/s",
                "pod Gbit/s", "ratio"):
        table.add_column(col, justify="right")
    for n, e in rows.items():
        at_top = n == top
        ch, full = e["change"], e["replica"]["full"]
        ports = " / ".join(str(s["service_ports"]) for s in e["load"]["agents"].values())
        table.add_row(
            n, ports, f"{e['load']['apply_s']:.1f}s", f"{e['load']['agents_s']:.1f}s",
            f"{full['total_ms'] / 1000:.2f}s ({full['nft_ms'] / 1000:.2f}s)", f"{e['conn_per_s']:.0f}",
            mark(not at_top or e["conn_ratio"] >= 1 / TARGET_LATENCY_RATIO, f"{e['conn_ratio']:.2f}x"),
            f"{e['p50_ms']:.3f}/{e['p99_ms']:.3f} ms", mark(not at_top or e["p99_ratio"] <= TARGET_LATENCY_RATIO, f"{e['p99_ratio']:.2f}x"),
            f"{e['pod_conn_per_s']:.0f}",
            mark(not at_top or ch["median_ms"] <= TARGET_CHANGE_MS, f"{ch['median_ms']:.0f}/{ch['max_ms']:.0f} ms"),
            f"{ch['agent_ms']:.0f}", f"{e['svc_gbps']:.2f}", f"{e['pod_gbps']:.2f}",
            mark(e["tput_ratio"] >= TARGET_TPUT_RATIO, f"{e['tput_ratio']:.2f}x"))
    con = console(200)
    con.print(table)
    steps = Table(title="one endpoint change, where the time goes (agent code replayed in a scratch namespace)")
    for col in ("services", "end to end", "store write", "agent ms (max node)", "watch + poll", "replica: plan",
                "rest (render, stamp)", "nft", "script lines"):
        steps.add_column(col, justify="right")
    for n, e in rows.items():
        ch, rep = e["change"], e["replica"]["change"]
        steps.add_row(n, f"{ch['median_ms']:.0f} ms", f"{ch['write_ms']:.1f} ms", f"{ch['agent_ms']:.0f} ms",
                      f"{ch['watch_ms']:.0f} ms", f"{rep['plan_ms']:.0f} ms", f"{rep['rest_ms']:.1f} ms",
                      f"{rep['nft_ms']:.0f} ms", str(rep["script_lines"]))
    con.print(steps)
    print(f"targets at {top} services: conn/s and p99 connect within {TARGET_LATENCY_RATIO}x of {min(rows, key=int)}; "
          f"one endpoint change <= {TARGET_CHANGE_MS:.0f} ms; ClusterIP/pod throughput >= {TARGET_TPUT_RATIO}x")
    print_cleanup(con, outcome, "cleanup: nothing left behind")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--inner"]:
        return inner(argv[1], int(argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", default="100,1000,10000", help="service counts, comma separated")
    parser.add_argument("--seconds", type=float, default=5, help="seconds per measurement (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds per service count (default 3)")
    parser.add_argument("--changes", type=int, default=10, help="timed endpoint changes per count (default 10)")
    parser.add_argument("--no-cluster-dns", dest="cluster_dns", action="store_false",
                        help="agents without cluster DNS (whose zone follows the same endpoint changes)")
    parser.add_argument("--json", action="store_true", help="machine-readable results only")
    args = parser.parse_args(argv)
    try:
        args.services = [int(x) for x in args.services.split(",")]
    except ValueError:
        parser.error("--services: comma-separated integers")
    if min(args.services) < FIXED or args.repeat < 1 or args.changes < 1 or args.seconds <= 0:
        parser.error(f"--services >= {FIXED} each, --repeat/--changes >= 1, --seconds > 0")
    if os.geteuid() != 0:
        print("services_lb: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    return run_bench("services_lb", run, args, render)


if __name__ == "__main__":
    sys.exit(main())
