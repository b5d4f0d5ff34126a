"""The compiled `podnet` exec shim (podnet/cni/shim) against the Python plugin it stands
in for: byte-identical stdout and exit codes, and the same request to the agent (meta,
body, namespace fds), for a normal reply, the socket from the config or the env, no
agent (the shim execs the Python plugin's in-process fallback), an agent that fails
mid-request (code 11), configs the shim must not second-guess, and odd environment
values. Each case runs both executables against one tiny fake agent (issue 19)."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podnet.install.cni import FALLBACK_NAME, MARKER, SHIM_NAME, install_cni, is_shim
from podnet.rpc import wire

PLUGINS = ("shim", "python")
DEFAULT_SOCKET_ABSENT = not os.path.exists(wire.DEFAULT_SOCKET)


@pytest.fixture(scope="module")
def bins(tmp_path_factory) -> dict[str, str]:
    bin_dir = tmp_path_factory.mktemp("cni-bin")
    install_cni(str(bin_dir), shim=True)
    if not is_shim(bin_dir / SHIM_NAME):
        pytest.skip("no C compiler: the shim was not built")
    return {"shim": str(bin_dir / SHIM_NAME), "python": str(bin_dir / FALLBACK_NAME)}


@dataclass
class Seen:
    meta: dict
    raw_meta: bytes
    body: bytes
    nfds: int
    fd_inodes: list[tuple[int, int]]
    peer_exe: str


@dataclass
class FakeAgent:
    """A UNIX socket that records each request and answers `reply` (code, payload), or
    misbehaves: "close" (hang up after reading the request), "half" (half a header),
    "huge" (a length over MAX_FRAME)."""

    path: str
    reply: tuple[int, bytes] = (0, b"{}\n")
    mode: str = "reply"
    seen: list[Seen] = field(default_factory=list)

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        meta, body, fds = wire.recv_request(conn, max_fds=4)
        inodes = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in fds]
        wire.close_fds(fds)
        self.seen.append(Seen(json.loads(meta), meta, body, len(inodes), inodes, exe))
        if self.mode == "reply":
            conn.sendall(wire.pack_reply(*self.reply))
        elif self.mode == "half":
            conn.sendall(b"\x00\x00\x00")
        elif self.mode == "huge":
            conn.sendall(struct.pack(">II", 0, wire.MAX_FRAME + 1))

    def __enter__(self) -> FakeAgent:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def agent(tmp_path) -> Iterator[FakeAgent]:
    with FakeAgent(str(tmp_path / "agent.sock")) as fake:
        yield fake


def run(binary: str, env: dict, stdin: bytes) -> tuple[int, bytes]:
    import subprocess

    proc = subprocess.run([binary], input=stdin, env=env, capture_output=True, timeout=120, check=False)
    return proc.returncode, proc.stdout


def both(bins: dict, env: dict, stdin: bytes) -> dict[str, tuple[int, bytes]]:
    return {name: run(bins[name], env, stdin) for name in PLUGINS}


def cni_env(command: str = "ADD", **extra) -> dict:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "PATH": "/usr/bin:/bin"}
    return {**env, **extra}


def config(**extra) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "n1", "type": "podnet", **extra}).encode()


def own_netns() -> tuple[int, int]:
    st = os.stat("/proc/self/ns/net")
    return st.st_dev, st.st_ino


# -- the fast path --------------------------------------------------------------------


@pytest.mark.parametrize("reply", [(0, b'{"cniVersion": "1.0.0", "ips": []}\n'), (7, b"\xff\x00 not json"), (0, b"")])
def test_normal_reply_is_printed_untouched_with_its_code(bins, agent, reply):
    agent.reply = reply
    stdin = config(agentSocket=agent.path)
    out = both(bins, cni_env(), stdin)
    assert out["shim"] == out["python"] == (reply[0], reply[1])
    shim, python = agent.seen
    assert shim.peer_exe == SHIM_NAME and python.peer_exe.startswith("python")  # each did its own talking
    assert shim.raw_meta == python.raw_meta and shim.body == python.body == stdin
    assert shim.meta == {"op": "cni", "env": {k: v for k, v in cni_env().items() if k.startswith("CNI_")}}
    # our namespace and the container's (here the same one), both as fds
    assert shim.nfds == python.nfds == 2 and shim.fd_inodes == python.fd_inodes == [own_netns()] * 2


@pytest.mark.parametrize("netns", ["", "/nonexistent/ns"])
def test_a_container_netns_that_does_not_open_sends_one_fd(bins, agent, netns):
    out = both(bins, cni_env(CNI_NETNS=netns), config(agentSocket=agent.path))
    assert out["shim"] == out["python"] == (0, b"{}\n")
    assert [s.nfds for s in agent.seen] == [1, 1]


def test_env_socket_wins_over_the_config(bins, agent, tmp_path):
    with FakeAgent(str(tmp_path / "other.sock")) as other:
        out = both(bins, cni_env(PODNET_AGENT_SOCKET=agent.path), config(agentSocket=other.path))
        assert out["shim"] == out["python"] == (0, b"{}\n")
        assert len(agent.seen) == 2 and not other.seen


@pytest.mark.parametrize(
    "text,talker",  # talker: who sends the request; the shim hands over when in doubt
    [
        ('{"agentSocket": "/nowhere.sock", "cniVersion": "1.0.0", "agentSocket": "%s"}', "podnet"),  # last wins
        ('{"cniVersion": "1.0.0", "ipam": {"agentSocket": 5, "x": [1, -2.5e3, true, null, {}]}, "agentSocket": "%s"}',
         "podnet"),
        ('{"agentSocket": "%s", "n": 1.5E+3, "s": "\\"\\\\\\/\\b\\f\\n\\r\\t\\ud83d\\ude00"} trailing garbage',
         "podnet"),
        ('\t\r\n {"agentSocket": "%s"}', "podnet"),
        ('\x0b\x1c {"agent\\u0053ocket": "%s", "note": "agentSocket"}', "python"),  # an escaped key; lstrip()
        ('{"name": "caf\u00e9", "agentSocket": "%s"}', "python"),  # not ASCII
        ('{"agentSocket": "%s", "x": -Infinity}', "python"),  # valid for Python's scanner
    ],
)
def test_the_config_socket_is_read_as_python_reads_it(bins, agent, text, talker):
    stdin = (text % agent.path).encode()
    out = both(bins, cni_env(), stdin)
    assert out["shim"] == out["python"] == (0, b"{}\n")
    assert [s.body for s in agent.seen] == [stdin, stdin]
    assert agent.seen[0].peer_exe.startswith(talker)


@pytest.mark.skipif(not DEFAULT_SOCKET_ABSENT, reason="an agent listens on the default socket here")
@pytest.mark.parametrize(
    "text",
    [
        '{"agentSocket": "%s",}',  # a trailing comma: no config, the default socket
        '{"agentSocket": "%s", "n": 01}',
        '{"agentSocket": "%s", "n": 1%s}' % ("%s", "0" * 5000),  # noqa: UP031 - int() refuses 4300+ digits
        '["agentSocket", "%s"]',
        '{"agentSocket": "%s", "bad": "\x01"}',  # strict: no raw control characters
        '{"agentSocket": 7, "cniVersion": "0.4.0", "other": "%s"}',
    ],
)
def test_a_config_python_does_not_take_gets_the_default_socket(bins, agent, text):
    stdin = (text % agent.path).encode()
    out = both(bins, cni_env(), stdin)
    assert out["shim"] == out["python"]
    assert not agent.seen, out


# -- no agent: the Python plugin's in-process fallback ----------------------------------


def _refusing_socket(path: str) -> str:
    """A socket file nobody listens on: connect gets ECONNREFUSED."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    return path


