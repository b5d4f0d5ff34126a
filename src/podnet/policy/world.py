"""The policy world as the store holds it: every policy object, namespace and pod.

`load_world` is what each node's agent compiles from, and what `podnet policy
explain` and `podnet describe` judge with. Objects are parsed through their kind's
declaration (policy/kinds.py), pods read as PodRecords, and host endpoints without
explicit addresses get their machine's underlay address (a node's from its lease, a
plain lab host's from its `hosts/<name>` record, with its podnet address once joined).

Records that cannot be used (the agent passes `problems`; the CLI's strict reading
raises instead), so that one bad record never freezes the policy of the cluster, and
never opens what it closed:
- a record that no longer parses keeps its last good version (while the agent runs);
- a pod record never seen good is left out: its addresses are then no pod's, which a
  node drops in its own block (policy/compile.py), and no selector can match it;
- any other object never seen good (a policy, namespace, tier or host endpoint) stops
  the build (CorruptRecord): leaving it out could open what it closes, so the node
  keeps the table in force;
- another cluster's pods (`policy/remotepods/<cluster>/...`, clusterset/) are peers for
  selectors, never enforced here;
- an address that two pods claim (a recycled address still named by a former pod's
  record) belongs to neither: it is left out of both.
Each is reported in `problems`, naming the key.

One NetworkPolicy changed among 10,000 (the common event) does not rebuild the world:
the agent's cache keeps the last world built (`_Built`), and a batch of events that
only puts or deletes NetworkPolicies that parse replaces them in its sorted tuple
(bisect), everything else shared. Anything else (another kind, a record that does not
parse, a world whose build reported problems or read the store for host addresses)
builds the world whole, as before. A listing (the agent's periodic pass) that finds
every record as the cache holds it returns the last world as it is.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from podnet import keys
from podnet.errors import PodnetError
from podnet.model.base import CorruptRecord, parse_json
from podnet.model.cluster import HostRecord, NodeLease
from podnet.model.policy import PodRecord, decode_pod
from podnet.policy.evaluate import Endpoint, NamedPort, World
from podnet.policy.kinds import POLICY_KINDS
from podnet.policy.objects import HostEndpoint, NetworkPolicy
from podnet.schema.fields import Loc
from podnet.store.base import PUT, Store

AS_OF = ""  # load_world's cache: the revision it reflects, under a key no object has
BUILT = "\0built"  # ... and the last world it built (_Built), under another such key
_NOT_OBJECTS = (AS_OF, BUILT)
_BY_PREFIX = {kind.prefix: kind for kind in POLICY_KINDS if kind.parse is not None}


def parse_stored(key: str, value: str) -> Any:
    """A stored policy object (or pod record) by its key: the kind's parser, with
    errors naming the key (a document read back is validated like a new one)."""
    if key.startswith((keys.PODS, keys.REMOTE_PODS)):
        return decode_pod(value, key)
    kind = next((k for prefix, k in _BY_PREFIX.items() if key.startswith(prefix)), None)
    if kind is None:
        raise CorruptRecord(f"{key!r} is no policy object's key")
    doc = parse_json(value, key)
    if not isinstance(doc, Mapping) or doc.get("kind") != kind.kind:
        raise CorruptRecord(f"{key}: expected a {kind.kind} manifest")
    return kind.parse_manifest(doc, Loc(key))


@dataclass(frozen=True)
class Unusable:
    """A cached record that does not parse: why, and its last good version (None:
    never seen good)."""

    error: str
    last_good: Any = None


def load_world(store: Store, parsed: dict[str, tuple[int, Any]] | None = None,
               events: Sequence[Any] | None = None,
               problems: list[str] | None = None) -> tuple[World, int]:
    """The policy world and the revision it reflects.

    `parsed` (kept by the caller) maps a key to (revision, parsed object): an unchanged
    entry is not parsed again and yields the very same object, which the compiler's
    cache relies on. With `events` (the watch events since the world `parsed` holds),
    only those keys are applied, and the store is not listed: one change among 10k
    objects costs one parse. Without them, one consistent snapshot is read.

    `problems` given: records that cannot be used are handled as the module says and
    reported there; else the first one raises."""
    cache: dict[str, tuple[int, Any]] = {} if parsed is None else parsed

    def parse(key: str, revision: int, value: str) -> None:
        try:
            cache[key] = (revision, parse_stored(key, value))
        except Exception as exc:  # noqa: BLE001 - lenient: any parser failure is this record's
            if problems is None:
                raise
            error = exc.msg if isinstance(exc, PodnetError) else f"{key}: cannot be read ({exc!r})"
            old = cache.get(key, (0, None))[1]
            cache[key] = (revision, Unusable(error, old.last_good if isinstance(old, Unusable) else old))

    as_of = cache.get(AS_OF, (0, None))[0]  # the revision the cache reflects
    built: _Built | None = cache.pop(BUILT, (0, None))[1]  # back only once this load succeeds
    if events is not None and as_of:
        revision = as_of
        touched: set[str] = set()
        for event in events:
            if event.revision <= as_of:
                continue  # already in the cache: a listing since then saw it (or its undoing)
            revision = max(revision, event.revision)
            if event.key == keys.POLICY_SETTINGS or not event.key.startswith(keys.POLICY):
                continue
            touched.add(event.key)
            if event.kind == PUT and event.value is not None:
                parse(event.key, event.revision, event.value)
            else:
                cache.pop(event.key, None)
        world = built.update(touched, cache) if built is not None else None
        if world is not None:
            cache[AS_OF] = (revision, None)
            cache[BUILT] = (revision, built)
            return world, revision
    else:
        entries, revision = store.snapshot(keys.POLICY)
        live = {AS_OF}
        parsed_any = False
        for entry in entries:
            if entry.key == keys.POLICY_SETTINGS:
                continue
            live.add(entry.key)
            hit = cache.get(entry.key)
            if hit is None or hit[0] != entry.revision:
                parse(entry.key, entry.revision, entry.value)
                parsed_any = True
        gone = [k for k in cache if k not in live]
        for key in gone:
            del cache[key]
        if built is not None and not parsed_any and not gone:  # a periodic pass that found no change
            cache[AS_OF] = (revision, None)
            cache[BUILT] = (revision, built)
            return built.world, revision
    cache[AS_OF] = (revision, None)
    seen = len(problems) if problems is not None else 0
    usable = _usable(cache, problems)
    world, hosts = _world(store, usable, problems)
    if parsed is not None and not hosts and (problems is None or len(problems) == seen):
        cache[BUILT] = (revision, _Built.of(world, usable))
    return world, revision


@dataclass
class _Built:
    """The last world built, and where its NetworkPolicies sit (module docstring)."""

    world: World
    order: list[tuple[str, str]]  # (namespace, name) of world.network_policies, sorted
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # store key -> (namespace, name)

    @classmethod
    def of(cls, world: World, usable: Mapping[str, Any]) -> _Built:
        """`usable`: what the world was built from, by store key (a record's key is
        where its events come from, whatever its manifest says)."""
        order = [(p.namespace, p.name) for p in world.network_policies]
        return cls(world, order, {key: (obj.namespace, obj.name) for key, obj in usable.items()
                                  if isinstance(obj, NetworkPolicy)})

    def update(self, touched: set[str], cache: Mapping[str, tuple[int, Any]]) -> World | None:
        """The world with the NetworkPolicies under `touched` as `cache` now holds them
        (parsed, or gone); None when a full build must decide (module docstring)."""
        changes: list[tuple[str, NetworkPolicy | None]] = []
        for key in touched:
            obj = cache.get(key, (0, None))[1]
            if not key.startswith(keys.NETWORK_POLICIES) or not (obj is None or isinstance(obj, NetworkPolicy)):
                return None
            changes.append((key, obj))
        policies = list(self.world.network_policies)
        order, by_key = list(self.order), dict(self.keys)
        for key, obj in changes:
            old = by_key.pop(key, None)
            if old is not None:
                at = bisect.bisect_left(order, old)
                del order[at], policies[at]
            if obj is not None:
                ref = (obj.namespace, obj.name)
                at = bisect.bisect_left(order, ref)
                if at < len(order) and order[at] == ref:
                    return None  # defined twice (under another key): the full build says so
                order.insert(at, ref)
                policies.insert(at, obj)
                by_key[key] = ref
        self.world = replace(self.world, network_policies=tuple(policies))
        self.order, self.keys = order, by_key
        return self.world


def _usable(cache: Mapping[str, tuple[int, Any]], problems: list[str] | None) -> dict[str, Any]:
    """key -> object to build from: last good versions stand in, pods never good are
    left out; an object never good stops the build."""
    out: dict[str, Any] = {}
    for key, (_rev, obj) in cache.items():
        if key in _NOT_OBJECTS:
            continue
        if isinstance(obj, Unusable):
            assert problems is not None  # only lenient loads cache these
            kept = "; its last good version stays" if obj.last_good is not None else ""
            problems.append(obj.error + kept)
            if obj.last_good is None and not key.startswith((keys.PODS, keys.REMOTE_PODS)):
                raise CorruptRecord(obj.error, "no policy change applies until it is fixed or deleted")
            obj = obj.last_good
        if obj is not None:
            out[key] = obj
    return out


def _world(store: Store, cache: Mapping[str, Any], problems: list[str] | None = None) -> tuple[World, bool]:
    """The world, and whether it read the store for host endpoints' addresses."""
    objects = [obj for key, obj in cache.items() if not key.startswith((keys.PODS, keys.REMOTE_PODS))]
    pods = [pod for key, pod in cache.items() if key.startswith(keys.PODS)]
    remote = [(key, pod) for key, pod in cache.items() if key.startswith(keys.REMOTE_PODS)]
    hosts = []
    for obj in objects:
        if isinstance(obj, HostEndpoint) and not obj.ips:
            hosts.append(Endpoint("host", obj.name, None, machine_addresses(store, obj), obj.labels, (), obj.machine))
    endpoints = endpoints_from_pods(pods, hosts) + remote_endpoints(remote)
    if problems is not None:
        endpoints = _without_shared_addresses(objects, endpoints, problems)
    return World.build(objects, endpoints), bool(hosts)


