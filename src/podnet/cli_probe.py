"""`podnet probe`: the real connectivity matrix between a lab's pods (see observe/matrix.py)."""

from __future__ import annotations

import argparse
import json
import time

from podnet.cli_lab import DEFAULT_LAB
from podnet.cli_output import add_output_option


def register(sub: argparse._SubParsersAction) -> None:
    probe = sub.add_parser(
        "probe",
        help="probe every pod from every pod: one truth table per port/protocol",
        description="Every source pod probes every (port, protocol) every target pod serves, "
        "for real (TCP echo, UDP echo), all at once. Tables: rows from, columns to, "
        "'.' reachable, 'X' blocked. Exit 0 when the probe ran, whatever it found.",
    )
    probe.add_argument(
        "--name", default=DEFAULT_LAB, help=f"lab name (default $PODNET_LAB or {DEFAULT_LAB})"
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
        "--to", dest="target", metavar="SELECTOR", help="target pods, same syntax (default: all)"
    )
    probe.add_argument(
        "--timeout", default="1.0", metavar="SECONDS", help="per-probe timeout (default 1.0)"
    )
    add_output_option(probe)
    probe.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from podnet.observe import matrix

    request = matrix.Request.from_args(
        args.port, args.protocol, args.source, args.target, args.timeout
    )
    lab = matrix.load_lab(args.name)
    plan = matrix.plan(lab, request)
    start = time.monotonic()
    tables = matrix.matrices(plan, matrix.run(plan, request.timeout))
    seconds = time.monotonic() - start
    if args.output == "json":
        print(json.dumps(matrix.to_json(tables), indent=2))
    else:
        from rich.console import Console

        matrix.render(tables, Console(), f"in lab {args.name}", seconds)
    return 0
