"""What a macvlan pod's own policy table costs (issue 15): iperf3 TCP throughput between
two macvlan pods, with no table against a pod table compiled from 1000 rules.

    sudo .venv/bin/python bench/macvlan_policy.py [--seconds 10] [--repeat 3] [--rules 1000] [--json]

A "node" namespace `pnbmp-<token>-node` holds a bridge (with a veth port, so it has a
carrier) as the macvlan parent; two pod namespaces `-client` and `-server` each get a
bridge-mode macvlan child of it, as `podnet lab up --fabric macvlan` gives pods children
of their node's uplink. The server's table is what the node agent would program there
(agent/pod_policy.py), compiled by the real compiler (policy/pod_table.compile_pod) from
RULES NetworkPolicies selecting the server, each allowing ingress from a different /32
ipBlock on a different port, plus one allowing the client on iperf3's port; it is
applied inside the server's namespace through the agent's own port (NetnsKernel, one
nft transaction). Each round measures both, interleaved and alternating which goes
first: the table is removed for the "none" run and applied again for the "table" run.
Figures: median Gbit/s of each and the ratio table / none; also the compile and nft
times of the table and its line count.

Established flows are accepted by the table's first line (`ct state established,related`),
so the rules are walked once per new connection: the throughput cost is conntrack and the
hook, not the 1000 rules. (The client side needs no table: nothing selects it.)

Safety: every namespace is a lab.Sandbox's (`pnbmp-<token>-*`), iperf3 servers are
recorded and stopped by PID, all is torn down in a `finally` (also on Ctrl-C, SIGTERM,
SIGHUP). The root network namespace is never changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    BenchError,
    Iperf,
    close_sandbox,
    console,
    log,
    machine,
    no_interrupt,
    nsenter,
    print_cleanup,
    run_bench,
)
from policy_scale import CONN_RATE

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

PREFIX = "pnbmp-"
CLIENT_IP, SERVER_IP = "10.89.0.11", "10.89.0.12"
IPERF_PORT = 5201
ECHO_PORT = 8080
ECHO = (  # answers each connection with one line and closes it (for CONN_RATE)
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind((sys.argv[1],int(sys.argv[2]))); s.listen(128); print('ready',flush=True)\n"
    "while True:\n"
    "    c,_=s.accept(); c.recv(100); c.sendall(b'y\\n'); c.close()\n"
)


def segment(sandbox) -> tuple[str, str]:
    """The node's bridge and the two pods' macvlan children of it; (client, server)."""
    from podnet.lab.sandbox import ip

    node = sandbox.netns("node")
    ip("-n", node, "link", "add", "br0", "type", "bridge")
    ip("-n", node, "link", "add", "pnp0", "type", "veth", "peer", "name", "pnp1")  # (no dummy module here)
    ip("-n", node, "link", "set", "pnp0", "master", "br0", "up")
    ip("-n", node, "link", "set", "pnp1", "up")
    ip("-n", node, "link", "set", "br0", "up")
    pods = []
    for role, address in (("client", CLIENT_IP), ("server", SERVER_IP)):
        ns = sandbox.netns(role)
        ip("-n", node, "link", "add", f"mv{role}", "link", "br0", "type", "macvlan", "mode", "bridge")
        ip("-n", node, "link", "set", f"mv{role}", "netns", ns)
        ip("-n", ns, "link", "set", f"mv{role}", "name", "eth0")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        pods.append(ns)
    return pods[0], pods[1]


def policies(rules: int) -> list[dict]:
    """`rules` NetworkPolicies selecting the server, each its own /32 and port, and the
    one that lets the client in."""
    def policy(name: str, ingress: dict) -> dict:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [ingress]}}

    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}]
    docs += [policy(f"r{i}", {"from": [{"ipBlock": {"cidr": f"172.20.{i // 256}.{i % 256}/32"}}],
                              "ports": [{"port": 10000 + i}]}) for i in range(rules)]
    # named to sort last: a new connection from the client walks every other rule first
    docs.append(policy("zz-client", {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                     "ports": [{"port": IPERF_PORT}, {"port": ECHO_PORT}]}))
    return docs


def server_table(rules: int) -> tuple[str, int, float]:
    """(script, table lines, compile ms) for the server pod."""
    from podnet.objects.registry import parse_documents
    from podnet.policy.evaluate import Endpoint, World
    from podnet.policy.pod_table import compile_pod, stamped_script

    pods = [Endpoint("pod", role, "bench", (ip,), {"app": role}, (), "node0")
            for role, ip in (("client", CLIENT_IP), ("server", SERVER_IP))]
    world = World.build(parse_documents(policies(rules)), pods)
    t0 = time.perf_counter()
    compiled = compile_pod(world, "bench", "server", (SERVER_IP,))
    compile_ms = (time.perf_counter() - t0) * 1000
    if compiled is None:
        raise BenchError("the compiler gave the server no table")
    script, _generation = stamped_script(compiled)
    return script, sum(len(lines) for lines in compiled.chains.values()), compile_ms


def conn_rate(client: str, seconds: float) -> float:
    """New TCP connections per second from the client to the server's echo port."""
    out = subprocess.run([*nsenter(client), sys.executable, "-c", CONN_RATE, SERVER_IP, str(ECHO_PORT),
                          str(seconds)], capture_output=True, text=True, timeout=seconds + 30, check=False)
    if out.returncode != 0:
        raise BenchError(f"connection-rate client failed: {out.stderr.strip()[-300:]}")
    rate, failed = out.stdout.split()
    if int(failed):
        raise BenchError(f"{failed} connection(s) failed: the pod table let the client down")
    return float(rate)


