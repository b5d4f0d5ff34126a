"""`podnet lab up|status|down|exec`: a multi-node cluster of namespaces on this machine."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time

from podnet.cli.output import add_output_option, emit_object, emit_rows, fail
from podnet.cli.target import add_target_options, lab_name
from podnet.cluster.dualstack import check_pools, parse_cluster_cidrs
from podnet.defaults import DEFAULT_CLUSTER_DOMAIN, FABRIC_NAMES
from podnet.errors import InvalidConfig, PodnetError
from podnet.kernel.gso import BIG_TCP as NIC_GSO
from podnet.lab.crowding import WATCH_BATCH_PER_AGENT_PER_CPU
from podnet.lab.topology import CLUSTER_CIDR, CLUSTER_CIDR6
from podnet.model.service import DEFAULT_SERVICE_CIDR, ServiceSettings
from podnet.store import WATCH_BATCH_RANGE
from podnet.store.base import WATCH_BATCH

DEFAULT_SERVICE_CIDR6 = "fd00:10:96::/112"  # kind's dual-stack service subnet
DUAL_STACK_FABRICS = ("vxlan", "host-gw", "bgp", "gossip", "macvlan")  # `lab up --ipv6` (docs/architecture.md: which combinations exist)


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="a multi-node cluster made of network namespaces")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)

    up = lab_sub.add_parser("up", help="build the lab: underlay, store, one agent per node, pods")
    _name_option(up)
    up.add_argument("-f", "--file", help="topology YAML (nodes, racks, namespaces, pods, ports)")
    up.add_argument("--nodes", type=int, help="number of nodes (default 2; not with -f)")
    up.add_argument("--pods-per-node", type=int, help="echo pods per node (default 2; not with -f)")
    up.add_argument("--racks", type=int, help="L2 segments joined by a router (default 1; not with -f)")
    up.add_argument("--fabric", choices=FABRIC_NAMES, default="vxlan", help="how nodes reach each other's pods")
    up.add_argument("--store", choices=("sqlite", "etcd", "none"), default=None,
                    help="shared cluster store: one SQLite file (default), a 3-member etcd cluster in the lab, "
                         "or none: each node keeps its own, in step by gossip (--fabric gossip, its default)")
    up.add_argument("--encrypt", action="store_true",
                    help="--fabric gossip: a random cluster secret; peers authenticate and pods talk over the "
                         "encrypted sleeve")
    up.add_argument("--mesh-cert-lifetime", type=float, default=None, metavar="SECONDS",
                    help="the agents' mesh certificate lifetime (default 3600; tests rotate with a few seconds)")
    up.add_argument("--reclaim-grace", type=float, default=None,
                    help="--fabric gossip: seconds before a dead node's space is reclaimed (default 10)")
    up.add_argument("--cluster-cidr", default=CLUSTER_CIDR,
                    help=f"the pods' pool (default {CLUSTER_CIDR}); dual stack: IPv4,IPv6 (implies --ipv6)")
    up.add_argument("--ipv6", action="store_true",
                    help=f"dual stack: every pod gets an IPv6 address too (pool {CLUSTER_CIDR6} unless "
                         "--cluster-cidr names one), and the underlay carries IPv6 beside IPv4")
    up.add_argument("--ipv6-masquerade", action="store_true",
                    help="masquerade pods' IPv6 toward the outside world too (default: IPv4 only, as Kubernetes)")
    up.add_argument("--block-prefix", type=int, default=None,
                    help="prefix length of the blocks nodes claim from the pool (default 26 for bgp, else 24)")
    up.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR,
                    help=f"where ClusterIPs come from (default {DEFAULT_SERVICE_CIDR})")
    up.add_argument("--cluster-domain", default=DEFAULT_CLUSTER_DOMAIN,
                    help=f"the cluster DNS domain (default {DEFAULT_CLUSTER_DOMAIN})")
    up.add_argument("--no-cluster-dns", dest="cluster_dns", action="store_false",
                    help="no DNS pods and no kube-system/kube-dns service (the service CIDR's .10)")
    up.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each daemon (default 30)")
    up.add_argument("--lease-ttl", type=float, default=None,
                    help="the agents' node lease TTL in seconds: a dead node is reclaimed after it (default 10, or 1.2 "
                         "per node per CPU when that is more: 100 nodes on 2 CPUs get 60)")
    up.add_argument("--watch-batch", type=float, default=None, metavar="SECONDS",
                    help="the agents' --watch-batch: how long a busy store's changes are gathered before they "
                         f"react (default {WATCH_BATCH:g}, or {WATCH_BATCH_PER_AGENT_PER_CPU:g} per node per CPU "
                         "when that is more: 100 nodes on 2 CPUs get 0.25)")
    up.add_argument("--nic-gso", type=int, default=NIC_GSO, metavar="BYTES",
                    help=f"GSO/GRO limit of the lab's underlay NICs (default {NIC_GSO}, BIG TCP; "
                         "65536 = a NIC without BIG TCP); pods get what their node's uplink takes")
    up.add_argument("--fastpath", choices=("kernel", "ebpf"), default="kernel",
                    help="--fabric vxlan or host-gw: pods' packets to other nodes through each node's bridge "
                         "and routing (kernel, the default) or tc eBPF programs straight to and from the tunnel "
                         "or underlay (ebpf; off on a node while it enforces any policy)")
    up.set_defaults(func=_cmd_up)

    status = lab_sub.add_parser("status", help="nodes, agents and pods of a running lab")
    _name_option(status)
    add_output_option(status)
    status.set_defaults(func=_cmd_status)

    down = lab_sub.add_parser("down", help="stop every recorded process and delete every recorded namespace")
    _name_option(down)
    down.set_defaults(func=_cmd_down)

    host = lab_sub.add_parser("host", help="plain (non-container) hosts on the lab fabric")
    host_sub = host.add_subparsers(dest="host_cmd", required=True)
    add = host_sub.add_parser("add", help="add a plain host: a namespace on the fabric with an echo server, "
                                          "protected by ClusterPolicy through a HostEndpoint (host: NAME)")
    _name_option(add)
    add.add_argument("host", metavar="HOST", help="the host's name (1-15 of [a-z0-9-])")
    add.add_argument("--rack", type=int, default=0, help="the rack (L2 segment) to plug it into (default 0)")
    add.add_argument("--tcp", type=int, action="append", metavar="PORT", help="TCP ports it serves (default 80)")
    add.add_argument("--udp", type=int, action="append", metavar="PORT", help="UDP ports it serves (default 80)")
    add.add_argument("--join", action="store_true", help="then join it to the pod network (podnet host join "
                                                         "--apply inside it): a podnet address and routes to the pods")
    add_output_option(add)
    add.set_defaults(func=_cmd_host_add)

    link = lab_sub.add_parser("link", help="cut and heal the underlay link between two machines of a rack")
    link_sub = link.add_subparsers(dest="link_cmd", required=True)
    for verb, what in (("cut", "drop every IPv4 packet between the two machines in their rack's fabric"),
                       ("heal", "let the two machines reach each other over their rack's fabric again")):
        change = link_sub.add_parser(verb, help=what)
        _name_option(change)
        change.add_argument("a", metavar="A", help="a node or host of the lab")
        change.add_argument("b", metavar="B", help="another node or host on the same rack")
        change.set_defaults(func=_cmd_link, link_verb=verb)
    listed = link_sub.add_parser("list", help="the cut links, whether the fabric has them, packets dropped")
    _name_option(listed)
    add_output_option(listed)
    listed.set_defaults(func=_cmd_link_list)

    run = lab_sub.add_parser("exec", help="run a command in a node's or a pod's network namespace")
    _name_option(run)
    run.add_argument("target", metavar="NODE|NS/POD", help="a node name, NS/POD, or out, rtr, fab<r>")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command to run")
    run.set_defaults(func=_cmd_exec)


def _name_option(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser, lab_only=True)


def _topology(args: argparse.Namespace):
    from podnet.lab import topology

    if args.file:
        if any(v is not None for v in (args.nodes, args.pods_per_node, args.racks)):
            raise topology.TopologyError("-f and --nodes/--pods-per-node/--racks exclude each other")
        return topology.load(args.file)
    return topology.default_topology(args.nodes or 2, 2 if args.pods_per_node is None else args.pods_per_node,
                                     args.racks or 1)


def _cmd_up(args: argparse.Namespace) -> int:
    from rich.console import Console

    from podnet.lab.builder import BGP_BLOCK_PREFIX, BLOCK_PREFIX, LabBuilder, LabOptions
    from podnet.lab.teardown import teardown

    name = lab_name(args, "podnet lab up")
    topology = _topology(args)
    console = Console(stderr=True)
    start = time.monotonic()

    def progress(step: str) -> None:
        console.print(f"[green]✓[/] {step} [dim]({time.monotonic() - start:.1f}s)[/]")

    if not 65536 <= args.nic_gso <= 524280:
        return fail("--nic-gso must be between 65536 and 524280 bytes", 2)
    store = args.store or ("none" if args.fabric == "gossip" else "sqlite")
    if (store == "none") != (args.fabric == "gossip"):
        return fail("--fabric gossip keeps no shared store (--store none), and only it: "
                    f"not --fabric {args.fabric} with --store {store}", 2)
    if args.encrypt and args.fabric != "gossip":
        return fail("--encrypt is for --fabric gossip (its sleeve)", 2)
    if args.mesh_cert_lifetime is not None and not 5 <= args.mesh_cert_lifetime <= 366 * 86400:
        return fail("--mesh-cert-lifetime: from 5 seconds to a year", 2)
    if args.reclaim_grace is not None and (args.fabric != "gossip" or args.reclaim_grace < 1):
        return fail("--reclaim-grace: at least 1 second, with --fabric gossip", 2)
    if args.fastpath != "kernel" and args.fabric not in ("vxlan", "host-gw"):
        return fail(f"--fastpath {args.fastpath} is for --fabric vxlan or host-gw", 2)
    if args.watch_batch is not None and not WATCH_BATCH_RANGE[0] <= args.watch_batch <= WATCH_BATCH_RANGE[1]:
        return fail(f"--watch-batch: from {WATCH_BATCH_RANGE[0]:g} to {WATCH_BATCH_RANGE[1]:g} seconds", 2)
    block_prefix = args.block_prefix or (BGP_BLOCK_PREFIX if args.fabric == "bgp" else BLOCK_PREFIX)
    try:
        pool, pool6 = parse_cluster_cidrs(args.cluster_cidr)
    except InvalidConfig as exc:
        return fail(exc.msg, 2)
    if not pool.prefixlen <= block_prefix <= 30:
        return fail(f"--block-prefix must be from {pool.prefixlen} to 30 for --cluster-cidr {pool}", 2)
    if (args.ipv6 or args.ipv6_masquerade) and pool6 is None:
        pool6 = ipaddress.IPv6Network(CLUSTER_CIDR6)
    if pool6 is not None:
        try:
            check_pools(pool, block_prefix, pool6)
        except InvalidConfig as exc:
            return fail(exc.msg, 2)
        if args.fabric not in DUAL_STACK_FABRICS:
            return fail(f"--ipv6: dual stack is built for --fabric {', '.join(DUAL_STACK_FABRICS)}, "
                        f"not yet for {args.fabric}", 2)
        if args.fabric == "bgp" and topology.racks > 1:
            return fail("--ipv6 with --fabric bgp: one rack (the ToRs' BIRD speaks IPv4 only yet)", 2)
    service_cidr = args.service_cidr
    if pool6 is not None and "," not in service_cidr:  # dual stack: services of both families too
        service_cidr = f"{service_cidr},{DEFAULT_SERVICE_CIDR6}"
    try:
        ServiceSettings(service_cidr, cluster_domain=args.cluster_domain)  # refused here, before anything is built
    except InvalidConfig as exc:
        return fail(f"--service-cidr: {exc.msg}", 2)
    if args.fabric == "bgp" and topology.racks > 1 and any(n.route_reflector for n in topology.nodes):
        return fail("--fabric bgp: route reflectors with several racks are not built yet "
                    "(racks peer with their ToR; reflectors serve one segment)", 2)
    if topology.bgp and args.fabric != "bgp":
        return fail("the topology's bgp objects (BGPConfiguration, BGPPeer) need --fabric bgp", 2)
    if args.fabric == "macvlan" and topology.racks > 1:
        return fail("--fabric macvlan: pods live on one L2 segment with their nodes: one rack only "
                    "(across racks use vxlan, or bgp with a ToR per rack)", 2)
    from podnet.lab.routers import MAX_BGP_RACKS  # (it imports the bgp fabric: pyroute2, 0.3 s)

    if args.fabric == "bgp" and topology.racks > MAX_BGP_RACKS:
        return fail(f"--fabric bgp: at most {MAX_BGP_RACKS} racks (one /30 uplink each in 172.31.250.0/24)", 2)
    builder = LabBuilder(topology, LabOptions(name, args.fabric, store, timeout=args.timeout,
                                            service_cidr=service_cidr, cluster_dns=args.cluster_dns,
                                            cluster_domain=args.cluster_domain,
                                            nic_gso=args.nic_gso, cluster_cidr=str(pool), block_prefix=block_prefix,
                                            **({"lease_ttl": args.lease_ttl} if args.lease_ttl else {}),
                                            **({"watch_batch": args.watch_batch} if args.watch_batch else {}),
                                            **({"reclaim_grace": args.reclaim_grace} if args.reclaim_grace else {}),
                                            mesh_cert_lifetime=args.mesh_cert_lifetime,
                                            encrypt=args.encrypt,
                                            cluster_cidr6=str(pool6) if pool6 else None,
                                            ipv6_masquerade=args.ipv6_masquerade, fastpath=args.fastpath),
                         progress)
    if builder.simulate:
        console.print("[yellow]! PODNET_LAB_SIMULATE_NODES: the lab hands out blocks itself "
                      "(no cross-node pod routes)[/]")
    try:
        with console.status(f"building lab {name} ..."):
            state = builder.build()
    except (PodnetError, KeyboardInterrupt) as err:
        if builder.state is not None:
            console.print("[red]✗ lab up failed; tearing down what was built[/]")
            for problem in teardown(name):
                console.print(f"  [red]{problem}[/]")
        if isinstance(err, KeyboardInterrupt):
            return 130
        raise
    console.print(f"lab [bold]{name}[/] up in {time.monotonic() - start:.1f}s")
    print_summary(state.data)
    return 0


def print_summary(data: dict) -> None:
    """The nodes and pods of a lab just built (lab up, demo)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    procs_nodes = Table(title=f"lab {data['name']}: nodes ({data.get('fabric')}, store {data.get('store')})")
    for col in ("node", "rack", "underlay", "block", "agent pid", "netns"):
        procs_nodes.add_column(col, no_wrap=True)
    for name, node in data["nodes"].items():
        procs_nodes.add_row(name, str(node["rack"]), node["underlay"], str(node.get("block") or "-"),
                            str(node.get("agent_pid", "-")), node["netns"])
    console.print(procs_nodes)
    pods = Table(title="pods")
    for col in ("pod", "node", "ip", "ports"):
        pods.add_column(col, no_wrap=True)
    for key, pod in data["pods"].items():
        pods.add_row(key, pod["node"], ", ".join(pod.get("ips", [])) or "-", ", ".join(pod["ports"]) or "-")
    console.print(pods)
    out = data.get("outside", {})
    console.print(f"outside: {out.get('ip')} (HTTP :80, UDP :80) in {out.get('netns')}")
    dns = data.get("cluster_dns")
    if dns:
        servers = ", ".join(" ".join([node, (pod.get("ips") or ["?"])[0].split("/")[0], *(
            [pod["server"]] if pod.get("server") else [])]) for node, pod in (dns.get("pods") or {}).items())
        console.print(f"cluster dns: {dns['ip']} (kube-system/kube-dns, {dns['domain']}): {servers}")
    console.print(f"try: podnet lab exec --lab {data['name']} default/<pod> -- ping {out.get('ip')}")


