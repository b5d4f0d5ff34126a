"""The report of `--profile`: one table per measurement of cni/profile.py."""

from __future__ import annotations

from benchlib import console, print_cleanup
from cni.calls import OPS


def table(title: str, *columns: str):
    """A rich table: the first column (the label) left-aligned, the figures right."""
    from rich.table import Table

    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    return t


def p50_p90(s: dict) -> list[str]:
    return [f"{s['p50']:.2f}", f"{s['p90']:.2f}"]


def render_profile(outcome: dict) -> None:
    con = console()
    t = table("exec floors (spawn -> exit), ms", "what", "p50", "p90")
    for label, s in outcome["floors"].items():
        t.add_row(label, *p50_p90(s))
    con.print(t)

    imp = outcome["importtime"]
    t = table(
        f"python -X importtime of the podnet plugin during ADD: {imp['count']} modules, "
        f"sum of self {imp['total_self_ms']:.1f} ms (runs: {imp['total_self_ms_runs']})",
        "top-level import", "cumulative ms", "self ms",
    )
    for r in imp["top_level"]:
        t.add_row(r["module"], f"{r['cum_us'] / 1000:.2f}", f"{r['self_us'] / 1000:.2f}")
    con.print(t)
    t = table("the same imports by their own (self) time", "module", "depth", "self ms", "cumulative ms")
    for r in imp["top_self"]:
        t.add_row(
            r["module"], str(r["depth"]), f"{r['self_us'] / 1000:.2f}", f"{r['cum_us'] / 1000:.2f}"
        )
    con.print(t)

    for op in OPS:
        tl = outcome["timeline"][op]
        wall = tl["wall"]["p50"]
        t = table(
            f"podnet {op} through the agent: plugin process timeline (wall p50 {wall:.2f} ms, "
            f"p90 {tl['wall']['p90']:.2f} ms)",
            "phase", "p50 ms", "p90 ms", "share of p50 wall",
        )
        for label, s in tl["phases"].items():
            t.add_row(label, *p50_p90(s), f"{100 * s['p50'] / wall:.0f}%")
        for label, s in tl["agent"].items():
            t.add_row(f"[cyan]agent: {label}[/]", *p50_p90(s), f"{100 * s['p50'] / wall:.0f}%")
        con.print(t)

    t = table("reference, ms", "what", "p50", "p90")
    for op, s in outcome["reference"].items():
        t.add_row(f"bridge+host-local {op}", *p50_p90(s))
    for op, s in outcome["host_local_alone"].items():
        t.add_row(f"host-local alone {op}", *p50_p90(s))
    con.print(t)

    for command, prof in outcome["cprofile"].items():
        if command not in OPS:
            continue
        con.print(cprofile_table(
            f"agent cProfile, {command}: {prof['total_ms']:.0f} ms profiled in total "
            f"(all requests, with profiler overhead), {prof['function_calls']} calls",
            prof["by_cumtime"][:16], "cumtime", "tottime",
        ))
        con.print(cprofile_table(
            f"agent cProfile, {command}: by own time", prof["by_tottime"][:12], "tottime", "cumtime"
        ))
    print_cleanup(con, outcome, "cleanup: nothing left")


def cprofile_table(title: str, rows: list[dict], first: str, second: str):
    """Functions of cni/profile.py's cprofile_top, `first` time column then `second`."""
    t = table(title, "function", "calls", f"{first} ms", f"{second} ms")
    for r in rows:
        t.add_row(r["func"][-90:], str(r["calls"]), f"{r[first + '_ms']:.1f}", f"{r[second + '_ms']:.1f}")
    return t