@pytest.mark.parametrize("kind", ["missing", "refused"])
@pytest.mark.parametrize("command,stdin", [("VERSION", config()), ("ADD", b'{"cniVersion": "1.0.0", "type": "podnet"}'),
                                           ("ADD", b"not json agentSocket")])
def test_without_an_agent_the_python_plugin_answers(bins, tmp_path, kind, command, stdin):
    path = str(tmp_path / "none.sock") if kind == "missing" else _refusing_socket(str(tmp_path / "none.sock"))
    out = both(bins, cni_env(command, PODNET_AGENT_SOCKET=path), stdin)
    assert out["shim"] == out["python"]
    code, text = out["shim"]
    answer = json.loads(text)
    if command == "VERSION":
        assert code == 0 and "1.0.0" in answer["supportedVersions"]
    else:
        assert code == 1 and answer["code"] in (6, 7)  # the spec's config errors, worded by Python


def test_a_closed_stdin_reaches_the_fallback_as_an_empty_one(bins, tmp_path):
    """fd 0 closed: the shim's memfd may itself become fd 0, and the fallback still
    answers as the Python plugin does without stdin."""
    import subprocess

    env = cni_env("VERSION", PODNET_AGENT_SOCKET=str(tmp_path / "none.sock"))
    out = {name: subprocess.run([bins[name]], env=env, capture_output=False, stdout=subprocess.PIPE,
                                preexec_fn=lambda: os.close(0), timeout=120, check=False)  # noqa: PLW1509
           for name in PLUGINS}
    assert (out["shim"].returncode, out["shim"].stdout) == (out["python"].returncode, out["python"].stdout)
    assert out["shim"].stdout  # an answer (the spec's error for an empty config), not silence


