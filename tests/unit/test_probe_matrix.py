"""`podnet probe` without root: selectors, planning, JSON and table output, the probe
script's output, errors. The probe script itself runs here too, on loopback servers."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.console import Console

from podnet.errors import ObjectError
from podnet.lab import topology as topo
from podnet.observe import matrix, matrix_probe
from podnet.observe.matrix import MatrixError, Request, parse_selector
from podnet.policy.selectors import parse_selector_text

NETPOL = Path(__file__).parents[2] / "examples" / "topologies" / "netpol.yaml"
ALL4 = ["80/TCP", "81/TCP", "80/UDP", "81/UDP"]


def lab_data(pods: dict[str, dict] | None = None, phase: str = "up") -> dict:
    """A lab state file's data, like LabBuilder writes it."""
    if pods is None:
        pods = {}
        nodes = ["node0", "node1", "node2"]
        for i, ns in enumerate("xyz"):
            for j, name in enumerate("abc"):
                pods[f"{ns}/{name}"] = {
                    "node": nodes[(i + j) % 3],
                    "netns": f"pn-lab-t-p-{ns}-{name}",
                    "labels": {"pod": name},
                    "ports": list(ALL4),
                    "ips": [f"10.244.{(i + j) % 3}.{2 + 3 * i + j}/24"],
                }
    return {"name": "t", "phase": phase, "pods": pods}


# --------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {}, True),
        ("pod=a", {"pod": "a"}, True),
        ("pod==a", {"pod": "a"}, True),
        ("pod=a", {"pod": "b"}, False),
        ("pod=a", {}, False),
        ("pod!=a", {"pod": "b"}, True),
        ("pod!=a", {}, True),  # kubectl: != also matches pods without the key
        ("pod!=a", {"pod": "a"}, False),
        ("pod in (a,b)", {"pod": "b"}, True),
        ("pod in (a, b)", {"pod": "c"}, False),
        ("pod in(a)", {"pod": "a"}, True),
        ("pod notin (a,b)", {"pod": "c"}, True),
        ("pod notin (a,b)", {}, True),
        ("pod notin (a,b)", {"pod": "a"}, False),
        ("pod", {"pod": "x"}, True),
        ("pod", {"app": "x"}, False),
        ("!pod", {"app": "x"}, True),
        ("!pod", {"pod": "x"}, False),
        ("pod in (a,b),namespace=x", {"pod": "a", "namespace": "x"}, True),
        ("pod in (a,b), namespace=x", {"pod": "a", "namespace": "y"}, False),
        (" pod = a , node ", {"pod": "a", "node": "n"}, True),
        ("example.com/tier=web", {"example.com/tier": "web"}, True),
        ("pod=", {"pod": ""}, True),
    ],
)
def test_selector_matching(text: str, labels: dict, expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


def test_selector_is_policys_selector() -> None:
    """One selector language in podnet: `--from`/`--to` parse like policy selectors."""
    sel = parse_selector("pod in (a,b),ns!=x,node,!gone,k==v")
    assert sel.to_text() == parse_selector_text("pod in (a,b),ns!=x,node,!gone,k==v").to_text()
    assert parse_selector(None).selects_all


@pytest.mark.parametrize(
    "text",
    [
        "pod=a,",
        ",pod=a",
        "pod in (a,b",
        "pod in a,b)",
        "pod in ((a))",
        "pod=a b",
        "pod=(a)",
        "-bad=a",
        "pod=a!",
        "pod in (a,b) x",
        "pod ~ a",
        "a b",
        "pod in (,)",
    ],
)
def test_bad_selectors_are_errors(text: str) -> None:
    with pytest.raises(ObjectError):
        parse_selector(text)


def test_pseudo_labels_namespace_and_node_win() -> None:
    pod = {"node": "node1", "labels": {"pod": "a", "namespace": "fake"}}
    assert matrix.pod_labels("x/a", pod) == {"pod": "a", "namespace": "x", "node": "node1"}


# --------------------------------------------------------------------- arguments


def test_argument_parsing() -> None:
    assert matrix.parse_ports(None) == ()
    assert matrix.parse_ports(["81", "80,81", " 443 "]) == (80, 81, 443)
    assert matrix.parse_protocols(None) == ("tcp", "udp")
    assert matrix.parse_protocols(["UDP"]) == ("udp",)
    assert matrix.parse_protocols(["udp", "tcp"]) == ("tcp", "udp")
    assert matrix.parse_protocols(["tcp,udp"]) == ("tcp", "udp")
    assert matrix.parse_timeout(None) == 1.0
    assert matrix.parse_timeout("0.25") == 0.25
    request = Request.from_args(["80"], ["tcp"], "pod=a", "namespace=y", "2")
    assert request.ports == (80,) and request.protocols == ("tcp",) and request.timeout == 2.0
    assert str(request.source) == "pod=a" and str(request.target) == "namespace=y"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: matrix.parse_ports(["http"]), "invalid port 'http'"),
        (lambda: matrix.parse_ports(["0"]), "invalid port 0"),
        (lambda: matrix.parse_ports(["65536"]), "invalid port 65536"),
        (lambda: matrix.parse_ports(["80,"]), "invalid port ''"),
        (lambda: matrix.parse_protocols(["sctp"]), "invalid protocol 'sctp'"),
        (lambda: matrix.parse_timeout("soon"), "invalid timeout 'soon'"),
        (lambda: matrix.parse_timeout("0"), "invalid timeout '0'"),
        (lambda: matrix.parse_timeout("-1"), "invalid timeout '-1'"),
        (lambda: matrix.parse_timeout("nan"), "invalid timeout 'nan'"),
        (lambda: matrix.parse_timeout("61"), "invalid timeout '61'"),
    ],
)
def test_bad_arguments_are_errors(call, message: str) -> None:
    with pytest.raises(MatrixError, match=message.replace("(", r"\(")):
        call()


