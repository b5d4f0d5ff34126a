"""Scaffolding: prove the podman harness with Debian's reference CNI plugins only.

bridge + host-local + portmap from /usr/lib/cni (cniVersion 1.0.0). podman runs inside a
test namespace, so the bridge, the veth host ends and portmap's iptables rules all live
there. The podnet version of this test uses the same fixtures with podnet's bin dir first
in ``cni_plugin_dirs``.
"""

from __future__ import annotations

import ipaddress
import shutil

import pytest
from podman_harness import INDEX_HTML, http_get, nsexec, reference_bridge_conflist

pytestmark = [pytest.mark.root, pytest.mark.podman]

NET = "pnref"
BRIDGE = "pnrefbr0"
SUBNET = "10.99.0.0/24"
HOST_PORT = 18080


def test_reference_bridge_portmap_roundtrip(podman, e2e_netns, tmp_path):
    if shutil.which("iptables") is None:
        pytest.skip("reference portmap needs iptables")
    data_dir = tmp_path / "host-local"
    podman.write_conflist(
        reference_bridge_conflist(NET, bridge=BRIDGE, subnet=SUBNET, data_dir=data_dir)
    )

    cid = podman.run(
        [
            "run", "-d", "--name", "pnref-web", "--network", NET,
            "-p", f"127.0.0.1:{HOST_PORT}:80",
            "localhost/pn-busybox:latest", "httpd", "-f", "-p", "80", "-h", "/www",
        ]
    ).stdout.strip()  # fmt: skip
    assert cid in podman.containers

    ip = podman.ip_of(cid, NET)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET)
    lease = data_dir / NET / ip
    assert lease.read_text().split()[0] == cid

    # The bridge lives in the test namespace only.
    assert nsexec(e2e_netns, ["ip", "link", "show", BRIDGE]).returncode == 0

    # Through the port mapping on 127.0.0.1, and straight to the container address.
    assert http_get(e2e_netns, f"http://127.0.0.1:{HOST_PORT}/") == INDEX_HTML
    assert http_get(e2e_netns, f"http://{ip}:80/") == INDEX_HTML

    podman.run(["rm", "-f", "-t", "0", cid])
    assert not lease.exists()
    assert podman.run(["ps", "-a", "-q"]).stdout.strip() == ""
    # DEL removed portmap's DNAT rules for this container.
    nat = nsexec(e2e_netns, ["iptables-save", "-t", "nat"]).stdout
    assert f"dport {HOST_PORT}" not in nat and f"--dport {HOST_PORT}" not in nat


def test_exec_and_foreground_run_are_recorded(podman, e2e_netns, tmp_path):
    podman.write_conflist(
        reference_bridge_conflist(
            NET, bridge=BRIDGE, subnet=SUBNET, data_dir=tmp_path / "hl", portmap=False
        )
    )
    out = podman.run(
        [
            "run",
            "--network",
            NET,
            "localhost/pn-busybox:latest",
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ]
    )
    assert "10.99.0." in out.stdout
    # A foreground run (no -d) is still recorded through --cidfile, so cleanup removes it.
    assert len(podman.containers) == 1
    cid = podman.run(
        ["run", "-d", "--network", NET, "localhost/pn-busybox:latest", "sleep", "300"]
    ).stdout.strip()
    assert podman.exec(cid, "cat", "/proc/sys/net/ipv4/ip_forward").returncode == 0
    assert len(podman.containers) == 2


def test_pod_with_port_mapping(podman, e2e_netns, tmp_path):
    """Pods work without catatonit: the harness's image serves as the infra image."""
    podman.write_conflist(
        reference_bridge_conflist(NET, bridge=BRIDGE, subnet=SUBNET, data_dir=tmp_path / "hl")
    )
    podman.run(
        [
            "pod",
            "create",
            "--name",
            "pnref-pod",
            "--network",
            NET,
            "-p",
            f"127.0.0.1:{HOST_PORT + 1}:80",
        ]
    )
    podman.run(
        [
            "run",
            "-d",
            "--pod",
            "pnref-pod",
            "localhost/pn-busybox:latest",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ]
    )
    assert len(podman.pods) == 1 and len(podman.containers) == 1
    assert http_get(e2e_netns, f"http://127.0.0.1:{HOST_PORT + 1}/") == INDEX_HTML