def test_force_python_runs_the_python_plugin(bins, agent):
    out = run(bins["shim"], cni_env(PODNET_CNI_PYTHON="1"), config(agentSocket=agent.path))
    assert out == (0, b"{}\n") and agent.seen[0].peer_exe.startswith("python")


# -- an agent that fails mid-request ----------------------------------------------------


@pytest.mark.parametrize("mode", ["close", "half", "huge"])
@pytest.mark.parametrize("version", [None, "0.4.0", ""])
def test_an_agent_failing_mid_request_is_code_11(bins, agent, mode, version):
    agent.mode = mode
    fields = {"agentSocket": agent.path} | ({"cniVersion": version} if version is not None else {})
    stdin = json.dumps({"name": "n1", **fields}).encode()
    out = both(bins, cni_env(), stdin)
    assert out["shim"] == out["python"]
    code, text = out["shim"]
    answer = json.loads(text)
    assert code == 1 and answer["code"] == 11 and answer["cniVersion"] == (version or "1.0.0")
    assert answer["msg"].startswith(f"the podnet agent at {agent.path} failed mid-request: ")


# -- odd environment values -------------------------------------------------------------


ODD = {
    "CNI_ARGS": 'IgnoreUnknown=1;K8S_POD_NAME="x\\y"\t\n\r\x08\x0c\x01\x7f',
    "CNI_CONTAINERID": "caf\u00e9-\u4e2d-\U0001f600",
    "CNI_EMPTY": "",
    "CNI_EQ": "a=b=c",
    "CNI_": "bare",
    "NOT_CNI": "ignored",
    "cni_lower": "ignored",
}


def test_odd_environment_values_are_escaped_as_python_escapes_them(bins, agent):
    env = {**cni_env(), **ODD, "PODNET_AGENT_SOCKET": agent.path}
    raw = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    raw[b"CNI_BYTES"] = b"\xff\xfe\xc3(\xe2\x82\xed\xa0\x80\xf0\x90\x80 ok"  # not UTF-8: surrogateescape
    raw[b"CNI_\xff"] = b"key"
    out = both(bins, raw, config())
    assert out["shim"] == out["python"] == (0, b"{}\n")
    shim, python = agent.seen
    assert shim.peer_exe == SHIM_NAME and shim.raw_meta == python.raw_meta  # byte for byte
    assert shim.meta["env"]["CNI_ARGS"] == ODD["CNI_ARGS"] and "NOT_CNI" not in shim.meta["env"]