# -------------------------------------------------------------------------- plan


def test_default_plan_is_every_pod_every_served_cell() -> None:
    plan = matrix.plan(lab_data())
    assert plan.sources == plan.targets == [f"{n}/{p}" for n in "xyz" for p in "abc"]
    assert plan.cells == [(80, "tcp"), (80, "udp"), (81, "tcp"), (81, "udp")]
    assert plan.count == 324
    assert sum(len(p) for p in plan.probes.values()) == 324
    first = plan.probes["x/a"][0]
    assert first == matrix.Probe("x/a", 80, "tcp", "10.244.0.2", "a")  # itself, via its own IP
    assert plan.netns["y/b"] == "pn-lab-t-p-y-b"


def test_cells_exist_only_where_the_target_serves_them() -> None:
    pods = {
        "x/a": {"node": "n0", "netns": "na", "ports": ["80/TCP"], "ips": ["10.0.0.1/24"]},
        "x/b": {"node": "n1", "netns": "nb", "ports": ["80/TCP", "53/UDP"], "ips": ["10.0.0.2/24"]},
        "x/c": {"node": "n1", "netns": "nc", "ports": [], "ips": ["10.0.0.3/24"]},
    }
    plan = matrix.plan(lab_data(pods))
    assert plan.cells == [(53, "udp"), (80, "tcp")]
    assert plan.serves == {"x/a": [(80, "tcp")], "x/b": [(53, "udp"), (80, "tcp")], "x/c": []}
    assert [(p.target, p.port, p.protocol) for p in plan.probes["x/c"]] == [
        ("x/a", 80, "tcp"),
        ("x/b", 53, "udp"),
        ("x/b", 80, "tcp"),
    ]
    tables = matrix.matrices(plan, {})
    assert tables[(53, "udp")] == {
        "x/a": {"x/b": False},
        "x/b": {"x/b": False},
        "x/c": {"x/b": False},
    }
    assert list(tables[(80, "tcp")]["x/a"]) == ["x/a", "x/b"]


