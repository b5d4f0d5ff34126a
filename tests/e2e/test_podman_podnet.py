"""podnet as podman's CNI plugin, end to end.

podman 4.3 (Debian, CNI backend, libcni speaking up to cniVersion 1.0.0) runs inside a
test namespace (see podman_harness.py) with podnet's bin dir first in
``cni_plugin_dirs``. The network ``pnpod`` is one ``podnet`` plugin (bridge ``pnpod0``,
``podnet-ipam`` on 10.98.0.0/24 with a per-test ``dataDir``, port mappings done by podnet
itself in nftables). Everything podnet builds (bridge, veths, ``ip podnet`` NAT table,
route_localnet) lands in that namespace.

Served two ways, as a runtime meets podnet in the field:

* ``agent``: ``podnet agent`` running inside the same test namespace, reached through a
  per-test socket (``agentSocket``); the proof that it served the requests is that it
  holds the network's store open afterwards (its warm store handle);
* ``in-process``: nothing listens on ``agentSocket``, so the plugin falls back to doing
  the work itself.

podman 4.3 never calls CHECK, and sends prevResult with DEL (on ``podman stop``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from podman_harness import INDEX_HTML, Podman, http_get, nsexec

from cniharness import Agent
from podnet.install.cni import default_conflist
from podnet.naming import attach_id, host_veth_name

pytestmark = [pytest.mark.root, pytest.mark.podman]

NET = "pnpod"
BRIDGE = "pnpod0"
SUBNET = ipaddress.ip_network("10.98.0.0/24")
GATEWAY = "10.98.0.1"
IMAGE = "localhost/pn-busybox:latest"
LOCAL_PORT = 18180  # published on 127.0.0.1 only
ANY_PORT = 18181  # published on every address of the namespace
HTTPD = ["httpd", "-f", "-p", "80", "-h", "/www"]


def podnet_conflist(socket_path: str, data_dir: Path) -> dict:
    return {
        "cniVersion": "1.0.0",  # the newest podman 4.3's libcni speaks
        "name": NET,
        "plugins": [
            {
                "type": "podnet",
                "bridge": BRIDGE,
                "isDefaultGateway": True,
                "ipMasq": True,
                "capabilities": {"portMappings": True},
                "agentSocket": socket_path,
                "ipam": {
                    "type": "podnet-ipam",
                    "ranges": [[{"subnet": str(SUBNET)}]],
                    "dataDir": str(data_dir),
                },
            }
        ],
    }


@dataclass
class PodnetNet:
    """The pnpod network of one test: podman, where its state lives, and the agent."""

    podman: Podman
    ns: str
    data_dir: Path
    agent: Agent | None

    # -- podman
    def run_httpd(self, *extra: str, name: str | None = None) -> str:
        args = ["run", "-d", "--network", NET, *extra]
        if name:
            args += ["--name", name]
        return self.podman.run([*args, IMAGE, *HTTPD]).stdout.strip()

    def ip_of(self, cid: str) -> str:
        return self.podman.ip_of(cid, NET)

    def remove(self, cid: str) -> None:
        # busybox httpd as PID 1 ignores SIGTERM: do not wait the default 10 s for it.
        self.podman.run(["stop", "-t", "1", cid])
        self.podman.run(["rm", cid])
        self.podman.containers.remove(cid)

    # -- state
    def reservations(self) -> list:
        from podnet.ipam.service import IpamService
        from podnet.store import open_store

        store = open_store(str(self.data_dir / "podnet.db"))
        try:
            return IpamService(store).reservations(NET)
        finally:
            store.close()

    def endpoints(self) -> list[str]:
        from podnet.store import open_store

        store = open_store(str(self.data_dir / "podnet.db"))
        try:
            return [e.key for e in store.list(f"endpoints/{NET}/")]
        finally:
            store.close()

    def veths(self) -> list[str]:
        out = nsexec(self.ns, ["ip", "-j", "link", "show", "type", "veth"]).stdout
        return [link["ifname"] for link in json.loads(out or "[]")]

    def ruleset(self) -> str:
        return nsexec(self.ns, ["nft", "list", "ruleset"]).stdout

    def assert_all_freed(self) -> None:
        assert self.reservations() == []
        assert self.endpoints() == []
        assert [v for v in self.veths() if v.startswith("pn")] == []
        assert "podnet:" not in self.ruleset()

    def assert_agent_served(self) -> None:
        """The agent is alive and holds this network's store open: it did the work."""
        if self.agent is None:
            return
        assert self.agent.proc is not None and self.agent.proc.poll() is None
        db = str(self.data_dir / "podnet.db")
        fd_dir = Path(f"/proc/{self.agent.proc.pid}/fd")
        targets = set()
        for fd in fd_dir.iterdir():
            try:
                targets.add(os.readlink(fd))
            except OSError:
                continue
        assert db in targets, f"the agent never opened {db}: the plugin did not use it"


