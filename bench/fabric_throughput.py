"""Cross-node pod-to-pod TCP throughput (iperf3) for the vxlan and host-gw fabrics.

    .venv/bin/python bench/fabric_throughput.py [--seconds 10] [--repeat 1] [--json]
    .venv/bin/python bench/fabric_throughput.py --fabric vxlan --seconds 3

Builds one 2-node lab per fabric (one pod per node, `podnet.lab.builder.LabBuilder`, the
same code as `podnet lab up`), and a baseline in the same run: a plain veth pair between
two namespaces `pn-bench-<token>-a|b` (MTU 1500, nothing else on the path). Then, for
each round, interleaved: iperf3 TCP from a pod on node0 to a pod on node1 (and a to b for
the baseline), `-t SECONDS` after one omitted warm-up second, one stream. Also shown,
for information: node0 -> node1 over the lab's underlay (no fabric), which is the
floor any fabric rides on; the baseline pair with BIG TCP limits; and a bare kernel
VXLAN tunnel over the baseline pair (no bridges, routing, NAT or policy), the ceiling of
any VXLAN fabric on this machine.

The server is `iperf3 -s` started with `nsenter --net=<pod netns>` and stopped by its
PID; the client runs the same way with `-J`; the figure is the receiver's bit rate.
Ratios: fabric / veth, targets vxlan >= 0.8x, host-gw >= 0.95x.

Safety: the labs are named `b<hex>` (namespaces `pn-lab-b<hex>-*`, torn down with
`podnet.lab.teardown.teardown`, which removes exactly what the lab recorded), the baseline
lives in `pn-bench-<token>-*` (lab.Sandbox). Processes are stopped by PID only.
Teardown runs in a `finally`, also on Ctrl-C, SIGTERM or SIGHUP. The root network
namespace is never changed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    Iperf,
    close_lab,
    list_netns,
    log,
    no_interrupt,
    run_bench,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

PREFIX = "pn-bench-"
NETNS_DIR = Path("/run/netns")
PORT = 5201
TARGETS = {"vxlan": 0.8, "host-gw": 0.95}
BASE_A, BASE_B = "10.99.0.1", "10.99.0.2"
BARE_A, BARE_B = "10.98.0.1", "10.98.0.2"  # the bare VXLAN tunnel over the baseline pair


# --------------------------------------------------------------------------------------
# Labs (podnet lab up / down, programmatically)
# --------------------------------------------------------------------------------------
class BenchLab:
    """One lab built with LabBuilder; `close()` tears down exactly what it recorded."""

    def __init__(self, fabric: str, nodes: int = 2, store: str = "sqlite", nic_gso: int = 0) -> None:
        self.name = f"b{secrets.token_hex(3)}"
        self.fabric = fabric
        self.nodes = nodes
        self.store = store
        self.nic_gso = nic_gso
        self.data: dict = {}
        self.built = False
        self.phases: list[tuple[str, float]] = []

    def up(self, pods_per_node: int = 1) -> dict:
        from podnet.lab import topology as topo
        from podnet.lab.builder import LabBuilder, LabOptions

        start = time.monotonic()
        self.phases = []
        builder = LabBuilder(
            topo.default_topology(self.nodes, pods_per_node),
            LabOptions(self.name, self.fabric, self.store, timeout=60,
                       **({"nic_gso": self.nic_gso} if self.nic_gso else {})),
            lambda step: self.phases.append((step, time.monotonic() - start)),
        )
        self.built = True  # from here on, teardown must run even if build() raises
        state = builder.build()
        self.data = state.data
        return self.data

    def pod_ns(self, key: str) -> str:
        return self.data["pods"][key]["netns"]

    def pod_ip(self, key: str) -> str:
        return self.data["pods"][key]["ips"][0].split("/")[0]

    def close(self) -> list[str]:
        if not self.built:
            return []
        self.built = False
        return close_lab(self.name)


# --------------------------------------------------------------------------------------
# iperf3
# --------------------------------------------------------------------------------------
def path_mtu(ns: str, ifname: str = "eth0") -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", "dev", ifname],
        capture_output=True,
        text=True,
        check=False,
    )
    with contextlib.suppress(ValueError, IndexError, KeyError):
        return int(json.loads(out.stdout)[0]["mtu"])
    return 0


# --------------------------------------------------------------------------------------
# Bench
# --------------------------------------------------------------------------------------
def bench(args: argparse.Namespace) -> dict:
    from podnet.lab.sandbox import Sandbox, ip

    sandbox = Sandbox(PREFIX)
    iperf = Iperf()
    labs = {fabric: BenchLab(fabric, nic_gso=args.nic_gso) for fabric in args.fabric}
    problems: list[str] = []
    outcome: dict = {}
    try:
        # Baseline: a plain veth pair between two namespaces.
        a, b = sandbox.netns("a"), sandbox.netns("b")
        ip("-n", a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", b)
        for ns, addr in ((a, BASE_A), (b, BASE_B)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "veth0")
            ip("-n", ns, "link", "set", "veth0", "up")
        paths = {
            "veth": {"client": a, "server": b, "server_ip": BASE_B, "mtu": path_mtu(a, "veth0")}
        }
        if args.big_veth:
            # For information: the same pair with the lab NICs' BIG TCP limits, i.e. what
            # the fabric's own overhead is measured against when pods send big packets.
            from podnet.lab.underlay import NIC_GSO, set_nic_gso

            c, d = sandbox.netns("c"), sandbox.netns("d")
            ip("-n", c, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", d)
            for ns, addr in ((c, BASE_A), (d, BASE_B)):
                set_nic_gso(ns, "veth0", args.nic_gso or NIC_GSO)
                ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "veth0")
                ip("-n", ns, "link", "set", "veth0", "up")
            paths["veth-big"] = {"client": c, "server": d, "server_ip": BASE_B, "mtu": path_mtu(c, "veth0")}
        if "vxlan" in args.fabric and args.bare_vxlan:
            # For information: a bare kernel VXLAN tunnel over the baseline pair itself (no
            # bridges, routing, NAT or policy): the ceiling of any VXLAN fabric here.
            for ns, local, remote, inner in ((a, BASE_A, BASE_B, BARE_A), (b, BASE_B, BASE_A, BARE_B)):
                ip("-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "7", "local", local, "remote", remote,
                   "dstport", "8472", "dev", "veth0")
                ip("-n", ns, "addr", "add", f"{inner}/24", "dev", "vx0")
                ip("-n", ns, "link", "set", "vx0", "up")
            paths["vxlan-bare"] = {"client": a, "server": b, "server_ip": BARE_B, "mtu": path_mtu(a, "vx0")}
        for fabric, lab in labs.items():
            t0 = time.monotonic()
            lab.up()
            log(f"lab {lab.name} ({fabric}) up in {time.monotonic() - t0:.1f}s")
            client, server = "default/p0-0", "default/p1-0"
            paths[fabric] = {
                "client": lab.pod_ns(client),
                "server": lab.pod_ns(server),
                "server_ip": lab.pod_ip(server),
                "mtu": path_mtu(lab.pod_ns(client)),
            }
        if args.underlay and labs:
            lab = next(iter(labs.values()))
            nodes = lab.data["nodes"]
            paths["underlay"] = {
                "client": nodes["node0"]["netns"],
                "server": nodes["node1"]["netns"],
                "server_ip": nodes["node1"]["underlay"],
                "mtu": path_mtu(nodes["node0"]["netns"]),
            }
        servers = {key: iperf.server(p["server"], p["server_ip"]) for key, p in paths.items()}
        runs: dict[str, list[dict]] = {key: [] for key in paths}
        order = list(paths)
        load_before = os.getloadavg()
        for r in range(args.repeat):
            k = r % len(order)
            for key in order[k:] + order[:k]:  # rotate who goes first
                p = paths[key]
                result = Iperf.client(p["client"], p["server_ip"], args.seconds)
                runs[key].append(result)
                log(f"round {r + 1}/{args.repeat} {key}: {result['gbps']:.2f} Gbit/s")
        load_after = os.getloadavg()
        for key, proc in servers.items():
            iperf.stop(proc)
            paths[key]["server_pid"] = proc.pid
        outcome = {
            "seconds": args.seconds,
            "repeat": args.repeat,
            "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
            "loadavg_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
            "paths": {
                key: {
                    "mtu": paths[key]["mtu"],
                    "gbps": [round(x["gbps"], 3) for x in runs[key]],
                    "median_gbps": round(statistics.median(x["gbps"] for x in runs[key]), 3),
                    "retransmits": [x["retransmits"] for x in runs[key]],
                    "sender_cpu": [x["sender_cpu"] for x in runs[key]],
                    "receiver_cpu": [x["receiver_cpu"] for x in runs[key]],
                }
                for key in paths
            },
            "labs": {f: {"name": lab.name, "phases": lab.phases} for f, lab in labs.items()},
        }
        base = outcome["paths"]["veth"]["median_gbps"]
        outcome["ratios"] = {
            key: round(outcome["paths"][key]["median_gbps"] / base, 3)
            for key in paths
            if key != "veth"
        }
        if "veth-big" in outcome["paths"]:
            big = outcome["paths"]["veth-big"]["median_gbps"]
            outcome["ratios_big_veth"] = {
                key: round(outcome["paths"][key]["median_gbps"] / big, 3) for key in paths if key != "veth-big"
            }
    finally:
        with no_interrupt():
            problems += iperf.close()
            for lab in labs.values():
                problems += lab.close()
            problems += close_sandbox(sandbox)
        for problem in problems:
            log(f"cleanup problem: {problem}")
    outcome["cleanup"] = {"ok": not problems, "problems": problems}
    return outcome


def close_sandbox(sandbox) -> list[str]:
    token = f"{sandbox.prefix}{sandbox.token}-"
    sandbox.close()
    left = [ns for ns in list_netns() if ns.startswith(token)]
    return [f"namespaces still present: {left}"] if left else []


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
LABELS = {
    "veth": "veth pair (baseline)",
    "veth-big": "veth pair, BIG TCP limits (info)",
    "vxlan-bare": "bare VXLAN tunnel over that pair (info)",
    "vxlan": "pod -> pod, vxlan",
    "host-gw": "pod -> pod, host-gw",
    "underlay": "node -> node, lab underlay (info)",
}


def render(outcome: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console() if sys.stdout.isatty() else Console(width=140)
    table = Table(
        title=f"cross-node TCP throughput, iperf3 1 stream, {outcome['seconds']} s x "
        f"{outcome['repeat']} ({outcome['machine']['cpus']} CPUs, load {outcome['loadavg_1m']['before']})"
    )
    big = outcome.get("ratios_big_veth")
    columns = ["path", "MTU", "Gbit/s (median)", "runs", "retr", "vs veth", "target"]
    if big:
        columns.append("vs BIG TCP veth (info)")
    for col in columns:
        table.add_column(col, justify="left" if col == "path" else "right")
    for key, p in outcome["paths"].items():
        ratio = outcome["ratios"].get(key)
        target = TARGETS.get(key)
        if ratio is None:
            shown = "1.00x"
        elif target is None:
            shown = f"{ratio:.2f}x"
        else:
            shown = f"[{'green' if ratio >= target else 'red'}]{ratio:.2f}x[/]"
        table.add_row(
            LABELS.get(key, key),
            str(p["mtu"]),
            f"{p['median_gbps']:.2f}",
            " ".join(f"{g:.2f}" for g in p["gbps"]),
            " ".join(str(r) for r in p["retransmits"]),
            shown,
            f">= {target}x" if target else "",
            *([f"{big[key]:.2f}x" if key in big else "1.00x"] if big else []),
        )
    con.print(table)
    clean = outcome["cleanup"]
    con.print(
        "cleanup: labs and baseline torn down, nothing left"
        if clean["ok"]
        else f"[red]cleanup problems:[/] {clean['problems']}"
    )
    for key, target in TARGETS.items():
        if key in outcome["ratios"]:
            print(f"{key}/veth: {outcome['ratios'][key]:.2f}x (target >= {target}x)")
    paths = outcome["paths"]
    if "vxlan" in paths and "vxlan-bare" in paths:
        print(f"bare VXLAN tunnel/veth: {outcome['ratios']['vxlan-bare']:.2f}x; pod vxlan/bare tunnel: "
              f"{paths['vxlan']['median_gbps'] / paths['vxlan-bare']['median_gbps']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="iperf3 -t (default 10)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, interleaved (default 1)")
    parser.add_argument(
        "--fabric",
        action="append",
        choices=tuple(TARGETS),
        help="fabric(s) to measure (repeatable; default both)",
    )
    parser.add_argument(
        "--no-underlay", dest="underlay", action="store_false", help="skip the node -> node row"
    )
    parser.add_argument("--nic-gso", type=int, default=0, metavar="BYTES",
                        help="the labs' NIC GSO limit (default: podnet lab's, BIG TCP; 65536 = none)")
    parser.add_argument("--no-bare-vxlan", dest="bare_vxlan", action="store_false",
                        help="skip the bare VXLAN tunnel between the baseline namespaces (info row)")
    parser.add_argument("--no-big-veth", dest="big_veth", action="store_false",
                        help="skip the veth pair with BIG TCP limits (info row)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    args.fabric = args.fabric or list(TARGETS)
    if args.seconds <= 0 or args.repeat < 1:
        parser.error("--seconds must be > 0 and --repeat >= 1")
    if os.geteuid() != 0:
        print("fabric_throughput: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "nsenter", "ss"):
        if not shutil.which(tool):
            print(f"fabric_throughput: {tool} is not installed", file=sys.stderr)
            return 2
    return run_bench("fabric_throughput", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