def test_filters_select_sources_targets_ports_and_protocols() -> None:
    request = Request.from_args(["81"], ["udp"], "namespace=x,pod!=c", "pod in (a,b),namespace!=z")
    plan = matrix.plan(lab_data(), request)
    assert plan.sources == ["x/a", "x/b"]
    assert plan.targets == ["x/a", "x/b", "y/a", "y/b"]
    assert plan.cells == [(81, "udp")]
    assert plan.count == 8
    by_node = matrix.plan(lab_data(), Request.from_args(source="node=node0"))
    assert by_node.sources == ["x/a", "y/c", "z/b"]


def test_a_target_without_an_address_is_blocked_without_probing() -> None:
    data = lab_data()
    data["pods"]["z/c"]["ips"] = []
    plan = matrix.plan(data, Request.from_args(["80"], ["tcp"]))
    assert all(p.target != "z/c" for probes in plan.probes.values() for p in probes)
    results = {
        (s, p.target, p.port, p.protocol): True for s in plan.sources for p in plan.probes[s]
    }
    rows = matrix.matrices(plan, results)[(80, "tcp")]
    assert rows["x/a"]["z/c"] is False and rows["x/a"]["z/b"] is True


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({"source": "pod=zzz"}, "--from 'pod=zzz' matches no pod"),
        ({"target": "namespace=q"}, "--to 'namespace=q' matches no pod"),
        ({"ports": ["99"]}, r"no selected target serves port\(s\) 99 over tcp/udp"),
        ({"ports": ["80", "99"]}, r"port\(s\) 99"),
        ({"ports": ["80"], "protocols": ["udp"], "target": "pod=a"}, None),
    ],
)
def test_plan_errors(request_args: dict, message: str | None) -> None:
    if message is None:
        assert matrix.plan(lab_data(), Request.from_args(**request_args)).cells == [(80, "udp")]
        return
    with pytest.raises(MatrixError, match=message):
        matrix.plan(lab_data(), Request.from_args(**request_args))


def test_plan_errors_for_protocols_nobody_serves_and_empty_labs() -> None:
    tcp_only = lab_data(
        {"x/a": {"node": "n", "netns": "a", "ports": ["80/TCP"], "ips": ["10.0.0.1/24"]}}
    )
    with pytest.raises(MatrixError, match="serve no port over udp") as err:
        matrix.plan(tcp_only, Request.from_args(protocols=["udp"]))
    assert err.value.details == "served: 80/tcp"
    with pytest.raises(MatrixError, match="the lab has no pods"):
        matrix.plan(lab_data({}))


# ----------------------------------------------------------------------- output


def full_tables(blocked: set[tuple[str, str, int, str]] = frozenset()) -> matrix.Matrices:
    plan = matrix.plan(lab_data())
    results = {
        (s, p.target, p.port, p.protocol): True for s in plan.sources for p in plan.probes[s]
    }
    results.update(dict.fromkeys(blocked, False))
    return matrix.matrices(plan, results)


def test_json_for_one_cell_is_the_bare_matrix() -> None:
    plan = matrix.plan(lab_data(), Request.from_args(["80"], ["tcp"], "pod=a", "namespace=x"))
    results = {("x/a", "x/a", 80, "tcp"): True, ("y/a", "x/b", 80, "tcp"): True}
    out = matrix.to_json(matrix.matrices(plan, results))
    assert out == {
        "x/a": {"x/a": True, "x/b": False, "x/c": False},
        "y/a": {"x/a": False, "x/b": True, "x/c": False},
        "z/a": {"x/a": False, "x/b": False, "x/c": False},
    }
    assert json.loads(json.dumps(out)) == out


