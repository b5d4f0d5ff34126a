"""A meshed pod's interception table over IPv6 (mesh/intercept.py), in two namespaces of
our own joined by a veth with an address of each family.

The sidecar judges IPv4 only, so inbound IPv6 to the app's ports must be refused with a
TCP reset, never reach the app past the sidecar (mTLS STRICT and MeshAuthorizationPolicy
would be walked round), while IPv4 to the same port is still redirected to the sidecar's
inbound port. Before the table is loaded the app answers over both families: the reset
is the table's doing. Namespaces `pnt-m6<hex>-*`, deleted in a finally.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from podnet.mesh.intercept import intercept_script
from podnet.mesh.spec import INBOUND_PORT

pytestmark = pytest.mark.root

APP_PORT = 8080
SERVE = r"""
import socket, sys, threading
def serve(family, address, port, name):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((address, port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(name.encode()); c.close()
threading.Thread(target=serve, args=(socket.AF_INET, "0.0.0.0", int(sys.argv[1]), "sidecar"), daemon=True).start()
threading.Thread(target=serve, args=(socket.AF_INET6, "::", int(sys.argv[2]), "app"), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
CONNECT = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
        print(s.recv(100).decode())
except ConnectionRefusedError:
    print("reset")
except OSError as exc:
    print(type(exc).__name__)
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    prefix = f"pnt-m6{secrets.token_hex(2)}"
    pod, client = f"{prefix}-pod", f"{prefix}-cli"
    made = []
    try:
        for ns in (pod, client):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", client)
        for ns, v4, v6 in ((pod, "192.0.2.1/24", "fd00:6d::1/64"), (client, "192.0.2.2/24", "fd00:6d::2/64")):
            ip("-n", ns, "addr", "add", v4, "dev", "eth0")
            ip("-n", ns, "addr", "add", v6, "dev", "eth0", "nodad")
            ip("-n", ns, "link", "set", "eth0", "up")
        yield pod, client
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def connect(client: str, address: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", CONNECT, address, str(APP_PORT)],
                         capture_output=True, text=True, timeout=20, check=True)
    return out.stdout.strip()


def test_ipv6_to_a_meshed_apps_port_is_reset_and_ipv4_goes_to_the_sidecar(pair) -> None:
    pod, client = pair
    server = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-c", SERVE, str(INBOUND_PORT),
                               str(APP_PORT)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert (connect(client, "192.0.2.1"), connect(client, "fd00:6d::1")) == ("app", "app")  # no mesh yet
        subprocess.run(["ip", "netns", "exec", pod, "nft", "-f", "-"], input=intercept_script([APP_PORT]),
                       text=True, check=True, capture_output=True)
        assert connect(client, "192.0.2.1") == "sidecar"  # IPv4: redirected to the sidecar's inbound port
        assert connect(client, "fd00:6d::1") == "reset"  # IPv6: refused at once, the app never sees it
    finally:
        server.kill()
        server.wait()
