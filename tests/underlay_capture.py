"""A marker sent by one lab pod to another's echo server, and what a lab node's NIC
sees meanwhile (an AF_PACKET capture inside the node's namespace): how the gossip lab
tests show that the fast path carries pod traffic in clear and the sleeve does not, and
the clusterset tests the same of a gateway's WAN link."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

CAPTURE = r"""
import json, socket, struct, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind((sys.argv[3], 0))
sock.settimeout(0.2)
marker, end = bytes.fromhex(sys.argv[1]), time.time() + float(sys.argv[2])
seen = sleeve = udp6 = 0
print("ready", flush=True)
while time.time() < end:
    try:
        frame = sock.recv(262144)
    except socket.timeout:
        continue
    seen += marker in frame
    if frame[12:14] == b"\x08\x00" and frame[23] == 17:
        ihl = (frame[14] & 0xF) * 4
        ports = struct.unpack("!HH", frame[14 + ihl:18 + ihl])
        sleeve += int(sys.argv[4]) in ports
    elif frame[12:14] == b"\x86\xdd" and frame[20] == 17:  # IPv6, next header UDP
        udp6 += int(sys.argv[4]) in struct.unpack("!HH", frame[54:58])
print(json.dumps({"marker": seen, "sleeve": sleeve, "udp6": udp6}))
"""

SEND = r"""
import socket, sys
marker = bytes.fromhex(sys.argv[2])
for _ in range(5):
    with socket.create_connection((sys.argv[1], 80), timeout=3) as conn:
        conn.sendall(marker + b"\n")
        assert conn.recv(4096)
"""


def ip_of(lab: dict, pod: str) -> str:
    return lab["pods"][pod]["ips"][0].split("/")[0]


def capture_while_sending(lab: dict, node: str, src: str, dst: str) -> dict[str, int]:
    """What node's NIC sees while pod `src` sends a fresh marker to pod `dst`'s echo."""
    return capture_in(lab["nodes"][node]["netns"], "eth0", 6784, lab["pods"][src]["netns"], ip_of(lab, dst))


def capture_in(netns: str, iface: str, port: int, src_netns: str, dst: str) -> dict[str, int]:
    """What `iface` in `netns` sees while the pod in `src_netns` sends a fresh marker to
    the echo at `dst`: frames holding the marker, and UDP frames to or from `port` over
    IPv4 (`sleeve`) and over IPv6 (`udp6`)."""
    marker = f"PODNET-PLAINTEXT-{secrets.token_hex(8)}".encode()
    capture = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", CAPTURE, marker.hex(), "3",
                                iface, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert capture.stdout is not None and capture.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", src_netns, sys.executable, "-c", SEND, dst, marker.hex()],
                       check=True, timeout=20)
        out, _ = capture.communicate(timeout=20)
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait()
    return json.loads(out)
