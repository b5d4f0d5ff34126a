"""bird.conf rendering: the exact text for one node, what each kind of session gets,
determinism, every bad value refused with its field, and BIRD's own parser (`bird -p`)
accepting what we render."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import pytest

from podnet.bgp.model import BirdSpec, Neighbor
from podnet.bgp.render import protocol_name, render

NODE = BirdSpec(
    router_id="10.0.0.1",
    asn=65000,
    local_address="10.0.0.1",
    neighbors=(Neighbor("tor0", "10.0.0.254", 65100), Neighbor("node_b", "10.0.0.2", 65000, rr_client=True)),
    originate=("10.244.1.0/26",),
    accept=("10.244.0.0/16",),
    rr_cluster_id="1.0.0.1",
)

EXPECTED = """\
# Written by podnet (bgp/render.py): do not edit, it is rewritten on change.
router id 10.0.0.1;
graceful restart wait 30;
log stderr all;
timeformat protocol iso long;

filter podnet_import {
  if net ~ [ 10.244.0.0/16+ ] then accept;
  reject;
}

filter podnet_export_originated {
  if source = RTS_STATIC then accept;
  reject;
}

filter podnet_export_all {
  if source = RTS_STATIC then accept;
  if source = RTS_BGP then accept;
  reject;
}

filter podnet_kernel_export {
  if source = RTS_BGP && dest = RTD_UNICAST then accept;
  reject;
}

protocol device podnet_device {
}

protocol kernel podnet_kernel {
  ipv4 { import none; export filter podnet_kernel_export; };
  kernel table 254;
  scan time 10;
  learn off;
  persist on;
  graceful restart on;
  merge paths off;
}

protocol static podnet_static {
  ipv4;
  route 10.244.1.0/26 blackhole;
}

protocol bgp pn_node_b {
  local 10.0.0.1 port 179 as 65000;
  neighbor 10.0.0.2 port 179 as 65000;
  direct;
  rr cluster id 1.0.0.1;
  rr client;
  connect delay time 1;
  connect retry time 3;
  graceful restart on;
  graceful restart time 120;
  ipv4 {
    import filter podnet_import;
    export filter podnet_export_all;
  };
}

