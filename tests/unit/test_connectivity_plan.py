"""`podnet connectivity test`: planning, probes against local echo servers, rendering."""

from __future__ import annotations

import io
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator

import pytest
from rich.console import Console

from podnet.cli.observe import render
from podnet.lab.echo import tcp_handler, udp_serve
from podnet.observe import probe
from podnet.observe.connectivity import Probe, Result, node_pairs, plan, run, run_probe, summary


def lab(nodes: int = 3, pods: int = 2, racks: int = 1) -> dict:
    """A state file's data as `lab up` writes it."""
    data: dict = {"name": "t", "phase": "up", "nodes": {}, "pods": {},
                  "outside": {"ip": "198.51.100.1", "netns": "pn-lab-t-out"}}
    for i in range(nodes):
        data["nodes"][f"node{i}"] = {"netns": f"pn-lab-t-node{i}", "rack": i % racks,
                                     "underlay": f"172.31.{i % racks}.{10 + i}", "block": f"10.244.{i}.0/24"}
        for k in range(pods):
            data["pods"][f"default/p{i}-{k}"] = {"node": f"node{i}", "netns": f"pn-lab-t-p-default-p{i}-{k}",
                                                 "ips": [f"10.244.{i}.{2 + k}/24"], "ports": ["80/TCP", "80/UDP"]}
    return data


def by_check(probes: list[Probe]) -> dict[str, list[Probe]]:
    out: dict[str, list[Probe]] = {}
    for p in probes:
        out.setdefault(p.check, []).append(p)
    return out


def test_plan_three_nodes_two_pods() -> None:
    checks = by_check(plan(lab()))
    assert {k: len(v) for k, v in checks.items()} == {
        "pod-to-pod/same-node": 3, "pod-to-pod/cross-node": 6, "pod-to-node/gateway": 3,
        "pod-to-node/remote": 3, "node-to-pod/local": 3, "node-to-pod/remote": 3,
        "pod-to-outside/http": 3, "pod-to-outside/udp": 3, "pmtu/cross-node": 3, "served-port": 12,
    }
    same = checks["pod-to-pod/same-node"][0]
    assert (same.source, same.netns, same.spec) == ("default/p0-0", "pn-lab-t-p-default-p0-0",
                                                    {"kind": "icmp", "dst": "10.244.0.3"})
    assert checks["pod-to-node/gateway"][1].spec["dst"] == "10.244.1.1"
    assert checks["node-to-pod/remote"][2].netns == "pn-lab-t-node2"
    # masquerade: the outside must have seen the node's underlay address
    http = checks["pod-to-outside/http"][1]
    assert http.spec == {"kind": "http", "dst": "198.51.100.1", "port": 80, "path": "/peer", "expect": "172.31.0.11"}
    pmtu = checks["pmtu/cross-node"][0]
    assert pmtu.spec == {"kind": "pmtu", "dst": "10.244.1.2", "port": 80, "expect": "p1-0"}
    # every port of every pod, probed from a pod on another node, expecting that pod's name
    for p in checks["served-port"]:
        dst_pod = p.destination.split(" ")[0]
        assert p.source.split("/")[1][1] != dst_pod.split("/")[1][1]
        assert p.spec["expect"] == dst_pod.split("/")[1]
    assert {p.spec["kind"] for p in checks["served-port"]} == {"tcp", "udp"}


def test_plan_racks_single_node_and_missing_address() -> None:
    assert len(by_check(plan(lab(2, 1, racks=2)))["pod-to-pod/cross-rack"]) == 2
    one = by_check(plan(lab(1, 2)))
    assert "pod-to-pod/cross-node" not in one and "pmtu/cross-node" not in one
    assert {p.source for p in one["served-port"]} == {"default/p0-0", "default/p0-1"}  # each other
    alone = by_check(plan(lab(1, 1)))
    assert {p.source for p in alone["served-port"]} == {"node0"}
    broken = lab(2, 1)
    broken["pods"]["default/p1-0"]["ips"] = []
    checks = by_check(plan(broken))
    assert checks["pod-address"][0].source == "default/p1-0"
    assert all("10.244.1." not in str(p.spec.get("dst")) for p in plan(broken))


