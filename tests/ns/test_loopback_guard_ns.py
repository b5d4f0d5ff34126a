"""No container reaches a service bound to its host's 127.0.0.1 (the CVE-2020-8558
class), tried as an attacker would, through the real CNI path.

A published port without a host IP sets route_localnet=1 on the bridge, so the kernel
no longer drops packets for 127.0.0.0/8 arriving there as martians. A container with
CAP_NET_ADMIN routes 127.0.0.1 via its gateway (loopback down and without 127.0.0.1, a
/32 via the gateway, route_localnet on its own eth0 so the host's answers from
127.0.0.1 are taken) and
sends a UDP datagram and opens a TCP connection to 127.0.0.1:PORT. Listeners on the
host's 127.0.0.1 must see nothing, the guard's counter must show the drops, and the
published port on the host's own 127.0.0.1 keeps working (those packets are DNATed in
output and their answers carry the DNAT status).

The same for a cluster node: an agent with --node in a node namespace, one pod
publishing a hostPort (route_localnet on pncl0), another pod attacking the node.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cniharness import REFERENCE_DIR, start_echo, tcp_probe
from podnet.lab.sandbox import Sandbox, wait_for_path
from podnet.runtime.libcni import Conflist

pytestmark = pytest.mark.root

SECRET_PORT = 9977  # the host's loopback-only service
PUBLISHED = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}

LISTENER = (
    "import select,socket,sys\n"
    "port=int(sys.argv[1])\n"
    "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(('127.0.0.1',port))\n"
    "t=socket.socket(); t.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "t.bind(('127.0.0.1',port)); t.listen(8); print('ready',flush=True)\n"
    "while True:\n"
    "    r,_,_=select.select([u,t],[],[])\n"
    "    if u in r:\n"
    "        d,a=u.recvfrom(200); print('udp',d.decode(errors='replace'),a[0],flush=True)\n"
    "    if t in r:\n"
    "        c,a=t.accept(); print('tcp-accept',a[0],flush=True); c.settimeout(2)\n"
    "        try:\n"
    "            print('tcp',c.recv(200).decode(errors='replace'),a[0],flush=True)\n"
    "        except OSError:\n"
    "            pass\n"
    "        c.close()\n"
)

ATTACK = (
    "import socket,sys\n"
    "port=int(sys.argv[1])\n"
    "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    "for _ in range(3):\n"
    "    u.sendto(b'attack-udp',('127.0.0.1',port))\n"
    "try:\n"
    "    s=socket.create_connection(('127.0.0.1',port),timeout=2); s.sendall(b'attack-tcp'); s.close()\n"
    "    print('tcp connected')\n"
    "except OSError as exc:\n"
    "    print('tcp', type(exc).__name__)\n"
)


def listen_on_loopback(sandbox: Sandbox, ns: str) -> subprocess.Popen:
    proc = sandbox.spawn(ns, [sys.executable, "-c", LISTENER, str(SECRET_PORT)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    assert heard(proc, 10.0, lines=1) == ["ready"]
    return proc


def heard(proc: subprocess.Popen, wait: float, lines: int = 0) -> list[str]:
    """The lines the listener printed within `wait` seconds (or once it printed `lines`
    lines); read straight from the pipe, so nothing hides in a buffer."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        if lines and data.count(b"\n") >= lines:
            break
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").splitlines()


def attack(sandbox: Sandbox, ns: str, gateway: str) -> str:
    """Route 127.0.0.1 via the gateway, as a container with CAP_NET_ADMIN can, and try."""
    for argv in (["ip", "link", "set", "lo", "down"], ["ip", "-4", "addr", "flush", "dev", "lo"],
                 ["ip", "route", "add", "127.0.0.1/32", "via", gateway, "dev", "eth0"],
                 ["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1", "net.ipv4.conf.all.rp_filter=0",
                  "net.ipv4.conf.eth0.rp_filter=0"]):
        sandbox.exec(ns, argv)
    assert f"via {gateway}" in sandbox.exec(ns, ["ip", "route", "get", "127.0.0.1"]).stdout
    return sandbox.exec(ns, [sys.executable, "-c", ATTACK, str(SECRET_PORT)]).stdout.strip()


