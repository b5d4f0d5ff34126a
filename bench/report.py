"""One HTML page, with PNG plots, from a directory of bench results (bench/run_all.py).

    .venv/bin/python bench/report.py bench/out/<UTC time>

Each plot is written as a PNG beside `report.html` and embedded in it (base64), so the
page is one self-contained file that works offline. A bench whose JSON is missing is
listed as failed with the tail of its log; nothing is invented for it. matplotlib
(the `bench` extra of pyproject.toml) draws with its Agg backend: no display needed.
"""

from __future__ import annotations

import base64
import html
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from podnet.observe.report import table  # the same escaped tables as `podnet report`

Section = tuple[str, list[str], str]  # title, PNG file names, HTML (tables, notes)


def _plt():  # noqa: ANN202 - matplotlib's pyplot module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(out: Path, name: str, title: str, labels: list[str], series: dict[str, list[float]], unit: str) -> str:
    """A grouped bar chart saved as `name`.png; returns the file name."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 3.6), dpi=110)
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png")
    plt.close(fig)
    return f"{name}.png"


def cni_latency(data: dict, out: Path) -> Section:
    systems = data["systems"]
    ops = ["ADD", "CHECK", "DEL"]
    series = {s["label"]: [s["ops"][op]["p50"] for op in ops] for s in systems.values()}
    png = _bars(out, "cni_latency", "CNI latency, p50 (lower is better)", ops, series, "ms")
    rows = [[op, *(f"{s['ops'][op]['p50']:.1f} / {s['ops'][op]['p90']:.1f}" for s in systems.values()),
             f"{data['ratios'][op]['p50']:.2f}x"] for op in ops]
    body = table(["command", *(f"{s['label']} p50 / p90 ms" for s in systems.values()), "podnet/reference p50"],
                 rows)
    return "CNI latency against the reference plugins", [png], body


def fabric_throughput(data: dict, out: Path, name: str = "fabric_throughput") -> Section:
    paths = data["paths"]
    labels = list(paths)
    png = _bars(out, name, "pod-to-pod TCP throughput, median (higher is better)", labels,
                {"Gbit/s": [p["median_gbps"] for p in paths.values()]}, "Gbit/s")
    pngs = [png]
    labs = data.get("labs") or {}
    if labs:
        setup = {lab: (phases[-1][1] if phases else 0.0) for lab, info in labs.items()
                 if (phases := info.get("phases"))}
        if setup:
            pngs.append(_bars(out, f"{name}_setup", "lab up time per fabric (setup cost)", list(setup),
                              {"s": list(setup.values())}, "s"))
    rtt = {k: p["rtt"] for k, p in paths.items() if "rtt" in p}
    if rtt:
        pngs.append(_bars(out, f"{name}_rtt", "round-trip latency, ping -A (lower is better)", list(rtt),
                          {"p50": [r["p50_us"] for r in rtt.values()], "p99": [r["p99_us"] for r in rtt.values()]},
                          "us"))
    ratios = data.get("ratios") or {}
    rows = [[k, p.get("mtu", ""), p["median_gbps"], " ".join(str(g) for g in p["gbps"]), ratios.get(k, ""),
             f"{p['rtt']['p50_us']} / {p['rtt']['p99_us']}" if "rtt" in p else ""]
            for k, p in paths.items()]
    body = table(["path", "MTU", "median Gbit/s", "runs", "x of the veth pair", "RTT p50 / p99 us"], rows)
    if isinstance(data.get("compare"), dict):
        body += table(["comparison", "ratio", "target"],
                        [[k, c.get("ratio", ""), f">= {c['target']}x" if c.get("target") else "info"]
                         for k, c in data["compare"].items()])
    title = {"fabric_throughput": "Fabric comparison against a veth pair and the bare kernel tunnel",
             "fabric_macvlan": "macvlan against host-gw (no bridge, no routing hop)"}.get(
        name, "bgp against host-gw (same rack) and vxlan (across racks)")
    return title, pngs, body


def convergence(data: dict, out: Path) -> Section:
    runs = data["runs"]
    labels = [f"{r['fabric']} {r['nodes']}n {r['store']} {r['from']}" for r in runs]
    png = _bars(out, "convergence", "pod ADD -> reachable from another node (lower is better)", labels,
                {"p50": [r["convergence_ms"]["p50"] for r in runs], "p99": [r["convergence_ms"]["p99"] for r in runs]},
                "ms")
    rows = [[label, r["convergence_ms"]["p50"], r["convergence_ms"]["p99"], r["convergence_ms"]["max"],
             r.get("add_ms", {}).get("p50", ""), len(r.get("new_block_pods", []))] for label, r in zip(labels, runs,
                                                                                                       strict=True)]
    return "Convergence", [png], table(["run", "p50 ms", "p99 ms", "max ms", "ADD p50 ms", "new-block pods"], rows)


def policy_scale(data: dict, out: Path) -> Section:
    rules = data["rules"]
    labels = [f"{n} rules" for n in rules]
    png = _bars(out, "policy_scale", "throughput and connections with N policy rules", labels,
                {"Gbit/s ratio": [r["gbps_ratio"] for r in rules.values()],
                 "conn/s ratio": [r["conn_ratio"] for r in rules.values()]}, "x of 0 rules")
    rows = [[n, r["median_gbps"], r["median_conn_per_s"], r.get("change", {}).get("median_ms", "")]
            for n, r in rules.items()]
    return "Policy scale", [png], table(["rules", "Gbit/s", "conn/s", "one change, ms"], rows)


def services_lb(data: dict, out: Path) -> Section:
    services = data["services"]
    labels = [f"{n} services" for n in services]
    png = _bars(out, "services_lb", "ClusterIP against pod IP, and one endpoint change", labels,
                {"conn/s ratio": [s["conn_ratio"] for s in services.values()],
                 "throughput ratio": [s["tput_ratio"] for s in services.values()]}, "x of pod IP")
    rows = [[n, s["conn_per_s"], s["p99_ms"], s["svc_gbps"], s["change"]["median_ms"]] for n, s in services.items()]
    return "Service scale", [png], table(["services", "conn/s", "p99 ms", "Gbit/s", "endpoint change, ms"], rows)


def bgp_scale(data: dict, out: Path) -> Section:
    mesh, rr = data["scenarios"]["mesh"]["median"], data["scenarios"]["rr"]["median"]
    ratios = data["ratios_mesh_rr"]
    shown = {"sessions": "sessions", "bird_total_sum": "BIRD memory", "rss_sum": "RSS", "kernel_s": "convergence"}
    png = _bars(out, "bgp_scale", f"{data['nodes']} nodes: full mesh / {data['reflectors']} route reflectors",
                list(shown.values()), {"mesh / reflectors": [ratios[k] for k in shown]}, "x")
    rows = [[label, mesh[k], rr[k], ratios[k]] for k, label in shown.items()]
    return "BGP sessions and memory", [png], table(["", "mesh", "reflectors", "ratio"], rows)


def agent_overhead(data: dict, out: Path) -> Section:
    """An agent's CPU and RSS idle and with pods (scraped every second), and `podnet status`."""
    sections = []
    rows = []
    agent, targets = data.get("agent"), data["targets"]
    if agent:
        phases = {"idle": agent["idle"], f"{agent['pods']} pods": agent["with_pods"]}
        sections.append(_bars(out, "agent_overhead", "agent CPU, % of one core (target idle <= "
                              f"{targets['cpu_idle_pct']}%)", list(phases),
                              {"CPU %": [m["cpu_pct"] for m in phases.values()]}, "%"))
        rows += [[f"agent, {k}", f"{m['cpu_pct']} % CPU", f"{m['rss_mib_max']} MiB RSS max"] for k, m in phases.items()]
    status = data.get("status")
    if status:
        rows.append([f"podnet status, {status['nodes']} nodes", f"{status['status_s']['median']} s median",
                     f"{status['ratio_to_floor']}x its --help"])
    return "Agent overhead and podnet status", sections, table(["", "figure", ""], rows)


