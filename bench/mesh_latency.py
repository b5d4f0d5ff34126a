"""What the HAProxy sidecar mesh (issue 16) costs a request: added latency at a fixed
rate, sidecar CPU per 1k req/s, and throughput per sidecar core, meshed against
unmeshed in one lab and one run.

    sudo .venv/bin/python bench/mesh_latency.py [--rate 1000] [--seconds 10] [--repeat 3] [--json]

One 2-node lab (vxlan, sqlite, no cluster DNS) built with LabBuilder from a topology:
namespaces `mesh` (meshed with `podnet mesh enable`, PERMISSIVE mTLS) and `plain`
(not), each with a `client` pod on node0 and a `server` pod on node1, both running
their own app (`ownApp`: podnet.lab.meshapp, Python, HTTP/1.1 keep-alive, port 80),
and two services per namespace: `server` (port 80 -> the app) and `stub` (port 80 ->
port 9000 of the server pod, where the bench runs an HAProxy `http-request return`
stub: in `mesh` it terminates mTLS with the server pod's own certificate, in `plain`
it is plain HTTP). Meshed: client app -> nft redirect -> client sidecar (outbound,
HTTP routing, mTLS) -> node1 -> nft redirect -> server sidecar (inbound, TLS
terminated) -> app. Unmeshed: client -> the ClusterIP's DNAT -> app. The floor, "bare"
(in `plain`): client -> a bare HAProxy in the client pod (127.0.0.1:18080, HTTP
keep-alive, no TLS, no log, no interception) -> a bare HAProxy in the server pod
(:18081) -> app: what two HAProxy hops cost on this machine before any mesh feature.
`--mtls STRICT` applies a namespace-wide STRICT PeerAuthentication first.

1. Latency at a fixed rate: an open-loop client (this file, `--loadgen`) in the
   client pod's netns (`nsenter --net`), pinned with `taskset -c` to the last CPU, sends
   GET / on a fixed schedule over a few keep-alive connections and times each answer
   from its *scheduled* send time (a late send counts as latency: no coordinated
   omission), one warm-up second unrecorded. Rounds interleaved (meshed, unmeshed; the
   first rotating); quantiles over all rounds pooled, meshed minus unmeshed
   (target: at most 0.3 ms added at p90). The bare pair's rounds are interleaved too.
2. Sidecar CPU: utime+stime of each sidecar's HAProxy master (its PID from `podnet mesh
   status -o json`), its reaped children and its live workers, over each meshed
   round; vCPU per 1k req/s per sidecar (target at most 0.1), and the same for each
   bare HAProxy over the bare rounds (the ratio sidecar / bare proxy is the mesh's own
   cost, independent of this machine's wakeup and network-stack prices). The agents' CPU (their
   log sinks read one access-log line per request per sidecar) is shown beside it.
3. Throughput: `wrk -t1 -c32` pinned like the load generator, against the server and
   the stub service, meshed, unmeshed and through the bare client proxy (18090 -> stub); req/s, the client sidecar's CPU, and req/s
   per client-sidecar core (target at least 30k). Each row says what bound it: the
   component whose CPU is nearest its ceiling (wrk and the Python app: one core each;
   the machine: every CPU busy).
Sidecar reloads during the run (from `podnet mesh status`) and the machine (CPUs,
load) are printed with the figures.

Safety: the lab is named `b<hex>` and torn down by name in a `finally` (also on Ctrl-C,
SIGTERM, SIGHUP); the stubs are stopped by PID. The root network namespace is never
changed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HTTP = [{"port": 80, "protocol": "TCP", "name": "http"}]
STUB_PORT = 9000
MODES = ("meshed", "unmeshed", "bare")
NS = {"meshed": "mesh", "unmeshed": "plain", "bare": "plain"}
NAMESPACES = ("mesh", "plain")
BARE_APP_PORT, BARE_SERVER_PORT, BARE_STUB_PORT = 18080, 18081, 18090
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
TARGET_ADDED_P90_MS = 0.3
TARGET_VCPU_PER_1K = 0.1
TARGET_RPS_PER_CORE = 30_000
CONNECTIONS = 4  # the load generator's keep-alive connections


# --------------------------------------------------------------------------------------
# The open-loop load generator (run with --loadgen inside the client pod's netns)
# --------------------------------------------------------------------------------------
def _answer(buf: bytes) -> tuple[int, int] | None:
    """(status, bytes used) once `buf` holds a whole HTTP/1.1 answer with content-length."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").lower()
    match = re.search(r"\r\ncontent-length:\s*(\d+)", head)
    size = end + 4 + (int(match.group(1)) if match else 0)
    return (int(head[9:12]), size) if len(buf) >= size else None