def test_json_for_several_cells_is_keyed_by_port_and_protocol() -> None:
    out = matrix.to_json(full_tables({("x/a", "y/b", 81, "tcp")}))
    assert list(out) == ["80/tcp", "80/udp", "81/tcp", "81/udp"]
    assert all(len(rows) == 9 and all(len(r) == 9 for r in rows.values()) for rows in out.values())
    assert out["81/tcp"]["x/a"]["y/b"] is False
    assert sum(not v for rows in out.values() for r in rows.values() for v in r.values()) == 1


def test_truth_table_text() -> None:
    rows = {"x/a": {"x/a": True, "x/b": False}, "x/b": {"x/a": True, "x/b": True}}
    assert matrix.truth_table(rows) == "-\tx/a\tx/b\nx/a\t.\tX\nx/b\t.\t."
    assert matrix.counts(rows) == (3, 1)


def test_rendered_tables() -> None:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    matrix.render(
        full_tables({("x/a", "y/b", 81, "tcp"), ("z/c", "z/c", 81, "tcp")}),
        console,
        "in lab t",
        0.5,
    )
    text = console.file.getvalue()
    assert text.count("from \\ to") == 4
    for header in (
        "80/tcp in lab t: 81 reachable, 0 blocked",
        "81/tcp in lab t: 79 reachable, 2 blocked",
    ):
        assert header in text
    assert "324 probes: 322 reachable, 2 blocked in 0.50s" in text
    tcp81 = text.split("81/tcp in lab t")[1].split("81/udp")[0].splitlines()
    header = tcp81[1].split()
    assert header[3:] == ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"]
    row_xa = next(line for line in tcp81 if line.startswith("x/a")).split()
    assert row_xa == ["x/a", ".", ".", ".", ".", "X", ".", ".", ".", "."]
    row_zc = next(line for line in tcp81 if line.startswith("z/c")).split()
    assert row_zc[-1] == "X" and row_zc.count("X") == 1


# ------------------------------------------------------------------ probe output


def test_parse_output() -> None:
    assert matrix.parse_output("x/a", '{"ok": [true, false], "ms": 3}\n', "", 0, 2) == [True, False]
    with pytest.raises(MatrixError, match=r"the probe from x/a failed \(exit 1\)") as err:
        matrix.parse_output("x/a", "", "nsenter: cannot open /run/netns/q: No such file\n", 1, 2)
    assert "cannot open" in err.value.details
    with pytest.raises(MatrixError, match="failed") as err:
        matrix.parse_output("x/a", "garbage", "", 0, 2)
    assert "garbage" in err.value.details
    with pytest.raises(MatrixError, match="failed"):
        matrix.parse_output("x/a", '{"ok": [1, 0]}', "", 0, 2)
    with pytest.raises(MatrixError, match="answered 1 probes, not 2"):
        matrix.parse_output("x/a", '{"ok": [true]}', "", 0, 2)


def test_probe_spec_and_argv() -> None:
    probes = [matrix.Probe("y/b", 81, "udp", "10.0.0.2", "b")]
    assert matrix.probe_spec(probes, 0.5) == {
        "timeout": 0.5,
        "probes": [["udp", "10.0.0.2", 81, "b"]],
    }
    argv = matrix.source_argv("pn-lab-t-p-x-a", "{}")
    assert argv[:3] == ["nsenter", "--net=/run/netns/pn-lab-t-p-x-a", "--"]
    assert argv[4:] == ["-I", "-S", str(matrix.PROBE_SCRIPT), "{}"]


def test_missing_source_namespace_is_an_error() -> None:
    data = lab_data()
    data["pods"]["x/a"]["netns"] = "pn-lab-gone-p-x-a"
    plan = matrix.plan(data, Request.from_args(["80"], ["tcp"], "pod=a,namespace=x"))
    with pytest.raises(
        MatrixError, match=r"namespace of pod x/a \(pn-lab-gone-p-x-a\) does not exist"
    ):
        matrix.run(plan, 0.2)