def trace_time(data: dict, out: Path) -> Section:
    modes = ("floor", "static", "live")
    png = _bars(out, "trace_time", f"podnet trace on {data['nodes']} nodes, median s", ["--help", "static", "--live"],
                {"s": [data[m]["median_s"] for m in modes]}, "s")
    rows = [[m, data[m]["median_s"], data[m]["p90_s"], data.get("ratio_to_floor", {}).get(m, "")] for m in modes]
    return "podnet trace time", [png], table(["mode", "median s", "p90 s", "x --help"], rows)


def sleeve_throughput(data: dict, out: Path) -> Section:
    paths, ratios = data["paths"], data["ratios_vs_vxlan"]
    png = _bars(out, "sleeve_throughput", "gossip sleeve against the kernel, median Gbit/s", list(paths),
                {"Gbit/s": [p["median_gbps"] for p in paths.values()]}, "Gbit/s")
    rows = [[k, p["median_gbps"], ratios.get(k, ""), p.get("cores_per_gbps", "")] for k, p in paths.items()]
    return ("Gossip sleeve throughput (target: encrypted >= "
            f"{data['target_encrypted_gbps']} Gbit/s)"), [png], table(["path", "median Gbit/s", "x kernel VXLAN",
                                                                      "cores per Gbit/s"], rows)


