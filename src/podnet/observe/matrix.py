"""`podnet probe`: the real connectivity matrix between a lab's pods.

Like the upstream Kubernetes network policy e2e tests: every source pod tries every
(port, protocol) every target pod serves, and the answers form one truth table per
(port, protocol): rows are sources, columns targets, `.` reachable, `X` blocked.

Three steps, the first and last pure:

1. `plan(lab, request)`: the lab's state file data (`LabState.data`) and what the
   user asked (`--from`/`--to` selectors, ports, protocols) -> a `Plan`: the sources,
   the targets, the (port, protocol) cells, and each source's list of probes. A cell
   (target, port, protocol) exists only when the target serves it.
2. `run(plan, timeout)`: ONE process per source pod, all in parallel:
   `nsenter --net=/run/netns/<netns> -- python3 -I -S matrix_probe.py SPEC`, which
   runs every probe of that source at once and prints one JSON line (see
   `matrix_probe.py`). So a matrix takes about one timeout even when all is blocked.
3. `matrices(plan, results)` -> `{(port, proto): {src: {dst: bool}}}`; `to_json` and
   `render` show it.

Selectors (`--from`, `--to`) are kubectl-style over the pod's labels plus two
pseudo-labels, `namespace=<ns>` and `node=<node>`: `k=v` (or `k==v`), `k!=v`,
`k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not exist); a comma is AND; an
empty selector matches every pod. The parser here is deliberately small and local to
this command (the policy engine has its own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from podnet.errors import PodnetError
from podnet.policy.selectors import LabelSelector, parse_selector_text

PROBE_SCRIPT = Path(__file__).with_name("matrix_probe.py")
SYSTEM_PYTHON = "/usr/bin/python3"
PROTOCOLS = ("tcp", "udp")
DEFAULT_TIMEOUT = 1.0
MAX_TIMEOUT = 60.0
DEFAULT_PARALLEL = 32  # source processes at once
ARGV_SPEC_MAX = 64 * 1024  # a longer spec goes through stdin
REACHABLE, BLOCKED = ".", "X"

Cell = tuple[int, str]  # (port, "tcp" | "udp")


class MatrixError(PodnetError):
    """The probe cannot run: no lab, lab not up, bad arguments, nothing selected."""


# ------------------------------------------------------------------------ selectors

def parse_selector(text: str | None) -> LabelSelector:
    """A kubectl-style label selector (policy/selectors.py); empty or None = every pod."""
    return parse_selector_text(text or "")


def pod_labels(key: str, pod: Mapping) -> dict[str, str]:
    """A pod's labels plus the pseudo-labels `namespace` and `node` (which win)."""
    namespace = key.split("/", 1)[0] if "/" in key else "default"
    return {
        **{str(k): str(v) for k, v in (pod.get("labels") or {}).items()},
        "namespace": namespace,
        "node": str(pod.get("node", "")),
    }


# --------------------------------------------------------------------- arguments


def parse_ports(values: Iterable[str] | None) -> tuple[int, ...]:
    """`--port` values (repeatable, each may be a comma list) -> sorted unique ports."""
    ports: set[int] = set()
    for value in values or ():
        for item in str(value).split(","):
            item = item.strip()
            try:
                port = int(item)
            except ValueError:
                raise MatrixError(
                    f"invalid port {item!r}", "a port is an integer from 1 to 65535"
                ) from None
            if not 1 <= port <= 65535:
                raise MatrixError(f"invalid port {port}", "a port is an integer from 1 to 65535")
            ports.add(port)
    return tuple(sorted(ports))


def parse_protocols(values: Iterable[str] | None) -> tuple[str, ...]:
    """`--protocol` values (tcp/udp, any case, repeatable, comma lists) -> in PROTOCOLS order;
    none given: both."""
    found: set[str] = set()
    for value in values or ():
        for item in str(value).split(","):
            proto = item.strip().lower()
            if proto not in PROTOCOLS:
                raise MatrixError(f"invalid protocol {item.strip()!r}", "use tcp or udp")
            found.add(proto)
    return tuple(p for p in PROTOCOLS if p in found) if found else PROTOCOLS


