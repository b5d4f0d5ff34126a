"""agent/gossip_dns.py and dns/gossip_zone.py: a node's pods published as `dns/`
documents of real (not started) GossipPeers, removal, other and dead nodes' documents,
bad documents, the store's view, and the names the cluster DNS answers from it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from podnet import keys
from podnet.agent.cluster_dns_service import ClusterDnsService
from podnet.agent.gossip_dns import ALIAS_LABEL, GossipDns, doc_key
from podnet.cluster.options import GossipOptions, NodeOptions
from podnet.dns.answer import Answerer
from podnet.dns.cluster import ClusterZone, pod_fragment
from podnet.dns.gossip_zone import CombinedZone, GossipZone, check_entry
from podnet.gossip.peers import GossipPeer
from podnet.model.policy import PodRecord
from podnet.store.memory import MemoryStore

DOMAIN = "weave.test"


def peer(name: str) -> GossipPeer:
    return GossipPeer(name, listen=("127.0.0.1", 0))  # never started: no socket, no thread


def add_pod(store: MemoryStore, name: str, node: str, *ips: str, namespace: str = "default", **labels: str) -> None:
    pod = PodRecord(namespace, name, node, tuple(ips), labels)
    store.put(pod.key, pod.encode())


def view(store: MemoryStore) -> dict[str, object]:
    return {entry.key: entry.json() for entry in store.list(keys.GOSSIP_DNS)}


def carry(source: GossipPeer, target: GossipPeer) -> None:
    """What a gossip round would bring: every document of `source`, tombstones too."""
    target.restore(source.snapshot())


@pytest.fixture
def node():
    store = MemoryStore()
    yield store, GossipDns("n1", peer("n1"), store, DOMAIN, ttl=30)
    store.close()


def test_own_pods_are_published_with_their_aliases(node):
    store, dns = node
    add_pod(store, "web", "n1", "10.244.1.5", "fd00::5", **{ALIAS_LABEL: "Front"})
    add_pod(store, "db", "n2", "10.244.2.7")  # another node's pod: its node publishes it
    assert dns.sync()
    mine = {"node": "n1", "ttl": 30, "pod": "default/web"}
    assert dns.docs.documents("dns/") == {doc_key(h, ip): mine for h in ("web", "front")
                                           for ip in ("10.244.1.5", "fd00::5")}
    assert view(store) == {keys.gossip_dns(h, ip): {"node": "n1", "ttl": 30}
                           for h in ("web", "front") for ip in ("10.244.1.5", "fd00::5")}
    assert not dns.sync()  # nothing changed: nothing written


def test_an_alias_that_is_no_dns_label_is_ignored_and_logged_once(node, caplog):
    store, dns = node
    add_pod(store, "web", "n1", "10.244.1.5", **{ALIAS_LABEL: "not_a.label"})
    with caplog.at_level(logging.WARNING, "podnet.gossip"):
        dns.sync()
        add_pod(store, "api", "n1", "10.244.1.6")
        dns.sync()
    assert list(dns.docs.documents("dns/")) == [doc_key("api", "10.244.1.6"), doc_key("web", "10.244.1.5")]
    assert [r.getMessage() for r in caplog.records].count(
        f"gossip dns: pod default/web: label {ALIAS_LABEL} 'not_a.label' is not a DNS label: no name from it") == 1


def test_a_removed_pod_is_tombstoned_and_leaves_the_view(node):
    store, dns = node
    add_pod(store, "web", "n1", "10.244.1.5")
    add_pod(store, "api", "n1", "10.244.1.6")
    dns.sync()
    store.delete(keys.pod("default", "web"))
    assert dns.sync()
    tomb = dns.docs.document(doc_key("web", "10.244.1.5"))
    assert tomb is not None and tomb.deleted and tomb.writer == "n1"
    assert list(view(store)) == [keys.gossip_dns("api", "10.244.1.6")]


def test_a_pod_readdressed_moves_its_name(node):
    store, dns = node
    add_pod(store, "web", "n1", "10.244.1.5")
    dns.sync()
    add_pod(store, "web", "n1", "10.244.1.9")
    dns.sync()
    assert list(dns.docs.documents("dns/")) == [doc_key("web", "10.244.1.9")]
    assert list(view(store)) == [keys.gossip_dns("web", "10.244.1.9")]


def test_another_nodes_documents_are_served_and_left_alone(node):
    store, dns = node
    other = GossipDns("n2", peer("n2"), MemoryStore(), DOMAIN, ttl=60)
    add_pod(other.store, "db", "n2", "10.244.2.7")
    other.sync()
    carry(other.docs, dns.docs)
    add_pod(store, "web", "n1", "10.244.1.5")
    assert dns.sync()
    assert dns.docs.documents("dns/")[doc_key("db", "10.244.2.7")] == {"node": "n2", "ttl": 60, "pod": "default/db"}
    assert view(store)[keys.gossip_dns("db", "10.244.2.7")] == {"node": "n2", "ttl": 60}
    store.delete(keys.pod("default", "web"))  # a change here: n1 reconciles again, n2's name stays
    dns.sync()
    assert list(dns.docs.documents("dns/")) == [doc_key("db", "10.244.2.7")]
    other.store.delete(keys.pod("default", "db"))  # its own node removes it, and the gossip brings that
    other.sync()
    carry(other.docs, dns.docs)
    assert dns.sync() and view(store) == {}


def test_a_dead_nodes_documents_go_once_its_lease_is_gone(node):
    store, dns = node
    other = peer("n2")
    other.put(doc_key("db", "10.244.2.7"), {"node": "n2", "ttl": 30, "pod": "default/db"})
    other.put(doc_key("cache", "10.244.3.7"), {"node": "n3", "ttl": 30, "pod": "default/cache"})
    carry(other, dns.docs)
    store.put_json(keys.node("n2"), {"block": "10.244.2.0/24"})
    dns.sync(dead={"n2"})  # buried by the ring but its lease still stands: kept
    assert doc_key("db", "10.244.2.7") in dns.docs.documents("dns/")
    store.delete(keys.node("n2"))
    dns.sync()  # the lease is gone but nobody said n2 is dead: kept
    assert doc_key("db", "10.244.2.7") in dns.docs.documents("dns/")
    assert dns.sync(dead={"n2"})
    assert dns.docs.document(doc_key("db", "10.244.2.7")).deleted
    assert list(dns.docs.documents("dns/")) == [doc_key("cache", "10.244.3.7")]  # n3 is not dead
    assert list(view(store)) == [keys.gossip_dns("cache", "10.244.3.7")]


BAD_DOCUMENTS = {
    "dns/Bad_Name/10.244.2.1": {"node": "n2", "ttl": 30},
    "dns/ok/10.244.2.300": {"node": "n2", "ttl": 30},
    "dns/ok/fe80::1%eth0": {"node": "n2", "ttl": 30},
    "dns/zero/10.244.2.2": {"node": "n2", "ttl": 0},
    "dns/bool/10.244.2.3": {"node": "n2", "ttl": True},
    "dns/long/10.244.2.4": {"node": "n2", "ttl": 86401},
    "dns/text/10.244.2.5": "not an object",
    "dns/nonode/10.244.2.6": {"ttl": 30},
    "dns/short": {"node": "n2", "ttl": 30},
    "dns/a/b/10.244.2.8": {"node": "n2", "ttl": 30},
}


def test_bad_documents_never_reach_the_view_and_are_logged_once(node, caplog):
    store, dns = node
    other = peer("n2")
    for key, value in BAD_DOCUMENTS.items():
        other.put(key, value)
    other.put(doc_key("good", "10.244.2.9"), {"node": "n2", "ttl": 86400})
    carry(other, dns.docs)
    with caplog.at_level(logging.WARNING, "podnet.gossip"):
        dns.sync()
        add_pod(store, "web", "n1", "10.244.1.5")
        dns.sync()
    assert view(store) == {keys.gossip_dns("good", "10.244.2.9"): {"node": "n2", "ttl": 86400},
                           keys.gossip_dns("web", "10.244.1.5"): {"node": "n1", "ttl": 30}}
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == len(BAD_DOCUMENTS)
    assert all(dns.docs.document(key) is not None and not dns.docs.document(key).deleted for key in BAD_DOCUMENTS)


def test_the_view_is_brought_back_to_the_documents(node):
    store, dns = node
    add_pod(store, "web", "n1", "10.244.1.5")
    dns.sync()
    store.put_json(keys.gossip_dns("ghost", "10.244.9.9"), {"node": "n9", "ttl": 30})  # stale
    store.put_json(keys.gossip_dns("web", "10.244.1.5"), {"node": "n1", "ttl": 5})  # changed
    assert dns.sync()
    assert view(store) == {keys.gossip_dns("web", "10.244.1.5"): {"node": "n1", "ttl": 30}}


def test_check_entry_canonicalises_and_names_the_field():
    assert check_entry("Web", "FD00:0::5", {"node": "n1", "ttl": 1}).hostname == "web"
    assert check_entry("web", "FD00:0::5", {"node": "n1", "ttl": 1}).ip == "fd00::5"
    for hostname, ip, value, field in [("-web", "10.0.0.1", {"node": "n", "ttl": 1}, "hostname"),
                                       ("web", "010.0.0.1", {"node": "n", "ttl": 1}, "ip"),
                                       ("web", "10.0.0.1", {"node": "n", "ttl": "30"}, "ttl"),
                                       ("web", "10.0.0.1", {"node": 3, "ttl": 30}, "node")]:
        with pytest.raises(ValueError, match=field):
            check_entry(hostname, ip, value)


# -- answering


def ask(answerer: Answerer, name: str, qtype: str = "A") -> DNSRecord:
    reply = answerer.answer(DNSRecord.question(name, qtype).pack(), "10.244.1.50", udp=True)
    return DNSRecord.parse(reply.payload)


def answers(reply: DNSRecord) -> list[tuple[str, int]]:
    return sorted((str(rr.rdata), rr.ttl) for rr in reply.rr)


@pytest.fixture
def served(node):
    """n1's view with web (two addresses, two nodes' TTLs) and a cluster zone beside it."""
    store, dns = node
    other = GossipDns("n2", peer("n2"), MemoryStore(), DOMAIN, ttl=120)
    add_pod(other.store, "web", "n2", "10.244.2.5", namespace="shop")
    other.sync()
    carry(other.docs, dns.docs)
    add_pod(store, "web", "n1", "10.244.1.5", "fd00::5")
    dns.sync()
    zone = GossipZone(DOMAIN.upper() + ".")
    zone.relist(store.list(keys.GOSSIP_DNS))
    cluster = ClusterZone("cluster.local")
    pod = PodRecord("default", "web", "n1", ("10.244.1.5",))
    cluster.set("pod default/web", pod_fragment("cluster.local", pod))
    return store, dns, zone, Answerer(CombinedZone((zone, cluster)).lookup, is_local=CombinedZone((zone, cluster)).is_local)


def test_the_zone_answers_a_and_aaaa_with_each_records_ttl(served):
    _store, _dns, _zone, answerer = served
    reply = ask(answerer, "web.weave.test", "A")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa
    assert answers(reply) == [("10.244.1.5", 30), ("10.244.2.5", 120)]
    assert answers(ask(answerer, "WEB.weave.test.", "AAAA")) == [("fd00::5", 30)]
    assert [QTYPE[rr.rtype] for rr in ask(answerer, "web.weave.test", "ANY").rr].count("AAAA") == 1


def test_unknown_names_under_the_domain_are_nxdomain_and_the_rest_unchanged(served):
    _store, _dns, _zone, answerer = served
    for name in ("nope.weave.test", "a.web.weave.test"):
        reply = ask(answerer, name)
        assert reply.header.rcode == RCODE.NXDOMAIN and reply.header.aa
    apex = ask(answerer, "weave.test")
    assert apex.header.rcode == RCODE.NOERROR and not apex.rr  # the domain exists, without data
    assert answers(ask(answerer, "10-244-1-5.default.pod.cluster.local")) == [("10.244.1.5", 10)]
    assert ask(answerer, "example.org").header.rcode == RCODE.REFUSED  # no upstream: as before


def test_the_zone_follows_the_stores_events_and_names_bad_keys(served):
    store, dns, zone, answerer = served
    revision = store.revision()
    store.delete(keys.pod("default", "web"))
    dns.sync()
    store.put(keys.gossip_dns("junk", "10.244.9.9"), '{"ttl": 0, "node": "n9"}')
    zone.feed(store.watch("", revision, 0))
    assert answers(ask(answerer, "web.weave.test")) == [("10.244.2.5", 120)]
    assert ask(answerer, "web.weave.test", "AAAA").rr == []  # still a name (NODATA), no v6 left
    assert zone.problems() == [f"{keys.gossip_dns('junk', '10.244.9.9')}: ttl 0 is not an integer of 1 to 86400"]
    assert ask(answerer, "junk.weave.test").header.rcode == RCODE.NXDOMAIN


def test_the_cluster_dns_service_serves_the_gossip_domain_only_on_a_gossip_node(served):
    store, *_ = served
    options = NodeOptions("n1", fabric="gossip", gossip=GossipOptions(dns_domain=DOMAIN))
    service = ClusterDnsService(SimpleNamespace(node_options=options))  # type: ignore[arg-type]
    service.refresh(store)
    assert service.gossip_zone is not None
    assert service.gossip_zone.lookup("web.weave.test", "A") == ["10.244.1.5", "10.244.2.5"]
    assert service.status()["gossip_names"] == 1 and service.status()["gossip_domain"] == DOMAIN
    plain = ClusterDnsService(SimpleNamespace(node_options=NodeOptions("n1")))  # type: ignore[arg-type]
    plain.refresh(store)
    assert plain.gossip_zone is None and plain.status()["gossip_names"] == 0