@pytest.fixture(params=["agent", "in-process"])
def pnpod(request, e2e_netns, sandbox, podman_factory, cni_bin, socket_path, tmp_path) -> PodnetNet:
    """The pnpod network in e2e_netns. Fixture order matters for teardown: podman's
    containers are removed first (CNI DEL, agent still up), then the agent is stopped
    (sandbox), then the namespace is deleted."""
    data_dir = tmp_path / "ipam"
    data_dir.mkdir()
    agent = None
    if request.param == "agent":
        agent = Agent(sandbox, e2e_netns, socket_path, str(tmp_path / "agent.db")).start()
    else:
        assert not os.path.exists(socket_path)
    pm = podman_factory(cni_plugin_dirs=(cni_bin, "/usr/lib/cni"))
    pm.write_conflist(podnet_conflist(socket_path, data_dir))
    return PodnetNet(pm, e2e_netns, data_dir, agent)


def test_run_publish_stop_rm(pnpod: PodnetNet):
    t0 = time.monotonic()
    cid = pnpod.run_httpd("-p", f"127.0.0.1:{LOCAL_PORT}:80", "-p", f"{ANY_PORT}:80")
    t_run = time.monotonic() - t0

    info = pnpod.podman.inspect(cid)["NetworkSettings"]["Networks"][NET]
    ip = info["IPAddress"]
    assert ipaddress.ip_address(ip) in SUBNET
    assert info["Gateway"] == GATEWAY
    assert info["IPPrefixLen"] == SUBNET.prefixlen

    # podnet-ipam reserved exactly that address for this container, and ADD completed.
    [res] = pnpod.reservations()
    assert (res.address, res.container_id, res.ifname, res.state) == (ip, cid, "eth0", "ready")
    assert pnpod.endpoints() == [f"endpoints/{NET}/{cid}/eth0"]
    pnpod.assert_agent_served()

    # The kernel objects are podnet's, in the test namespace: bridge, host veth, rules.
    assert nsexec(pnpod.ns, ["ip", "link", "show", BRIDGE]).returncode == 0
    veth = host_veth_name(attach_id(NET, cid, "eth0"))
    assert pnpod.veths() == [veth]
    rules = pnpod.ruleset()
    assert f"dport {LOCAL_PORT} dnat" in rules and f"dport {ANY_PORT} dnat" in rules
    # Inside the container: the address and the default route via the bridge.
    addr = pnpod.podman.exec(cid, "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"{ip}/24" in addr
    route = pnpod.podman.exec(cid, "ip", "route").stdout
    assert f"default via {GATEWAY}" in route

    # Published ports, fetched from the namespace podman runs in.
    assert http_get(pnpod.ns, f"http://127.0.0.1:{LOCAL_PORT}/") == INDEX_HTML
    assert http_get(pnpod.ns, f"http://127.0.0.1:{ANY_PORT}/") == INDEX_HTML
    assert http_get(pnpod.ns, f"http://{GATEWAY}:{ANY_PORT}/") == INDEX_HTML
    assert http_get(pnpod.ns, f"http://{ip}:80/") == INDEX_HTML
    # hostIP is honoured: the 127.0.0.1-only mapping does not answer on the gateway.
    cp = nsexec(
        pnpod.ns, ["timeout", "3", "/bin/busybox", "wget", "-q", "-O-",
                   f"http://{GATEWAY}:{LOCAL_PORT}/"], check=False,
    )  # fmt: skip
    assert cp.returncode != 0 and INDEX_HTML not in cp.stdout

    t0 = time.monotonic()
    pnpod.podman.run(["stop", "-t", "1", cid])
    t_stop = time.monotonic() - t0
    # podman tears the network down when the container stops (CNI DEL with prevResult).
    pnpod.assert_all_freed()
    pnpod.podman.run(["rm", cid])
    pnpod.podman.containers.remove(cid)
    pnpod.assert_all_freed()
    assert pnpod.podman.run(["ps", "-a", "-q"]).stdout.strip() == ""
    pnpod.assert_agent_served()
    print(f"\n[{NET}] podman run -d: {t_run:.2f}s, podman stop: {t_stop:.2f}s")


def test_two_containers_reach_each_other(pnpod: PodnetNet):
    a = pnpod.run_httpd("-p", f"{ANY_PORT}:80")
    b = pnpod.run_httpd()
    ip_a, ip_b = pnpod.ip_of(a), pnpod.ip_of(b)
    assert ip_a != ip_b and {ipaddress.ip_address(ip_a), ipaddress.ip_address(ip_b)} <= set(
        SUBNET.hosts()
    )
    assert sorted(r.address for r in pnpod.reservations()) == sorted([ip_a, ip_b])

    def fetch(cid: str, url: str) -> str:
        return pnpod.podman.exec(cid, "timeout", "5", "wget", "-q", "-O-", url).stdout

    assert fetch(a, f"http://{ip_b}:80/") == INDEX_HTML
    assert fetch(b, f"http://{ip_a}:80/") == INDEX_HTML
    # b reaches a through a's published port on the bridge address (DNAT + masquerade).
    assert fetch(b, f"http://{GATEWAY}:{ANY_PORT}/") == INDEX_HTML
    pnpod.assert_agent_served()

    pnpod.remove(a)
    assert [r.address for r in pnpod.reservations()] == [ip_b]
    assert len(pnpod.veths()) == 1
    pnpod.remove(b)
    pnpod.assert_all_freed()


def test_network_ls_and_static_ip(pnpod: PodnetNet):
    """podman passes one static address as CNI_ARGS IP=... (runtimeConfig.ips only for
    several); the conflist as written declares no "ips" capability."""
    names = pnpod.podman.run(["network", "ls", "--format", "{{.Name}}"]).stdout.split()
    assert NET in names
    driver = json.loads(pnpod.podman.run(["network", "inspect", NET]).stdout)[0]["driver"]
    assert driver == "podnet"
    static = "10.98.0.50"
    cid = pnpod.run_httpd("--ip", static)
    assert pnpod.ip_of(cid) == static
    [res] = pnpod.reservations()
    assert (res.address, res.container_id, res.state) == (static, cid, "ready")
    assert http_get(pnpod.ns, f"http://{static}:80/") == INDEX_HTML
    pnpod.remove(cid)
    pnpod.assert_all_freed()


def test_static_ip_with_published_port(pnpod: PodnetNet, socket_path):
    """podman 4.3 gotcha: for a static IP it injects `"capabilities": {"ips": true}` into
    the first plugin when that plugin does not declare "ips" -- replacing the whole
    capabilities object, so podnet (first and only plugin) would lose portMappings and
    `-p` would silently publish nothing. The conflist `podnet install-cni` writes
    declares "ips" too; here it is, pointed at this test's bridge, subnet and state."""
    conf = default_conflist(NET, str(SUBNET), BRIDGE)
    assert conf["plugins"][0]["capabilities"] == {"portMappings": True, "ips": True}
    conf["plugins"][0]["agentSocket"] = socket_path
    conf["plugins"][0]["ipam"]["dataDir"] = str(pnpod.data_dir)
    pnpod.podman.write_conflist(conf)
    static = "10.98.0.60"
    cid = pnpod.run_httpd("--ip", static, "-p", f"{ANY_PORT}:80")
    assert pnpod.ip_of(cid) == static
    assert [r.address for r in pnpod.reservations()] == [static]
    assert f"dport {ANY_PORT} dnat to {static}:80" in pnpod.ruleset()
    assert http_get(pnpod.ns, f"http://127.0.0.1:{ANY_PORT}/") == INDEX_HTML
    assert http_get(pnpod.ns, f"http://{GATEWAY}:{ANY_PORT}/") == INDEX_HTML
    pnpod.assert_agent_served()
    pnpod.remove(cid)
    pnpod.assert_all_freed()
