"""The sleeve between two namespaces: ping and TCP through a plain and an encrypted
sleeve, the encrypted one unreadable on the underlay (the plain one, captured the same
way, shows the marker: the capture would see it), and a replayed, a forged and a
plain datagram refused by the encrypted receiver.

One sandbox for the module: `pn-sl-<token>-a|b` joined by a veth pair (the underlay),
two forwarders in each (`python -m podnet.fabric.sleeve.forwarder` via nsenter,
stopped by PID): plain on pnsl0 (10.97.0.0/24, port 6784), encrypted on pnsl1
(10.96.0.0/24, port 6785). The underlay is captured with an AF_PACKET socket in
namespace a (no tcpdump here), a helper process stopped by PID. Torn down in a
`finally` by the recorded names and PIDs.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fabric_cluster import eventually

from podnet.fabric.sleeve import frame
from podnet.fabric.sleeve.launch import (
    SleeveSpec,
    child_env,
    forwarder_argv,
    read_stats,
    wait_ready,
)
from podnet.lab.sandbox import Sandbox, ip

pytestmark = pytest.mark.root

UNDER = {"a": "192.168.97.1", "b": "192.168.97.2"}
SLEEVES = {  # key -> (tun, inner /24, port, encrypted)
    "plain": ("pnsl0", "10.97.0", 6784, False),
    "encrypted": ("pnsl1", "10.96.0", 6785, True),
}

# Captures the UDP payloads of frames to or from one port on one interface, each
# written as a 4-byte length and the payload; "ready" once the socket is bound.
CAPTURE = r"""
import signal, socket, struct, sys
ifname, port, out, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL:
sock.bind((ifname, 3))  # outgoing frames too
with open(out, "wb", buffering=0) as handle:
    open(ready, "w").close()  # after the bind and the output file: nothing is lost
    while True:
        data = sock.recv(262144)
        if data[12:14] != b"\x08\x00" or data[23] != 17:
            continue
        ihl = (data[14] & 15) * 4
        udp = 14 + ihl
        sport, dport = struct.unpack_from("!HH", data, udp)
        if port in (sport, dport):
            payload = data[udp + 8:]
            handle.write(struct.pack("!I", len(payload)) + payload)
"""

TCP_SERVER = r"""
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
conn, _ = srv.accept()
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk); total += len(chunk)
conn.sendall(f"{total} {digest.hexdigest()}".encode())
conn.close()
"""

TCP_CLIENT = r"""
import socket, sys
data = bytes.fromhex(sys.stdin.readline().strip()) * int(sys.argv[3])
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
conn.sendall(data)
conn.shutdown(socket.SHUT_WR)
print(conn.recv(200).decode())
"""

SEND_UDP = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[4])):
    sock.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))
"""