def guard_drops(sandbox: Sandbox, ns: str) -> int:
    """Packets counted by the loopback guard of the `ip podnet` table in `ns`."""
    out = sandbox.exec(ns, ["nft", "list", "chain", "ip", "podnet", "input"], check=False).stdout
    found = re.search(r"127\.0\.0\.0/8 .*counter packets (\d+)", out)
    return int(found.group(1)) if found else 0


def test_container_cannot_reach_the_hosts_loopback(cni, sandbox, host_ns):
    web, attacker = sandbox.netns("web"), sandbox.netns("evil")
    cni.add(web, "web", config={**cni.config, "runtimeConfig": PUBLISHED})
    cni.add(attacker, "evil")
    rl = sandbox.exec(host_ns, ["cat", "/proc/sys/net/ipv4/conf/pntbr0/route_localnet"]).stdout.strip()
    assert rl == "1"  # the precondition of the attack: the bridge takes 127.0.0.0/8
    listener = listen_on_loopback(sandbox, host_ns)
    # the listener is reachable where it should be: from the host itself
    sandbox.exec(host_ns, [sys.executable, "-c", ATTACK, str(SECRET_PORT)])
    own = heard(listener, 5.0, lines=5)
    assert sorted(set(own)) == ["tcp attack-tcp 127.0.0.1", "tcp-accept 127.0.0.1", "udp attack-udp 127.0.0.1"]
    outcome = attack(sandbox, attacker, "10.80.0.1")
    got = heard(listener, 1.5)
    assert got == [], f"a container reached the host's 127.0.0.1 ({outcome}): {got}"
    assert outcome != "tcp connected"
    assert guard_drops(sandbox, host_ns) >= 4  # 3 datagrams and at least one SYN
    # the published port on the host's own loopback keeps working
    start_echo(sandbox, web, 80, "web")
    assert tcp_probe(sandbox, host_ns, "127.0.0.1", 8080) == "hello from web"
    assert tcp_probe(sandbox, host_ns, "10.80.0.1", 8080) == "hello from web"


def test_pod_cannot_reach_its_nodes_loopback(sandbox, cni_bin, tmp_path):
    node = sandbox.netns("n1")
    fab = sandbox.netns("fab")
    peer = f"pnf{sandbox.token}1"
    sandbox.exec(node, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", fab])
    sandbox.exec(node, ["ip", "addr", "add", "172.31.0.1/24", "dev", "eth0"])
    sandbox.exec(node, ["ip", "link", "set", "eth0", "up"])
    sandbox.exec(fab, ["ip", "link", "set", peer, "up"])
    state = tmp_path / "n1"
    sock = f"/run/podnet/t-{secrets.token_hex(3)}-n1.sock"
    sandbox.on_close(Path(sock).unlink)
    argv = ["nsenter", f"--net={Sandbox.path(node)}", sys.executable, "-m", "podnet.cli", "agent",
            "--socket", sock, "--store", str(tmp_path / "cluster.db"), "--state-dir", str(state),
            "--node", "n1", "--fabric", "host-gw", "--init"]
    proc = sandbox.spawn(None, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    conflist_path = state / "net.d" / "cluster.conflist"
    wait_for_path(str(conflist_path), timeout=20, proc=proc)
    conflist = Conflist(json.loads(conflist_path.read_text()), [cni_bin, REFERENCE_DIR], netns_exec=node)
    web, attacker = sandbox.netns("pweb"), sandbox.netns("pevil")
    conflist.add("pod-web", Sandbox.path(web), runtime_config=PUBLISHED)
    result = conflist.add("pod-evil", Sandbox.path(attacker))
    gateway = result["ips"][0]["gateway"]
    rl = sandbox.exec(node, ["cat", "/proc/sys/net/ipv4/conf/pncl0/route_localnet"]).stdout.strip()
    assert rl == "1"
    listener = listen_on_loopback(sandbox, node)
    outcome = attack(sandbox, attacker, gateway)
    got = heard(listener, 1.5)
    assert got == [], f"a pod reached its node's 127.0.0.1 ({outcome}): {got}"
    assert guard_drops(sandbox, node) >= 4
    start_echo(sandbox, web, 80, "web")
    assert tcp_probe(sandbox, node, "127.0.0.1", 8080) == "hello from web"
