"""One change among many policies costs what changed (issue 19), and gives exactly
what a compile from scratch gives: the world updated from watch events
(policy/world.py), the compiler's per-endpoint parts (policy/np_parts.py), and a
difference that names the generation it applies to (agent/policy_service.py)."""

from __future__ import annotations

import random
import re

import pytest

from podnet import keys
from podnet.agent.policy_service import PolicyService
from podnet.errors import KernelError
from podnet.model.policy import PodRecord
from podnet.objects import store as objects
from podnet.objects.registry import parse_documents
from podnet.policy.compile import CompileCache, compile_node
from podnet.policy.world import BUILT, load_world
from podnet.store import open_store
from unit.test_policy_service import KernelNft, agent


def np_doc(i: int, port: int, peer: str = "client", pods: str = "web", ns: str = "x") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"p{i}", "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": pods}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}}],
                                  "ports": [{"port": port}]}]}}


def ns_doc(name: str, team: str = "a") -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": team}}}


@pytest.fixture
def store():
    with open_store("memory://") as handle:
        objects.apply(handle, parse_documents([ns_doc("x"), ns_doc("y")]))
        for name, app, ip in (("w1", "web", "10.244.0.2"), ("w2", "web", "10.244.0.3"),
                              ("c1", "client", "10.244.0.4"), ("d1", "db", "10.244.0.5")):
            record = PodRecord("x", name, "node0", (ip,), {"app": app})
            handle.put(record.key, record.encode())
        yield handle


def events_since(store, revision: int) -> tuple[list, int]:
    seen = store.watch(keys.POLICY, revision, 0)
    return seen, max([revision, *(e.revision for e in seen)])


def random_step(store, rng: random.Random, n: int) -> None:
    """One change of the kinds a cluster makes: mostly a policy edited, added or
    deleted; now and then a namespace relabelled or a pod's labels changed."""
    roll = rng.random()
    if roll < 0.6:
        objects.apply(store, parse_documents([np_doc(rng.randrange(n), rng.randrange(1, 60000),
                                                     rng.choice(("client", "db", "web")),
                                                     rng.choice(("web", "db")), rng.choice("xy"))]))
    elif roll < 0.8:
        i = rng.randrange(n)
        store.delete(keys.object_key(keys.NETWORK_POLICIES, f"p{i}", "x"))
    elif roll < 0.9:
        objects.apply(store, parse_documents([ns_doc("y", rng.choice("ab"))]))
    else:
        record = PodRecord("x", "d1", "node0", ("10.244.0.5",), {"app": rng.choice(("db", "web"))})
        store.put(record.key, record.encode())


def test_the_world_updated_from_events_is_the_world_listed(store):
    rng = random.Random(19)
    objects.apply(store, parse_documents([np_doc(i, 1000 + i) for i in range(40)]))
    cache: dict = {}
    world, revision = load_world(store, cache, None, [])
    for _ in range(60):
        random_step(store, rng, 50)
        seen, _ = events_since(store, revision)
        world, revision = load_world(store, cache, seen, [])
        fresh, fresh_revision = load_world(store)
        assert (world, revision) == (fresh, fresh_revision)
        assert list(world.network_policies) == list(fresh.network_policies)  # the same order too


def test_a_policy_event_reuses_the_world_and_a_quiet_listing_returns_it(store):
    objects.apply(store, parse_documents([np_doc(i, 1000 + i) for i in range(10)]))
    cache: dict = {}
    first, revision = load_world(store, cache, None, [])
    objects.apply(store, parse_documents([np_doc(3, 2003)]))
    seen, _ = events_since(store, revision)
    second, revision = load_world(store, cache, seen, [])
    assert second.endpoints is first.endpoints and second.namespaces is first.namespaces  # not rebuilt
    assert [p.ingress[0].ports[0].port for p in second.network_policies if p.name == "p3"] == [2003]
    assert load_world(store, cache, None, [])[0] is second  # a periodic listing: nothing changed
    store.delete(keys.object_key(keys.NETWORK_POLICIES, "p4", "x"))  # a change the listing finds
    listed, revision = load_world(store, cache, None, [])
    assert "p4" not in {p.name for p in listed.network_policies} and listed == load_world(store)[0]
    objects.apply(store, parse_documents([ns_doc("x", "b")]))  # not a NetworkPolicy: a full build
    seen, _ = events_since(store, revision)
    third, _ = load_world(store, cache, seen, [])
    assert third.namespaces["x"]["team"] == "b" and third.network_policies == listed.network_policies


def test_a_record_that_does_not_parse_falls_back_to_the_full_build(store):
    objects.apply(store, parse_documents([np_doc(i, 1000 + i) for i in range(5)]))
    cache: dict = {}
    _, revision = load_world(store, cache, None, [])
    store.put(keys.object_key(keys.NETWORK_POLICIES, "p2", "x"), '{"kind": "NetworkPolicy"}')
    seen, _ = events_since(store, revision)
    problems: list[str] = []
    world, _ = load_world(store, cache, seen, problems)
    assert problems and "its last good version stays" in problems[0]
    assert [p.name for p in world.network_policies] == [f"p{i}" for i in range(5)]  # p2 as it was
    assert BUILT not in cache  # a world with problems is built whole each time