def gossip_throughput(data: dict, out: Path) -> Section:
    paths, ratios, targets = data["paths"], data["ratios_vs_vxlan"], data["targets"]
    relay = data.get("relay") or {"paths": {}}  # results before the relay was measured have none
    bars = {k: p["median_gbps"] for k, p in paths.items()} | {
        f"{k} relayed": p["median_gbps"] for k, p in relay["paths"].items()}
    png = _bars(out, "gossip_throughput", "gossip fabric pod-to-pod, median Gbit/s", list(bars),
                {"Gbit/s": list(bars.values())}, "Gbit/s")
    rows = [[k, p["median_gbps"], ratios.get(k, ""), p["median_agent_cores"], p["agent_cores_per_gbps"]]
            for k, p in paths.items()]
    body = table(["lab", "median Gbit/s", "x vxlan", "agents' cores", "agents' cores per Gbit/s"], rows)
    body += table(["target", "met"], [[f"fast path >= {targets['fast_vs_vxlan']}x vxlan", data["meets"]["fast_vs_vxlan"]],
                                      [f"encrypted >= {targets['encrypted_gbps']} Gbit/s", data["meets"]["encrypted_gbps"]],
                                      ["plain sleeve", data["plain_sleeve"]]])
    if relay["paths"]:
        cut = "-".join(relay["cut"])
        body += table([f"relayed via {relay['middle']} ({cut} cut)", "median Gbit/s", "x direct", "agents' cores",
                       "agents' cores per Gbit/s", f"{relay['middle']}'s agent cores"],
                      [[relay["labs"][k]["relay"], p["median_gbps"], relay["ratios_vs_direct"][k],
                        p["median_agent_cores"], p["agent_cores_per_gbps"],
                        p["median_agent_cores_by_node"].get(relay["middle"], "")]
                       for k, p in relay["paths"].items()])
    return "Gossip fabric throughput: fast path and encrypted sleeve against vxlan, direct and relayed", [png], body


def gossip_convergence(data: dict, out: Path) -> Section:
    shown = {k: data[k] for k in ("document", "join", "leave")}
    reclaim = data.get("reclaim")  # results before the reclaim was timed have none
    if reclaim:
        grace = f"{reclaim['grace_s']:g}"
        shown |= {"dead peer gone": reclaim["detect"], f"reclaim agreed (grace {grace} s)": reclaim["agree"],
                  "reclaim beyond the grace": reclaim["beyond_grace"]}
    png = _bars(out, "gossip_convergence", f"gossip on loopback, {data['peers']} peers, median s", list(shown),
                {"s": [r["median_s"] for r in shown.values()]}, "s")
    rows = [[k, r["median_s"], r["max_s"]] for k, r in shown.items()]
    return "Gossip convergence (loopback)", [png], table(["event everywhere", "median s", "max s"], rows)


def macvlan_policy(data: dict, out: Path) -> Section:
    none, table_ = data["median_gbps"], data["median_conn_per_s"]
    png = _bars(out, "macvlan_policy", f"a macvlan pod's own policy table, {data['rules']} rules, median Gbit/s",
                ["no table", "pod table"], {"Gbit/s": [none["none"], none["table"]]}, "Gbit/s")
    rows = [["TCP Gbit/s", none["none"], none["table"], data["ratio"]],
            ["new connections/s", table_["none"], table_["table"], data["conn_ratio"]]]
    return (f"macvlan pod policy table at {data['rules']} rules ({data['table_lines']} lines)", [png],
            table(["figure", "no table", "pod table", "ratio"], rows))


