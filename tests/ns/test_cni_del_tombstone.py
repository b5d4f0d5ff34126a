"""DEL through the agent retires a pod's veth pair at once and deletes it just after
(kernel/tombstone.py): what the container and the host see when DEL returns, an ADD
right after it, the reaper's thread, and the start-up sweep of what a dead agent left.

The in-process tests hold a CNI request open on the reaper (`reaper.request()`), so
no deletion can start while they look: the tombstones are there, and must not matter."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cniharness import Agent, Cni, bridge_config, links, reservations
from podnet.endpoints.service import CniService
from podnet.kernel import netns, tombstone
from podnet.kernel.rtnl import RtnlSocket
from podnet.naming import attach_id, host_veth_name, is_tombstone

pytestmark = pytest.mark.root


class InProcess:
    """The agent's CniService with a reaper, called as the agent calls it."""

    def __init__(self, sandbox, host_ns: str, config: dict, tmp_path) -> None:
        self.sandbox, self.config = sandbox, config
        self.reaper = tombstone.Reaper(max_delay=60.0)
        self.service = CniService(default_store=str(tmp_path / "agent.db"), reaper=self.reaper)
        self.host_fd = netns.open_netns(sandbox.path(host_ns))

    def call(self, command: str, ns: str, cid: str, args: str = "", config: dict | None = None) -> dict:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": self.sandbox.path(ns),
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": args}
        container_fd = netns.open_netns(self.sandbox.path(ns))
        out = io.StringIO()
        try:
            code = self.service.run_invocation(env, json.dumps(config or self.config).encode(), out,
                                               self.host_fd, container_fd)
        finally:
            os.close(container_fd)
        assert code == 0, out.getvalue()
        return json.loads(out.getvalue()) if out.getvalue() else {}

    @contextmanager
    def no_reaping(self) -> Iterator[None]:
        """A request in flight: the reaper deletes nothing (before max_delay)."""
        with self.reaper.request():
            yield

    def close(self) -> None:
        self.service.close()
        os.close(self.host_fd)


@pytest.fixture
def inproc(sandbox, host_ns, data_dir, tmp_path):
    config = bridge_config("t-net", data_dir, subnet="10.80.0.0/24")
    config["ipam"]["ranges"].append([{"subnet": "fd80::/64"}])
    served = InProcess(sandbox, host_ns, config, tmp_path)
    yield served
    served.close()


def _ns_state(sandbox, ns: str) -> tuple[list[dict], str]:
    shown = json.loads(sandbox.exec(ns, ["ip", "-j", "addr", "show"]).stdout)
    routes = sandbox.exec(ns, ["ip", "route", "show"]).stdout + sandbox.exec(ns, ["ip", "-6", "route", "show"]).stdout
    return shown, routes


def test_del_frees_the_name_addresses_and_routes_before_the_pair_is_deleted(inproc, sandbox, host_ns, data_dir):
    c1 = sandbox.netns("c1")
    first = inproc.call("ADD", c1, "c1", args="IP=10.80.0.50")
    assert {ip["address"] for ip in first["ips"]} >= {"10.80.0.50/24"}
    host_name = host_veth_name(attach_id("t-net", "c1", "eth0"))
    with inproc.no_reaping():
        inproc.call("DEL", c1, "c1")
        shown, routes = _ns_state(sandbox, c1)
        names = {link["ifname"] for link in shown}
        assert "eth0" not in names
        buried = [link for link in shown if is_tombstone(link["ifname"])]
        assert len(buried) == 1 and not buried[0]["addr_info"]  # the old end: no address at all
        assert "UP" not in buried[0]["flags"]
        assert routes.strip() == ""  # no route of either family is left in the container
        host_links = links(sandbox, host_ns, settle=0)
        assert host_name not in host_links and len([n for n in host_links if is_tombstone(n)]) == 1
        assert inproc.reaper.pending() == 1
        assert reservations(data_dir, "t-net") == []  # the addresses are free too
        # The runtime ADDs again at once: same namespace, ifname and address.
        again = inproc.call("ADD", c1, "c1", args="IP=10.80.0.50")
        assert {ip["address"] for ip in again["ips"]} >= {"10.80.0.50/24"}
        inproc.call("CHECK", c1, "c1", config={**inproc.config, "prevResult": again})
        shown, routes = _ns_state(sandbox, c1)
        eth0 = next(link for link in shown if link["ifname"] == "eth0")
        assert "10.80.0.50" in [a["local"] for a in eth0["addr_info"]] and "default via 10.80.0.1" in routes
        # DEL of the new one while the first pair still waits for the reaper
        inproc.call("DEL", c1, "c1")
        inproc.call("DEL", c1, "c1")  # idempotent
        assert inproc.reaper.pending() == 2
    assert inproc.reaper.settle(30)
    assert links(sandbox, host_ns, settle=0) == []
    assert not [link for link in _ns_state(sandbox, c1)[0] if link["ifname"] != "lo"]


