"""The service table in a real kernel: nft takes every rendered script, an update lands on
exactly the table a full render gives, and real connections are balanced, kept, refused
and masqueraded as services/render.py says.

One topology for the module (namespaces pn-t-<token>-*, removed at the end):

    client  eth0 192.168.50.2 (+ .10-.21 for affinity), fd00:50::2
       |
    node    vc 192.168.50.1 fd00:50::1; br0 10.244.1.1 fd00:244:1::1 (hairpin ports);
       |    the service CIDRs route to svc0 (a veth pair), as a node's default route takes
       |    a cluster IP without endpoints: to the forward hook, where it is rejected
    b0 b1 b2  10.244.1.10-12, fd00:244:1::10-12: one `podnet.lab.echo` process serves
              the three (TCP 8080: `GET /` answers the name, `GET /peer` the client's
              address; UDP 5300 answers the name)

b0 is the only local backend (the others play backends on other nodes), so the Local
traffic policies must pick it alone. The client lies outside cluster_cidrs: an external
client. Every connection of one check is made by one client process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cniharness import needs_root
from podnet.errors import InvalidConfig, KernelError
from podnet.kernel.libnft import LibNft
from podnet.kernel.netns import entered, open_netns
from podnet.lab.sandbox import Sandbox, wait_for_path
from podnet.services.plan import PROTOCOLS, Backend, NodePlan, ServicePort
from podnet.services.render import FAMILY, TABLE, delete_table, render_table, render_update

pytestmark = pytest.mark.root

PY = sys.executable
CIDRS = ("10.244.0.0/16", "fd00:244::/48")
NODE_IP, CLIENT_IP, BRIDGE_IP = "192.168.50.1", "192.168.50.2", "10.244.1.1"
AFFINITY_SOURCES = [f"192.168.50.{i}" for i in range(10, 22)]
NAMES = ("b0", "b1", "b2")
V4 = {n: f"10.244.1.{10 + i}" for i, n in enumerate(NAMES)}
V6 = {n: f"fd00:244:1::{10 + i}" for i, n in enumerate(NAMES)}
TCP, UDP = 8080, 5300
EVERY = tuple(Backend(V4[n], TCP, local=n == "b0") for n in NAMES)


def svc(id: str, cluster_ip: str, **kw) -> ServicePort:
    return ServicePort(**{"id": id, "ref": f"test/{id}:80", "protocol": "tcp", "port": 80,
                          "cluster_ips": (cluster_ip,), "backends": EVERY, **kw})


PLAN = NodePlan(node_ips=(NODE_IP,), cluster_cidrs=CIDRS, services=(
    svc("web", "10.96.0.10", node_port=30080),
    svc("sticky", "10.96.0.11", affinity_timeout=2),
    svc("emptyt", "10.96.0.12", backends=(), node_port=30099),
    svc("emptyu", "10.96.0.12", backends=(), protocol="udp", port=53),
    svc("local", "10.96.0.13", external_local=True, node_port=30013, external_ips=("192.0.2.13",)),
    svc("dns", "10.96.0.14", protocol="udp", port=53, backends=tuple(Backend(V4[n], UDP) for n in NAMES)),
    svc("solo", "10.96.0.15", backends=(Backend(V4["b0"], TCP, local=True),)),
    svc("web6", "fd00:96::10", backends=tuple(Backend(V6[n], TCP) for n in NAMES)),
))

CLIENT = r"""
import json, socket, sys, time
out = []
for r in json.load(sys.stdin):
    fam = socket.AF_INET6 if ":" in r["host"] else socket.AF_INET
    for _ in range(r.get("n", 1)):
        start = time.monotonic()
        s = socket.socket(fam, socket.SOCK_DGRAM if r.get("udp") else socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            if r.get("src"):
                s.bind((r["src"], 0))
            s.connect((r["host"], r["port"]))
            if r.get("udp"):
                s.send(b"x")
                out.append(s.recv(100).decode())
            else:
                s.sendall(("GET %s HTTP/1.0\r\n\r\n" % r.get("path", "/")).encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                out.append(data.split(b"\r\n\r\n", 1)[1].decode().strip())
        except OSError as exc:
            out.append("ERR %s %.3f" % (type(exc).__name__, time.monotonic() - start))
        finally:
            s.close()
print(json.dumps(out))
"""


@dataclasses.dataclass
class Lab:
    box: Sandbox
    node: str
    client: str
    backends: dict[str, str]
    scratch: str

    def nft(self, ns: str, script: str, check: bool = False) -> None:
        args = ["nft", "-c", "-f", "-"] if check else ["nft", "-f", "-"]
        proc = self.box.exec(ns, args, input=script, check=False)
        assert proc.returncode == 0, proc.stderr + "\n" + script[:4000]

    def ask(self, ns: str, *requests: dict) -> list[str]:
        """Answers (or "ERR <exception> <seconds>") of the requests, made in order by one process."""
        proc = self.box.exec(ns, [PY, "-c", CLIENT], input=json.dumps(list(requests)), timeout=120)
        return json.loads(proc.stdout)


def _ns(box: Sandbox, role: str, peer: str, ifname: str, addrs: list[str]) -> str:
    """A namespace with eth0 = addrs, its veth peer `ifname` in `peer`."""
    ns = box.netns(role)
    box.exec(peer, ["ip", "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", ns])
    for addr in addrs:
        box.exec(ns, ["ip", "addr", "add", addr, "dev", "eth0", *(["nodad"] if ":" in addr else [])])
    box.exec(ns, ["ip", "link", "set", "eth0", "up"])
    return ns


NODE_SETUP = [
    "link add br0 type bridge", f"addr add {BRIDGE_IP}/24 dev br0", "addr add fd00:244:1::1/64 dev br0 nodad",
    "link set br0 up", "link add svc0 type veth peer name svc1", "link set svc0 up", "link set svc1 up",
    "route add 10.96.0.0/16 dev svc0", "route add fd00:96::/64 dev svc0",
    f"addr add {NODE_IP}/24 dev vc", "addr add fd00:50::1/64 dev vc nodad", "link set vc up",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    needs_root()
    with Sandbox("pn-t-") as box:  # conftest's `sandbox` is per test: this topology is per module
        node = box.netns("node")
        client_addrs = [f"{CLIENT_IP}/24", *(f"{a}/24" for a in AFFINITY_SOURCES), "fd00:50::2/64"]
        client = _ns(box, "client", node, "vc", client_addrs)
        for line in NODE_SETUP:
            box.exec(node, ["ip", *line.split()])
        box.exec(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
        backends = {}
        for n in NAMES:
            ns = backends[n] = _ns(box, n, node, f"v{n}", [f"{V4[n]}/24", f"{V6[n]}/64"])
            for line in (f"link set v{n} master br0", f"link set v{n} type bridge_slave hairpin on",
                         f"link set v{n} up"):
                box.exec(node, ["ip", *line.split()])
        for ns, gw4, gw6 in [(client, NODE_IP, "fd00:50::1"),
                             *((b, BRIDGE_IP, "fd00:244:1::1") for b in backends.values())]:
            box.exec(ns, ["ip", "route", "add", "default", "via", gw4])
            box.exec(ns, ["ip", "-6", "route", "add", "default", "via", gw6])
        work = tmp_path_factory.mktemp("svc-echo")
        spec, ready = work / "spec.json", work / "ready"
        spec.write_text(json.dumps([{"name": n, "tcp": [TCP], "udp": [UDP], "netns": Sandbox.path(ns)}
                                    for n, ns in backends.items()]))
        echo = box.spawn(None, [PY, "-m", "podnet.lab.echo", "--spec", str(spec), "--ready", str(ready),
                                "--report-peer"])
        wait_for_path(str(ready), proc=echo)
        lab = Lab(box, node, client, backends, box.netns("nft"))
        lab.nft(node, render_table(PLAN))
        yield lab


def backend_of(answer: str) -> str:
    assert answer in NAMES, answer
    return answer


# -- real traffic

def test_connections_to_a_cluster_ip_spread_over_every_backend(lab: Lab) -> None:
    counts = Counter(map(backend_of, lab.ask(lab.client, {"host": "10.96.0.10", "port": 80, "n": 300})))
    assert set(counts) == set(NAMES) and all(60 <= c <= 141 for c in counts.values()), counts  # 20%..47%


def test_udp_ipv6_and_the_node_itself_reach_the_backends(lab: Lab) -> None:
    answers = lab.ask(lab.client, {"host": "10.96.0.14", "port": 53, "udp": True, "n": 20},
                      {"host": "fd00:96::10", "port": 80, "n": 20})
    assert set(answers[:20]) == set(NAMES) and set(answers[20:]) == set(NAMES), answers
    from_node = lab.ask(lab.node, {"host": "10.96.0.10", "port": 80, "n": 20}, {"host": NODE_IP, "port": 30080},
                        {"host": "127.0.0.1", "port": 30080})
    assert set(from_node[:20]) == set(NAMES) and from_node[20] in NAMES, from_node
    assert from_node[21].startswith("ERR ConnectionRefusedError"), from_node  # never a NodePort on loopback


def test_nodeport_on_the_node_address_masquerades_external_clients(lab: Lab) -> None:
    answers = lab.ask(lab.client, {"host": NODE_IP, "port": 30080, "n": 30},
                      {"host": NODE_IP, "port": 30080, "path": "/peer"})
    assert set(answers[:30]) == set(NAMES), answers
    assert answers[30] == BRIDGE_IP  # Cluster policy: the backend saw the node, not the client


def test_external_local_keeps_the_client_address_and_uses_local_backends(lab: Lab) -> None:
    answers = lab.ask(lab.client, {"host": NODE_IP, "port": 30013, "n": 20},
                      {"host": "192.0.2.13", "port": 80, "n": 10}, {"host": NODE_IP, "port": 30013, "path": "/peer"},
                      {"host": "192.0.2.13", "port": 80, "path": "/peer"})
    assert answers == ["b0"] * 30 + [CLIENT_IP, CLIENT_IP]
    # its cluster IP still spreads over every backend (internal policy: Cluster)
    assert set(lab.ask(lab.client, {"host": "10.96.0.13", "port": 80, "n": 30})) == set(NAMES)


def test_a_pod_reaching_itself_through_its_service_is_masqueraded(lab: Lab) -> None:
    assert lab.ask(lab.backends["b0"], {"host": "10.96.0.15", "port": 80, "path": "/peer"}) == [BRIDGE_IP]


def test_a_backend_calling_its_service_spreads_and_only_its_own_connections_are_masqueraded(lab: Lab) -> None:
    """The client is one of the backends: it still reaches each of them a third of the
    time, and only when it lands on itself does the backend see the node's address."""
    named = Counter(map(backend_of, lab.ask(lab.backends["b0"], {"host": "10.96.0.10", "port": 80, "n": 150})))
    assert set(named) == set(NAMES) and all(25 <= c <= 75 for c in named.values()), named  # 17%..50%
    peers = Counter(lab.ask(lab.backends["b0"], {"host": "10.96.0.10", "port": 80, "path": "/peer", "n": 150}))
    assert set(peers) == {BRIDGE_IP, V4["b0"]} and 25 <= peers[BRIDGE_IP] <= 75, peers


def test_an_empty_service_refuses_at_once(lab: Lab) -> None:
    tries = [{"host": "10.96.0.12", "port": 80}, {"host": "10.96.0.12", "port": 53, "udp": True},
             {"host": NODE_IP, "port": 30099}]
    refused = {"ConnectionRefusedError"}
    # The node's own datagram is rejected in the output hook, and a packet dropped there
    # fails its send() with EPERM: refused at once as well.
    for ns, udp_too in ((lab.client, refused), (lab.node, {*refused, "PermissionError"})):
        for i, answer in enumerate(lab.ask(ns, *tries)):
            kind, exc, seconds = answer.split()
            # refused (TCP reset, ICMP port unreachable), long before the client's 5 s timeout
            assert kind == "ERR" and exc in (udp_too if i == 1 else refused) and float(seconds) < 2, answer


def test_affinity_holds_each_client_until_its_timeout(lab: Lab) -> None:
    first = lab.ask(lab.client, *({"host": "10.96.0.11", "port": 80, "src": src, "n": 8} for src in AFFINITY_SOURCES))
    chosen = [first[i * 8] for i in range(len(AFFINITY_SOURCES))]
    for i, name in enumerate(chosen):
        assert first[i * 8:(i + 1) * 8] == [backend_of(name)] * 8, first
    time.sleep(2.6)  # timeout 2 s after each client's last connection
    after = lab.ask(lab.client, *({"host": "10.96.0.11", "port": 80, "src": src} for src in AFFINITY_SOURCES))
    # each client chooses anew: 12 clients all landing where they were has odds (1/3)**12
    assert after != chosen, (chosen, after)


def test_an_update_changes_the_live_table(lab: Lab) -> None:
    fewer = dataclasses.replace(PLAN, services=tuple(
        dataclasses.replace(s, backends=EVERY[:2]) if s.id == "web" else s for s in PLAN.services))
    lab.nft(lab.node, render_update(PLAN, fewer))
    try:
        assert set(lab.ask(lab.client, {"host": "10.96.0.10", "port": 80, "n": 40})) == {"b0", "b1"}
    finally:
        lab.nft(lab.node, render_update(fewer, PLAN))
    assert set(lab.ask(lab.client, {"host": "10.96.0.10", "port": 80, "n": 40})) == set(NAMES)


# -- every rendered script is one the kernel takes, and an update equals a full render

def listing(lab: Lab) -> dict:
    """The table as `nft -j` lists it, without handles, element order or dynamic set contents."""
    proc = lab.box.exec(lab.scratch, ["nft", "-j", "list", "table", FAMILY, TABLE])
    out: dict = {}
    for item in json.loads(proc.stdout)["nftables"]:
        (kind, body), = item.items()
        if kind == "metainfo":
            continue
        body = {k: v for k, v in body.items() if k != "handle"}
        if kind == "rule":
            out.setdefault(("rules", body["chain"]), []).append(body)
            continue
        if "elem" in body:
            body["elem"] = None if "timeout" in body.get("flags", []) else sorted(map(json.dumps, body["elem"]))
        out[(kind, body.get("name"))] = body
    return out


IDS = ("a", "b", "c", "d", "e")
addrs = st.sampled_from([*V4.values(), "10.244.2.11", *V6.values()])
backends = st.builds(Backend, addrs, st.sampled_from([80, 8080]), st.booleans())


@st.composite
def ports(draw, id: str) -> ServicePort:
    i = IDS.index(id) + 1
    families = draw(st.sampled_from(["4", "6", "46", ""]))
    return ServicePort(
        id=id, ref=draw(st.sampled_from([f"ns/{id}:80", "x" * 140])), protocol=draw(st.sampled_from(PROTOCOLS)),
        port=draw(st.sampled_from([53, 80])),
        cluster_ips=tuple(a for f, a in (("4", f"10.96.0.{i}"), ("6", f"fd00:96::{i}")) if f in families),
        node_port=draw(st.none() | st.just(30000 + i)),
        external_ips=tuple(draw(st.lists(st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1"]), max_size=2,
                                         unique=True))),
        backends=tuple(draw(st.lists(backends, max_size=4))), affinity_timeout=draw(st.sampled_from([None, 2, 10800])),
        external_local=draw(st.booleans()), internal_local=draw(st.booleans()))


FIELDS = ("backends", "affinity_timeout", "internal_local", "external_local", "ref", "node_port", "external_ips")


@st.composite
def successor(draw, port: ServicePort) -> ServicePort:
    """The same port unchanged, with one field changed (an endpoint, a policy...), or new."""
    how = draw(st.sampled_from(["keep", "change", "change", "new"]))
    if how == "keep":
        return port
    fresh = draw(ports(port.id))
    if how == "new":
        return fresh
    field = draw(st.sampled_from(FIELDS))
    return dataclasses.replace(port, **{field: getattr(fresh, field)})


@st.composite
def plans(draw, like: NodePlan | None = None) -> NodePlan:
    """A plan; given `like`, one that mostly keeps its node settings and follows its ports."""
    ids = draw(st.lists(st.sampled_from(IDS), unique=True, max_size=4))
    old = {} if like is None else {p.id: p for p in like.services}
    keep = like is not None and draw(st.integers(0, 5)) > 0
    return NodePlan(
        node_ips=like.node_ips if keep else draw(st.sampled_from([(), (NODE_IP,), (NODE_IP, "fd00:50::1")])),
        cluster_cidrs=like.cluster_cidrs if keep else draw(st.sampled_from([CIDRS, CIDRS[:1], ()])),
        services=tuple(draw(successor(old[i])) if i in old else draw(ports(i)) for i in ids))


def renders(plan: NodePlan) -> str:
    try:
        return render_table(plan)
    except InvalidConfig as exc:
        assert "both claim" in exc.msg, exc.msg  # the only way these plans can be wrong
        assume(False)  # two ports claiming one external IP: refused, as it must be
        return ""


@st.composite
def transitions(draw) -> tuple[NodePlan, NodePlan]:
    old = draw(plans())
    return old, draw(plans(old))


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(transitions())
def test_every_update_lands_on_the_table_a_full_render_gives(lab: Lab, change: tuple[NodePlan, NodePlan]) -> None:
    old, new = change
    full_old, full_new = renders(old), renders(new)
    lab.nft(lab.scratch, delete_table())
    lab.nft(lab.scratch, full_old, check=True)
    lab.nft(lab.scratch, full_old)
    update = render_update(old, new)
    lab.nft(lab.scratch, update, check=True)
    lab.nft(lab.scratch, update)
    updated = listing(lab)
    lab.nft(lab.scratch, full_new)
    assert updated == listing(lab)


def test_updates_that_move_frontends_between_ports(lab: Lab) -> None:
    """Transitions the random ones rarely hit: a frontend moving to another port, a new
    affinity timeout, a new ref (only the elements' comments change), a verdict changing
    in place (internal_local), a family switch, every backend going, every port going."""
    a = svc("a", "10.96.0.1", node_port=30001, external_ips=("192.0.2.1",), affinity_timeout=5)
    steps = [
        (a, svc("b", "10.96.0.2")),
        (dataclasses.replace(a, external_ips=()), svc("b", "10.96.0.2", external_ips=("192.0.2.1",))),
        (dataclasses.replace(a, affinity_timeout=6, node_port=None), svc("b", "10.96.0.2", node_port=30001)),
        (dataclasses.replace(a, ref="test/renamed:80", node_port=None),
         svc("b", "10.96.0.2", node_port=30001, internal_local=True)),
        (dataclasses.replace(a, cluster_ips=("fd00:96::1",), backends=tuple(Backend(v, 80) for v in V6.values())),),
        (dataclasses.replace(a, backends=()), svc("b", "10.96.0.2", backends=(), node_port=30002)),
        (),
    ]
    lab.nft(lab.scratch, delete_table())
    previous = NodePlan(node_ips=(NODE_IP,), cluster_cidrs=CIDRS)
    lab.nft(lab.scratch, render_table(previous))
    for step in steps:
        plan = dataclasses.replace(previous, services=step)
        lab.nft(lab.scratch, render_update(previous, plan))
        updated = listing(lab)
        lab.nft(lab.scratch, render_table(plan))
        assert updated == listing(lab), step
        previous = plan
    lab.nft(lab.scratch, delete_table())
    assert lab.box.exec(lab.scratch, ["nft", "list", "tables"]).stdout.strip() == ""



# -- the agent's way of applying them: libnftables in-process (kernel/libnft.py)

def test_libnftables_applies_one_transaction_in_the_callers_namespace(lab: Lab) -> None:
    nft = LibNft()
    assert nft.in_process  # libnftables.so.1 is on every host these tests run on
    other = lab.box.netns("nft2")
    for ns in (lab.scratch, other):  # one object, called from two namespaces in turn
        fd = open_netns(Sandbox.path(ns))
        try:
            with entered(fd):
                nft.apply(delete_table())
                nft.apply(render_table(PLAN))
                with pytest.raises(KernelError) as refused:  # all or nothing, nft's own message
                    nft.apply("add table inet pn-half\nadd rule inet podnet-svc no-such-chain accept\n")
                assert "No such file or directory" in refused.value.details, refused.value.details
        finally:
            os.close(fd)
    full = lab.box.exec(lab.scratch, ["nft", "list", "ruleset"]).stdout
    assert lab.box.exec(other, ["nft", "list", "ruleset"]).stdout == full
    assert "podnet-svc" in full and "pn-half" not in full
    nft.close()
