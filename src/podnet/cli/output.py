"""One way for every command to print: `--output json` for scripts, a rich table (or
key/value view) for people, and errors as a message on stderr with a non-zero exit."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

from podnet.errors import PodnetError


def add_host_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--state-dir, --socket and -o: what every host-level command takes."""
    parser.add_argument("--state-dir", help="state directory (default $PODNET_STATE_DIR or /var/lib/podnet)")
    parser.add_argument("--socket", help="agent socket (default $PODNET_AGENT_SOCKET or /run/podnet/agent.sock)")
    add_output_option(parser)
    return parser


def add_output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="table for people (default), json for scripts")


def emit_rows(rows: Sequence[Mapping], columns: Sequence[str], output: str, title: str | None = None) -> None:
    """A list of records: a table with `columns`, or the full records as JSON."""
    if output == "json":
        print(json.dumps(list(rows), indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    # a pipe or a file gets whole cells (rich would squeeze them to 80 columns)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def emit_object(obj: Mapping, output: str) -> None:
    """One record: indented JSON either way (inspect is for reading every field)."""
    print(json.dumps(obj, indent=2, default=str))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def fail(err: PodnetError | str, code: int = 1) -> int:
    """Print a CLI error (message and details) on stderr; return the exit code."""
    if isinstance(err, PodnetError):
        print(f"podnet: {err.msg}", file=sys.stderr)
        if err.details:
            print(f"  {err.details}", file=sys.stderr)
    else:
        print(f"podnet: {err}", file=sys.stderr)
    return code