protocol bgp pn_tor0 {
  local 10.0.0.1 port 179 as 65000;
  neighbor 10.0.0.254 port 179 as 65100;
  direct;
  connect delay time 1;
  connect retry time 3;
  graceful restart on;
  graceful restart time 120;
  ipv4 {
    import filter podnet_import;
    export filter podnet_export_all;
  };
}
"""


def spec(**changes) -> BirdSpec:
    return dataclasses.replace(NODE, **changes)


def block(conf: str, header: str) -> str:
    """The text of the `header { ... }` block (top-level blocks end with a lone "}")."""
    start = conf.index(header + " {")
    return conf[start:conf.index("\n}\n", start) + 2]


def test_the_whole_file_for_a_reflector_with_a_tor():
    assert render(NODE) == EXPECTED


def test_kernel_protocol_exports_only_bgp_routes_and_learns_nothing():
    kernel = block(render(NODE), "protocol kernel podnet_kernel")
    assert "import none;" in kernel and "export filter podnet_kernel_export;" in kernel
    assert "learn off;" in kernel and "persist on;" in kernel
    assert "graceful restart on;" in kernel and "merge paths off;" in kernel
    kernel_filter = block(render(NODE), "filter podnet_kernel_export")
    # only BGP routes, and only with a next hop (an unresolved one would go in as `unreachable`)
    assert re.findall(r"if (.*) then accept;", kernel_filter) == ["source = RTS_BGP && dest = RTD_UNICAST"]
    conf = render(spec(kernel_table=100, scan_time=3, graceful_restart_wait=5))
    assert "kernel table 100;" in conf and "scan time 3;" in conf
    assert conf.splitlines()[2] == "graceful restart wait 5;"


def test_ibgp_without_reflection_announces_only_the_originations():
    conf = render(spec(rr_cluster_id=None, neighbors=(Neighbor("node_b", "10.0.0.2", 65000),)))
    session = block(conf, "protocol bgp pn_node_b")
    assert "export filter podnet_export_originated;" in session
    assert "next hop self" not in session and "rr " not in session
    assert re.findall(r"if (.*) then accept;", block(conf, "filter podnet_export_originated")) == ["source = RTS_STATIC"]


def test_reflector_reflects_and_names_its_cluster_on_every_ibgp_session():
    conf = render(spec(neighbors=(Neighbor("client", "10.0.0.2", 65000, rr_client=True), Neighbor("rr2", "10.0.0.3", 65000))))
    client, other = block(conf, "protocol bgp pn_client"), block(conf, "protocol bgp pn_rr2")
    assert "rr client;" in client and "rr client;" not in other
    assert "rr cluster id 1.0.0.1;" in client and "rr cluster id 1.0.0.1;" in other
    assert "export filter podnet_export_all;" in client and "export filter podnet_export_all;" in other
    assert "next hop self" not in client + other  # iBGP keeps the original next hop


def test_ebgp_passes_bgp_routes_on_keeping_a_next_hop_on_the_link():
    """No `next hop self`: BIRD sets its own address only for a next hop off the
    neighbour's link, so a ToR hands rack mates each other's address (test_bird_ns)."""
    session = block(render(spec(rr_cluster_id=None, neighbors=NODE.neighbors[:1])), "protocol bgp pn_tor0")
    assert "neighbor 10.0.0.254 port 179 as 65100;" in session
    assert "export filter podnet_export_all;" in session and "next hop self" not in session
    assert "rr cluster id" not in session  # only iBGP sessions reflect


def test_ports_graceful_restart_time_and_multihop():
    conf = render(spec(listen_port=1179, graceful_restart_time=30, neighbors=(Neighbor("far", "10.9.0.2", 65000, direct=False, port=1180),)))
    session = block(conf, "protocol bgp pn_far")
    assert "local 10.0.0.1 port 1179 as 65000;" in session and "neighbor 10.9.0.2 port 1180 as 65000;" in session
    assert "graceful restart on;" in session and "graceful restart time 30;" in session
    assert "multihop;" in session and "direct;" not in session
    # multihop resolves next hops recursively: the underlay's routes enter BIRD, below BGP,
    # exported nowhere (the export filters take RTS_BGP/RTS_STATIC only)
    direct = block(conf, "protocol direct podnet_direct")
    assert "preference 50;" in direct and "export none;" in direct
    kernel = block(conf, "protocol kernel podnet_kernel")
    assert "learn on;" in kernel and "preference 50; import filter podnet_kernel_import;" in kernel
    assert re.findall(r"if (.*) then accept;", block(conf, "filter podnet_kernel_import")) == [
        "krt_source != 77 && dest = RTD_UNICAST",  # never podnet's own fabric routes
    ]
    for part in ("protocol direct", "podnet_kernel_import", "learn on"):
        assert part not in render(NODE)  # only when some session is multihop


def test_sessions_connect_a_second_after_they_start_and_retry_within_seconds():
    # BIRD's own defaults (5 s before the first connect, 120 s after a refused one) would hold
    # every new node's, restarted BIRD's and new peer's routes back (bgp/render.py)
    sessions = [block(render(NODE), f"protocol bgp {name}") for name in ("pn_node_b", "pn_tor0")]
    for session in sessions:
        assert "connect delay time 1;" in session and "connect retry time 3;" in session
    conf = render(spec(connect_delay_time=5, connect_retry_time=120))
    assert conf.count("connect delay time 5;") == 2 and conf.count("connect retry time 120;") == 2
    assert "connect delay" not in block(conf, "protocol kernel podnet_kernel")


def test_a_session_may_speak_from_its_own_address():
    conf = render(spec(neighbors=(Neighbor("rack2", "10.0.2.2", 65002, local_address="10.0.2.1"), Neighbor("rack1", "10.0.1.2", 65001))))
    assert "  local 10.0.2.1 port 179 as 65000;" in block(conf, "protocol bgp pn_rack2")
    assert "  local 10.0.0.1 port 179 as 65000;" in block(conf, "protocol bgp pn_rack1")


def test_import_filter_accepts_only_prefixes_within_accept():
    conf = render(spec(accept=("10.96.0.0/12", "10.244.0.0/16")))
    assert "if net ~ [ 10.96.0.0/12+, 10.244.0.0/16+ ] then accept;" in block(conf, "filter podnet_import")
    nothing = block(render(spec(accept=())), "filter podnet_import")
    assert "accept" not in nothing.replace("filter podnet_import", "") and "reject;" in nothing


def test_static_originations_are_blackholes():
    conf = render(spec(originate=("10.244.1.0/26", "10.244.9.7/32")))
    assert block(conf, "protocol static podnet_static").splitlines()[2:4] == [
        "  route 10.244.1.0/26 blackhole;", "  route 10.244.9.7/32 blackhole;",
    ]
    assert "route " not in render(spec(originate=()))


def test_same_spec_same_bytes_whatever_the_order():
    shuffled = spec(
        neighbors=tuple(reversed(NODE.neighbors)),
        originate=("10.244.1.64/26", "10.244.1.0/26", "10.244.1.64/26"),
        accept=("10.244.0.0/16", "10.96.0.0/12"),
    )
    ordered = spec(originate=("10.244.1.0/26", "10.244.1.64/26"), accept=("10.96.0.0/12", "10.244.0.0/16"))
    assert render(shuffled) == render(ordered) == render(ordered)
    assert render(spec(originate=("10.244.1.0/26", "10.244.2.0/26"))) != render(NODE)


def test_protocol_name():
    assert protocol_name(Neighbor("node_b", "10.0.0.2", 65000)) == "pn_node_b"


def bad_neighbor(**changes) -> BirdSpec:
    return spec(neighbors=(dataclasses.replace(Neighbor("node_b", "10.0.0.2", 65000), **changes),))


@pytest.mark.parametrize(
    "bad, message",
    [
        (spec(router_id="10.0.0"), r"router_id: '10.0.0' is not a valid IP address"),
        (spec(router_id="0.0.0.0"), r"router_id: .* unspecified"),
        (spec(router_id="fd00::1"), r"router_id: 'fd00::1' is not an IPv4 address"),
        (spec(router_id="10.0.0.1%eth0"), r"router_id: .* carries a scope ID"),
        (spec(local_address="10.0.0.1; protocol x"), r"local_address: .* is not a valid IP address"),
        (spec(asn=0), r"asn: 0 is not a whole number in 1..4294967295"),
        (spec(asn=4294967296), r"asn: 4294967296 is not"),
        (spec(asn=True), r"asn: True is not"),
        (spec(asn="65000"), r"asn: '65000' is not"),
        (spec(listen_port=0), r"listen_port: 0 is not a whole number in 1..65535"),
        (spec(listen_port=65536), r"listen_port: 65536"),
        (spec(graceful_restart_time=0), r"graceful_restart_time: 0"),
        (spec(graceful_restart_time=4096), r"graceful_restart_time: 4096 is not a whole number in 1..4095"),
        (spec(kernel_table=0), r"kernel_table: 0"),
        (spec(scan_time=0), r"scan_time: 0"),
        (spec(graceful_restart_wait=0), r"graceful_restart_wait: 0"),
        (spec(connect_delay_time=0), r"connect_delay_time: 0 is not a whole number in 1..65535"),
        (spec(connect_retry_time=1.5), r"connect_retry_time: 1.5 is not a whole number"),
        (spec(connect_retry_time=65536), r"connect_retry_time: 65536"),
        (spec(rr_cluster_id="cluster-1"), r"rr_cluster_id: 'cluster-1' is not a valid IP address"),
        (spec(originate=("10.244.1.1/26",)), r"originate\[0\]: '10.244.1.1/26' has host bits set \(did you mean 10.244.1.0/26\?\)"),
        (spec(originate=("10.244.1.0/26", "fd00::/64")), r"originate\[1\]: 'fd00::/64' is not an IPv4 prefix"),
        (spec(originate="10.244.1.0/26"), r"originate: expected a list of prefixes"),
        (spec(accept=("10.244.0.0/16 ]; accept; [",)), r"accept\[0\]: .* is not a valid CIDR"),
        (spec(accept=(None,)), r"accept\[0\]: must be a CIDR string, got None"),
        (spec(neighbors=("10.0.0.2",)), r"neighbors\[0\]: expected a Neighbor, got str"),
        (bad_neighbor(name="Node-B"), r"neighbors\[0\].name: 'Node-B' is not a name of \[a-z0-9_\]\+"),
        (bad_neighbor(name=""), r"neighbors\[0\].name: '' is not a name"),
        (bad_neighbor(name="n" * 62), r"neighbors\[0\].name: .* is longer than 61 characters"),
        (bad_neighbor(address="10.0.0.256"), r"neighbors\[0\].address: '10.0.0.256' is not a valid IP address"),
        (bad_neighbor(address="10.0.0.1"), r"neighbors\[0\].address: 10.0.0.1 is this node's own local_address"),
        (bad_neighbor(asn=-1), r"neighbors\[0\].asn: -1 is not a whole number"),
        (bad_neighbor(local_address="10.0.2"), r"neighbors\[0\].local_address: '10.0.2' is not a valid IP address"),
        (bad_neighbor(local_address="10.0.0.2"), r"neighbors\[0\].address: 10.0.0.2 is this node's own local_address"),
        (bad_neighbor(port=70000), r"neighbors\[0\].port: 70000"),
        (bad_neighbor(direct="yes"), r"neighbors\[0\].direct: expected true or false"),
        (bad_neighbor(asn=65001, rr_client=True), r"neighbors\[0\].rr_client: only an iBGP neighbour"),
        (spec(rr_cluster_id=None), r"neighbors\[1\].rr_client: a route reflector needs rr_cluster_id"),
        (
            spec(neighbors=(Neighbor("a", "10.0.0.2", 65000), Neighbor("a", "10.0.0.3", 65000))),
            r"neighbors\[1\].name: 'a' is used by another neighbour",
        ),
        (
            spec(neighbors=(Neighbor("a", "10.0.0.2", 65000), Neighbor("b", "10.0.0.2", 65000))),
            r"neighbors\[1\].address: 10.0.0.2 is already neighbour 'a'",
        ),
    ],
)
def test_bad_values_are_refused_with_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        render(bad)


BIRD = shutil.which("bird") or "/usr/sbin/bird"


@pytest.mark.skipif(not shutil.which(BIRD), reason="BIRD 2 (Debian bird2) is not installed")
@pytest.mark.parametrize(
    "case",
    [
        NODE,
        spec(neighbors=(), originate=(), accept=(), rr_cluster_id=None),
        spec(neighbors=(Neighbor("far", "10.9.0.2", 65000, direct=False, port=1180), Neighbor("tor", "10.0.0.254", 4200000000)), listen_port=1179),
        spec(rr_cluster_id=None, neighbors=(Neighbor("node_b", "10.0.0.2", 65000, local_address="10.0.0.3"),), graceful_restart_time=4095,
             connect_delay_time=65535, connect_retry_time=65535),
    ],
    ids=["reflector-and-tor", "empty", "multihop-ports-as4", "plain-ibgp-slow-timers"],
)
def test_bird_parses_what_we_render(case, tmp_path):
    conf = tmp_path / "bird.conf"
    conf.write_text(render(case))
    done = subprocess.run([BIRD, "-p", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