def test_odd_socket_path_in_the_error_message(bins, tmp_path):
    odd = tmp_path / 'dir "q" \u00e9'
    odd.mkdir()
    with FakeAgent(str(odd / "a.sock"), mode="close") as fake:
        out = both(bins, cni_env(PODNET_AGENT_SOCKET=fake.path), config())
    assert out["shim"] == out["python"] and json.loads(out["shim"][1])["code"] == 11


# -- install and uninstall --------------------------------------------------------------


@pytest.mark.parametrize("cc", [None, "/bin/false"])  # no compiler; one that fails (no libc6-dev)
def test_without_a_working_compiler_podnet_is_the_python_plugin(tmp_path, monkeypatch, caplog, cc):
    import podnet.install.cni as cni

    install_cni(str(tmp_path), shim=True)
    assert is_shim(tmp_path / SHIM_NAME) and (tmp_path / FALLBACK_NAME).is_file()
    (tmp_path / SHIM_NAME).unlink()  # a changed stamp would rebuild; a missing file too
    monkeypatch.setattr(cni, "compiler", lambda: cc)
    written = install_cni(str(tmp_path))
    assert [Path(p).name for p in written] == ["podnet", "podnet-ipam"]  # exactly as before the shim
    assert not is_shim(tmp_path / SHIM_NAME) and not (tmp_path / FALLBACK_NAME).exists()
    assert MARKER in (tmp_path / SHIM_NAME).read_text()
    assert "the CNI shim was not built" in caplog.text


def test_podnet_cni_shim_0_installs_the_python_plugin_quietly(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PODNET_CNI_SHIM", "0")
    assert [Path(p).name for p in install_cni(str(tmp_path))] == ["podnet", "podnet-ipam"]
    assert not is_shim(tmp_path / SHIM_NAME) and not caplog.text


def test_uninstall_removes_the_shim_and_its_fallback(tmp_path, capsys):
    from podnet.cli import main

    assert main(["install-cni", "--root", str(tmp_path), "--bin-dir", "/opt/cni/bin"]) == 0
    bin_dir = tmp_path / "opt/cni/bin"
    if not is_shim(bin_dir / SHIM_NAME):
        pytest.skip("no C compiler: the shim was not built")
    assert main(["uninstall", "--root", str(tmp_path), "--bin-dir", "/opt/cni/bin"]) == 0
    out = capsys.readouterr().out
    for name in ("podnet", "podnet-python", "podnet-ipam"):
        assert f"removed {bin_dir / name}" in out
    assert not list(bin_dir.iterdir())


def test_an_unchanged_shim_is_not_rebuilt(tmp_path, monkeypatch):
    import podnet.install.cni as cni

    install_cni(str(tmp_path), shim=True)
    if not is_shim(tmp_path / SHIM_NAME):
        pytest.skip("no C compiler: the shim was not built")
    before = (tmp_path / SHIM_NAME).stat().st_ino
    monkeypatch.setattr(cni.subprocess, "run", lambda *a, **k: pytest.fail("rebuilt"))
    install_cni(str(tmp_path), shim=True)
    assert (tmp_path / SHIM_NAME).stat().st_ino == before


def test_a_built_shim_is_reused_from_the_cache_in_a_new_bin_dir(tmp_path, monkeypatch):
    import podnet.install.cni as cni

    monkeypatch.setenv("PODNET_CACHE_DIR", str(tmp_path / "cache"))
    install_cni(str(tmp_path / "a"), shim=True)
    if not is_shim(tmp_path / "a" / SHIM_NAME):
        pytest.skip("no C compiler: the shim was not built")
    assert len(list((tmp_path / "cache").iterdir())) == 1
    monkeypatch.setattr(cni.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    install_cni(str(tmp_path / "b"), shim=True)  # every lab up installs into its own bin dir
    assert (tmp_path / "b" / SHIM_NAME).read_bytes() == (tmp_path / "a" / SHIM_NAME).read_bytes()
