"""`podnet connectivity test` (every path of a running lab, pass/fail) and `podnet
probe` (the real connectivity matrix between a lab's pods, observe/matrix.py)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from podnet.cli.output import add_output_option
from podnet.cli.target import add_target_options, lab_aware, lab_name, open_cluster_store


def register(sub: argparse._SubParsersAction) -> None:
    _register_connectivity(sub)
    _register_probe(sub)


def _register_connectivity(sub: argparse._SubParsersAction) -> None:
    conn = sub.add_parser("connectivity", help="check pod, node and outside connectivity of a lab")
    conn_sub = conn.add_subparsers(dest="connectivity_command", required=True)
    test = conn_sub.add_parser("test", help="run every check in parallel; exit 1 if any fails")
    test.add_argument("--timeout", type=float, default=2.0, help="seconds each probe may take (default 2)")
    test.add_argument("--parallel", type=int, default=16, help="probes in flight at once (default 16)")
    test.add_argument("--clusterset", action="store_true",
                      help="the checks across the clusters this lab joined (podnet cluster join) instead")
    test.add_argument("--family", type=int, choices=(4, 6), default=None,
                      help="check only IPv4 or only IPv6 (default: every family the lab's pods have)")
    add_output_option(test)
    add_target_options(test, lab_only=True)
    test.set_defaults(func=_cmd_test)


@lab_aware
def _cmd_test(args: argparse.Namespace) -> int:
    from podnet.observe import connectivity

    name = lab_name(args, "podnet connectivity test")
    start = time.monotonic()
    with open_cluster_store(args) as store:
        results = connectivity.test_lab(name, args.timeout, args.parallel, store, clusterset=args.clusterset,
                                        family=args.family)
    if args.output == "json":
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        from rich.console import Console

        render(results, Console(), f"lab {name}", time.monotonic() - start)
    _, failed = connectivity.summary(results)
    return 1 if failed or not results else 0


def render(results: Sequence, console, title: str = "", seconds: float | None = None) -> None:
    """The pass/fail table, the failures again in full, and `N passed, M failed`."""
    from rich.table import Table

    from podnet.observe.connectivity import summary

    table = Table(title=f"connectivity test{': ' + title if title else ''}")
    table.add_column("check", no_wrap=True)
    table.add_column("source", overflow="fold")
    table.add_column("destination", overflow="fold")
    table.add_column("result", no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=1)
    table.add_column("ms", justify="right", no_wrap=True)
    for r in results:
        table.add_row(r.check, r.source, r.destination, "[green]pass[/]" if r.ok else "[bold red]FAIL[/]",
                      r.detail, f"{r.ms:.1f}")
    console.print(table)
    failures = [r for r in results if not r.ok]
    for r in failures:
        console.print(f"[red]✗ {r.check}[/]: {r.source} -> {r.destination}: {r.detail}", soft_wrap=True)
    passed, failed = summary(results)
    took = f" in {seconds:.1f}s" if seconds is not None else ""
    colour = "green" if not failed and results else "red"
    console.print(f"[{colour}]{passed} passed, {failed} failed[/]{took}")


def _register_probe(sub: argparse._SubParsersAction) -> None:
    probe = sub.add_parser(
        "probe",
        help="probe every pod from every pod: one truth table per port/protocol",
        description="Every source pod probes every (port, protocol) every target pod serves, "
        "for real (TCP echo, UDP echo), all at once. Tables: rows from, columns to, "
        "'.' reachable, 'X' blocked. Exit 0 when the probe ran, whatever it found.",
    )
    probe.add_argument(
        "--port",
        action="append",
        metavar="P",
        help="probe only these ports (repeatable or comma list; default: every served port)",
    )
    probe.add_argument(
        "--protocol",
        action="append",
        metavar="tcp|udp",
        help="probe only this protocol (repeatable; default: tcp and udp)",
    )
    probe.add_argument(
        "--from",
        dest="source",
        metavar="SELECTOR",
        help="source pods: k=v, k!=v, k in (a,b), k, joined by commas; "
        "labels plus namespace= and node= (default: all)",
    )
    probe.add_argument(
        "--to", dest="target", metavar="SELECTOR|svc/NS/NAME|VIP[:PORT]",
        help="target pods, same syntax (default: all); or a service: each source opens --count "
        "connections to it and the table shows which backends answered",
    )
    probe.add_argument("--family", type=int, choices=(4, 6), default=None,
                       help="probe the targets' IPv4 (default) or IPv6 addresses (a dual-stack lab: lab up --ipv6)")
    probe.add_argument("--count", type=int, default=10, help="connections per source and service port (default 10)")
    probe.add_argument(
        "--timeout", default="1.0", metavar="SECONDS", help="per-probe timeout (default 1.0)"
    )
    add_output_option(probe)
    add_target_options(probe, lab_only=True)
    probe.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from podnet.observe import matrix
    from podnet.observe.service_probe import is_service_target

    if is_service_target(args.target):
        return lab_aware(_probe_service)(args)

    request = matrix.Request.from_args(
        args.port, args.protocol, args.source, args.target, args.timeout, args.family
    )
    name = lab_name(args, "podnet probe")
    lab = matrix.load_lab(name)
    plan = matrix.plan(lab, request)
    start = time.monotonic()
    tables = matrix.matrices(plan, matrix.run(plan, request.timeout))
    seconds = time.monotonic() - start
    if args.output == "json":
        print(json.dumps(matrix.to_json(tables), indent=2))
    else:
        from rich.console import Console

        matrix.render(tables, Console(), f"in lab {name}", seconds)
    return 0


def _probe_service(args: argparse.Namespace) -> int:
    from podnet.lab.state import NETNS_DIR
    from podnet.observe import matrix, service_probe

    if not 1 <= args.count <= 1000:
        raise matrix.MatrixError("--count must be 1..1000")
    timeout = matrix.parse_timeout(args.timeout)
    lab = matrix.load_lab(lab_name(args, "podnet probe"))
    pods = lab.get("pods") or {}
    chosen = matrix.select_pods(pods, matrix.parse_selector(args.source), "from")
    with open_cluster_store(args) as store:
        service, found = service_probe.frontends(store, args.target)
    results = service_probe.run({k: str(NETNS_DIR / pods[k]["netns"]) for k in chosen}, found, args.count, timeout)
    if args.output == "json":
        print(json.dumps({"service": service, "from": results}, indent=2))
    else:
        from rich.console import Console

        service_probe.render(service, results, Console())
    return 0