def parse_timeout(value: str | float | None) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        raise MatrixError(f"invalid timeout {value!r}", "seconds, e.g. 1 or 0.5") from None
    if not 0 < timeout <= MAX_TIMEOUT:
        raise MatrixError(
            f"invalid timeout {value!r}", f"seconds, more than 0 and at most {MAX_TIMEOUT:g}"
        )
    return timeout


@dataclass(frozen=True)
class Request:
    """What to probe: the CLI's arguments, parsed."""

    ports: tuple[int, ...] = ()  # none: every port a target serves
    protocols: tuple[str, ...] = PROTOCOLS
    source: LabelSelector = field(default_factory=LabelSelector)
    target: LabelSelector = field(default_factory=LabelSelector)
    timeout: float = DEFAULT_TIMEOUT
    family: int = 4  # the targets' addresses of this IP version (`--family 6`: a dual-stack lab's IPv6)

    @classmethod
    def from_args(
        cls,
        ports: Iterable[str] | None = None,
        protocols: Iterable[str] | None = None,
        source: str | None = None,
        target: str | None = None,
        timeout: str | float | None = None,
        family: int | None = None,
    ) -> Request:
        return cls(
            parse_ports(ports),
            parse_protocols(protocols),
            parse_selector(source),
            parse_selector(target),
            parse_timeout(timeout),
            family or 4,
        )


# -------------------------------------------------------------------------- plan


class Probe(NamedTuple):
    target: str  # pod key
    port: int
    protocol: str
    address: str
    name: str  # what the target's echo server answers with


@dataclass
class Plan:
    sources: list[str]
    targets: list[str]
    cells: list[Cell]
    serves: dict[str, list[Cell]]  # target -> the cells it serves (among `cells`)
    netns: dict[str, str]  # source -> its namespace
    probes: dict[str, list[Probe]]  # source -> what it probes, in (target, cell) order

    @property
    def count(self) -> int:
        """The number of cells in the result (a target without an address counts, as blocked)."""
        return len(self.sources) * sum(len(c) for c in self.serves.values())


def cell_label(cell: Cell) -> str:
    return f"{cell[0]}/{cell[1]}"


def served(pod: Mapping) -> list[Cell]:
    """The (port, protocol) cells a pod serves, from the state file's `"80/TCP"` strings."""
    cells = []
    for entry in pod.get("ports") or ():
        number, _, proto = str(entry).partition("/")
        try:
            cells.append((int(number), (proto or "tcp").lower()))
        except ValueError:
            continue
    return cells


def address(pod: Mapping, version: int = 4) -> str | None:
    """The pod's first address of IP `version` (a dual-stack pod has one of each)."""
    for ip in pod.get("ips") or []:
        found = str(ip).split("/")[0]
        if (":" in found) == (version == 6):
            return found
    return None


def select_pods(pods: Mapping[str, Mapping], selector: LabelSelector, role: str) -> list[str]:
    chosen = [k for k, p in pods.items() if selector.matches(pod_labels(k, p))]
    if not chosen:
        if not pods:
            raise MatrixError(
                "the lab has no pods", "declare pods in the topology: podnet lab up -f FILE"
            )
        raise MatrixError(
            f"--{role} {selector.to_text()!r} matches no pod",
            f"pods: {', '.join(pods)}; selectors see their labels plus namespace= and node=",
        )
    return chosen