def test_routed_pod_gets_its_address_again_at_once(sandbox, host_ns, data_dir, tmp_path):
    config = {"cniVersion": "1.1.0", "name": "t-routed", "type": "podnet", "mode": "routed",
              "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": "10.81.0.0/24"}]], "dataDir": data_dir}}
    served = InProcess(sandbox, host_ns, config, tmp_path)
    try:
        c1 = sandbox.netns("c1")
        served.call("ADD", c1, "c1", args="IP=10.81.0.7")
        with served.no_reaping():
            served.call("DEL", c1, "c1")
            assert "10.81.0.7" not in sandbox.exec(host_ns, ["ip", "route", "show"]).stdout
            again = served.call("ADD", c1, "c1", args="IP=10.81.0.7")
            served.call("CHECK", c1, "c1", config={**config, "prevResult": again})
            assert "10.81.0.7 dev " + host_veth_name(attach_id("t-routed", "c1", "eth0")) in sandbox.exec(
                host_ns, ["ip", "route", "show"]).stdout
    finally:
        served.close()
    assert len(links(sandbox, host_ns, settle=0)) == 1  # close() deleted the tombstone


def test_gc_and_status_with_tombstones_waiting(inproc, sandbox, host_ns, data_dir):
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    inproc.call("ADD", c1, "c1")
    inproc.call("ADD", c2, "c2")
    with inproc.no_reaping():
        inproc.call("DEL", c1, "c1")
        gc = {**inproc.config, "cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]}
        inproc.call("GC", c2, "", config=gc)
        inproc.call("STATUS", c2, "")
        assert [r.container_id for r in reservations(data_dir, "t-net")] == ["c2", "c2"]  # dual stack: two
        assert host_veth_name(attach_id("t-net", "c2", "eth0")) in links(sandbox, host_ns, settle=0)
    assert inproc.reaper.settle(30)
    assert links(sandbox, host_ns, settle=0) == [host_veth_name(attach_id("t-net", "c2", "eth0"))]


def test_the_reaper_deletes_soon_and_stopping_deletes_the_rest(inproc, sandbox, host_ns):
    namespaces = [sandbox.netns(f"c{i}") for i in range(4)]
    for i, ns in enumerate(namespaces):
        inproc.call("ADD", ns, f"c{i}")
    inproc.call("DEL", namespaces[0], "c0")
    assert inproc.reaper.settle(30)  # no request running: it goes at once
    assert len(links(sandbox, host_ns, settle=0)) == 3
    with inproc.no_reaping():
        for i, ns in enumerate(namespaces[1:], start=1):
            inproc.call("DEL", ns, f"c{i}")
        assert inproc.reaper.pending() == 3
        inproc.service.close()  # the agent stops: nothing is left behind
        assert inproc.reaper.pending() == 0 and links(sandbox, host_ns, settle=0) == []
        for ns in namespaces:
            assert [link["ifname"] for link in _ns_state(sandbox, ns)[0]] == ["lo"]


def test_del_leaves_a_foreign_interface_of_that_name_alone(inproc, sandbox, host_ns):
    """A container whose `eth0` is not the peer of the attachment's host veth (the
    runtime's own): DEL retires the host end only, never the runtime's link."""
    c1 = sandbox.netns("c1")
    inproc.call("ADD", c1, "c1")
    sandbox.exec(c1, ["ip", "link", "set", "eth0", "name", "eth9"])
    sandbox.exec(c1, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "pnt-other"])
    inproc.call("DEL", c1, "c1")
    assert inproc.reaper.settle(30)
    remaining = {link["ifname"] for link in _ns_state(sandbox, c1)[0]}
    assert {"eth0", "pnt-other"} <= remaining and "eth9" not in remaining  # eth9 went with its pair
    assert links(sandbox, host_ns, settle=0) == []