class Lab:
    def __init__(self, sandbox: Sandbox, workdir: Path) -> None:
        self.sandbox = sandbox
        self.workdir = workdir
        self.ns: dict[str, str] = {}
        self.stats: dict[tuple[str, str], str] = {}

    def run(self, side: str, code: str, *args: str, **kw) -> subprocess.CompletedProcess:
        argv = ["nsenter", f"--net=/run/netns/{self.ns[side]}", "--", sys.executable, "-c", code]
        return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=30, **kw)

    def spawn(self, side: str, code: str, *args: str) -> subprocess.Popen:
        argv = ["nsenter", f"--net=/run/netns/{self.ns[side]}", "--", sys.executable, "-c", code]
        return self.sandbox.spawn(None, [*argv, *args], stdout=subprocess.PIPE, text=True)

    def counters(self, key: str, side: str) -> dict[str, int]:
        return read_stats(self.stats[(key, side)])

    def inner(self, key: str, side: str) -> str:
        return f"{SLEEVES[key][1]}.{1 if side == 'a' else 2}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (creates network namespaces)")
    sandbox = Sandbox("pn-sl-")
    built = Lab(sandbox, tmp_path_factory.mktemp("sleeve"))
    try:
        for side in "ab":
            built.ns[side] = sandbox.netns(side)
        a, b = built.ns["a"], built.ns["b"]
        ip("-n", a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", b)
        for side in "ab":
            ip("-n", built.ns[side], "addr", "add", f"{UNDER[side]}/24", "dev", "veth0")
            ip("-n", built.ns[side], "link", "set", "veth0", "up")
        secret = built.workdir / "secret"
        secret.write_text(secrets.token_hex(32))
        for key, (tun, _inner, port, encrypted) in SLEEVES.items():
            for side, other in (("a", "b"), ("b", "a")):
                spec = SleeveSpec(
                    netns=built.ns[side], name=f"n{side}", tun=tun,
                    address=f"{built.inner(key, side)}/24", listen=f"{UNDER[side]}:{port}",
                    peers={f"n{other}": f"{UNDER[other]}:{port}"},
                    routes={f"{built.inner(key, other)}/32": f"n{other}"},
                    secret_file=str(secret) if encrypted else None,
                )
                stats = str(built.workdir / f"{key}-{side}.json")
                proc = sandbox.spawn(None, forwarder_argv(spec, stats), env=child_env())
                wait_ready(stats, proc)
                built.stats[(key, side)] = stats
        yield built
    finally:
        sandbox.close()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"pn-sl-{sandbox.token}-" not in left


@pytest.mark.parametrize("key", list(SLEEVES))
def test_ping_crosses_the_sleeve(lab: Lab, key: str) -> None:
    out = subprocess.run(
        ["ip", "netns", "exec", lab.ns["a"], "busybox", "ping", "-c", "3", "-W", "2",
         lab.inner(key, "b")], capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0 and "3 packets received" in out.stdout, out.stdout + out.stderr
    assert eventually(lambda: lab.counters(key, "b").get("rx_messages", 0) >= 3, 5)


@pytest.mark.parametrize("key", list(SLEEVES))
def test_tcp_carries_megabytes_intact(lab: Lab, key: str) -> None:
    block, repeat = secrets.token_bytes(4096), 2048  # 8 MiB: many GSO super-packets
    server = lab.spawn("b", TCP_SERVER, lab.inner(key, "b"), "7001")
    try:
        assert server.stdout.readline().strip() == "listening"
        out = lab.run("a", TCP_CLIENT, lab.inner(key, "b"), "7001", str(repeat),
                      input=block.hex() + "\n")
        assert out.returncode == 0, out.stderr
        expected = hashlib.sha256(block * repeat).hexdigest()
        assert out.stdout.split() == [str(len(block) * repeat), expected]
    finally:
        lab.sandbox.stop(server)
    assert eventually(lambda: lab.counters(key, "a").get("tx_messages", 0) > 0, 5)


def capture(lab: Lab, key: str, marker: bytes) -> list[bytes]:
    """The underlay's UDP payloads of sleeve `key` while a sends `marker` to b inside."""
    port = SLEEVES[key][2]
    # fresh names per capture: a second capture of the same sleeve once found the
    # first one's ready file, sent before its socket was bound and read an empty file
    # (CI, 2026-12-07)
    name = f"cap-{key}-{secrets.token_hex(4)}"
    out, ready = lab.workdir / name, lab.workdir / f"{name}.ready"
    proc = lab.spawn("a", CAPTURE, "veth0", str(port), str(out), str(ready))
    try:
        wait_ready(str(ready), proc)
        sent = lab.run("a", SEND_UDP, lab.inner(key, "b"), "7009", marker.hex(), "5")
        assert sent.returncode == 0, sent.stderr
        # all five datagrams, counted as records from a (a sealed one is bigger than the
        # marker: a byte count would stop at four; b's own datagrams cross veth0 too, and
        # five of them once ended the wait before any of a's: make test, 2026-12-06)
        eventually(lambda: out.exists() and len(_from_a(_records(out.read_bytes()))) >= 5, 5)
    finally:
        proc.send_signal(signal.SIGTERM)
        lab.sandbox.stop(proc)
    return _records(out.read_bytes())


def _from_a(records: list[bytes]) -> list[bytes]:
    """The records whose sleeve header names node a as their sender."""
    from_a = frame.sender_id("na")
    out = []
    for record in records:
        try:
            if frame.parse_header(record).sender == from_a:
                out.append(record)
        except frame.FrameError:
            continue
    return out


def _records(data: bytes) -> list[bytes]:
    """The capture file's length-prefixed payloads (a record still being written is left out)."""
    payloads = []
    while len(data) >= 4:
        (size,) = struct.unpack_from("!I", data)
        if len(data) < 4 + size:
            break
        payloads.append(data[4 : 4 + size])
        data = data[4 + size :]
    return payloads


def test_the_encrypted_sleeve_hides_what_the_plain_one_shows(lab: Lab) -> None:
    marker = b"PODNET-PLAINTEXT-MARKER-" + secrets.token_hex(8).encode()
    plain = capture(lab, "plain", marker)
    assert plain and any(marker in p for p in plain)  # the control: capture sees it
    sealed = capture(lab, "encrypted", marker)
    headers = [frame.parse_header(p) for p in sealed]
    assert len(sealed) >= 5 and all(h.encrypted for h in headers)
    assert not any(marker in p for p in sealed)
    assert not any(marker[:12] in p for p in sealed)


def resend(lab: Lab, datagram: bytes) -> None:
    out = lab.run("a", SEND_UDP, UNDER["b"], str(SLEEVES["encrypted"][2]), datagram.hex(), "1")
    assert out.returncode == 0, out.stderr


def counter_grows(lab: Lab, name: str, before: dict[str, int]):
    return eventually(
        lambda: lab.counters("encrypted", "b").get(name, 0) > before.get(name, 0), 5
    )


def test_replayed_forged_and_plain_datagrams_are_refused(lab: Lab) -> None:
    from_a = frame.sender_id("na")
    sealed = capture(lab, "encrypted", b"replay me " + secrets.token_hex(4).encode())
    original = next(p for p in sealed if frame.parse_header(p).sender == from_a)
    before = lab.counters("encrypted", "b")
    resend(lab, original)
    assert counter_grows(lab, "rx_replayed", before)
    # the same bytes under a counter never used: authentication, not the window, refuses
    header = frame.parse_header(original)
    forged = bytearray(original)
    struct.pack_into("!Q", forged, 12, header.counter + 10**12)
    before = lab.counters("encrypted", "b")
    resend(lab, bytes(forged))
    assert counter_grows(lab, "rx_forged", before)
    # a plain frame claiming to come from the keyed peer
    plain = frame.pack_header(frame.VNET, header.sender, header.counter + 2 * 10**12) + bytes(40)
    before = lab.counters("encrypted", "b")
    resend(lab, plain)
    assert counter_grows(lab, "rx_plain_refused", before)
    after = lab.counters("encrypted", "b")
    assert after.get("rx_replayed") == before.get("rx_replayed")