def test_node_pairs_all_then_ring() -> None:
    assert node_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]
    names = [f"n{i}" for i in range(20)]
    pairs = node_pairs(names)
    assert len(pairs) == 40 and ("n19", "n0") in pairs and ("n0", "n19") in pairs
    assert len(plan(lab(20, 10))) == 8 * 20 + 40 + 2 * 200  # linear: per node, the ring, every port


def test_missing_probe_fails_without_a_process() -> None:
    result = run_probe(Probe("pod-address", "default/p", "", "-", {"kind": "missing", "detail": "no IP"}))
    assert (result.ok, result.detail) == (False, "no IP")
    assert run([]) == []


def test_render_table_and_summary() -> None:
    results = [Result("pod-to-pod/cross-node", "default/p0-0", "default/p1-0 (10.244.1.2)", True, "echo reply", 1.2),
               Result("served-port", "default/p1-0", "default/p0-0 :80/tcp", False, "timed out after 2s", 2003.0)]
    assert summary(results) == (1, 1)
    out = io.StringIO()
    render(results, Console(file=out, width=200, color_system=None), "lab t", 0.5)
    text = out.getvalue()
    assert "FAIL" in text and "pass" in text and "timed out after 2s" in text
    assert "✗ served-port: default/p1-0 -> default/p0-0 :80/tcp: timed out after 2s" in text
    assert text.rstrip().endswith("1 passed, 1 failed in 0.5s")


# ----------------------------------------------------------------- probe.py, locally


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[int, int]]:
    """The lab's echo server (name `web`, /peer on) on 127.0.0.1: (tcp port, udp port)."""
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), tcp_handler("web", report_peer=True))
    tcp.daemon_threads = True
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_PKTINFO", 8), 1)
    udp.bind(("127.0.0.1", 0))
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    threading.Thread(target=udp_serve, args=(udp, "web"), daemon=True).start()
    yield tcp.server_address[1], udp.getsockname()[1]
    tcp.shutdown()
    tcp.server_close()
    udp.close()


def test_probe_tcp_udp_http(echo: tuple[int, int]) -> None:
    tcp, udp = echo
    assert probe.run({"kind": "tcp", "dst": "127.0.0.1", "port": tcp, "expect": "web"})["ok"]
    wrong = probe.run({"kind": "tcp", "dst": "127.0.0.1", "port": tcp, "expect": "db"})
    assert not wrong["ok"] and "expected 'db'" in wrong["detail"]
    assert probe.run({"kind": "udp", "dst": "127.0.0.1", "port": udp, "expect": "web"})["ok"]
    assert probe.run({"kind": "http", "dst": "127.0.0.1", "port": tcp, "path": "/", "expect": "web"})["ok"]
    peer = probe.run({"kind": "http", "dst": "127.0.0.1", "port": tcp, "path": "/peer", "expect": "127.0.0.1"})
    assert peer == {**peer, "ok": True, "detail": "outside saw the client as 127.0.0.1"}
    masq = probe.run({"kind": "http", "dst": "127.0.0.1", "port": tcp, "path": "/peer", "expect": "172.31.0.10"})
    assert not masq["ok"] and "masquerade" in masq["detail"]


def test_probe_pmtu_on_loopback(echo: tuple[int, int]) -> None:
    # lo's MTU is 65536: 65508 B is the largest UDP datagram, one more is EMSGSIZE
    result = probe.run({"kind": "pmtu", "dst": "127.0.0.1", "port": echo[1], "expect": "web"})
    assert result["ok"], result
    assert "refused (EMSGSIZE)" in result["detail"]


def test_probe_failures_are_results() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        refused = probe.run({"kind": "tcp", "dst": "127.0.0.1", "port": port, "expect": "x", "timeout": 0.5})
    assert not refused["ok"] and "refused" in refused["detail"].lower()
    assert probe.run({"kind": "nope", "dst": "127.0.0.1"}) == {**probe.run({"kind": "nope", "dst": "x"}), "ok": False}


def test_checksum_and_icmp_error_matching() -> None:
    header = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"abc"
    packet = struct.pack("!BBHHH", 8, 0, probe.checksum(header), 7, 1) + b"abc"
    assert probe.checksum(packet) == 0
    quoted = bytes([0x45]) + bytes(19) + packet[:8]
    assert probe._about_us(quoted, 7) and not probe._about_us(quoted, 8) and not probe._about_us(b"x", 7)
