"""Dual-stack Services (issue 18): the service CIDRs of settings/services, the family
fields of a Service (services/families.py: validation and defaulting as the API
server's), one ClusterIP per family claimed and freed (services/allocate.py), the
plan and the nft table of both families (planner.py, render.py) and cluster DNS.
Pure, against the in-memory store."""

from __future__ import annotations

import ipaddress
import json

import pytest
from dnslib import QTYPE, DNSRecord
from test_services_objects import one, svc

from podnet import keys
from podnet.dns.answer import Answerer
from podnet.dns.cluster import build_cluster_zone
from podnet.errors import InvalidConfig, ObjectError
from podnet.model.policy import PodRecord
from podnet.model.service import ServiceClaim, ServiceSettings
from podnet.objects import store as repo
from podnet.objects.describe import describe
from podnet.objects.registry import lookup, parse_documents
from podnet.services.kinds import SERVICE, read_service
from podnet.services.planner import node_plan
from podnet.services.render import render_table
from podnet.store import open_store

V4, V6 = "10.96.0.0/16", "fd00:10:96::/112"
NET4, NET6 = ipaddress.ip_network(V4), ipaddress.ip_network(V6)


def applied(store, *docs: dict):
    repo.apply(store, parse_documents(docs))
    return [read_service(store.get(one(d).key).json()) for d in docs]


def cluster(cidr: str):
    """A memory store whose settings/services hold `cidr`."""
    store = open_store("memory://")
    store.put(keys.SERVICE_SETTINGS, ServiceSettings(cidr).encode())
    return store


@pytest.fixture
def dual():
    with cluster(f"{V4},{V6}") as s:
        yield s


@pytest.fixture
def single():
    with cluster(V4) as s:
        yield s


def claimed(store) -> dict[str, str]:
    return {e.key.removeprefix(keys.CLUSTER_IPS): ServiceClaim.from_json(e.json()).service
            for e in store.list(keys.CLUSTER_IPS)}


# -- settings ---------------------------------------------------------------------------


def test_settings_take_two_prefixes_the_primary_first():
    s = ServiceSettings(f"{V6}, {V4}")
    assert (s.service_cidr, s.secondary_cidr, s.service_cidrs) == (V6, V4, (V6, V4))
    assert (s.network, s.networks, s.families, s.dual_stack) == (NET6, (NET6, NET4), ("IPv6", "IPv4"), True)
    assert s.network_of("IPv4") == NET4 and ServiceSettings(V4).network_of("IPv6") is None
    assert s == ServiceSettings(V6, secondary_cidr=V4)
    assert ServiceSettings.from_json(json.loads(s.encode())) == s


def test_settings_json_stays_readable_both_ways():
    old = {"serviceCIDR": V4, "nodePortRange": "30000-32767", "clusterDomain": "cluster.local"}
    assert ServiceSettings.from_json(old) == ServiceSettings(V4)  # a record written before dual stack
    assert ServiceSettings(V4).to_json() == old  # single-stack records are written as before
    new = ServiceSettings(f"{V4},{V6}").to_json()
    assert (new["serviceCIDR"], new["serviceCIDRs"]) == (V4, [V4, V6])  # an older reader takes the primary
    with pytest.raises(Exception, match="serviceCIDRs"):
        ServiceSettings.from_json({**old, "serviceCIDRs": [V6, V4]})


@pytest.mark.parametrize(("cidr", "message"), [
    (f"{V4},10.97.0.0/16", "both IPv4"),
    (f"{V6},fd00:10:97::/112", "both IPv6"),
    (f"{V4},{V6},10.98.0.0/16", "give one prefix, or two"),
    (f"{V4},", "give one prefix, or two"),
    (f"{V4},fd00:10:96::/64", "/108 or longer"),
    (f"{V4},::1/128", "service CIDR"),
    (f"{V4},fd00::/125", "too small"),
])
def test_bad_dual_stack_settings_are_refused(cidr, message):
    with pytest.raises(InvalidConfig, match=message):
        ServiceSettings(cidr)


# -- the shape of the family fields (parsing) ------------------------------------------------


