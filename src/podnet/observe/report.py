"""`podnet report`: one self-contained HTML file of the cluster (pure rendering).

What goes in: the cluster snapshot `podnet status` computes (observe/status.py
ClusterStatus.to_json()), the connectivity test's results on a lab (observe/
connectivity.py Result.as_dict()), and, when given, a `make bench` results directory
(bench/run_all.py: index.json and the PNG plots bench/report.py drew), whose plots are
embedded. Everything is escaped and inlined (styles, images as data: URIs): the file
opens offline, anywhere, and nothing in it is fetched.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
         "font-size:13px;text-align:left}th{background:#f3f3f3}.bad{color:#b00}.good{color:#070}"
         "img{max-width:100%}")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table, every cell escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def snapshot(status: Mapping[str, Any]) -> str:
    """The status section: verdict, store, counts, nodes, pool and blocks."""
    degraded = status.get("degraded") or []
    verdict = ('<p class=good>healthy</p>' if not degraded else
               f"<p class=bad>degraded ({len(degraded)}):</p><ul>"
               + "".join(f"<li>{html.escape(r)}</li>" for r in degraded) + "</ul>")
    store = status.get("store") or {}
    nodes = status.get("nodes") or []
    node_cols = sorted({k for n in nodes for k in n} - {"name"})
    blocks = status.get("blocks") or []
    block_cols = sorted({k for b in blocks for k in b})
    return "".join([
        "<h2>Cluster</h2>", verdict,
        table(["store", *store], [["", *store.values()]]) if store else "",
        table(list(status.get("counts") or {}), [list((status.get("counts") or {}).values())]),
        "<h3>Nodes</h3>", table(["name", *node_cols], [[n.get("name"), *(n.get(c) for c in node_cols)] for n in nodes]),
        "<h3>Blocks</h3>", table(["pool", *(status.get("pool") or {})], [["", *(status.get("pool") or {}).values()]]),
        table(block_cols, [[b.get(c) for c in block_cols] for b in blocks]),
    ])


def connectivity(results: Sequence[Mapping[str, Any]] | None) -> str:
    """The connectivity test's table, failures first; or why there is none."""
    if results is None:
        return "<h2>Connectivity</h2><p>not run: the connectivity test needs a lab (--lab)</p>"
    failed = [r for r in results if not r.get("ok")]
    ordered = [*failed, *(r for r in results if r.get("ok"))]
    head = f"<p class={'bad' if failed else 'good'}>{len(results) - len(failed)} passed, {len(failed)} failed</p>"
    return "<h2>Connectivity</h2>" + head + table(
        ["check", "source", "destination", "result", "detail", "ms"],
        [[r.get("check"), r.get("source"), r.get("destination"), "pass" if r.get("ok") else "FAIL", r.get("detail"),
          r.get("ms")] for r in ordered])


def benchmarks(directory: Path | None) -> str:
    """A `make bench` run: its index and every plot, embedded."""
    if directory is None:
        return "<h2>Benchmarks</h2><p>none given (make bench writes bench/out/&lt;time&gt;; pass it with --bench)</p>"
    index_path = directory / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"runs": []}
    rows = [[r.get("name"), "ok" if r.get("ok") else f"failed (exit {r.get('exit')})", r.get("seconds")]
            for r in index.get("runs", [])]
    images = "".join(f'<h4>{html.escape(p.stem)}</h4><img alt="{html.escape(p.name)}" '
                     f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                     for p in sorted(directory.glob("*.png")))
    quick = " (quick mode: shapes, not final figures)" if index.get("quick") else ""
    return f"<h2>Benchmarks{quick}</h2>" + table(["bench", "result", "seconds"], rows) + (images or "<p>no plots</p>")


def render(title: str, status: Mapping[str, Any], results: Sequence[Mapping[str, Any]] | None,
           bench_dir: Path | None, now: float | None = None) -> str:
    """The whole page."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() if now is None else now))
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{when}</p>"
            f"{snapshot(status)}{connectivity(results)}{benchmarks(bench_dir)}</body></html>\n")