def loadgen(host: str, port: int, path: str, rate: float, seconds: float, warmup: float, conns: int) -> dict:
    """Requests at start + i/rate, each timed from that instant; the answers of the
    recorded part (after `warmup`) as microseconds."""
    import selectors
    import socket
    from collections import deque

    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    sel = selectors.DefaultSelector()

    def connect() -> socket.socket:
        sock = socket.create_connection((host, port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return sock

    idle = [connect() for _ in range(conns)]
    pending: deque[float] = deque()
    busy: dict[socket.socket, list] = {}  # sock -> [scheduled, buffer]
    total, sent = int(rate * (warmup + seconds)), 0
    start = time.perf_counter() + 0.05
    recorded_from = start + warmup
    latencies, statuses, errors, max_lag = [], {}, 0, 0.0
    give_up = start + warmup + seconds + 5
    while (sent < total or pending or busy) and time.perf_counter() < give_up:
        now = time.perf_counter()
        while sent < total and start + sent / rate <= now:
            pending.append(start + sent / rate)
            sent += 1
        while pending and idle:
            sock, due = idle.pop(), pending.popleft()
            max_lag = max(max_lag, time.perf_counter() - due)
            sock.send(request)
            busy[sock] = [due, b""]
            sel.register(sock, selectors.EVENT_READ)
        wait = max(0.0, start + sent / rate - time.perf_counter()) if sent < total else 0.05
        for key, _ in sel.select(wait if idle or not busy else min(wait, 0.05)):
            sock = key.fileobj
            data = sock.recv(65536)
            entry = busy[sock]
            entry[1] += data
            done = _answer(entry[1]) if data else None
            if data and done is None:
                continue
            sel.unregister(sock)
            del busy[sock]
            if done is None:  # closed under us: an error, a new connection
                errors += 1
                sock.close()
                idle.append(connect())
                continue
            if entry[0] >= recorded_from:
                latencies.append(round((time.perf_counter() - entry[0]) * 1e6))
                statuses[done[0]] = statuses.get(done[0], 0) + 1
            idle.append(sock)
    return {"latencies_us": latencies, "statuses": statuses, "errors": errors, "unanswered": len(busy) + len(pending),
            "scheduled": total - int(rate * warmup), "max_send_lag_ms": round(max_lag * 1000, 3)}


def probe(host: str, port: int, path: str) -> dict:
    """One GET: its status and body (readiness checks)."""
    import socket

    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        buf = b""
        while (done := _answer(buf)) is None:
            chunk = sock.recv(65536)
            if not chunk:
                return {"status": 0, "body": buf.decode(errors="replace")}
            buf += chunk
    return {"status": done[0], "body": buf[buf.find(b"\r\n\r\n") + 4:done[1]].decode(errors="replace")}


def loadgen_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mesh_latency.py --loadgen")
    parser.add_argument("host")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--path", default="/")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--probe", action="store_true", help="one request, its status and body")
    a = parser.parse_args(argv)
    if a.probe:
        print(json.dumps(probe(a.host, a.port, a.path)))
    else:
        print(json.dumps(loadgen(a.host, a.port, a.path, a.rate, a.seconds, a.warmup, a.connections)))
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--loadgen"]:
    sys.exit(loadgen_main(sys.argv[2:]))  # nothing below is needed inside the pod

# --------------------------------------------------------------------------------------
# The bench
# --------------------------------------------------------------------------------------
from benchlib import (  # noqa: E402 - the load generator above runs without them
    BenchError,
    console,
    log,
    machine,
    no_interrupt,
    nsenter,
    percentile,
    print_cleanup,
    run_bench,
)
from fabric_throughput import BenchLab  # noqa: E402

ROOT = HERE.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def topology() -> dict:
    pods = [{"name": role, "namespace": ns, "node": node, "labels": {"app": role}, "ports": HTTP, "ownApp": True}
            for ns in NAMESPACES for role, node in (("client", "node0"), ("server", "node1"))]
    services = [{"metadata": {"name": name, "namespace": ns},
                 "spec": {"selector": {"app": "server"}, "ports": [{"name": "http", "port": 80, "targetPort": target}]}}
                for ns in NAMESPACES for name, target in (("server", "http"), ("stub", STUB_PORT))]
    return {"nodes": [{"name": "node0"}, {"name": "node1"}], "namespaces": [{"name": ns} for ns in NAMESPACES],
            "pods": pods, "services": services}


class MeshLab(BenchLab):
    """The bench's lab: its own topology, no cluster DNS (nothing here resolves names)."""

    def up(self, pods_per_node: int = 1) -> dict:  # noqa: ARG002 - the topology says
        from podnet.lab import topology as topo
        from podnet.lab.builder import LabBuilder, LabOptions

        start = time.monotonic()
        builder = LabBuilder(topo.parse(topology()),
                             LabOptions(self.name, self.fabric, self.store, timeout=60, cluster_dns=False),
                             lambda step: self.phases.append((step, time.monotonic() - start)))
        self.built = True  # from here on, teardown must run even if build() raises
        self.data = builder.build().data
        return self.data

    def cli(self, *argv: str, check: bool = True) -> str:
        out = subprocess.run([sys.executable, "-m", "podnet.cli", *argv, "--lab", self.name],
                             capture_output=True, text=True, timeout=60, check=False)
        if check and out.returncode:
            raise BenchError(f"podnet {' '.join(argv)}: {(out.stderr or out.stdout).strip()[-400:]}")
        return out.stdout

    def sidecars(self) -> dict[str, dict]:
        nodes = json.loads(self.cli("mesh", "status", "-o", "json", check=False) or "{}").get("nodes", [])
        return {p["pod"]: p for node in nodes for p in node.get("pods", [])}

    def cluster_ip(self, ns: str, name: str) -> str:
        items = json.loads(self.cli("get", "svc", "-n", ns, "-o", "json"))
        items = items.get("items", items) if isinstance(items, dict) else items
        return next(i["spec"]["clusterIP"] for i in items if i["metadata"]["name"] == name)


# --------------------------------------------------------------------------------------
# CPU accounting
# --------------------------------------------------------------------------------------
def _stat(pid: int) -> list[int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return [int(f) for f in fields[11:15]]  # utime stime cutime cstime


def tree_seconds(pid: int) -> float:
    """A process's CPU with its reaped children and its live children (an HAProxy
    master and its workers, whichever reload they come from)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(_stat(pid))
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue  # the thread ended meanwhile
        for child in children:
            try:
                total += sum(_stat(int(child))[:2])
            except (OSError, ValueError):
                continue  # gone meanwhile
    return total / tick


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Meter:
    """CPU seconds of named processes (and this process's waited children) over a span."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def __enter__(self) -> Meter:
        self.before = {k: tree_seconds(p) for k, p in self.pids.items()}
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.child_before = usage.ru_utime + usage.ru_stime
        self.busy_before, self.started = machine_busy(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cores = {k: (tree_seconds(p) - self.before[k]) / self.wall for k, p in self.pids.items()}
        cores["load generator"] = (usage.ru_utime + usage.ru_stime - self.child_before) / self.wall
        busy, total = machine_busy()
        cores["machine busy"] = (busy - self.busy_before[0]) / max(1, total - self.busy_before[1]) * (os.cpu_count() or 1)
        self.cores = {k: round(v, 3) for k, v in cores.items()}


# --------------------------------------------------------------------------------------
# The bench's own HAProxies: a stub answering by itself on port 9000 of each server
# pod, and the bare pair (the floor)
# --------------------------------------------------------------------------------------
BASE_CONFIG = """global
  maxconn 4096
  stats socket {workdir}/haproxy.sock mode 600 level admin
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
"""


def stub_sections(tls: str) -> str:
    return (f"frontend stub\n  bind :{STUB_PORT}{tls}\n"
            '  http-request return status 200 content-type text/plain string "stub"\n')


def bare_client(server_ip: str) -> str:
    """The bare pair's client end: the app's hop and the stub's, plain HTTP."""
    return (f"frontend app\n  bind 127.0.0.1:{BARE_APP_PORT}\n  default_backend app\n"
            f"backend app\n  server s {server_ip}:{BARE_SERVER_PORT}\n"
            f"frontend stub\n  bind 127.0.0.1:{BARE_STUB_PORT}\n  default_backend stub\n"
            f"backend stub\n  server s {server_ip}:{STUB_PORT}\n")


def bare_server() -> str:
    return f"frontend in\n  bind :{BARE_SERVER_PORT}\n  default_backend app\nbackend app\n  server app 127.0.0.1:80\n"


class Stubs:
    """The bench's own HAProxies (a stub per server pod, the bare pair), each started
    in a pod's netns with its own directory and stopped by PID."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pn-bench-mesh-"))
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, mode: str, netns: str, cert: str | None, ca: str | None) -> int:
        tls = f" ssl crt {cert} ca-file {ca} verify optional" if cert else ""
        return self.run(f"stub-{mode}", netns, stub_sections(tls), STUB_PORT)

    def run(self, name: str, netns: str, sections: str, port: int) -> int:
        """An HAProxy with BASE_CONFIG and `sections`, listening on `port` in `netns`."""
        workdir = self.workdir / name
        workdir.mkdir()
        config = workdir / "haproxy.cfg"
        config.write_text(BASE_CONFIG.format(workdir=workdir) + sections)
        with open(workdir / "haproxy.log", "ab") as out:  # nsenter execs haproxy: the PID is its master's
            proc = subprocess.Popen([*nsenter(netns), "/usr/sbin/haproxy", "-W", "-db", "-f", str(config)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        deadline = time.monotonic() + 10
        while not subprocess.run([*nsenter(netns), "ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                                 text=True, check=False).stdout.strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"HAProxy {name} in {netns} did not listen: {(workdir / 'haproxy.log').read_text()}")
            time.sleep(0.05)
        return proc.pid

    def close(self) -> list[str]:
        from podnet.lab.sandbox import stop_process

        problems = []
        for proc in self.procs.values():
            stop_process(proc)
            if proc.poll() is None:
                problems.append(f"stub HAProxy pid {proc.pid} still running")
        shutil.rmtree(self.workdir, ignore_errors=True)
        return problems


# --------------------------------------------------------------------------------------
# Ready: sidecars up, routes in force, each path answering as it should
# --------------------------------------------------------------------------------------
def in_client(lab: MeshLab, mode: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """`argv` in the client pod's netns, pinned to the last CPU."""
    cpu = str((os.cpu_count() or 1) - 1)
    return subprocess.run(["taskset", "-c", cpu, *nsenter(lab.data["pods"][f"{NS[mode]}/client"]["netns"]), *argv],
                          capture_output=True, text=True, timeout=timeout, check=False)


def loadgen_argv(target: str, *args: str) -> list[str]:
    """The load generator's argv against `target`, "host" (port 80) or "host:port"."""
    host, _, port = target.partition(":")
    return [sys.executable, str(Path(__file__).resolve()), "--loadgen", host, "--port", port or "80", *args]


def get(lab: MeshLab, mode: str, host: str, path: str = "/") -> dict:
    out = in_client(lab, mode, loadgen_argv(host, "--path", path, "--probe"), 15)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"status": 0, "body": out.stderr.strip()[-300:]}


def wait_ready(lab: MeshLab, ips: dict, timeout: float) -> dict[str, dict]:
    """Both sidecars alive with both services routed, and each path answering through
    what it should: the meshed app sees the client sidecar's x-podnet-service header,
    the unmeshed one does not; each stub answers. The sidecars' status entries."""
    deadline = time.monotonic() + timeout
    while True:
        cars = lab.sidecars()
        client, server = cars.get("mesh/client"), cars.get("mesh/server")
        routed = client and all(f"mesh/{svc}:80" in " ".join(client["routes"]) for svc in ("server", "stub"))
        if client and server and client["alive"] and server["alive"] and routed:
            seen = {mode: (get(lab, mode, ips[mode]["server"], "/headers"), get(lab, mode, ips[mode]["stub"]))
                    for mode in MODES}
            meshed_app, meshed_stub = seen["meshed"]
            plain_app, plain_stub = seen["unmeshed"]
            if (all(answer["status"] == 200 for pair in seen.values() for answer in pair)
                    and "x-podnet-service" not in seen["bare"][0]["body"] and "x-podnet-service" in meshed_app["body"] and "x-podnet-service" not in plain_app["body"]):
                return {"client": client, "server": server}
        if time.monotonic() > deadline:
            raise BenchError(f"lab {lab.name}: the mesh was not ready within {timeout:.0f}s: {cars}")
        time.sleep(0.5)


def sidecar_workdir(pid: int) -> Path:
    """The directory of a sidecar's haproxy.cfg (its certificate beside it, the CA one up)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if Path(f"/proc/{pid}/comm").read_text().strip() != "haproxy" or b"-f" not in argv:
        raise BenchError(f"pid {pid} is not an HAProxy sidecar: {argv}")
    return Path(argv[argv.index(b"-f") + 1].decode()).parent


def strict_applied(car: dict) -> bool:
    """The sidecar serves STRICT mTLS (TLS on its inbound bind)."""
    try:
        return "bind :15006 ssl" in (sidecar_workdir(car["pid"]) / "applied.cfg").read_text()
    except OSError:
        return False


INFO_KEYS = ("Nbthread", "CumConns", "CumReq", "CumSslConns")


def haproxy_info(pid: int) -> dict[str, int]:
    """A sidecar's counters from its runtime API (`show info`): connections and TLS
    handshakes per request tell whether the sidecars keep their connections."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(sidecar_workdir(pid) / "haproxy.sock"))
        sock.sendall(b"show info\n")
        text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return {k: int(fields[k]) for k in INFO_KEYS if fields.get(k, "").isdigit()}


# --------------------------------------------------------------------------------------
# Rounds
# --------------------------------------------------------------------------------------
def fixed_rate_round(lab: MeshLab, mode: str, host: str, pids: dict[str, int], args: argparse.Namespace) -> dict:
    argv = loadgen_argv(host, "--rate", str(args.rate), "--seconds", str(args.seconds), "--warmup", "1")
    cars = {k: pids[k] for k in ("client sidecar", "server sidecar") if k in pids}
    info = {k: haproxy_info(pid) for k, pid in cars.items()}
    with Meter(pids) as meter:
        out = in_client(lab, mode, argv, args.seconds + 60)
    info = {k: {f: v - (0 if f == "Nbthread" else info[k].get(f, 0)) for f, v in haproxy_info(pid).items()}
            for k, pid in cars.items()}
    try:
        result = json.loads(out.stdout)
    except ValueError:
        raise BenchError(f"load generator ({mode}): rc {out.returncode}, {out.stderr.strip()[-400:]}") from None
    lat = [us / 1000 for us in result.pop("latencies_us")]
    result |= {q: round(percentile(lat, v), 3) for q, v in QUANTILES.items()}
    result |= {"max": round(max(lat), 3) if lat else None, "answered": len(lat), "cores": meter.cores,
               "sidecar_counters": info,
               "achieved_rps": round(len(lat) / args.seconds, 1), "_ms": lat}
    return result


WRK_RE = {"rps": r"Requests/sec:\s*([\d.]+)", "non_2xx": r"Non-2xx or 3xx responses:\s*(\d+)",
          "socket_errors": r"Socket errors:(.*)"}


def wrk_run(lab: MeshLab, mode: str, target: str, host: str, pids: dict[str, int], seconds: float) -> dict:
    argv = ["wrk", "-t1", "-c32", f"-d{seconds:g}s", f"http://{host}/"]
    with Meter(pids) as meter:
        out = in_client(lab, mode, argv, seconds + 30)
    found = {k: re.search(p, out.stdout) for k, p in WRK_RE.items()}
    if out.returncode or not found["rps"]:
        raise BenchError(f"wrk ({mode} {target}): rc {out.returncode}, {(out.stderr or out.stdout).strip()[-400:]}")
    cores = meter.cores
    cores["wrk"] = cores.pop("load generator")
    rps = float(found["rps"].group(1))
    return {"rps": rps, "non_2xx": int(found["non_2xx"].group(1)) if found["non_2xx"] else 0,
            "socket_errors": found["socket_errors"].group(1).strip() if found["socket_errors"] else "",
            "cores": cores, "bound_by": bound_by(cores)}


CEILINGS = {"wrk": 1.0, "app": 1.0}  # one pinned thread; the Python app holds its GIL


def bound_by(cores: dict[str, float]) -> str:
    """The component nearest its ceiling (wrk, the Python app, or every CPU busy) and
    how near."""
    cpus = os.cpu_count() or 1
    shares = {k: cores[k] / c for k, c in CEILINGS.items() if k in cores}
    shares["all CPUs"] = cores["machine busy"] / cpus
    name, share = max(shares.items(), key=lambda kv: kv[1])
    return f"{name} {share:.0%}"


def summarize_latency(runs: dict[str, list[dict]]) -> dict:
    pooled = {m: [x for r in runs[m] for x in r.pop("_ms")] for m in MODES}
    quantiles = {m: {q: round(percentile(pooled[m], v), 3) for q, v in QUANTILES.items()} for m in MODES}
    added = {q: round(quantiles["meshed"][q] - quantiles["unmeshed"][q], 3) for q in QUANTILES}
    bare = {q: round(quantiles["bare"][q] - quantiles["unmeshed"][q], 3) for q in QUANTILES}
    per_round = [{q: round(a[q] - b[q], 3) for q in QUANTILES} for a, b in zip(runs["meshed"], runs["unmeshed"],
                                                                                   strict=True)]
    return {"rounds": runs, "quantiles_ms": quantiles, "added_ms": added, "added_ms_by_round": per_round,
            "bare_added_ms": bare}


def sidecar_cost(runs: list[dict], idle: dict[str, float]) -> dict:
    """vCPU per 1k req/s of each sidecar (and the agents', the app's) over the meshed
    rounds, as measured and net of what it spends idle."""
    out = {}
    for key in ("client sidecar", "server sidecar", "agent node0", "agent node1", "app"):
        per = [r["cores"][key] / (r["achieved_rps"] / 1000) for r in runs if r["achieved_rps"]]
        net = [(r["cores"][key] - idle[key]) / (r["achieved_rps"] / 1000) for r in runs if r["achieved_rps"]]
        out[key] = {"cores": [r["cores"][key] for r in runs], "idle_cores": idle[key],
                    "vcpu_per_1k_rps": round(statistics.median(per), 4) if per else None,
                    "net_of_idle": round(statistics.median(net), 4) if net else None}
    for key in ("client sidecar", "server sidecar"):
        seen = [r["sidecar_counters"][key] for r in runs]
        reqs = sum(c.get("CumReq", 0) for c in seen) or 1
        out[key] |= {"threads": seen[-1].get("Nbthread") if seen else None,
                     "connections_per_request": round(sum(c.get("CumConns", 0) for c in seen) / reqs, 4),
                     "tls_connections_per_request": round(sum(c.get("CumSslConns", 0) for c in seen) / reqs, 4)}
    return out


# --------------------------------------------------------------------------------------
# Bench
# --------------------------------------------------------------------------------------
def measured_pids(lab: MeshLab, mode: str, cars: dict[str, dict], stubs: dict[str, int],
                  bare: dict[str, int]) -> dict[str, int]:
    """What each round meters; in a bare round the "sidecars" are the bare pair."""
    pids = {f"agent {n}": info["agent_pid"] for n, info in lab.data["nodes"].items()}
    pids |= {"app": lab.data["pods"][f"{NS[mode]}/server"]["app_pid"], "stub": stubs[NS[mode]]}
    if mode == "meshed":
        pids |= {"client sidecar": cars["client"]["pid"], "server sidecar": cars["server"]["pid"]}
    elif mode == "bare":
        pids |= {"client sidecar": bare["client"], "server sidecar": bare["server"]}
    return pids


def reloads(lab: MeshLab) -> dict[str, int]:
    return {pod: car["reloads"] for pod, car in lab.sidecars().items()}


def bench(args: argparse.Namespace) -> dict:
    lab, stubs = MeshLab("vxlan"), Stubs()
    problems: list[str] = []
    outcome: dict = {}
    try:
        t0 = time.monotonic()
        lab.up()
        app = "podnet.lab.meshapp as the lab runs it"
        lab.cli("mesh", "enable", "mesh")
        if args.mtls == "STRICT":
            strict = Path(stubs.workdir) / "strict.yaml"
            strict.write_text("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                              "metadata: {name: default, namespace: mesh}\nspec: {mtls: {mode: STRICT}}\n")
            lab.cli("apply", "-f", str(strict))
        ips = {m: {svc: lab.cluster_ip(NS[m], svc) for svc in ("server", "stub")} for m in MODES if m != "bare"}
        cars = {"client": None, "server": None}
        deadline = time.monotonic() + args.ready_timeout
        while not all(c and c["alive"] and (args.mtls != "STRICT" or strict_applied(c))
                      for c in cars.values()):  # the stub needs the server's certificate
            if time.monotonic() > deadline:
                raise BenchError(f"lab {lab.name}: no sidecars within {args.ready_timeout:.0f}s")
            time.sleep(0.5)
            cars = {role: lab.sidecars().get(f"mesh/{role}") for role in cars}
        certs = sidecar_workdir(cars["server"]["pid"])
        pods = lab.data["pods"]
        stub_pids = {"mesh": stubs.start("meshed", pods["mesh/server"]["netns"],
                                         str(certs / "cert.pem"), str(certs.parent / "ca.pem")),
                     "plain": stubs.start("unmeshed", pods["plain/server"]["netns"], None, None)}
        bare = {"server": stubs.run("bare-server", pods["plain/server"]["netns"],
                                    bare_server(), BARE_SERVER_PORT),
                "client": stubs.run("bare-client", pods["plain/client"]["netns"],
                                    bare_client(pods["plain/server"]["ips"][0].split("/")[0]),
                                    BARE_APP_PORT)}
        ips["bare"] = {"server": f"127.0.0.1:{BARE_APP_PORT}", "stub": f"127.0.0.1:{BARE_STUB_PORT}"}
        cars = wait_ready(lab, ips, args.ready_timeout)
        log(f"lab {lab.name} up, meshed and answering in {time.monotonic() - t0:.1f}s")
        pids = {m: measured_pids(lab, m, cars, stub_pids, bare) for m in MODES}
        with Meter(pids["meshed"]) as idle:
            time.sleep(args.idle_seconds)
        reloads_before, load_before = reloads(lab), os.getloadavg()
        latency: dict[str, list[dict]] = {m: [] for m in MODES}
        throughput: dict[str, list[dict]] = {f"{m} {t}": [] for t in ("server", "stub") for m in MODES}
        for r in range(args.repeat):
            for mode in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
                run = fixed_rate_round(lab, mode, ips[mode]["server"], pids[mode], args)
                latency[mode].append(run)
                log(f"round {r + 1}/{args.repeat} {mode}: p50 {run['p50']} p90 {run['p90']} p99 {run['p99']} ms, "
                    f"{run['achieved_rps']} req/s, cores {run['cores']}")
            for key in list(throughput)[r % len(throughput):] + list(throughput)[:r % len(throughput)]:
                mode, target = key.split()
                run = wrk_run(lab, mode, target, ips[mode][target], pids[mode], args.wrk_seconds)
                throughput[key].append(run)
                log(f"round {r + 1}/{args.repeat} wrk {key}: {run['rps']:.0f} req/s, cores {run['cores']}")
        reloads_after, load_after = reloads(lab), os.getloadavg()
        outcome = {"rate": args.rate, "seconds": args.seconds, "repeat": args.repeat,
                   "wrk_seconds": args.wrk_seconds, "connections": CONNECTIONS,
                   "machine": machine() | {"pinned_cpu": (os.cpu_count() or 1) - 1},
                   "loadavg_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
                   "app": app, "lab": {"name": lab.name, "phases": lab.phases, "cluster_ips": ips,
                           "sidecars": {k: {"pid": c["pid"], "identity": c["identity"]} for k, c in cars.items()}},
                   "latency": summarize_latency(latency), "idle_seconds": args.idle_seconds,
                   "sidecar_cpu": sidecar_cost(latency["meshed"], idle.cores),
                   "bare_cpu": sidecar_cost(latency["bare"], idle.cores | {"client sidecar": 0.0, "server sidecar": 0.0}),
                   "mtls": args.mtls,
                   "throughput": {k: throughput_row(k, runs) for k, runs in throughput.items()},
                   "reloads": {"before": reloads_before, "after": reloads_after,
                               "during_run": sum(reloads_after.values()) - sum(reloads_before.values())}}
        outcome["targets"] = {"added_p90_ms": TARGET_ADDED_P90_MS, "vcpu_per_1k_rps": TARGET_VCPU_PER_1K,
                              "rps_per_client_sidecar_core": TARGET_RPS_PER_CORE}
        outcome["meets"] = meets(outcome)
    finally:
        with no_interrupt():
            problems += stubs.close()
            problems += lab.close()  # also checks its namespaces are gone
        for problem in problems:
            log(f"cleanup problem: {problem}")
    outcome["cleanup"] = {"ok": not problems, "problems": problems}
    return outcome


def throughput_row(key: str, runs: list[dict]) -> dict:
    """Median req/s, and per client-sidecar core when the client sidecar is on the path."""
    best = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    row = {"rps": [r["rps"] for r in runs], "median_rps": best["rps"], "median_run": best}
    sidecar = best["cores"].get("client sidecar")
    row["rps_per_client_sidecar_core"] = round(best["rps"] / sidecar) if sidecar else None
    return row


def meets(outcome: dict) -> dict:
    cpu, stub = outcome["sidecar_cpu"], outcome["throughput"]["meshed stub"]["rps_per_client_sidecar_core"]
    return {"added_p90": outcome["latency"]["added_ms"]["p90"] <= TARGET_ADDED_P90_MS,
            "vcpu_per_1k": all((cpu[k]["vcpu_per_1k_rps"] or float("inf")) <= TARGET_VCPU_PER_1K
                               for k in ("client sidecar", "server sidecar")),
            "rps_per_core": stub is not None and stub >= TARGET_RPS_PER_CORE}


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def render(outcome: dict) -> None:
    from rich.table import Table

    con, lat, m = console(), outcome["latency"], outcome["machine"]
    where = f"{m['cpus']} CPUs, load {outcome['loadavg_1m']['before']} -> {outcome['loadavg_1m']['after']}"
    table = Table(title=f"mesh added latency at {outcome['rate']:g} req/s open loop, {outcome['seconds']:g} s x "
                        f"{outcome['repeat']} interleaved, node0 -> node1 ClusterIP ({where})")
    for col in ("path", *QUANTILES, "max", "answered", "errors", "max send lag ms"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for mode in MODES:
        runs = lat["rounds"][mode]
        table.add_row(mode, *(f"{lat['quantiles_ms'][mode][q]:.3f}" for q in QUANTILES),
                      f"{max(r['max'] for r in runs):.2f}", str(sum(r["answered"] for r in runs)),
                      str(sum(r["errors"] + r["unanswered"] for r in runs)),
                      f"{max(r['max_send_lag_ms'] for r in runs):.2f}")
    table.add_row("[bold]added (meshed - unmeshed)", *(f"{lat['added_ms'][q]:+.3f}" for q in QUANTILES), "", "", "", "")
    table.add_row("added by the bare pair (bare - unmeshed)", *(f"{lat['bare_added_ms'][q]:+.3f}" for q in QUANTILES),
                  "", "", "", "")
    con.print(table)
    con.print("added per round (ms): " + "; ".join(" ".join(f"{q} {v:+.3f}" for q, v in r.items())
                                                   for r in lat["added_ms_by_round"]))
    cpu = Table(title="CPU per 1k req/s during the meshed fixed-rate rounds (median of rounds)")
    for col in ("process", "cores per round", "idle cores", "vCPU per 1k req/s", "net of idle", "threads",
                "conns per req", "TLS conns per req"):
        cpu.add_column(col, justify="left" if col == "process" else "right")
    rows = [*outcome["sidecar_cpu"].items(),
            *((f"bare {k.split()[0]} proxy", outcome["bare_cpu"][k]) for k in ("client sidecar", "server sidecar"))]
    for key, row in rows:
        cpu.add_row(key, " ".join(f"{c:.3f}" for c in row["cores"]), f"{row['idle_cores']:.3f}",
                    str(row["vcpu_per_1k_rps"]), str(row["net_of_idle"]),
                    *(str(row.get(k, "")) for k in ("threads", "connections_per_request",
                                                    "tls_connections_per_request")))
    con.print(cpu)
    tp = Table(title=f"throughput, wrk -t1 -c32 -d{outcome['wrk_seconds']:g}s pinned to CPU {m['pinned_cpu']} in the "
                     "client pod (median run; in bare runs the 'sidecars' are the bare HAProxy pair)")
    for col in ("target", "req/s", "runs", "client sidecar", "server sidecar", "app", "stub", "wrk", "machine",
                "req/s per client-sidecar core", "bound by"):
        tp.add_column(col, justify="left" if col in ("target", "bound by") else "right")
    for key, row in outcome["throughput"].items():
        cores = row["median_run"]["cores"]
        tp.add_row(key, f"{row['median_rps']:.0f}", " ".join(f"{r:.0f}" for r in row["rps"]),
                   *(f"{cores[k]:.2f}" if k in cores else "-" for k in ("client sidecar", "server sidecar", "app",
                                                                       "stub", "wrk", "machine busy")),
                   str(row["rps_per_client_sidecar_core"] or "-"), row["median_run"]["bound_by"])
    con.print(tp)
    con.print(f"server app: {outcome['app']}")
    con.print(f"sidecar reloads during the run: {outcome['reloads']['during_run']} "
              f"(totals after: {outcome['reloads']['after']})")
    print_cleanup(con, outcome, "cleanup: lab torn down, stubs stopped, no namespace left")
    mark = {True: "[green]met[/]", False: "[red]MISSED[/]"}
    met, sc = outcome["meets"], outcome["sidecar_cpu"]
    stub = outcome["throughput"]["meshed stub"]
    con.print(f"added p90 {lat['added_ms']['p90']:+.3f} ms (target <= {TARGET_ADDED_P90_MS} ms): "
              f"{mark[met['added_p90']]}")
    con.print(f"vCPU per 1k req/s ({outcome['mtls']} mTLS): client sidecar {sc['client sidecar']['vcpu_per_1k_rps']}, "
              f"server sidecar {sc['server sidecar']['vcpu_per_1k_rps']} (target <= {TARGET_VCPU_PER_1K}): "
              f"{mark[met['vcpu_per_1k']]}; {floor_ratios(outcome)}")
    con.print(f"client sidecar against the stub: {stub['rps_per_client_sidecar_core']} req/s per core (target >= "
              f"{TARGET_RPS_PER_CORE}; {stub['median_rps']:.0f} req/s over "
              f"{stub['median_run']['cores']['client sidecar']:.2f} cores, an extrapolation when it is not the "
              f"bound): {mark[met['rps_per_core']]}")


def floor_ratios(outcome: dict) -> str:
    """The sidecars against the bare HAProxy pair of the same run: what the mesh adds
    to two HAProxy hops on this machine."""
    sc, bare = outcome["sidecar_cpu"], outcome["bare_cpu"]
    parts = []
    for key in ("client sidecar", "server sidecar"):
        mine, floor = sc[key]["vcpu_per_1k_rps"], bare[key]["vcpu_per_1k_rps"]
        parts.append(f"{key.split()[0]} {mine}/{floor} = {mine / floor:.2f}x" if mine and floor else f"{key} -")
    stub, bare_stub = (outcome["throughput"][k]["rps_per_client_sidecar_core"] for k in ("meshed stub", "bare stub"))
    per_core = f"{stub}/{bare_stub} = {stub / bare_stub:.2f}x" if stub and bare_stub else "-"
    return f"against the bare HAProxy pair: vCPU {', '.join(parts)}; req/s per client core {per_core}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000, help="fixed request rate, req/s (default 1000)")
    parser.add_argument("--seconds", type=float, default=10, help="recorded seconds per round (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, interleaved (default 3)")
    parser.add_argument("--wrk-seconds", type=float, default=5, help="wrk -d per throughput run (default 5)")
    parser.add_argument("--idle-seconds", type=float, default=3,
                        help="seconds the sidecars' idle CPU is measured before the rounds (default 3)")
    parser.add_argument("--ready-timeout", type=float, default=60, metavar="S",
                        help="seconds the mesh may take to answer on every path (default 60)")
    parser.add_argument("--mtls", choices=("PERMISSIVE", "STRICT"), default="PERMISSIVE",
                        help="the meshed namespace's mTLS mode (default PERMISSIVE, the mesh's default)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if min(args.rate, args.seconds, args.wrk_seconds, args.ready_timeout, args.idle_seconds) <= 0 or args.repeat < 1:
        parser.error("--rate, --seconds, --wrk-seconds, --idle-seconds, --ready-timeout must be > 0; --repeat >= 1")
    if os.geteuid() != 0:
        print("mesh_latency: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    for tool in ("wrk", "nsenter", "ss", "taskset", "/usr/sbin/haproxy"):
        if not shutil.which(tool):
            print(f"mesh_latency: {tool} is not installed", file=sys.stderr)
            return 2
    return run_bench("mesh_latency", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