def _cmd_status(args: argparse.Namespace) -> int:
    from podnet.lab.status import fastpath_text, status

    name = lab_name(args, "podnet lab status")
    data = status(name)
    if args.output == "json":
        emit_object(data, "json")
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # a peer's reason is data, never markup

    console = Console()
    console.print(f"lab [bold]{name}[/]: {data['phase']}, fabric {data.get('fabric')}, "
                  f"store {data.get('store_url', data.get('store'))}, fast path {data.get('fastpath', 'kernel')}, "
                  f"supervisor {'alive' if data['supervisor']['alive'] else 'DEAD'}")
    nodes = Table(title="nodes")
    for col in ("node", "underlay", "block", "agent", "fast path"):
        nodes.add_column(col, no_wrap=True)
    nodes.add_column("refused peers")  # a lease the node routes nothing for, and why
    for node in data["nodes"]:
        agent = node["agent"] or {}
        answer = "answers" if "result" in agent else f"no answer ({agent.get('error', '?')})"
        refused = Text("\n".join(f"{r['name']} {r['block']}: {r['reason']}" for r in node["refused"]) or "-")
        nodes.add_row(node["name"], node["underlay"], str(node.get("block") or "-"),
                      f"pid {node.get('agent_pid', '-')} {'up' if node['agent_alive'] else 'DOWN'}, {answer}",
                      Text(fastpath_text(node["fastpath"])), refused, style="red" if node["refused"] else None)
    console.print(nodes)
    pods = Table(title="pods")
    for col in ("pod", "node", "ip", "ports", "echo"):
        pods.add_column(col, no_wrap=True)
    for pod in data["pods"]:
        pods.add_row(pod["name"], pod["node"], ", ".join(pod.get("ips", [])) or "-", ", ".join(pod["ports"]) or "-",
                     "up" if pod["echo_alive"] else "DOWN")
    console.print(pods)
    if data.get("cuts"):
        console.print("cut links: " + ", ".join(f"{a}-{b}" for a, b in data["cuts"]))
    healthy = data["supervisor"]["alive"] and all(n["agent_alive"] for n in data["nodes"])
    return 0 if healthy else 1


