"""Three labs in one clusterset, two of them with the very same ranges (issue 17's
global addressing), on the real kernel.

west and east both use the lab's defaults (pods 10.244.0.0/16, services 10.96.0.0/16);
each is given a global CIDR (`podnet cluster init --lab X --global-cidr`): west
242.0.0.0/15, east 242.2.0.0/15. north (10.250.0.0/16, 10.98.0.0/16, on bgp) has
none: the others reach it on its own ranges. Each cluster's node0 is its gateway, on a
WAN of their own; the three are joined pairwise, north with `--encrypt` (the gossip
fabric's sleeve between gateways), west and east over VXLAN. Shown: a marker sent from
north to west never crosses west's WAN link in clear (sleeve datagrams only), one sent
from east to west does (VXLAN); a join of the overlapping two
before east had a global CIDR is refused, naming the ranges and suggesting one; pods
behind non-gateway nodes reach each other on global IPs across the overlapping pair,
and every far pod sees the caller as the clusterset knows it (a global IP for west and
east, north's own address); a Service exported by east is imported in west and north on
east's global IP, resolved by west's cluster DNS, and served by east's pod, which sees
the caller's global IP; `connectivity test --clusterset` passes whole in west and
north; a policy in east denying pods of west (labelled podnet.io/cluster, mirrored at
their global IPs) drops west's calls, names the rule in east's flows, and lets
north's through.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_clusterset_lab import (
    Clusterset,
    cluster_denied,
    denials,
    dns,
    healthy_everywhere,
    labs_on_a_wan,
    topology,
    web,
)

from cniharness import podnet_cli as podnet
from cniharness import wait_until

pytestmark = pytest.mark.root

RANGES = {"west": ("10.244.0.0/16", "10.96.0.0/16"), "east": ("10.244.0.0/16", "10.96.0.0/16"),
          "north": ("10.250.0.0/16", "10.98.0.0/16")}
GLOBAL = {"west": "242.0.0.0/15", "east": "242.2.0.0/15"}
TOPOLOGIES = {role: topology({f"{role[0]}a": ("node0", "client"), f"{role[0]}b": ("node1", "client"),
                              f"{role[0]}web": ("node1", "web")}) for role in RANGES}
LAB_FLAGS = {"west": (), "east": ("--no-cluster-dns",), "north": ("--no-cluster-dns", "--fabric", "bgp")}


class GlobalSet(Clusterset):
    refused: subprocess.CompletedProcess

    def seen_as(self, role: str, pod: str) -> str:
        """A pod's address as the other clusters reach it (and see it)."""
        ip = self.pod_ip(role, pod)
        if role not in GLOBAL:
            return ip
        low = next(ipaddress.IPv4Network(GLOBAL[role]).subnets(1))
        offset = int(ipaddress.IPv4Address(ip)) - int(ipaddress.IPv4Network(RANGES[role][0]).network_address)
        return str(low.network_address + offset)


@pytest.fixture(scope="module")
def gset(tmp_path_factory) -> Iterator[GlobalSet]:
    tag = secrets.token_hex(2)
    names, wan = {"west": f"gw{tag}", "east": f"ge{tag}", "north": f"gn{tag}"}, f"g{tag}"
    with labs_on_a_wan(names, wan, tmp_path_factory.mktemp("clusterset-global"), RANGES, TOPOLOGIES, LAB_FLAGS):
        for name in names.values():
            podnet("cluster", "gateway", "add", "node0", "--wan", wan, "--lab", name)
        built = GlobalSet(names, wan)
        podnet("cluster", "init", "--lab", names["west"], "--global-cidr", GLOBAL["west"])
        built.refused = podnet("cluster", "join", names["east"], "--peer-lab", names["east"], "--lab", names["west"],
                               check=False)
        podnet("cluster", "init", "--lab", names["east"], "--global-cidr", GLOBAL["east"])
        for a, b, how in (("west", "east", ()), ("west", "north", ("--encrypt",)), ("east", "north", ("--encrypt",))):
            podnet("cluster", "join", names[b], "--peer-lab", names[b], "--lab", names[a], *how)
        healthy_everywhere(built)
        yield built


def test_a_join_of_the_same_ranges_needs_global_cidrs(gset: GlobalSet) -> None:
    assert gset.refused.returncode != 0
    assert f"{gset.names['east']} clusterCIDR 10.244.0.0/16 overlaps {gset.names['west']} clusterCIDR" \
        in gset.refused.stderr and "--global-cidr" in gset.refused.stderr
    status = gset.status("west")
    assert status["cluster"]["globalCIDR"] == GLOBAL["west"]
    assert {p["name"]: p.get("globalCIDR") for p in status["peers"]} == {gset.names["east"]: GLOBAL["east"],
                                                                          gset.names["north"]: None}


def test_pods_reach_each_other_on_global_ips_and_see_callers_as_the_clusterset_does(gset: GlobalSet) -> None:
    same = ipaddress.IPv4Network(RANGES["west"][0])
    assert all(ipaddress.IPv4Address(gset.pod_ip(role, f"{role[0]}b")) in same for role in ("west", "east"))
    for caller, callee in ((("west", "wb"), ("east", "eb")), (("east", "eb"), ("west", "wb")),
                           (("north", "nb"), ("west", "wb")), (("west", "wa"), ("north", "nb")),
                           (("east", "ea"), ("north", "nweb"))):
        seen = gset.fetch(*caller, f"http://{gset.seen_as(*callee)}/peer")
        assert seen == gset.seen_as(*caller), (caller, callee, seen)


