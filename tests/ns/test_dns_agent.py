"""Name resolution end to end: a real agent in a host namespace the test made, network
and container records written into its store (as `podnet network` / `podnet container`
do), containers attached through the real CNI path, and DNS queries sent from inside
the container namespaces to their gateway, port 53.

Everything runs in namespaces this test creates; no query ever leaves them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from cniharness import REFERENCE_DIR, Agent
from podnet import keys
from podnet.lab.sandbox import Sandbox
from podnet.model.container import ContainerRecord
from podnet.model.network import NetworkRecord, Subnet
from podnet.procs import process_owner
from podnet.rpc import client
from podnet.runtime.libcni import Conflist
from podnet.store import Store, open_store

pytestmark = pytest.mark.root

# One query, retried until it gives `want` (an rcode, or NOERROR with answers) or
# `patience` seconds passed; prints what it got and how long it took.
PROBE = r"""
import json, sys, time
from dnslib import DNSRecord, RCODE
server, name, qtype, want, patience, transport = sys.argv[1:7]
start = time.monotonic()
while True:
    try:
        packet = DNSRecord.question(name, qtype).send(server, 53, tcp=transport == "tcp", timeout=0.5)
        reply = DNSRecord.parse(packet)
        out = {"rcode": RCODE[reply.header.rcode], "answers": [str(rr.rdata) for rr in reply.rr]}
    except OSError as exc:
        out = {"rcode": "no answer", "answers": [], "error": str(exc)}
    out["elapsed"] = round(time.monotonic() - start, 3)
    got = out["rcode"] == want and (want != "NOERROR" or out["answers"])
    if got or time.monotonic() - start > float(patience):
        break
    time.sleep(0.05)
print(json.dumps(out))
"""


# What the CLI does to the store: open, write, close (one process per command).
WRITER = r"""
import json, sys
from podnet.store import open_store
store = open_store(sys.argv[1])
for key, value in json.loads(sys.argv[2]).items():
    if value is None:
        store.delete(key)
    else:
        store.put_json(key, value)