def plan(lab: Mapping, request: Request | None = None) -> Plan:
    """Who probes what, for lab state data `lab` (pure)."""
    request = request or Request()
    pods: Mapping[str, Mapping] = lab.get("pods") or {}
    sources = select_pods(pods, request.source, "from")
    targets = select_pods(pods, request.target, "to")
    wanted_ports = set(request.ports)
    offered = {cell for t in targets for cell in served(pods[t])}
    cells = sorted(
        c
        for c in offered
        if c[1] in request.protocols and (not wanted_ports or c[0] in wanted_ports)
    )
    missing = sorted(wanted_ports - {c[0] for c in cells})
    protos = "/".join(request.protocols)
    if missing:
        raise MatrixError(
            f"no selected target serves port(s) {', '.join(map(str, missing))} over {protos}",
            f"served: {', '.join(cell_label(c) for c in sorted(offered)) or 'nothing'}",
        )
    if not cells:
        raise MatrixError(
            f"the selected targets serve no port over {protos}",
            f"served: {', '.join(cell_label(c) for c in sorted(offered)) or 'nothing'}",
        )
    if not any(address(pods[t], request.family) for t in targets):
        raise MatrixError(f"no selected target has an IPv{request.family} address",
                          "IPv6 needs a dual-stack lab (podnet lab up --ipv6)" if request.family == 6 else "")
    serves = {}
    for t in targets:
        own = set(served(pods[t]))
        serves[t] = [c for c in cells if c in own]
    probes: dict[str, list[Probe]] = {}
    for src in sources:
        probes[src] = [
            Probe(t, port, proto, addr, t.rsplit("/", 1)[-1])
            for t in targets
            if (addr := address(pods[t], request.family))
            for port, proto in serves[t]
        ]
    netns = {src: str(pods[src].get("netns", "")) for src in sources}
    return Plan(sources, targets, cells, serves, netns, probes)


# --------------------------------------------------------------------------- run

Results = dict[tuple[str, str, int, str], bool]  # (source, target, port, protocol) -> ok


def probe_spec(probes: Sequence[Probe], timeout: float) -> dict:
    """What matrix_probe.py runs for one source."""
    return {"timeout": timeout, "probes": [[p.protocol, p.address, p.port, p.name] for p in probes]}


def python() -> str:
    """The interpreter the probe runs with: the system one (fast start), else ours."""
    return SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else sys.executable


def source_argv(netns: str, spec_arg: str) -> list[str]:
    from podnet.lab.state import enter

    return [*enter(netns), python(), "-I", "-S", str(PROBE_SCRIPT), spec_arg]


def parse_output(
    source: str, stdout: str, stderr: str, returncode: int, expected: int
) -> list[bool]:
    """The answers of one source's probe process, or MatrixError when it did not run."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    try:
        answer = json.loads(lines[-1])
        ok = answer["ok"]
        if not isinstance(ok, list) or not all(isinstance(v, bool) for v in ok):
            raise TypeError("ok is not a list of booleans")
    except (IndexError, ValueError, KeyError, TypeError):
        err = [line for line in stderr.strip().splitlines() if line.strip()]
        raise MatrixError(
            f"the probe from {source} failed (exit {returncode})",
            err[-1] if err else f"unexpected output {stdout.strip()[:200]!r}",
        ) from None
    if len(ok) != expected:
        raise MatrixError(f"the probe from {source} answered {len(ok)} probes, not {expected}")
    return ok


def _run_source(source: str, netns: str, probes: Sequence[Probe], timeout: float) -> list[bool]:
    if not probes:
        return []
    from podnet.lab.state import NETNS_DIR

    if not netns or not (NETNS_DIR / netns).exists():
        raise MatrixError(
            f"the namespace of pod {source} ({netns or 'none'}) does not exist",
            "is the lab still up? see podnet lab status",
        )
    spec = json.dumps(probe_spec(probes, timeout), separators=(",", ":"))
    stdin = spec if len(spec) > ARGV_SPEC_MAX else None
    argv = source_argv(netns, "-" if stdin is not None else spec)
    try:
        proc = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout * (1 + len(probes) // 256) + 15,
        )
    except subprocess.TimeoutExpired:
        raise MatrixError(f"the probe from {source} did not finish") from None
    except OSError as exc:
        raise MatrixError(f"cannot run the probe from {source}: {exc.strerror or exc}") from None
    return parse_output(source, proc.stdout, proc.stderr, proc.returncode, len(probes))


def run(plan: Plan, timeout: float = DEFAULT_TIMEOUT, parallel: int = DEFAULT_PARALLEL) -> Results:
    """Run every source's probes, one process per source, in parallel."""
    sources = [s for s in plan.sources if plan.probes.get(s)]
    results: Results = {}
    if not sources:
        return results
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(sources)))) as pool:
        futures = {
            s: pool.submit(_run_source, s, plan.netns[s], plan.probes[s], timeout) for s in sources
        }
        for src, future in futures.items():
            for probe, ok in zip(plan.probes[src], future.result(), strict=True):
                results[(src, probe.target, probe.port, probe.protocol)] = ok
    return results


