"""`podnet probe` against a real lab: the upstream netpol world (examples/topologies/
netpol.yaml, 9 pods over 3 nodes, host-gw), all open, then blocked for real by nft
tables inside pod namespaces.

The lab is named `pr<hex>` (namespaces `pn-lab-pr<hex>-*`), built with LabBuilder and
always removed by `podnet.lab.teardown.teardown` (recorded names and PIDs) in a finally.
Only the lab's own pod namespaces are changed; their nft tables go with them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet.lab.state import NETNS_DIR, state_file

pytestmark = pytest.mark.root

NETPOL = Path(__file__).parents[2] / "examples" / "topologies" / "netpol.yaml"
PODS = [f"{ns}/{pod}" for ns in "xyz" for pod in "abc"]
CELLS = ["80/tcp", "80/udp", "81/tcp", "81/udp"]
TABLE = "pn-t-probe"


def probe(name: str, *args: str) -> tuple[int, str, str, float]:
    """The real CLI: (exit code, stdout, stderr, seconds)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "podnet.cli", "probe", "--name", name, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


def probe_json(name: str, *args: str) -> tuple[dict, float]:
    code, out, err, seconds = probe(name, "-o", "json", *args)
    assert code == 0, err
    return json.loads(out), seconds


def false_cells(matrices: dict) -> set[tuple[str, str, str]]:
    return {
        (cell, src, dst)
        for cell, rows in matrices.items()
        for src, row in rows.items()
        for dst, ok in row.items()
        if not ok
    }


def nft(netns: str, script: str) -> None:
    """nft inside one of the lab's pod namespaces (never the root namespace)."""
    assert netns.startswith("pn-lab-pr") and (NETNS_DIR / netns).exists(), netns
    proc = subprocess.run(
        ["nsenter", f"--net={NETNS_DIR / netns}", "--", "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def block(netns: str, rules: str) -> None:
    nft(
        netns,
        f"table inet {TABLE} {{\n chain in {{\n  type filter hook input priority 0;\n{rules}\n }}\n}}\n",
    )


def unblock(netns: str) -> None:
    nft(netns, f"delete table inet {TABLE}\n")


@pytest.fixture(scope="module")
def lab() -> Iterator[dict]:
    """The netpol lab's state data; torn down by recorded names whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("needs root (creates network namespaces)")
    from podnet.lab import topology as topo
    from podnet.lab.builder import LabBuilder, LabOptions
    from podnet.lab.teardown import teardown

    name = f"pr{secrets.token_hex(2)[:3]}"
    builder = LabBuilder(topo.load(NETPOL), LabOptions(name=name, fabric="host-gw", timeout=60))
    try:
        yield builder.build().data
    finally:
        if state_file(name).exists():
            problems = teardown(name)
            assert not problems, problems
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"pn-lab-{name}-" not in left


def test_everything_reachable_without_policy(lab: dict) -> None:
    matrices, seconds = probe_json(lab["name"])
    print(f"\nfull matrix, all open: 324 probes in {seconds:.2f}s (CLI included)")
    assert list(matrices) == CELLS
    for rows in matrices.values():
        assert list(rows) == PODS and all(list(row) == PODS for row in rows.values())
    assert sum(len(row) for rows in matrices.values() for row in rows.values()) == 324
    assert not false_cells(matrices)


def test_one_blocked_target_port(lab: dict) -> None:
    netns = lab["pods"]["y/b"]["netns"]
    block(netns, "  tcp dport 81 drop")
    try:
        matrices, seconds = probe_json(lab["name"])
        print(f"\nfull matrix, y/b 81/tcp blocked: {seconds:.2f}s")
    finally:
        unblock(netns)
    assert false_cells(matrices) == {("81/tcp", src, "y/b") for src in PODS}  # y/b itself too
    table = probe(lab["name"], "--port", "81", "--protocol", "tcp", "--to", "pod=b")
    assert table[0] == 0 and "81/tcp" in table[1] and " X" not in table[1]  # open again


def test_everything_blocked_takes_about_one_timeout(lab: dict) -> None:
    pods = [lab["pods"][key]["netns"] for key in PODS]
    for netns in pods:
        block(netns, "  tcp dport { 80, 81 } drop\n  udp dport { 80, 81 } drop")
    try:
        matrices, seconds = probe_json(lab["name"], "--timeout", "1")
        code, table, _, _ = probe(
            lab["name"], "--port", "80", "--protocol", "udp", "--timeout", "0.2"
        )
    finally:
        for netns in pods:
            unblock(netns)
    print(f"\nfull matrix, everything blocked: 324 probes in {seconds:.2f}s (timeout 1 s)")
    assert len(false_cells(matrices)) == 324
    assert code == 0 and "0 reachable, 81 blocked" in table and table.count("X") >= 81


def test_filters(lab: dict) -> None:
    name = lab["name"]
    one, _ = probe_json(
        name, "--from", "namespace=x", "--to", "pod=b", "--port", "80", "--protocol", "tcp"
    )
    assert one == {
        src: {dst: True for dst in ("x/b", "y/b", "z/b")} for src in ("x/a", "x/b", "x/c")
    }
    udp, _ = probe_json(
        name, "--from", "node=node0", "--to", "pod in (a,c),namespace!=z", "--protocol", "udp"
    )
    assert list(udp) == ["80/udp", "81/udp"]
    for rows in udp.values():
        assert rows == {
            src: dict.fromkeys(["x/a", "x/c", "y/a", "y/c"], True) for src in ("x/a", "y/c", "z/b")
        }
    ports, _ = probe_json(name, "--port", "81", "--to", "namespace=z,pod=a")
    assert list(ports) == ["81/tcp", "81/udp"] and all(
        list(r) == ["z/a"] for r in ports["81/udp"].values()
    )
    code, out, err, _ = probe(name, "--from", "pod=a", "--to", "pod=a", "--port", "80")
    assert code == 0, err
    assert (
        "80/tcp in lab" in out
        and "80/udp in lab" in out
        and "18 probes: 18 reachable, 0 blocked" in out
    )


def test_errors_exit_1(lab: dict) -> None:
    name = lab["name"]
    for args, message in [
        (["--from", "pod=q"], "--from 'pod=q' matches no pod"),
        (["--to", "namespace in (x"], "selector 'namespace in (x'"),
        (["--port", "8080"], "no selected target serves port(s) 8080"),
        (["--protocol", "sctp"], "invalid protocol 'sctp'"),
        (["--timeout", "never"], "invalid timeout 'never'"),
    ]:
        code, out, err, _ = probe(name, *args)
        assert code == 1 and message in err and not out, (args, err)
    code, _, err, _ = probe("nolab0")
    assert code == 1 and "no lab named 'nolab0'" in err