def test_agent_start_sweeps_tombstones_and_nothing_else(sandbox, host_ns, cni_bin, data_dir, socket_path, tmp_path):
    store = str(tmp_path / "agent.db")
    cni = Cni(cni_bin, host_ns, bridge_config("t-net", data_dir, agentSocket=socket_path), sandbox)
    agent = Agent(sandbox, host_ns, socket_path, store).start()
    c1, c2 = sandbox.netns("c1"), sandbox.netns("c2")
    cni.add(c1, "c1")
    cni.add(c2, "c2")
    agent.kill9()
    # What a DEL leaves when its agent dies before the reaper ran: both ends retired.
    host_fd, container_fd = netns.open_netns(sandbox.path(host_ns)), netns.open_netns(sandbox.path(c1))
    try:
        buried = tombstone.bury(host_fd, container_fd, host_veth_name(attach_id("t-net", "c1", "eth0")), "eth0")
    finally:
        os.close(container_fd)
    assert buried is not None
    # Look-alikes that are not podnet's tombstones: right name without the alias, the
    # alias on another name, the right name and alias on a link that is no veth.
    sandbox.exec(host_ns, ["ip", "link", "add", "pnz0123456789ab", "type", "veth", "peer", "name", "pnt-user1"])
    sandbox.exec(host_ns, ["ip", "link", "add", "pnt-user2", "type", "veth", "peer", "name", "pnt-user3"])
    sandbox.exec(host_ns, ["ip", "link", "set", "pnt-user2", "alias", tombstone.ALIAS])
    sandbox.exec(host_ns, ["ip", "link", "add", "pnzabcdef012345", "type", "bridge"])
    sandbox.exec(host_ns, ["ip", "link", "set", "pnzabcdef012345", "alias", tombstone.ALIAS])
    try:
        with RtnlSocket(host_fd) as sock:
            assert sock.link(buried).alias == tombstone.ALIAS
        agent = Agent(sandbox, host_ns, socket_path, store).start()
        log = agent.stop()
    finally:
        os.close(host_fd)
    assert buried in log
    kept = set(links(sandbox, host_ns, settle=0))
    assert buried not in kept
    assert {"pnz0123456789ab", "pnt-user1", "pnt-user2", "pnt-user3"} <= kept
    assert "pnzabcdef012345" in sandbox.exec(host_ns, ["ip", "link", "show", "type", "bridge"]).stdout
    assert [link["ifname"] for link in _ns_state(sandbox, c1)[0]] == ["lo"]  # its pair went with it
    assert host_veth_name(attach_id("t-net", "c2", "eth0")) in kept  # c2's pod untouched


def test_del_through_the_agent_twice_and_then_nothing_is_left(sandbox, host_ns, cni_bin, data_dir, socket_path,
                                                              tmp_path):
    cni = Cni(cni_bin, host_ns, bridge_config("t-net", data_dir, agentSocket=socket_path), sandbox)
    agent = Agent(sandbox, host_ns, socket_path, str(tmp_path / "agent.db")).start()
    c1 = sandbox.netns("c1")
    cni.add(c1, "c1", args="IP=10.80.0.9")
    cni.delete(c1, "c1")
    assert "eth0" not in {link["ifname"] for link in _ns_state(sandbox, c1)[0]}
    cni.add(c1, "c1", args="IP=10.80.0.9")  # at once, same address
    cni.delete(c1, "c1")
    cni.delete(c1, "c1")
    assert links(sandbox, host_ns) == [] and reservations(data_dir, "t-net") == []
    assert [link["ifname"] for link in _ns_state(sandbox, c1)[0]] == ["lo"]
    assert "ResyncReport(rolled_back=[], released=[], repaired=[], orphan_links=[], orphan_rules=[])" in agent.stop()