def test_north_tunnels_encrypted_and_the_vxlan_pair_in_clear(gset: GlobalSet) -> None:
    from underlay_capture import capture_in

    west = gset.state("west")
    for peer in gset.status("west")["peers"]:
        assert peer["tunnel"] == ("sleeve" if peer["name"] == gset.names["north"] else "vxlan"), peer
    pods = {role: gset.state(role)["pods"] for role in ("north", "east")}
    gateway = west["nodes"]["node0"]["netns"]
    sealed = capture_in(gateway, "wan0", 6785, pods["north"]["default/nb"]["netns"], gset.seen_as("west", "wb"))
    assert sealed["marker"] == 0 and sealed["sleeve"] > 0, sealed
    clear = capture_in(gateway, "wan0", 6785, pods["east"]["default/eb"]["netns"], gset.seen_as("west", "wb"))
    assert clear["marker"] > 0 and clear["sleeve"] == 0, clear
    node = next(n for n in gset.status("west")["nodes"] if n["role"] == "gateway")
    assert node["sleeve"]["tx_messages"] > 0 and node["sleeve"]["rx_messages"] > 0, node["sleeve"]
    assert node["tunnels"][gset.names["north"]]["rtt_ms"] > 0


def test_an_export_is_imported_on_its_global_ip_resolved_and_served(gset: GlobalSet, tmp_path: Path) -> None:
    def imported(role: str) -> dict | None:
        out = podnet("get", "serviceimports", "-n", "default", "-o", "json", "--lab", gset.names[role]).stdout
        items = json.loads(out)
        items = items.get("items", items) if isinstance(items, dict) else items
        found = [i for i in items if i["metadata"]["name"] == "web" and i["spec"]["ips"]]
        return found[0] if found else None

    path = tmp_path / "web.yaml"
    path.write_text(web("web"))
    started = time.monotonic()
    podnet("apply", "-f", str(path), "--lab", gset.names["east"])
    try:
        ip = wait_until(lambda: imported("west"), "west's ServiceImport of web", timeout=20)["spec"]["ips"][0]
        name = "web.default.svc.clusterset.local"
        wait_until(lambda: dns(gset, "default/wb", name) == f"answer {ip}", "the clusterset name in west", timeout=20)
        print(f"\nServiceExport in east -> {name} resolvable in west: {time.monotonic() - started:.1f} s")
        slices = json.loads(podnet("get", "endpointslices", "-n", "default", "-o", "json",
                                   "--lab", gset.names["west"]).stdout)
        slices = slices.get("items", slices) if isinstance(slices, dict) else slices
        [derived] = [s for s in slices if s["metadata"]["name"] == f"derived-web-{gset.names['east']}"]
        [address] = [a for e in derived["endpoints"] for a in e["addresses"]]
        assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(GLOBAL["east"])  # east's global IP of web
        assert wait_until(lambda: gset.fetch("west", "wb", f"http://{ip}/") == "eweb", "east's pod behind it",
                          timeout=20)
        assert gset.fetch("west", "wb", f"http://{ip}/peer") == gset.seen_as("west", "wb")
        north_ip = wait_until(lambda: imported("north"), "north's ServiceImport of web", timeout=20)["spec"]["ips"][0]
        assert wait_until(lambda: gset.fetch("north", "nb", f"http://{north_ip}/peer") == gset.seen_as("north", "nb"),
                          "north served by east", timeout=20)
        for role in ("west", "north"):
            out = podnet("connectivity", "test", "--lab", gset.names[role], "--clusterset", "-o", "json", check=False)
            results = json.loads(out.stdout)
            assert out.returncode == 0 and all(r["ok"] for r in results), results
            assert "multicluster/import" in {r["check"] for r in results}
    finally:
        podnet("delete", "-f", str(path), "--lab", gset.names["east"])
    wait_until(lambda: imported("west") is None, "the import gone with the export", timeout=20)


def test_a_deny_of_a_global_clusters_pods_is_enforced_on_their_global_ips(gset: GlobalSet, tmp_path: Path) -> None:
    target = gset.seen_as("east", "eweb")
    caller = gset.seen_as("west", "wb")
    assert gset.fetch("west", "wb", f"http://{target}/peer") == caller  # open before
    with cluster_denied(gset, "east", "west", "no-west", tmp_path) as since:
        wait_until(lambda: gset.fetch("west", "wb", f"http://{target}/peer") == "", "the deny in force", timeout=20)
        assert gset.fetch("north", "nb", f"http://{target}/peer") == gset.seen_as("north", "nb")  # north passes
        drops = wait_until(lambda: denials(gset, "east", since, caller, "no-west"), "the drop named in east's flows",
                           timeout=15)
        assert drops[0]["dst"] == gset.pod_ip("east", "eweb")  # the pod itself, after the gateway's mapping
    assert wait_until(lambda: gset.fetch("west", "wb", f"http://{target}/peer") == caller, "open again", timeout=20)
