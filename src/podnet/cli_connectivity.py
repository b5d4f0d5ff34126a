"""`podnet connectivity test`: probe every path of a running lab, print pass/fail."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from podnet.cli_lab import DEFAULT_LAB
from podnet.cli_output import add_output_option


def register(sub: argparse._SubParsersAction) -> None:
    conn = sub.add_parser("connectivity", help="check pod, node and outside connectivity of a lab")
    conn_sub = conn.add_subparsers(dest="connectivity_command", required=True)
    test = conn_sub.add_parser("test", help="run every check in parallel; exit 1 if any fails")
    test.add_argument("--name", default=DEFAULT_LAB, help=f"lab name (default $PODNET_LAB or {DEFAULT_LAB})")
    test.add_argument("--timeout", type=float, default=2.0, help="seconds each probe may take (default 2)")
    test.add_argument("--parallel", type=int, default=16, help="probes in flight at once (default 16)")
    add_output_option(test)
    test.set_defaults(func=_cmd_test)


def _cmd_test(args: argparse.Namespace) -> int:
    from podnet.observe import connectivity

    start = time.monotonic()
    results = connectivity.test_lab(args.name, args.timeout, args.parallel)
    if args.output == "json":
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        from rich.console import Console

        render(results, Console(), f"lab {args.name}", time.monotonic() - start)
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