def mesh_latency(data: dict, out: Path) -> Section:
    lat, cpu, tp = data["latency"], data["sidecar_cpu"], data["throughput"]
    quantiles = list(lat["added_ms"])
    png = _bars(out, "mesh_latency", f"HAProxy sidecar mesh at {data['rate']:g} req/s, latency ms (lower is better)",
                quantiles, {mode: [lat["quantiles_ms"][mode][q] for q in quantiles] for mode in lat["quantiles_ms"]},
                "ms")
    body = table(["path", *quantiles], [[mode, *(q[k] for k in quantiles)] for mode, q in lat["quantiles_ms"].items()]
                 + [["added (meshed - unmeshed)", *(lat["added_ms"][k] for k in quantiles)]])
    body += table(["process", "cores per round", "vCPU per 1k req/s", "net of idle"],
                  [[k, " ".join(map(str, r["cores"])), r["vcpu_per_1k_rps"], r["net_of_idle"]]
                   for k, r in [*cpu.items(), *((f"bare {k.split()[0]} proxy (the floor)", r)
                                               for k, r in (data.get("bare_cpu") or {}).items() if "sidecar" in k)]])
    body += table(["wrk -t1 -c32 against", "median req/s", "req/s per client-sidecar core", "bound by"],
                  [[k, r["median_rps"], r["rps_per_client_sidecar_core"] or "", r["median_run"]["bound_by"]]
                   for k, r in tp.items()])
    want, met = data.get("targets") or {"added_p90_ms": 0.3, "vcpu_per_1k_rps": 0.1,  # results before they were saved
                                        "rps_per_client_sidecar_core": 30000}, data["meets"]
    body += table(["target", "met"], [[f"added p90 <= {want['added_p90_ms']} ms", met["added_p90"]],
                                      [f"<= {want['vcpu_per_1k_rps']} vCPU per 1k req/s per sidecar", met["vcpu_per_1k"]],
                                      [f">= {want['rps_per_client_sidecar_core']} req/s per client-sidecar core (stub)",
                                       met["rps_per_core"]],
                                      ["sidecar reloads during the run", data["reloads"]["during_run"]],
                                      ["server app", data["app"]]])
    return f"Service mesh (HAProxy sidecars) against no mesh, {data['machine']['cpus']} CPUs", [png], body


def clusterset(data: dict, out: Path) -> Section:
    gbps, lat = data["median_gbps"], data["latency_ms"]
    png = _bars(out, "clusterset", "west b -> in-cluster and cross-cluster, median Gbit/s", list(gbps),
                {"Gbit/s": list(gbps.values())}, "Gbit/s")
    rows = [[path, gbps[path], lat[path]["p50"], lat[path]["p90"], lat[path]["p99"]] for path in gbps]
    body = table(["path", "Gbit/s", "p50 ms", "p90 ms", "p99 ms"], rows)
    body += table(["figure", "value"], [["throughput cross / in", data["throughput_ratio"]],
                                        ["p50 latency cross / in", data["latency_ratio_p50"]],
                                        ["ServiceExport -> resolvable in the other cluster, s",
                                         data["export_to_resolvable_s"]],
                                        ["gateway failover, s", data["failover"]["seconds"]]])
    return "Two clusters joined over a WAN against one cluster", [png], body


RENDERERS: dict[str, Callable[[dict, Path], Section]] = {
    "clusterset": clusterset,
    "mesh_latency": mesh_latency,
    "sleeve_throughput": sleeve_throughput, "gossip_convergence": gossip_convergence,
    "gossip_throughput": gossip_throughput, "macvlan_policy": macvlan_policy,
    "fabric_macvlan": lambda d, o: fabric_throughput(d, o, "fabric_macvlan"),
    "agent_overhead": agent_overhead, "trace_time": trace_time,
    "cni_latency": cni_latency, "fabric_throughput": fabric_throughput,
    "fabric_bgp": lambda d, o: fabric_throughput(d, o, "fabric_bgp"), "convergence": convergence,
    "policy_scale": policy_scale, "services_lb": services_lb, "bgp_scale": bgp_scale,
}
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
         "font-size:13px}th{background:#f3f3f3}img{max-width:100%}.failed{color:#b00}pre{background:#f7f7f7;"
         "padding:8px;font-size:12px;overflow:auto}")


def write(out: Path) -> Path:
    """report.html in `out`, from its index.json and bench JSONs."""
    index = json.loads((out / "index.json").read_text()) if (out / "index.json").exists() else {"runs": []}
    runs = index["runs"] or [{"name": p.stem, "ok": True} for p in sorted(out.glob("*.json")) if p.stem != "index"]
    parts = [f"<h1>podnet benchmarks</h1><p>{'quick mode: shapes, not final figures; ' if index.get('quick') else ''}"
             f"{html.escape(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(index.get('started', time.time()))))}"
             "</p>", table(["bench", "result", "seconds"],
                            [[r["name"], "ok" if r.get("ok") else f"failed (exit {r.get('exit')})", r.get("seconds", "")]
                             for r in runs])]
    for run in runs:
        path = out / f"{run['name']}.json"
        render = RENDERERS.get(run["name"])
        if not path.exists() or render is None:
            log = out / f"{run['name']}.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else "(no log)"
            parts.append(f"<h2 class=failed>{html.escape(run['name'])}: no results</h2><pre>{html.escape(tail)}</pre>")
            continue
        title, pngs, body = render(json.loads(path.read_text()), out)
        images = "".join(f'<img alt="{html.escape(p)}" src="data:image/png;base64,'
                         f'{base64.b64encode((out / p).read_bytes()).decode()}">' for p in pngs)
        parts.append(f"<h2>{html.escape(title)}</h2>{images}{body}")
    page = out / "report.html"
    page.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>podnet benchmarks</title>"
                    f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    return page


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