def test_nothing_to_probe_runs_nothing() -> None:
    plan = matrix.Plan(["x/a"], [], [], {}, {"x/a": "gone"}, {"x/a": []})
    assert matrix.run(plan) == {}


# --------------------------------------------- the probe script, on loopback servers


class EchoServers:
    """A TCP line echo and a UDP echo answering as `name`, like podnet.lab.echo."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.stop = False
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._tcp, self._udp)]
        for t in self.threads:
            t.start()

    def _tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                line = conn.makefile("rb").readline()
                conn.sendall(self.name + b" " + line.rstrip(b"\n") + b"\n")

    def _udp(self) -> None:
        while True:
            try:
                _, addr = self.udp.recvfrom(100)
                self.udp.sendto(self.name, addr)
            except OSError:
                return

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


@pytest.fixture
def servers():
    s = EchoServers("b")
    yield s
    s.close()


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_probe_script_answers_in_order(servers: EchoServers) -> None:
    tcp, udp = servers.tcp.getsockname()[1], servers.udp.getsockname()[1]
    closed_tcp, closed_udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    spec = {
        "timeout": 0.5,
        "probes": [
            ["tcp", "127.0.0.1", tcp, "b"],  # the right pod
            ["tcp", "127.0.0.1", tcp, "c"],  # someone else answers: false
            ["udp", "127.0.0.1", udp, "b"],
            ["udp", "127.0.0.1", udp, "bb"],
            ["tcp", "127.0.0.1", closed_tcp, "b"],  # refused
            ["udp", "127.0.0.1", closed_udp, "b"],  # ICMP port unreachable
        ],
    }
    assert matrix_probe.run(spec) == [True, False, True, False, False, False]


def test_probe_script_times_out_silent_targets() -> None:
    silent_tcp = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    silent_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent_udp.bind(("127.0.0.1", 0))
    try:
        spec = {
            "timeout": 0.3,
            "probes": [["tcp", "127.0.0.1", silent_tcp.getsockname()[1], "b"]] * 3
            + [["udp", "127.0.0.1", silent_udp.getsockname()[1], "b"]] * 3,
        }
        proc = subprocess.run(
            [sys.executable, "-I", "-S", str(matrix.PROBE_SCRIPT), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        answer = json.loads(proc.stdout)
        assert answer["ok"] == [False] * 6
        assert answer["ms"] < 3000  # all at once: about one timeout, not six
        assert len(silent_udp.recv(100)) and len(silent_udp.recv(100))  # sent, then resent
    finally:
        silent_tcp.close()
        silent_udp.close()


def test_probe_script_spec_from_stdin_and_bad_specs(servers: EchoServers) -> None:
    script = [sys.executable, "-I", "-S", str(matrix.PROBE_SCRIPT)]
    spec = json.dumps(
        {"timeout": 1, "probes": [["tcp", "127.0.0.1", servers.tcp.getsockname()[1], "b"]]}
    )
    proc = subprocess.run(
        [*script, "-"], input=spec, capture_output=True, text=True, timeout=10, check=False
    )
    assert json.loads(proc.stdout)["ok"] == [True]
    assert matrix.parse_output("x/a", proc.stdout, proc.stderr, proc.returncode, 1) == [True]
    for bad in ("not json", '{"probes": [["tcp"]]}', '{"timeout": 0, "probes": []}'):
        proc = subprocess.run(
            [*script, bad], capture_output=True, text=True, timeout=10, check=False
        )
        assert proc.returncode == 2 and "bad spec" in proc.stderr
        with pytest.raises(MatrixError, match=r"exit 2"):
            matrix.parse_output("x/a", proc.stdout, proc.stderr, proc.returncode, 0)


def test_probe_script_uses_only_the_standard_library() -> None:
    source = matrix.PROBE_SCRIPT.read_text()
    assert "podnet" not in "".join(
        line for line in source.splitlines() if line.startswith(("import", "from"))
    )


# ------------------------------------------------------------------ CLI and lab


def test_netpol_topology_parses() -> None:
    t = topo.load(NETPOL)
    assert [n.name for n in t.nodes] == ["node0", "node1", "node2"] and t.racks == 1
    assert {ns.name: dict(ns.labels) for ns in t.namespaces if ns.name != "default"} == {
        "x": {"ns": "x"},
        "y": {"ns": "y"},
        "z": {"ns": "z"},
    }
    assert [p.key for p in t.pods] == [f"{n}/{p}" for n in "xyz" for p in "abc"]
    for pod in t.pods:
        assert dict(pod.labels) == {"pod": pod.name}
        assert sorted((p.port, p.protocol, p.name) for p in pod.ports) == [
            (80, "TCP", "serve-80-tcp"),
            (80, "UDP", "serve-80-udp"),
            (81, "TCP", "serve-81-tcp"),
            (81, "UDP", "serve-81-udp"),
        ]
    for ns in "xyz":  # each namespace spans every node
        assert sorted(p.node for p in t.pods if p.namespace == ns) == ["node0", "node1", "node2"]
    assert sorted(len(t.pods_on(n.name)) for n in t.nodes) == [3, 3, 3]


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    """Lab state files go to a temporary directory."""
    from podnet.lab import state

    monkeypatch.setattr(state, "RUN_DIR", tmp_path)
    return tmp_path


def cli(*args: str) -> int:
    from podnet.cli import main

    return main(["probe", *args])


def test_cli_errors_exit_1(run_dir: Path, capsys) -> None:
    assert cli("--name", "nolab") == 1
    assert "no lab named 'nolab'" in capsys.readouterr().err
    (run_dir / "lab-half.json").write_text(json.dumps(lab_data(phase="building")))
    assert cli("--name", "half") == 1
    assert "lab 'half' is building, not up" in capsys.readouterr().err
    (run_dir / "lab-up.json").write_text(json.dumps(lab_data()))
    for args, message in [
        (["--from", "pod=q"], "--from 'pod=q' matches no pod"),
        (["--to", "pod in (a"], "selector 'pod in (a'"),
        (["--port", "8080"], "no selected target serves port(s) 8080"),
        (["--protocol", "icmp"], "invalid protocol 'icmp'"),
        (["--timeout", "0"], "invalid timeout"),
    ]:
        assert cli("--name", "up", *args) == 1, args
        assert message in capsys.readouterr().err, args


def test_cli_json_and_table_with_a_fake_runner(run_dir: Path, capsys, monkeypatch) -> None:
    (run_dir / "lab-up.json").write_text(json.dumps(lab_data()))
    seen = {}

    def fake_run(plan, timeout):
        seen["timeout"] = timeout
        return {
            (s, p.target, p.port, p.protocol): p.target != "y/b"
            for s in plan.sources
            for p in plan.probes[s]
        }

    monkeypatch.setattr(matrix, "run", fake_run)
    assert (
        cli(
            "--name",
            "up",
            "--port",
            "80",
            "--protocol",
            "tcp",
            "--to",
            "namespace=y",
            "-o",
            "json",
            "--timeout",
            "0.5",
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert list(out) == [f"{n}/{p}" for n in "xyz" for p in "abc"]
    assert out["x/a"] == {"y/a": True, "y/b": False, "y/c": True}
    assert seen["timeout"] == 0.5
    assert cli("--name", "up", "--protocol", "udp", "-o", "json") == 0
    assert list(json.loads(capsys.readouterr().out)) == ["80/udp", "81/udp"]
    assert cli("--name", "up", "--from", "pod=a") == 0
    text = capsys.readouterr().out
    assert "81/udp in lab up: 24 reachable, 3 blocked" in text and "108 probes" in text
