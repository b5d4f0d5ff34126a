"""Throughput of the gossip fabric's sleeve (userspace UDP through a TUN) against the
kernel, and what it costs in CPU.

    .venv/bin/python bench/sleeve_throughput.py [--seconds 10] [--repeat 3] [--json]
    .venv/bin/python bench/sleeve_throughput.py --seconds 5 --batching   # + what GSO gave

Two namespaces `pn-bench-<token>-a|b` joined by a veth pair (the underlay, MTU 1500),
and over it, side by side: (a) the veth pair itself, (b) a kernel VXLAN tunnel, (c) a
plain sleeve (podnet.fabric.sleeve.forwarder, one process per namespace, port 6784),
(d) an encrypted sleeve (AES-256-GCM, keys from a random session secret, port 6785).
`--batching` adds, for information, the encrypted sleeve (1) sending each sealed
super-packet as one datagram that IP fragments instead of UDP GSO chunks, (2) without
the TUN's vnet header and offloads (one read, seal and datagram per MTU-sized packet:
what batching gave), (3) with a thread per direction instead of one for both and (4)
with two TUN queues (two workers per forwarder).

Each round runs iperf3 TCP a -> b over every path (one stream, `-t SECONDS` after one
omitted second), interleaved, the first path rotating. Figures: median Gbit/s, the
ratio against (b), and for a sleeve the CPU of its two forwarders (utime + stime from
/proc over the client's run) as cores, and cores per Gbit/s. iperf3's own CPU figures
are kept in the JSON. Target: the encrypted sleeve >= 1 Gbit/s.

Safety: the namespaces are a lab.Sandbox's (`pn-bench-<token>-*`), the forwarders and
iperf3 servers are recorded and stopped by PID, the secret and stats live in a
private temporary directory; everything is torn down in a `finally`, also on Ctrl-C,
SIGTERM or SIGHUP. The root network namespace is never changed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from benchlib import (
    BenchError,
    Iperf,
    close_sandbox,
    console,
    log,
    machine,
    no_interrupt,
    print_cleanup,
    run_bench,
)
from fabric_throughput import BARE_A, BARE_B, BASE_A, BASE_B, iperf_path, veth_pair

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

TARGET_ENCRYPTED_GBPS = 1.0
class Variant(NamedTuple):
    tun: str
    inner: str  # /24 prefix
    port: int
    encrypted: bool
    offload: bool = True  # TUN vnet header + TSO/USO
    udp_gso: bool = True
    queues: int = 1
    threads_per_queue: int = 1


SLEEVES = {
    "sleeve": Variant("pnsl0", "10.97.0", 6784, False),
    "sleeve-enc": Variant("pnsl1", "10.96.0", 6785, True),
}
BATCHING = {
    "sleeve-enc-frag": Variant("pnsl4", "10.93.0", 6788, True, udp_gso=False),
    "sleeve-enc-nogso": Variant("pnsl2", "10.95.0", 6786, True, offload=False),
    "sleeve-enc-2t": Variant("pnsl5", "10.92.0", 6789, True, threads_per_queue=2),
    "sleeve-enc-q2": Variant("pnsl3", "10.94.0", 6787, True, queues=2),
}
LABELS = {
    "veth": "(a) veth pair, the underlay",
    "vxlan": "(b) kernel VXLAN over it",
    "sleeve": "(c) sleeve, plain",
    "sleeve-enc": "(d) sleeve, encrypted",
    "sleeve-enc-frag": "encrypted, IP fragments, no UDP GSO (info)",
    "sleeve-enc-nogso": "encrypted, no TUN vnet/GSO (info)",
    "sleeve-enc-2t": "encrypted, a thread per direction (info)",
    "sleeve-enc-q2": "encrypted, 2 queues (info)",
}


def add_vxlan(a: str, b: str) -> None:
    from podnet.lab.sandbox import ip

    for ns, local, remote, inner in ((a, BASE_A, BASE_B, BARE_A), (b, BASE_B, BASE_A, BARE_B)):
        ip("-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "7", "local", local,
           "remote", remote, "dstport", "8472", "dev", "veth0")
        ip("-n", ns, "addr", "add", f"{inner}/24", "dev", "vx0")
        ip("-n", ns, "link", "set", "vx0", "up")


def start_sleeve(sandbox, a: str, b: str, key: str, workdir: str) -> dict:
    """Both forwarders of one sleeve path; returns the path with their processes."""
    from podnet.fabric.sleeve.launch import (
        SleeveSpec,
        child_env,
        forwarder_argv,
        wait_ready,
    )

    variant = {**SLEEVES, **BATCHING}[key]
    secret_file = None
    if variant.encrypted:
        secret_file = os.path.join(workdir, f"{key}.secret")
        with open(os.open(secret_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write(secrets.token_hex(32))
    procs = []
    ends = ((a, "na", BASE_A, 1, "nb", BASE_B, 2), (b, "nb", BASE_B, 2, "na", BASE_A, 1))
    for ns, name, under, host, peer, peer_under, peer_host in ends:
        spec = SleeveSpec(
            netns=ns, name=name, tun=variant.tun, address=f"{variant.inner}.{host}/24",
            listen=f"{under}:{variant.port}", peers={peer: f"{peer_under}:{variant.port}"},
            routes={f"{variant.inner}.{peer_host}/32": peer}, secret_file=secret_file,
            queues=variant.queues, offload=variant.offload, udp_gso=variant.udp_gso,
            threads_per_queue=variant.threads_per_queue,
        )
        stats = os.path.join(workdir, f"{key}-{name}.json")
        proc = sandbox.spawn(None, forwarder_argv(spec, stats), env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(stats, proc)
        procs.append(proc)
    path = iperf_path(a, b, f"{variant.inner}.2", variant.tun)
    path["procs"] = procs
    return path


def run_once(path: dict, seconds: float) -> dict:
    from podnet.fabric.sleeve.launch import cpu_seconds

    procs = path.get("procs", [])
    before = [cpu_seconds(p.pid) for p in procs]
    started = time.monotonic()
    result = Iperf.client(path["client"], path["server_ip"], seconds)
    wall = time.monotonic() - started
    if procs:
        cpu = sum(cpu_seconds(p.pid) for p in procs) - sum(before)
        result["forwarder_cores"] = round(cpu / wall, 3)
    return result


def summarize(runs: list[dict], mtu: int) -> dict:
    gbps = [r["gbps"] for r in runs]
    row = {
        "mtu": mtu,
        "gbps": [round(x, 3) for x in gbps],
        "median_gbps": round(statistics.median(gbps), 3),
        "retransmits": [r["retransmits"] for r in runs],
        "sender_cpu": [r["sender_cpu"] for r in runs],
        "receiver_cpu": [r["receiver_cpu"] for r in runs],
    }
    if "forwarder_cores" in runs[0]:
        cores = statistics.median(r["forwarder_cores"] for r in runs)
        row["forwarder_cores"] = round(cores, 3)
        row["cores_per_gbps"] = round(cores / row["median_gbps"], 3) if row["median_gbps"] else None
    return row


def bench(args: argparse.Namespace) -> dict:
    from podnet.lab.sandbox import Sandbox

    sandbox = Sandbox(prefix="pn-bench-")
    iperf = Iperf()
    workdir = tempfile.mkdtemp(prefix="pn-bench-sleeve-")
    outcome: dict = {}
    try:
        a, b = veth_pair(sandbox, ("a", "b"))
        add_vxlan(a, b)
        paths = {"veth": iperf_path(a, b, BASE_B, "veth0"), "vxlan": iperf_path(a, b, BARE_B, "vx0")}
        for key in [*SLEEVES, *(BATCHING if args.batching else ())]:
            paths[key] = start_sleeve(sandbox, a, b, key, workdir)
        servers = [iperf.server(b, p["server_ip"]) for p in paths.values()]
        order, runs = list(paths), {key: [] for key in paths}
        for r in range(args.repeat):
            k = r % len(order)
            for key in order[k:] + order[:k]:
                result = run_once(paths[key], args.seconds)
                runs[key].append(result)
                log(f"round {r + 1}/{args.repeat} {key}: {result['gbps']:.2f} Gbit/s"
                    + (f", forwarders {result['forwarder_cores']} cores"
                       if "forwarder_cores" in result else ""))
        for proc in servers:
            iperf.stop(proc)
        rows = {key: summarize(runs[key], paths[key]["mtu"]) for key in paths}
        vxlan = rows["vxlan"]["median_gbps"]
        outcome = {
            "seconds": args.seconds,
            "repeat": args.repeat,
            "machine": machine(),
            "paths": rows,
            "ratios_vs_vxlan": {
                key: round(row["median_gbps"] / vxlan, 3) if vxlan else None
                for key, row in rows.items()
            },
            "target_encrypted_gbps": TARGET_ENCRYPTED_GBPS,
            "encrypted_meets_target": rows["sleeve-enc"]["median_gbps"] >= TARGET_ENCRYPTED_GBPS,
        }
    finally:
        with no_interrupt():
            problems = iperf.close() + close_sandbox(sandbox)
            shutil.rmtree(workdir, ignore_errors=True)
    outcome["cleanup"] = {"ok": not problems, "problems": problems}
    if not outcome.get("paths"):
        raise BenchError(f"no figures; cleanup: {problems or 'ok'}")
    return outcome


def render(outcome: dict) -> None:
    from rich.table import Table

    con = console()
    table = Table(title=f"sleeve throughput, iperf3 TCP 1 stream, {outcome['seconds']} s x "
                        f"{outcome['repeat']} ({outcome['machine']['cpus']} CPUs)")
    for column in ("path", "MTU", "median Gbit/s", "x vxlan", "forwarder cores",
                   "cores per Gbit/s", "runs"):
        table.add_column(column)
    for key, row in outcome["paths"].items():
        ratio = outcome["ratios_vs_vxlan"][key]
        table.add_row(
            LABELS[key], str(row["mtu"]), f"{row['median_gbps']:.2f}",
            f"{ratio:.2f}x" if ratio is not None else "-",
            str(row.get("forwarder_cores", "-")), str(row.get("cores_per_gbps", "-")),
            " ".join(f"{x:.2f}" for x in row["gbps"]),
        )
    con.print(table)
    met = outcome["encrypted_meets_target"]
    con.print(f"encrypted sleeve >= {outcome['target_encrypted_gbps']} Gbit/s: "
              + ("[green]met[/]" if met else "[red]not met[/]"))
    print_cleanup(con, outcome, "cleanup: nothing left behind")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="iperf3 -t (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, interleaved (default 3)")
    parser.add_argument("--batching", action="store_true",
                        help="also the encrypted sleeve without GSO and with 2 queues (info)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds: {args.seconds} must be > 0")
    if args.repeat < 1:
        parser.error(f"--repeat: {args.repeat} must be >= 1")
    if os.geteuid() != 0:
        print("sleeve_throughput: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "nsenter", "ss"):
        if not shutil.which(tool):
            print(f"sleeve_throughput: {tool} is not installed", file=sys.stderr)
            return 2
    return run_bench("sleeve_throughput", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