def test_an_incremental_compile_equals_a_compile_from_scratch(store):
    rng = random.Random(7)
    objects.apply(store, parse_documents([np_doc(i, 1000 + i) for i in range(40)]))
    parsed: dict = {}
    cache = CompileCache()
    world, revision = load_world(store, parsed, None, [])
    last = compile_node(world, "node0", cache=cache)
    for _ in range(60):
        random_step(store, rng, 50)
        seen, _ = events_since(store, revision)
        world, revision = load_world(store, parsed, seen, [])
        compiled = compile_node(world, "node0", cache=cache)
        scratch = compile_node(world, "node0")
        assert compiled.render() == scratch.render() and compiled.rules == scratch.rules
        assert scratch.diff(last) == compiled.diff(last)  # the same transaction either way
        last = compiled


def test_an_edit_reuses_every_other_endpoints_part(store):
    objects.apply(store, parse_documents([np_doc(i, 1000 + i, pods="web" if i % 2 else "db")
                                          for i in range(20)]))
    parsed: dict = {}
    cache = CompileCache()
    world, revision = load_world(store, parsed, None, [])
    first = compile_node(world, "node0", cache=cache)
    parts = dict(cache.parts)
    objects.apply(store, parse_documents([np_doc(3, 2003)]))  # selects web: w1 and w2
    seen, _ = events_since(store, revision)
    world, _ = load_world(store, parsed, seen, [])
    diff = compile_node(world, "node0", cache=cache).diff(first)
    changed = [key for key, part in cache.parts.items() if parts.get(key) is not part]
    assert sorted(key[0][2] for key in changed) == ["w1", "w2"]  # d1's part is the same object
    assert diff.count("flush chain") == 2 and "th dport 2003 " in diff and "th dport 1003 " not in diff


class CasNft(KernelNft):
    """KernelNft that refuses, as nft does, a transaction deleting a generation
    counter the table does not hold; counts the reads of the generation."""

    reads = 0

    def apply(self, script: str) -> None:
        found = re.search(r"delete counter inet podnet-policy (generation_\d+)\n", script)
        if found and found.group(1) not in {c["counter"]["name"] for c in self.held()}:
            raise KernelError("nft transaction failed", details="Error: Could not process rule: No such file")
        super().apply(script)

    def held(self) -> list[dict]:
        return (super().list_counters_json("inet", "podnet-policy") or {}).get("nftables", [])

    def list_counters_json(self, family: str, table: str) -> dict | None:
        self.reads += 1
        return super().list_counters_json(family, table)


def test_a_change_names_the_generation_it_applies_to(store, caplog):
    objects.apply(store, parse_documents([np_doc(i, 1000 + i) for i in range(5)]))
    nft = CasNft()
    svc = PolicyService(agent(store), nft)
    svc.converge()
    revision = store.revision()
    reads = nft.reads
    objects.apply(store, parse_documents([np_doc(1, 2001)]))
    seen, revision = events_since(store, revision)
    svc.converge(events=seen)
    assert svc.stats["changed"] and not svc.stats["full"]
    assert nft.scripts[-1].startswith("flush chain") and "delete counter" in nft.scripts[-1]
    assert "element" not in nft.scripts[-1]  # (an element command makes nft read every interval set)
    assert nft.reads == reads  # the service read nothing back
    nft._hold(12345)  # the table replaced by hand: the next difference is refused, then the whole table
    objects.apply(store, parse_documents([np_doc(2, 2002)]))
    seen, revision = events_since(store, revision)
    svc.converge(events=seen)
    assert svc.stats["full"] and svc.status()["error"] is None
    assert "nft refused a change" in caplog.text and nft.scripts[-1].startswith("table inet podnet-policy")
    assert [c["counter"]["name"] for c in nft.held()] == [f"generation_{svc._generation}"]


def test_a_record_is_followed_by_its_store_key_whatever_its_manifest_says(store):
    """A record written by hand under another key than its name: its events come from
    that key, and deleting it takes its policy out of the world."""
    from podnet.store.base import dumps

    objects.apply(store, parse_documents([np_doc(i, 1000 + i) for i in range(3)]))
    odd = keys.object_key(keys.NETWORK_POLICIES, "by-hand", "x")
    store.put(odd, dumps(np_doc(7, 7007)))  # names x/p7
    cache: dict = {}
    world, revision = load_world(store, cache, None, [])
    assert "p7" in {p.name for p in world.network_policies}
    store.delete(odd)
    seen, _ = events_since(store, revision)
    world, _ = load_world(store, cache, seen, [])
    assert "p7" not in {p.name for p in world.network_policies} and world == load_world(store)[0]