store.close()
"""


class DnsLab:
    """The agent's store, networks (record + conflist) and attached containers."""

    def __init__(self, sandbox: Sandbox, host_ns: str, cni_bin: str, socket_path: str, tmp: Path) -> None:
        self.sandbox, self.host_ns, self.cni_bin, self.socket, self.tmp = sandbox, host_ns, cni_bin, socket_path, tmp
        state = tmp / "state"
        state.mkdir()
        self.store_path = str(state / "store.db")
        self.agent = Agent(sandbox, host_ns, socket_path, self.store_path,
                           env={"PODNET_STATE_DIR": str(state)}).start()
        self.store: Store | None = open_store(self.store_path)
        self.conflists: dict[str, Conflist] = {}
        self.namespaces: dict[str, str] = {}

    def write(self, records: dict[str, dict | None]) -> None:
        """Put (or delete, for None) records, key -> a record's `to_json()`: through
        the test's own open store, or, once `by_other_processes()` was called, each
        from a process that opens the store, writes and closes it, as the CLI does."""
        if self.store is None:
            subprocess.run([sys.executable, "-c", WRITER, self.store_path, json.dumps(records)], check=True)
            return
        for key, value in records.items():
            if value is None:
                self.store.delete(key)
            else:
                self.store.put_json(key, value)

    def by_other_processes(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def network(self, name: str, bridge: str, third: int) -> None:
        subnet, gateway = f"10.87.{third}.0/24", f"10.87.{third}.1"
        record = NetworkRecord(name, f"{third:064x}", "bridge", (Subnet(ip_network(subnet), ip_address(gateway)),),
                               bridge=bridge)
        self.write({record.key: record.to_json()})
        data_dir = self.tmp / f"ipam-{name}"
        data_dir.mkdir()
        conflist = {"cniVersion": "1.0.0", "name": name, "plugins": [{
            "type": "podnet", "bridge": bridge, "isDefaultGateway": True, "agentSocket": self.socket,
            "capabilities": {"portMappings": True},
            "ipam": {"type": "podnet-ipam", "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                     "dataDir": str(data_dir)},
        }]}
        self.conflists[name] = Conflist(conflist, [self.cni_bin, REFERENCE_DIR], netns_exec=self.host_ns)

    def container(self, name: str, network: str, aliases: list[str]) -> str:
        """Attach a new namespace through the conflist; record it as running."""
        ns = self.sandbox.netns(f"c{name}")
        self.namespaces[name] = ns
        result = self.conflists[network].add(f"cid-{name}", Sandbox.path(ns))
        ips = [ip["address"] for ip in result["ips"]]
        self.put_container(name, network, ips, aliases, "running")
        return ips[0].split("/")[0]

    def put_container(self, name: str, network: str, ips: list[str], aliases: list[str], state: str) -> None:
        # a live owner, so the agent's container sweep leaves the record alone
        record = ContainerRecord(name, f"{name:x<64}"[:64], "bridge", state=state, network=network, ips=tuple(ips),
                                 aliases=tuple(aliases), hostname=name, process=process_owner())
        self.write({record.key: record.to_json()})

    def ask(self, container: str, server: str, name: str, want: str = "NOERROR", *, qtype: str = "A",
            patience: float = 3.0, transport: str = "udp") -> dict:
        proc = self.sandbox.exec(
            self.namespaces[container],
            [sys.executable, "-c", PROBE, server, name, qtype, want, str(patience), transport],
        )
        return json.loads(proc.stdout)

    def status(self) -> list[dict]:
        return client.call(self.socket, "dns.status")  # type: ignore[return-value]

    def close(self) -> None:
        self.by_other_processes()


@pytest.fixture
def lab(sandbox, host_ns, cni_bin, socket_path, tmp_path):
    lab = DnsLab(sandbox, host_ns, cni_bin, socket_path, tmp_path)
    yield lab
    lab.close()


def test_containers_resolve_each_other_by_name_and_alias(lab: DnsLab) -> None:
    lab.network("dnsnet", "pntdns0", 0)
    ip_a = lab.container("a", "dnsnet", ["alpha"])
    ip_b = lab.container("b", "dnsnet", ["bravo", "Backend"])

    started = time.monotonic()
    for name in ("b", "bravo", "BACKEND", "b.dnsnet"):
        got = lab.ask("a", "10.87.0.1", name)
        assert got["answers"] == [ip_b], (name, got, lab.status())
    assert time.monotonic() - started < 6
    assert got["elapsed"] < 0.5  # once up, an answer is immediate
    assert lab.ask("b", "10.87.0.1", "alpha")["answers"] == [ip_a]
    assert lab.ask("a", "10.87.0.1", "bravo", transport="tcp")["answers"] == [ip_b]
    assert lab.ask("a", "10.87.0.1", "nobody", "NXDOMAIN")["rcode"] == "NXDOMAIN"
    # not ours and no upstream configured: refused, nothing is sent anywhere
    assert lab.ask("a", "10.87.0.1", "example.com", "REFUSED")["rcode"] == "REFUSED"

    # a container that appears later resolves within a second or two
    lab.put_container("late", "dnsnet", ["10.87.0.200/24"], [], "running")
    got = lab.ask("a", "10.87.0.1", "late")
    assert got["answers"] == ["10.87.0.200"] and got["elapsed"] < 2, got

    [entry] = [s for s in lab.status() if s["network"] == "dnsnet"]
    assert entry["address"] == "10.87.0.1" and entry["port"] == 53 and entry["serving"]
    assert {"a", "alpha", "b", "bravo", "backend", "b.dnsnet", "late"} <= set(entry["names"])


def test_the_systems_resolver_finds_names_through_the_gateway(lab: DnsLab) -> None:
    """glibc's stub resolver, with a resolv.conf naming the gateway (bind-mounted in a
    private mount namespace: nothing on the host changes)."""
    lab.network("dnsnet", "pntdns0", 0)
    lab.container("a", "dnsnet", [])
    ip_b = lab.container("b", "dnsnet", ["web"])
    assert lab.ask("a", "10.87.0.1", "web")["answers"] == [ip_b]
    resolv = lab.tmp / "resolv.conf"
    resolv.write_text("nameserver 10.87.0.1\noptions timeout:1 attempts:1\n")
    script = f"mount --bind {resolv} /etc/resolv.conf && getent ahostsv4 web && getent hosts b.dnsnet"
    proc = lab.sandbox.exec(lab.namespaces["a"], ["unshare", "--mount", "sh", "-c", script], check=False)
    assert proc.returncode == 0, proc.stderr
    assert ip_b in proc.stdout.split("\n")[0]
    assert f"{ip_b}" in proc.stdout.splitlines()[-1] and "b.dnsnet" in proc.stdout


def test_networks_are_isolated_and_names_follow_the_store(lab: DnsLab) -> None:
    lab.network("dnsnet", "pntdns0", 0)
    lab.network("othernet", "pntdns1", 1)
    ip_a = lab.container("a", "dnsnet", ["alpha"])
    ip_b = lab.container("b", "dnsnet", [])
    ip_c = lab.container("c", "othernet", ["charlie"])

    assert lab.ask("a", "10.87.0.1", "b")["answers"] == [ip_b]
    assert lab.ask("c", "10.87.1.1", "charlie")["answers"] == [ip_c]
    # othernet's server does not know dnsnet's containers, by any name
    for name in ("a", "alpha", "b"):
        assert lab.ask("c", "10.87.1.1", name, "NXDOMAIN")["rcode"] == "NXDOMAIN", name
    assert lab.ask("c", "10.87.1.1", "a.dnsnet", "REFUSED")["rcode"] == "REFUSED"
    # and dnsnet's server, reachable through the host, refuses othernet's clients
    assert lab.ask("c", "10.87.0.1", "a", "REFUSED")["rcode"] == "REFUSED"
    assert lab.ask("a", "10.87.0.1", "c", "NXDOMAIN")["rcode"] == "NXDOMAIN"

    # b exits: its name stops resolving
    lab.put_container("b", "dnsnet", [f"{ip_b}/24"], [], "exited")
    got = lab.ask("a", "10.87.0.1", "b", "NXDOMAIN")
    assert got["rcode"] == "NXDOMAIN" and got["elapsed"] < 2, got
    assert lab.ask("b", "10.87.0.1", "alpha")["answers"] == [ip_a]  # a still resolves

    # the network record goes: its server stops, the other network's stays
    lab.write({keys.network("dnsnet"): None})
    deadline = time.monotonic() + 3
    while any(s["network"] == "dnsnet" for s in lab.status()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [s["network"] for s in lab.status()] == ["othernet"]
    assert lab.ask("a", "10.87.0.1", "alpha", "no answer", patience=0)["rcode"] == "no answer"
    assert lab.ask("c", "10.87.1.1", "c")["answers"] == [ip_c]
    listening = lab.sandbox.exec(lab.host_ns, ["ss", "-Hlnu", "sport", "=", "53"]).stdout
    assert "10.87.0.1" not in listening and "10.87.1.1" in listening


def test_records_written_by_other_processes_resolve(lab: DnsLab) -> None:
    """As `podnet network create` / `podnet container run` do: each write comes from a
    process that opens the store, writes and closes it; the test process holds none."""
    lab.by_other_processes()
    lab.network("dnsnet", "pntdns0", 0)
    ip_a = lab.container("a", "dnsnet", ["alpha"])
    ip_b = lab.container("b", "dnsnet", [])
    assert lab.ask("b", "10.87.0.1", "alpha")["answers"] == [ip_a]
    assert lab.ask("a", "10.87.0.1", "b")["answers"] == [ip_b]
    lab.write({keys.container("b"): None})
    assert lab.ask("a", "10.87.0.1", "b", "NXDOMAIN")["rcode"] == "NXDOMAIN"


def test_agent_stop_releases_port_53(lab: DnsLab) -> None:
    lab.network("dnsnet", "pntdns0", 0)
    lab.container("a", "dnsnet", [])
    assert lab.ask("a", "10.87.0.1", "a")["answers"]
    log = lab.agent.stop()
    assert "dns: serving network dnsnet on 10.87.0.1:53" in log
    sockets = subprocess.run(["ip", "netns", "exec", lab.host_ns, "ss", "-Hlnut", "sport", "=", "53"],
                             capture_output=True, text=True, check=True).stdout
    assert sockets.strip() == ""