def _without_shared_addresses(objects: Sequence[Any], endpoints: Sequence[Endpoint],
                              problems: list[str]) -> list[Endpoint]:
    """Pods without the addresses another pod (or a host endpoint) claims too: which
    one is really there cannot be told, so neither gets the other's rules."""
    hosts = {ipaddress.ip_address(ip) for obj in objects if isinstance(obj, HostEndpoint) for ip in obj.ips}
    hosts |= {ipaddress.ip_address(ip) for ep in endpoints if ep.kind == "host" for ip in ep.ips}
    claims: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, list[str]] = {}
    for ep in endpoints:
        if ep.kind == "pod":
            for ip in ep.ips:
                claims.setdefault(ipaddress.ip_address(ip), []).append(f"{ep.namespace}/{ep.name}")
    shared = {ip for ip, pods in claims.items() if len(pods) > 1 or ip in hosts}
    for ip in sorted(shared, key=lambda a: (a.version, a)):
        owners = ", ".join(claims[ip]) + (" and a host endpoint" if ip in hosts else "")
        problems.append(f"address {ip} is claimed by {owners}: it belongs to none of them")
    if not shared:
        return list(endpoints)
    return [replace(ep, ips=tuple(ip for ip in ep.ips if ipaddress.ip_address(ip) not in shared))
            if ep.kind == "pod" else ep for ep in endpoints]