def test_the_fields_read_back_as_given():
    s = one(svc(ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"],
                clusterIPs=["fd00:10:96::5", "10.96.0.5"]))
    assert (s.ip_family_policy, s.ip_families, s.cluster_ip, s.cluster_ips) == (
        "RequireDualStack", ("IPv6", "IPv4"), "fd00:10:96::5", ("fd00:10:96::5", "10.96.0.5"))
    assert one(s.to_dict()) == s
    assert one(svc(clusterIP="None", ipFamilies=["IPv4", "IPv6"])).cluster_ips == ("None",)
    assert one(svc(clusterIP="10.96.0.7")).cluster_ips == ("10.96.0.7",)


@pytest.mark.parametrize(("spec", "message"), [
    ({"ipFamilyPolicy": "DualStack"}, r"spec\.ipFamilyPolicy: 'DualStack' is not one of SingleStack"),
    ({"ipFamilies": ["IPv4", "IPv5"]}, r"spec\.ipFamilies\[1\]: 'IPv5' is not one of IPv4, IPv6"),
    ({"ipFamilies": ["IPv4", "IPv4"]}, r"spec\.ipFamilies\[1\]: IPv4 is given twice"),
    ({"ipFamilies": ["IPv4", "IPv6", "IPv4"]}, r"spec\.ipFamilies: 3 families given: at most two"),
    ({"ipFamilies": "IPv4"}, r"spec\.ipFamilies: must be a list"),
    ({"clusterIPs": ["10.96.0.5", "fd00:10:96::5", "10.96.0.6"]}, r"spec\.clusterIPs: 3 addresses given"),
    ({"clusterIPs": ["10.96.0.5", "10.96.0.6"]}, r"spec\.clusterIPs\[1\]: 10\.96\.0\.6 is IPv4 as 10\.96\.0\.5 is"),
    ({"clusterIPs": ["10.96.0.5", "fd00::x"]}, r"spec\.clusterIPs\[1\]: 'fd00::x' is not an IP address"),
    ({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.6"]}, r"spec\.clusterIPs\[0\]: '10\.96\.0\.6' differs from"),
    ({"clusterIPs": ["None", "fd00:10:96::5"]}, r"spec\.clusterIPs\[0\]: 'None' \(headless\) must be the only"),
    ({"clusterIPs": ["10.96.0.5", "None"]}, r"spec\.clusterIPs\[1\]: 'None' \(headless\) must be the only"),
    ({"clusterIPs": ["", "fd00:10:96::5"]}, r"spec\.clusterIPs\[0\]: empty"),
    ({"ipFamilies": ["IPv6"], "clusterIPs": ["10.96.0.5"]}, r"spec\.clusterIPs\[0\]: 10\.96\.0\.5 is not IPv6, as "
                                                           r"spec\.ipFamilies\[0\] says"),
    ({"ipFamilies": ["IPv4", "IPv6"], "clusterIPs": ["10.96.0.5", "fd00:10:96::5"], "clusterIP": "None"},
     r"spec\.clusterIPs\[0\]: '10\.96\.0\.5' differs from spec\.clusterIP 'None'"),
])
def test_bad_family_fields_name_the_field(spec, message):
    with pytest.raises(ObjectError, match=message):
        one(svc(**spec))


# -- defaulting against the cluster (apply) --------------------------------------------------


def test_single_stack_gets_the_primary_family(dual):
    (s,) = applied(dual, svc())
    assert (s.ip_family_policy, s.ip_families, len(s.cluster_ips)) == ("SingleStack", ("IPv4",), 1)
    assert ipaddress.ip_address(s.cluster_ip) in NET4
    (v6,) = applied(dual, svc("v6", ipFamilies=["IPv6"]))
    assert v6.ip_families == ("IPv6",) and ipaddress.ip_address(v6.cluster_ip) in NET6
    (by_ip,) = applied(dual, svc("by-ip", clusterIP="fd00:10:96::20"))  # the family follows the address
    assert (by_ip.ip_family_policy, by_ip.ip_families) == ("SingleStack", ("IPv6",))


def test_prefer_dual_stack_takes_both_families_when_the_cluster_has_them(dual, single):
    (s,) = applied(dual, svc(ipFamilyPolicy="PreferDualStack"))
    assert s.ip_families == ("IPv4", "IPv6") and s.cluster_ip == s.cluster_ips[0]
    four, six = map(ipaddress.ip_address, s.cluster_ips)
    assert four in NET4 and six in NET6
    assert set(claimed(dual)) == {str(four), str(six)} and set(claimed(dual).values()) == {"default/web"}
    (v6_first,) = applied(dual, svc("v6", ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv6"]))
    assert v6_first.ip_families == ("IPv6", "IPv4") and ":" in v6_first.cluster_ip
    (alone,) = applied(single, svc(ipFamilyPolicy="PreferDualStack"))
    assert (alone.ip_families, len(alone.cluster_ips)) == (("IPv4",), 1)


def test_require_dual_stack_is_refused_on_a_single_stack_cluster(dual, single):
    with pytest.raises(ObjectError, match=r"Service default/web: spec\.ipFamilyPolicy: RequireDualStack: this "
                                          r"cluster is not configured for dual-stack services"):
        applied(single, svc(ipFamilyPolicy="RequireDualStack"))
    assert single.list(keys.CLUSTER_IPS) == []
    (s,) = applied(dual, svc(ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"],
                             clusterIPs=["fd00:10:96::30"]))
    assert s.cluster_ips[0] == "fd00:10:96::30" and ipaddress.ip_address(s.cluster_ips[1]) in NET4


@pytest.mark.parametrize(("spec", "message"), [
    ({"clusterIPs": ["10.96.0.5", "fd00:10:96::5"]},
     r"spec\.ipFamilyPolicy: SingleStack takes one family, but two cluster IPs"),
    ({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]},
     r"spec\.ipFamilyPolicy: SingleStack takes one family, but two IP families"),
])
def test_single_stack_with_two_families_is_refused(dual, spec, message):
    with pytest.raises(ObjectError, match=message):
        applied(dual, svc(**spec))


@pytest.mark.parametrize(("spec", "message"), [
    ({"ipFamilies": ["IPv6"]}, r"spec\.ipFamilies\[0\]: IPv6 is not configured on this cluster"),
    ({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]},
     r"spec\.ipFamilies\[1\]: IPv6 is not configured"),
    ({"clusterIP": "fd00:10:96::5"}, r"spec\.clusterIPs\[0\]: IPv6 is not configured on this cluster"),
])
def test_a_family_the_cluster_lacks_is_refused(single, spec, message):
    with pytest.raises(ObjectError, match=message):
        applied(single, svc(**spec))


def test_requested_addresses_are_checked_against_their_familys_cidr(dual):
    with pytest.raises(ObjectError, match=r"spec\.clusterIPs\[1\]: fd00:10:97::5 is not a usable address of the "
                                          r"service CIDR fd00:10:96::/112"):
        applied(dual, svc(ipFamilyPolicy="PreferDualStack", clusterIPs=["10.96.0.5", "fd00:10:97::5"]))
    (s,) = applied(dual, svc(ipFamilyPolicy="PreferDualStack", clusterIPs=["10.96.0.5", "fd00:10:96::5"]))
    assert s.cluster_ips == ("10.96.0.5", "fd00:10:96::5")
    with pytest.raises(ObjectError, match="fd00:10:96::5 is already allocated to service default/web"):
        applied(dual, svc("other", clusterIP="fd00:10:96::5"))


def test_headless_services_get_families_but_no_address(dual, single):
    (sel,) = applied(dual, svc("hl", clusterIP="None", selector={"app": "web"}))
    assert (sel.cluster_ips, sel.ip_family_policy, sel.ip_families) == (("None",), "SingleStack", ("IPv4",))
    (bare,) = applied(single, svc("bare", clusterIP="None"))  # no selector: RequireDualStack, any cluster
    assert (bare.ip_family_policy, bare.ip_families) == ("RequireDualStack", ("IPv4", "IPv6"))
    (pref,) = applied(dual, svc("pref", clusterIP="None", selector={"app": "web"}, ipFamilyPolicy="PreferDualStack"))
    assert pref.ip_families == ("IPv4", "IPv6")
    assert dual.list(keys.CLUSTER_IPS) == [] and single.list(keys.CLUSTER_IPS) == []


# -- re-apply: immutable, upgrade, downgrade, delete ----------------------------------------


def test_reapply_keeps_both_addresses_and_changes_are_refused(dual):
    (first,) = applied(dual, svc(ipFamilyPolicy="PreferDualStack"))
    (again,) = applied(dual, svc(ports=[{"port": 81}]))  # policy and addresses left out: kept
    assert (again.cluster_ips, again.ip_family_policy) == (first.cluster_ips, "PreferDualStack")
    with pytest.raises(ObjectError, match=r"spec\.clusterIPs\[1\]: 'fd00:10:96::99' differs .* immutable"):
        applied(dual, svc(clusterIPs=[first.cluster_ip, "fd00:10:96::99"]))
    with pytest.raises(ObjectError, match=r"spec\.clusterIP: '10\.96\.9\.9' differs .* immutable"):
        applied(dual, svc(clusterIP="10.96.9.9"))
    with pytest.raises(ObjectError, match=r"spec\.ipFamilies\[0\]: IPv6 differs from IPv4: the primary family is "
                                          r"immutable"):
        applied(dual, svc(ipFamilies=["IPv6", "IPv4"]))
    with pytest.raises(ObjectError, match=r"spec\.ipFamilyPolicy: PreferDualStack: must be SingleStack to release "
                                          r"the secondary cluster IP"):
        applied(dual, svc(clusterIPs=[first.cluster_ip]))
    assert set(claimed(dual)) == set(first.cluster_ips)


def test_upgrade_adds_the_second_address_and_downgrade_frees_it(dual):
    (s,) = applied(dual, svc())
    (up,) = applied(dual, svc(ipFamilyPolicy="RequireDualStack"))
    assert up.cluster_ips[0] == s.cluster_ip and len(up.cluster_ips) == 2 and up.ip_families == ("IPv4", "IPv6")
    assert set(claimed(dual)) == set(up.cluster_ips)
    (down,) = applied(dual, svc(ipFamilyPolicy="SingleStack"))
    assert (down.cluster_ips, down.ip_families) == ((s.cluster_ip,), ("IPv4",))
    assert set(claimed(dual)) == {s.cluster_ip}  # the secondary's claim is freed in the same apply
    (up,) = applied(dual, svc(ipFamilyPolicy="PreferDualStack"))
    (as_stored,) = applied(dual, {**svc(), "spec": {**up.to_dict()["spec"], "ipFamilyPolicy": "SingleStack"}})
    assert as_stored.cluster_ips == (s.cluster_ip,)  # the stored manifest set to SingleStack: trimmed
    assert set(claimed(dual)) == {s.cluster_ip}
    repo.delete(dual, parse_documents([svc()]))
    assert dual.list(keys.CLUSTER_IPS) == []


def test_prefer_dual_stack_is_not_upgraded_when_the_cluster_becomes_dual_stack(single):
    (s,) = applied(single, svc(ipFamilyPolicy="PreferDualStack"))
    single.put(keys.SERVICE_SETTINGS, ServiceSettings(f"{V4},{V6}").encode())
    (same,) = applied(single, svc(ipFamilyPolicy="PreferDualStack"))
    assert same.cluster_ips == s.cluster_ips
    (up,) = applied(single, svc(ipFamilyPolicy="RequireDualStack"))  # an explicit change does it
    assert len(up.cluster_ips) == 2


def test_a_service_stored_before_dual_stack_reads_and_reapplies(dual):
    stored = svc(clusterIP="10.96.0.40")
    dual.put(one(stored).key, json.dumps(stored))  # as a release before dual stack wrote it
    dual.put(keys.cluster_ip("10.96.0.40"), ServiceClaim("default/web").encode())
    old = read_service(dual.get(one(stored).key).json())
    assert (old.families, old.ip_family_policy, old.virtual_ips) == (("IPv4",), "", ("10.96.0.40",))
    (s,) = applied(dual, svc(ports=[{"port": 80}]))
    assert (s.cluster_ips, s.ip_family_policy, s.ip_families) == (("10.96.0.40",), "SingleStack", ("IPv4",))


def test_get_and_describe_show_the_families(dual):
    (s,) = applied(dual, svc(ipFamilyPolicy="PreferDualStack"))
    out = describe(dual, lookup("svc"), "web", "default")
    assert out["details"][:4] == [["IP Family Policy", "PreferDualStack"], ["IP Families", "IPv4,IPv6"],
                                  ["IP", s.cluster_ip], ["IPs", ",".join(s.cluster_ips)]]
    assert SERVICE.columns[1].value(out["object"]) == s.cluster_ip  # CLUSTER-IP: the primary, as kubectl


# -- the data path: plan, nft, DNS ----------------------------------------------------------


PORTS = ({"name": "http", "port": 8080, "protocol": "TCP"},)
PODS = [PodRecord("default", "a", "n0", ("10.244.0.2", "fd00:10:244::2"), {"app": "web"}, PORTS),
        PodRecord("default", "b", "n1", ("10.244.1.2", "fd00:10:244:1::2"), {"app": "web"}, PORTS),
        PodRecord("default", "c", "n1", ("10.244.1.3",), {"app": "web"}, PORTS)]  # an IPv4-only pod
DUAL = {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"],
        "clusterIPs": ["10.96.0.20", "fd00:10:96::20"], "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}


def test_each_family_is_planned_with_its_own_backends():
    (port,) = node_plan([one(svc(**DUAL))], PODS, [], {}, "n0", ("172.31.0.1",),
                        ("10.244.0.0/16", "fd00:10:244::/56")).services
    assert port.cluster_ips == ("10.96.0.20", "fd00:10:96::20")
    assert sorted(b.ip for b in port.backends) == ["10.244.0.2", "10.244.1.2", "10.244.1.3",
                                                   "fd00:10:244:1::2", "fd00:10:244::2"]
    (single,) = node_plan([one(svc(**{**DUAL, "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
                                      "clusterIPs": ["fd00:10:96::20"]}))], PODS, [], {}, "n0", (), ()).services
    assert all(":" in b.ip for b in single.backends)  # a v6 single-stack service: the pods' v6 addresses


def test_the_table_serves_each_family_with_its_backends():
    plan = node_plan([one(svc(**DUAL))], PODS, [], {}, "n0", ("172.31.0.1",), ("10.244.0.0/16", "fd00:10:244::/56"))
    script = render_table(plan)
    v4 = [line for line in script.splitlines() if "dnat ip to" in line]
    v6 = [line for line in script.splitlines() if "dnat ip6 to" in line]
    assert {line.split("dnat ip to ")[1].split()[0] for line in v4} == {"10.244.0.2:8080", "10.244.1.2:8080",
                                                                        "10.244.1.3:8080"}
    assert {line.split("dnat ip6 to ")[1].split()[0] for line in v6} == {"[fd00:10:244::2]:8080",
                                                                         "[fd00:10:244:1::2]:8080"}
    assert "10.96.0.20 . tcp . 80" in script and "fd00:10:96::20 . tcp . 80" in script
    assert not any("fd00" in line for line in v4) and not any("10.244" in line for line in v6)


def test_dns_answers_a_and_aaaa_and_ptr_of_both_cluster_ips():
    z = build_cluster_zone("cluster.local", [one(svc(**DUAL))], PODS, [], {}, [V4, V6, "10.244.0.0/16"])
    name = "web.default.svc.cluster.local"
    assert (z.lookup(name, "A"), z.lookup(name, "AAAA")) == (["10.96.0.20"], ["fd00:10:96::20"])
    ptr6 = ipaddress.ip_address("fd00:10:96::20").reverse_pointer
    assert z.lookup(ptr6, "PTR") == [name] and z.is_local(ptr6)
    answerer = Answerer(z.lookup, is_local=z.is_local)
    reply = DNSRecord.parse(answerer.answer(bytes(DNSRecord.question(name, "AAAA").pack()), "10.244.0.2",
                                            udp=True).payload)
    assert [(rr.rtype, str(rr.rdata)) for rr in reply.rr] == [(QTYPE.AAAA, "fd00:10:96::20")]


def test_headless_services_answer_the_pod_addresses_of_their_families():
    both = one(svc("hl", clusterIP="None", ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv4", "IPv6"],
                   selector={"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": "http"}]))
    v4 = one(svc("hl4", clusterIP="None", ipFamilies=["IPv4"], selector={"app": "web"},
                 ports=[{"name": "http", "port": 80, "targetPort": "http"}]))
    z = build_cluster_zone("cluster.local", [both, v4], PODS, [], {})
    assert sorted(z.lookup("hl.default.svc.cluster.local", "A")) == ["10.244.0.2", "10.244.1.2", "10.244.1.3"]
    assert sorted(z.lookup("hl.default.svc.cluster.local", "AAAA")) == ["fd00:10:244:1::2", "fd00:10:244::2"]
    assert z.lookup("fd00-10-244--2.hl.default.svc.cluster.local", "AAAA") == ["fd00:10:244::2"]
    assert z.lookup("hl4.default.svc.cluster.local", "AAAA") == []  # exists, no IPv6: NODATA
    assert len(z.lookup("hl4.default.svc.cluster.local", "A")) == 3
