"""Every address input refuses IPv6 scope IDs, and networks/IPAM refuse the machine's
own ranges (issue 10, items 7 and 8). Each case here was accepted before."""

from __future__ import annotations

import json

import pytest

from podnet.errors import PodnetError
from podnet.ipam.config import parse_address, parse_ipam_config
from podnet.model.base import CorruptRecord
from podnet.model.cluster import HostRecord
from podnet.model.network import NetworkRecord
from podnet.model.policy import PodRecord
from podnet.networks.plan import NetworkRequest, plan_network
from podnet.objects.registry import parse_document

SCOPED = "fe80::1%x;flush ruleset"
EVIL_NET = "fe80::%x\nflush ruleset/64"


def ipam(subnet: str, **more: str) -> dict:
    return {"type": "podnet-ipam", "ranges": [[{"subnet": subnet, **more}]]}


@pytest.mark.parametrize("raw", [
    ipam(EVIL_NET), ipam("fd00::/64", gateway=SCOPED), ipam("fd00::/64", rangeStart="fd00::5%eth0"),
    {**ipam("fd00::/64"), "routes": [{"dst": "::/0", "gw": SCOPED}]},
    {**ipam("10.0.0.0/24"), "routes": [{"dst": "fe80::%z/64"}]},
])
def test_ipam_config_refuses_scope_ids(raw):
    with pytest.raises(PodnetError, match="scope ID"):
        parse_ipam_config(raw)


def test_a_requested_address_refuses_a_scope_id():
    with pytest.raises(PodnetError, match="scope ID"):
        parse_address("fd00::5%eth0", "requested address")


@pytest.mark.parametrize("subnet, what", [
    ("0.0.0.0/0", "whole address space"), ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"),
    ("169.0.0.0/8", "link-local"), ("224.0.0.0/24", "multicast"), ("fe80::/64", "link-local"),
    ("ff02::/64", "multicast"), ("::/0", "whole address space"),
])
def test_ipam_and_networks_refuse_the_machines_own_ranges(subnet, what):
    with pytest.raises(PodnetError, match=what):
        parse_ipam_config(ipam(subnet))
    with pytest.raises(PodnetError, match=what):
        plan_network(NetworkRequest(name="n", subnets=(subnet,)), [], "0" * 64, 0.0)


def test_network_create_refuses_a_scope_id():
    with pytest.raises(PodnetError, match="scope ID"):
        plan_network(NetworkRequest(name="n", subnets=("fd00::/64",), gateways=(SCOPED,)), [], "0" * 64, 0.0)


@pytest.mark.parametrize("doc", [
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
     "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": EVIL_NET}}]}]}},
    {"apiVersion": "podnet.io/v1", "kind": "ClusterPolicy", "metadata": {"name": "c"},
     "spec": {"selector": {"podSelector": {}}, "types": ["Ingress"],
              "ingress": [{"action": "Deny", "from": [{"nets": [SCOPED]}]}]}},
    {"apiVersion": "podnet.io/v1", "kind": "HostEndpoint", "metadata": {"name": "h"},
     "spec": {"node": "n1", "ips": [SCOPED]}},
])
def test_policy_objects_refuse_scope_ids(doc):
    with pytest.raises(PodnetError, match="scope ID"):
        parse_document(doc, 0)


@pytest.mark.parametrize("decode", [
    lambda: PodRecord.from_json({"metadata": {"name": "a", "namespace": "x"}, "status": {"podIPs": [SCOPED]}}),
    lambda: HostRecord.from_json({"underlay_ip": SCOPED}),
    lambda: NetworkRecord.from_json({"name": "n", "id": "0" * 64, "subnets": [
        {"subnet": "fd00::/64", "gateway": SCOPED, "ip_range": None}]}),
])
def test_records_read_back_refuse_scope_ids(decode):
    with pytest.raises(CorruptRecord, match="scope ID"):
        decode()


def test_cni_config_masquerade_exclusions_refuse_scope_ids():
    from podnet.cni.config import parse_conf

    with pytest.raises(PodnetError, match="scope ID"):
        parse_conf({"cniVersion": "1.0.0", "name": "n", "type": "podnet", "ipMasqExclude": [EVIL_NET]})


def test_published_ports_refuse_scope_ids():
    from podnet.containers import spec

    with pytest.raises(PodnetError, match="scope ID"):
        spec.parse_port(f"[{SCOPED}]:80:80")
    assert json.dumps(spec.parse_port("[fd00::1]:80:80"))  # a plain IPv6 host IP still works


@pytest.mark.parametrize("result", [
    {"ips": [{"address": "fe80::5%x/64"}]},
    {"ips": [{"address": "fd00::5/64", "gateway": "fd00::1%x"}]},
    {"ips": [], "routes": [{"dst": "fe80::%x/64"}]},
])
def test_a_delegated_ipam_result_refuses_scope_ids(result):
    from podnet.ipam.result import parse_result

    with pytest.raises(PodnetError, match="scope ID"):
        parse_result(result, "result")