def load_lab(name: str) -> dict:
    """The state data of lab `name`, which must be up."""
    from podnet.lab.state import LabState

    data = LabState.load(name).data  # LabError "no lab named ..." when missing
    if data.get("phase") != "up":
        raise MatrixError(
            f"lab {name!r} is {data.get('phase', 'unknown')}, not up",
            f"wait for `podnet lab up` to finish, or `podnet lab down --name {name}`",
        )
    return data


# ---------------------------------------------------------------------- results

Matrices = dict[Cell, dict[str, dict[str, bool]]]


def matrices(plan: Plan, results: Mapping[tuple[str, str, int, str], bool]) -> Matrices:
    """One truth table per cell: {cell: {source: {target: ok}}}; a probe without a
    result (a target without an address) is blocked."""
    out: Matrices = {}
    for cell in plan.cells:
        columns = [t for t in plan.targets if cell in plan.serves[t]]
        out[cell] = {
            src: {t: bool(results.get((src, t, *cell), False)) for t in columns}
            for src in plan.sources
        }
    return out


def to_json(tables: Matrices) -> dict:
    """`{src: {dst: ok}}` for a single cell, else `{"80/tcp": {src: {dst: ok}}, ...}`."""
    if len(tables) == 1:
        return next(iter(tables.values()))
    return {cell_label(cell): rows for cell, rows in tables.items()}


def counts(rows: Mapping[str, Mapping[str, bool]]) -> tuple[int, int]:
    """(reachable, blocked) in one truth table."""
    values = [ok for row in rows.values() for ok in row.values()]
    return sum(values), len(values) - sum(values)


def truth_table(rows: Mapping[str, Mapping[str, bool]]) -> str:
    """The plain truth table of the upstream netpol e2e tests (tab separated)."""
    columns = list(dict.fromkeys(t for row in rows.values() for t in row))
    lines = ["\t".join(["-", *columns])]
    for src, row in rows.items():
        lines.append(
            "\t".join(
                [src, *((REACHABLE if row[t] else BLOCKED) if t in row else " " for t in columns)]
            )
        )
    return "\n".join(lines)


def render(tables: Matrices, console, title: str = "", seconds: float | None = None) -> None:
    """One rich table per (port, protocol): rows from, columns to, `.` reachable, `X` blocked."""
    from rich.table import Table

    total_ok = total_blocked = 0
    for cell, rows in tables.items():
        ok, blocked = counts(rows)
        total_ok, total_blocked = total_ok + ok, total_blocked + blocked
        columns = list(dict.fromkeys(t for row in rows.values() for t in row))
        colour = "green" if not blocked else "yellow"
        console.print(
            f"[bold]{cell_label(cell)}[/]{' ' + title if title else ''}: "
            f"[{colour}]{ok} reachable, {blocked} blocked[/] "
            f"({len(rows)} sources, {len(columns)} targets)",
            soft_wrap=True,
        )
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("from \\ to", no_wrap=True)
        for column in columns:
            table.add_column(column, justify="center", no_wrap=True)
        for src, row in rows.items():
            table.add_row(
                src,
                *(
                    ("[green].[/]" if row[t] else "[bold red]X[/]") if t in row else ""
                    for t in columns
                ),
            )
        console.print(table)
        console.print()
    took = f" in {seconds:.2f}s" if seconds is not None else ""
    console.print(
        f"{total_ok + total_blocked} probes: {total_ok} reachable, {total_blocked} blocked{took}"
    )