def machine_addresses(store: Store, hep: HostEndpoint) -> tuple[str, ...]:
    """The addresses of a host endpoint's machine: a node's underlay addresses (its
    lease: IPv4, and IPv6 on a dual-stack node); a plain host's underlay address and, once `podnet host join` gave it one,
    its podnet address (its record), so policy protects the host on both. Empty while
    it has none (or the record is unreadable)."""
    key = keys.node(hep.node) if hep.node else keys.host(hep.host or "")
    raw = store.get_json(key)
    if raw is None:
        return ()
    try:
        if hep.node:  # a dual-stack node: its IPv6 underlay address too
            lease = NodeLease.from_json(raw, key)
            return (lease.underlay_ip, lease.underlay_ip6) if lease.underlay_ip6 else (lease.underlay_ip,)
        host = HostRecord.from_json(raw, key)
    except CorruptRecord:
        return ()
    return (host.underlay_ip, host.pod_ip) if host.pod_ip else (host.underlay_ip,)


def remote_endpoints(remote: Sequence[tuple[str, PodRecord]]) -> list[Endpoint]:
    """Another cluster's pods (mirrored by our gateway in charge, agent/clusterset_service.py):
    peers that selectors may match (by their labels, `podnet.io/cluster` among them),
    never enforced here (no node of ours). Named `<name>@<cluster>`: two clusters may
    both have a pod default/web-1."""
    out = []
    for key, pod in remote:
        cluster = key[len(keys.REMOTE_PODS):].split("/", 1)[0]
        out.append(Endpoint("pod", f"{pod.name}@{cluster}", pod.namespace, pod.ips, pod.labels, (), None))
    return out


def endpoints_from_pods(pods: Sequence[PodRecord], hosts: Sequence[Endpoint] = ()) -> list[Endpoint]:
    """Policy endpoints of the registered pods (named ports kept), after `hosts`."""
    out = list(hosts)
    for pod in pods:
        ports = tuple(NamedPort(p["name"], int(p["port"]), p.get("protocol", "TCP"))
                      for p in pod.ports if p.get("name"))
        out.append(Endpoint("pod", pod.name, pod.namespace, pod.ips, pod.labels, ports, pod.node or None))
    return out