def bench(args: argparse.Namespace) -> dict:
    from podnet.agent.pod_policy import NetnsKernel
    from podnet.lab.sandbox import Sandbox
    from podnet.policy.pod_table import removal_script

    sandbox = Sandbox(PREFIX)
    iperf = Iperf()
    kernel = NetnsKernel()
    outcome: dict = {}
    try:
        client, server = segment(sandbox)
        script, lines, compile_ms = server_table(args.rules)
        log(f"table: {lines} lines, compiled in {compile_ms:.0f} ms")
        server_path = Sandbox.path(server)
        t0 = time.perf_counter()
        kernel.apply(server_path, script)
        apply_ms = (time.perf_counter() - t0) * 1000
        if kernel.generation(server_path) is None:
            raise BenchError("the pod table is not in the server's namespace")
        proc = iperf.server(server, SERVER_IP)
        echo = sandbox.spawn(server, [sys.executable, "-c", ECHO, SERVER_IP, str(ECHO_PORT)], stdout=subprocess.PIPE)
        if b"ready" not in echo.stdout.readline():
            raise BenchError("the echo server in the server pod did not start")
        runs: dict[str, list[float]] = {"none": [], "table": []}
        rates: dict[str, list[float]] = {"none": [], "table": []}
        for r in range(args.repeat):
            for key in (("none", "table") if r % 2 == 0 else ("table", "none")):
                kernel.apply(server_path, script if key == "table" else removal_script())
                gbps = Iperf.client(client, SERVER_IP, args.seconds)["gbps"]
                rate = conn_rate(client, args.conn_seconds)
                runs[key].append(gbps)
                rates[key].append(rate)
                log(f"round {r + 1}/{args.repeat} {key}: {gbps:.2f} Gbit/s, {rate:.0f} connections/s")
        iperf.stop(proc)
        sandbox.stop(echo)
        medians = {key: statistics.median(values) for key, values in runs.items()}
        rate_medians = {key: statistics.median(values) for key, values in rates.items()}
        outcome = {
            "seconds": args.seconds, "repeat": args.repeat, "machine": machine(),
            "rules": args.rules, "table_lines": lines, "compile_ms": round(compile_ms, 1),
            "apply_ms": round(apply_ms, 1),
            "gbps": {key: [round(v, 3) for v in values] for key, values in runs.items()},
            "median_gbps": {key: round(v, 3) for key, v in medians.items()},
            "ratio": round(medians["table"] / medians["none"], 3) if medians["none"] else None,
            "conn_per_s": {key: [round(v) for v in values] for key, values in rates.items()},
            "median_conn_per_s": {key: round(v) for key, v in rate_medians.items()},
            "conn_ratio": round(rate_medians["table"] / rate_medians["none"], 3) if rate_medians["none"] else None,
        }
    finally:
        with no_interrupt():
            problems = iperf.close() + close_sandbox(sandbox)
    outcome["cleanup"] = {"ok": not problems, "problems": problems}
    if "ratio" not in outcome:
        raise BenchError(f"no figures; cleanup: {problems or 'ok'}")
    return outcome


def render(outcome: dict) -> None:
    con = console()
    med = outcome["median_gbps"]
    con.print(f"macvlan pod -> macvlan pod, iperf3 TCP 1 stream, {outcome['seconds']} s x {outcome['repeat']} "
              f"({outcome['machine']['cpus']} CPUs)")
    con.print(f"  no table:            {med['none']:.2f} Gbit/s  ({' '.join(f'{x:.2f}' for x in outcome['gbps']['none'])})")
    con.print(f"  pod table, {outcome['rules']} rules: {med['table']:.2f} Gbit/s  "
              f"({' '.join(f'{x:.2f}' for x in outcome['gbps']['table'])})")
    con.print(f"  ratio table / none:  {outcome['ratio']:.3f}x")
    conn = outcome["median_conn_per_s"]
    con.print(f"  new connections/s:   none {conn['none']}, table {conn['table']} ({outcome['conn_ratio']:.3f}x; "
              f"runs {outcome['conn_per_s']['none']} / {outcome['conn_per_s']['table']})")
    con.print(f"  table: {outcome['table_lines']} lines, compile {outcome['compile_ms']} ms, "
              f"nft apply {outcome['apply_ms']} ms")
    print_cleanup(con, outcome, "cleanup: nothing left behind")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="iperf3 -t (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, alternating (default 3)")
    parser.add_argument("--rules", type=int, default=1000, help="NetworkPolicies selecting the server (default 1000)")
    parser.add_argument("--conn-seconds", type=float, default=3, help="new-connection runs (default 3)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds: {args.seconds} must be > 0")
    if args.conn_seconds <= 0:
        parser.error(f"--conn-seconds: {args.conn_seconds} must be > 0")
    if args.repeat < 1:
        parser.error(f"--repeat: {args.repeat} must be >= 1")
    if not 1 <= args.rules <= 60000:
        parser.error(f"--rules: {args.rules} must be between 1 and 60000")
    if os.geteuid() != 0:
        print("macvlan_policy: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "nsenter", "ss", "nft"):
        if not shutil.which(tool):
            print(f"macvlan_policy: {tool} is not installed", file=sys.stderr)
            return 2
    return run_bench("macvlan_policy", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
