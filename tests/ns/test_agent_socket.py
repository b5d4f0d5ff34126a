"""The agent socket under misbehaving clients: stalled half-frames, truncated requests
carrying namespace fds, oversized length prefixes, non-root peers, and long container
stops must never keep a CNI ADD waiting (issue 10, item 3)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cniharness import Agent, Cni, bridge_config, wait_until
from containerharness import NETWORK, ContainerEnv
from podnet.rpc import client, wire

pytestmark = pytest.mark.root

ADD_PATIENCE = 10.0  # far above a normal ADD (~0.1 s): only a stalled agent misses it
CNI_META = json.dumps({"op": "cni", "env": {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "stall"}}).encode()


def _connect(path: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def _agent_pid(path: str) -> int:
    code, payload = client.exchange(path, json.dumps({"op": "ping"}).encode(), timeout=10)
    assert code == 0, payload
    return int(json.loads(payload)["pid"])


def _fds(pid: int) -> dict[str, str]:
    """The agent's open fds and what they are."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return found


def _settled_fds(pid: int, quiet: float = 3.0, patience: float = 20.0) -> dict[str, str]:
    """The agent's fds once they stopped changing for `quiet` seconds (its services
    open their stores and sockets in their first rounds, the sweep every 2 s)."""
    deadline, last, since = time.monotonic() + patience, _fds(pid), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.2)
        now = _fds(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _timed_add(cni: Cni, ns: str, cid: str) -> tuple[bool, float, object]:
    """Run one ADD through the plugin in a thread: (finished in time, seconds, result)."""
    box: dict = {}

    def run() -> None:
        start = time.monotonic()
        box["result"] = cni.call("ADD", ns, cid)
        box["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(ADD_PATIENCE)
    return not thread.is_alive(), box.get("seconds", ADD_PATIENCE), box.get("result")


@contextlib.contextmanager
def _stalled(path: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` clients that each sent half a request and then wait."""
    frame = wire.pack_request(CNI_META, b'{"cniVersion": "1.0.0"}')
    socks = []
    try:
        for _ in range(count):
            sock = _connect(path)
            sock.sendall(frame[: len(frame) // 2])
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_stalled_clients_do_not_delay_an_add(sandbox, host_ns, cni_bin, data_dir, socket_path, tmp_path):
    Agent(sandbox, host_ns, socket_path, str(tmp_path / "a.db")).start()
    cni = Cni(cni_bin, host_ns, bridge_config("t-net", data_dir, agentSocket=socket_path), sandbox)
    cni.add(sandbox.netns("warm"), "warm")  # the bridge exists: the timed ADD is a plain one
    with _stalled(socket_path, 64) as stalled:
        done, seconds, result = _timed_add(cni, sandbox.netns("c1"), "c1")
        print(f"\nADD while 64 clients stall: {seconds:.3f} s")
        assert done, f"the ADD did not finish within {ADD_PATIENCE} s while 64 clients stall"
        assert result.ok, result.output
        # and the agent drops a client that never finishes its request
        stalled[0].settimeout(20)
        reply = b"".join(iter(lambda: stalled[0].recv(4096), b""))
        code, length = struct.unpack(">II", reply[:8])
        assert code == 1 and b"not complete" in reply[8 : 8 + length], reply


def test_fds_of_failed_requests_are_closed(sandbox, host_ns, socket_path, tmp_path):
    Agent(sandbox, host_ns, socket_path, str(tmp_path / "a.db")).start()
    pid = _agent_pid(socket_path)
    before = _settled_fds(pid)
    ns_fds = [os.open("/proc/self/ns/net", os.O_RDONLY) for _ in range(4)]
    frame = wire.pack_request(CNI_META, b"{}")
    try:
        bad = [frame[:6]] * 50  # truncated: the client hangs up mid-request
        bad += [struct.pack(">I", wire.MAX_FRAME + 1)] * 5  # refused length
        bad += [wire.pack_request(b"{not json", b"")] * 5  # refused meta
        for data in bad:
            with _connect(socket_path) as sock:
                wire.send(sock, data, ns_fds[:2])
        for _ in range(5):  # more fds than a request may carry
            with _connect(socket_path) as sock:
                wire.send(sock, frame, ns_fds)
                wire.recv_reply(sock)
    finally:
        for fd in ns_fds:
            os.close(fd)
    deadline = time.monotonic() + 10
    while len(_fds(pid)) != len(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = _fds(pid)
    assert len(after) == len(before), sorted(set(after.values()) ^ set(before.values()))
    assert _agent_pid(socket_path) == pid  # and it still serves


def test_oversized_length_is_refused_without_reading_the_body(sandbox, host_ns, socket_path, tmp_path):
    Agent(sandbox, host_ns, socket_path, str(tmp_path / "a.db")).start()
    size = 40 * 1024 * 1024
    with _connect(socket_path) as sock:
        sock.sendall(struct.pack(">I", size))
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            sock.sendall(b"x" * size)  # the agent stopped reading at the length
    with _connect(socket_path) as sock:  # the same with a huge body length
        meta = json.dumps({"op": "ping"}).encode()
        sock.sendall(struct.pack(">I", len(meta)) + meta + struct.pack(">I", 0xFFFFFFFF))
        code, payload = wire.recv_reply(sock)
        assert code == 1 and b"too large" in payload, payload


@pytest.fixture
def open_socket_dir() -> Iterator[str]:
    """A socket directory anyone may enter (the agent's socket is root-only by its
    mode; the test opens it up to show the peer check alone refuses a non-root peer)."""
    path = tempfile.mkdtemp(prefix="pn-t-", dir="/run")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


NOBODY_CLIENT = (
    "import socket,struct,sys\n"
    "s=socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
    "head=b''\n"
    "while len(head)<8:\n"
    "    chunk=s.recv(8-len(head)); assert chunk, 'closed'; head+=chunk\n"
    "code,n=struct.unpack('>II',head); body=b''\n"
    "while len(body)<n:\n"
    "    chunk=s.recv(n-len(body)); assert chunk, 'closed'; body+=chunk\n"
    "print(code, body.decode())\n"
)


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def test_non_root_peer_is_refused_before_its_request_is_read(sandbox, host_ns, open_socket_dir, tmp_path):
    path = os.path.join(open_socket_dir, "agent.sock")
    Agent(sandbox, host_ns, path, str(tmp_path / "a.db")).start()
    # the socket shows up at bind; the agent makes it 0600 right after: opened up before
    # that (a loaded machine), the agent's chmod would undo ours and refuse nobody's connect
    wait_until(lambda: stat.S_IMODE(os.stat(path).st_mode) == 0o600, "the agent's own chmod of its socket", timeout=20)
    os.chmod(path, 0o666)
    # The client sends nothing at all: the refusal must come from its credentials alone.
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", NOBODY_CLIENT, path], preexec_fn=_as_nobody,
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    code, _, payload = proc.stdout.partition(" ")
    assert code == "1" and "root only" in payload, proc.stdout


SLOW_TO_STOP = (
    "import signal,time\n"
    "signal.signal(signal.SIGTERM, lambda *_: print('term', flush=True))\n"
    "print('up', flush=True)\n"
    "time.sleep(600)\n"
)
STOPPING = 32  # the CNI worker pool's size: enough to exhaust it if stops ran there


def test_long_stops_do_not_hold_cni_workers(sandbox, tmp_path, cni_bin):
    with ContainerEnv.create(sandbox, tmp_path) as env:
        env.add_network()
        names = [f"slow{i}" for i in range(STOPPING)]

        def run(name: str) -> dict:
            return env.run_d(name, sys.executable, "-c", SLOW_TO_STOP, opts=("--network", NETWORK))

        records = [run(names[0])]  # the first one installs the plugins, the rest in parallel
        with ThreadPoolExecutor(max_workers=8) as pool:
            records += pool.map(run, names[1:])
        for record in records:
            env.wait_log(record, "up")
        stops = [env.container_bg("stop", name, "-t", "120", "-o", "json") for name in names]
        for record in records:  # every stop is waiting out its grace period now
            env.wait_log(record, "term", timeout=30)
        data_dir = tmp_path / "other"
        data_dir.mkdir()
        cni = Cni(cni_bin, env.host, bridge_config("t-net", str(data_dir), agentSocket=env.socket), sandbox)
        done, seconds, result = _timed_add(cni, sandbox.netns("c1"), "c1")
        print(f"\nADD while {STOPPING} containers stop: {seconds:.3f} s")
        # end the grace periods: the reapers' DELs must be served, then every stop returns
        for record in records:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["pid"], signal.SIGKILL)
        assert done, f"the ADD did not finish within {ADD_PATIENCE} s while {STOPPING} containers stop"
        assert result.ok, result.output
        for proc in stops:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert json.loads(out)["exit_code"] == 137
        assert env.reservations() == []