def _cmd_down(args: argparse.Namespace) -> int:
    from podnet.lab.teardown import teardown

    name = lab_name(args, "podnet lab down")
    problems = teardown(name, lambda step: print(step, file=sys.stderr))
    for problem in problems:
        fail(problem)
    if not problems:
        print(f"lab {name} removed")
    return 1 if problems else 0


def _cmd_host_add(args: argparse.Namespace) -> int:
    from podnet.lab.hosts import add_host

    name = lab_name(args, "podnet lab host add")
    try:
        entry = add_host(name, args.host, args.rack, tuple(args.tcp or (80,)), tuple(args.udp or (80,)),
                         join=args.join)
    except PodnetError as exc:
        return fail(exc)
    if args.output == "json":
        emit_object(entry, "json")
    else:
        print(f"host {args.host}: {entry['underlay']} on rack {entry['rack']} ({entry['netns']}), serving "
              f"TCP {entry['tcp']} UDP {entry['udp']}; protect it with a HostEndpoint (spec.host: {args.host})"
              + (f"; joined the pod network as {entry['pod_ip']}" if entry.get("pod_ip") else ""))
    return 0


def _cmd_link(args: argparse.Namespace) -> int:
    from podnet.lab import cuts

    name = lab_name(args, f"podnet lab link {args.link_verb}")
    a, b = (cuts.cut if args.link_verb == "cut" else cuts.heal)(name, args.a, args.b)
    print(f"link {a}-{b} {'cut' if args.link_verb == 'cut' else 'healed'} in lab {name}")
    return 0


def _cmd_link_list(args: argparse.Namespace) -> int:
    from podnet.lab.cuts import listing

    rows = listing(lab_name(args, "podnet lab link list"))
    emit_rows(rows, ("link", "rack", "a_ip", "b_ip", "in_kernel", "dropped_packets"), args.output, "cut links")
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    from podnet.lab.state import enter, resolve_target

    name = lab_name(args, "podnet lab exec")
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        return fail("lab exec needs a command: podnet lab exec NODE -- CMD", 2)
    ns = resolve_target(name, args.target)
    argv = [*enter(ns), *cmd]
    os.execvp(argv[0], argv)
    return 127  # not reached
