"""Reading and writing the clusterset's records in one store, and the gateway election.

The election is a TTL key: the first candidate to create `clusterset/active-gateway`
(compare-and-put on absence) is in charge and refreshes it every pass; when it dies
its key expires after TTL seconds and the next candidate's pass takes it. A node that
is no longer a candidate gives the key up at once. Records that do not validate are
reported, never used (model.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from podnet import keys
from podnet.clusterset.model import (
    ActiveGateway,
    ClusterInfo,
    ClusterPeer,
    ClustersetError,
    GatewayCandidate,
    tunnel_secret_from_json,
)
from podnet.store.base import Entry, Store, dumps

log = logging.getLogger("podnet.clusterset")

ACTIVE_TTL = 3.0  # seconds without a refresh before another candidate takes over


@dataclass
class LocalView:
    """What our store says about the clusterset; `problems` names records not used."""

    me: ClusterInfo | None = None
    peers: list[ClusterPeer] = field(default_factory=list)
    candidates: dict[str, GatewayCandidate] = field(default_factory=dict)
    active: ActiveGateway | None = None
    active_revision: int = 0
    secrets: dict[str, bytes] = field(default_factory=dict)  # peer -> its encrypted tunnel's secret
    problems: list[str] = field(default_factory=list)


def read_local(store: Store) -> LocalView:
    """Our store's clusterset records, from one listing of clusterset/ (a read per
    kind, every second in every agent, made a 50-node etcd lab serve 250 reads a
    second for a clusterset nobody had set up)."""
    return _view(store.list(keys.CLUSTERSET))


def read_local_at(store: Store) -> tuple[LocalView, int]:
    """read_local, and the revision its one listing reflects (a loop watches from it)."""
    entries, revision = store.snapshot(keys.CLUSTERSET)
    return _view(entries), revision


def _view(entries: list[Entry]) -> LocalView:
    found = {entry.key: entry for entry in entries}
    view = LocalView()
    entry = found.get(keys.CLUSTERSET_SELF)
    if entry is not None:
        try:
            view.me = ClusterInfo.from_json(entry.json())
        except (ClustersetError, ValueError) as exc:
            view.problems.append(str(exc))
    for entry in _under(found, keys.CLUSTERSET_PEERS):
        try:
            view.peers.append(ClusterPeer.from_json(entry.json(), entry.key))
        except (ClustersetError, ValueError) as exc:
            view.problems.append(str(exc))
    for entry in _under(found, keys.CLUSTERSET_GATEWAYS):
        try:
            candidate = GatewayCandidate.from_json(entry.json(), entry.key)
        except (ClustersetError, ValueError) as exc:
            view.problems.append(str(exc))
            continue
        if entry.key != keys.clusterset_gateway(candidate.node):
            view.problems.append(f"{entry.key}: names node {candidate.node!r}")
            continue
        view.candidates[candidate.node] = candidate
    for entry in _under(found, keys.CLUSTERSET_TUNNEL_KEYS):
        try:
            view.secrets[entry.key[len(keys.CLUSTERSET_TUNNEL_KEYS):]] = tunnel_secret_from_json(entry.json(),
                                                                                                entry.key)
        except (ClustersetError, ValueError) as exc:
            view.problems.append(str(exc))
    view.active, view.active_revision = _active(found.get(keys.CLUSTERSET_ACTIVE_GATEWAY), view.problems)
    return view


def _under(found: dict[str, Entry], prefix: str) -> list[Entry]:
    return [entry for key, entry in found.items() if key.startswith(prefix)]


def read_active(store: Store, problems: list[str], where: str = "") -> tuple[ActiveGateway | None, int]:
    return _active(store.get(keys.CLUSTERSET_ACTIVE_GATEWAY), problems, where)


def _active(entry: Entry | None, problems: list[str], where: str = "") -> tuple[ActiveGateway | None, int]:
    if entry is None:
        return None, 0
    try:
        return ActiveGateway.from_json(entry.json(), f"{where}{entry.key}"), entry.revision
    except (ClustersetError, ValueError) as exc:
        problems.append(str(exc))
        return None, entry.revision


def elect(store: Store, view: LocalView, node: str, underlay: str, now: float | None = None,
          ttl: float = ACTIVE_TTL) -> ActiveGateway | None:
    """One election pass for `node` (its underlay address `underlay`): take the key if
    nobody holds it and we are a candidate, refresh it if we hold it, give it up if we
    hold it and are no candidate any more. The gateway in charge afterwards."""
    now = time.time() if now is None else now
    mine = view.candidates.get(node)
    active = view.active
    if active is not None and active.node == node:
        if mine is None:  # no longer a candidate: step down now, not in TTL seconds
            store.delete(keys.CLUSTERSET_ACTIVE_GATEWAY, expected_revision=view.active_revision)
            return None
        if (active.address, active.underlay) != (mine.address, underlay):
            active = ActiveGateway(node, mine.address, underlay, active.since)
            store.compare_and_put(keys.CLUSTERSET_ACTIVE_GATEWAY, dumps(active.to_json()), view.active_revision,
                                  ttl=ttl)
        elif not store.refresh(keys.CLUSTERSET_ACTIVE_GATEWAY, ttl):
            return None  # expired under us: the next pass competes again
        return active
    if active is None and mine is not None:
        candidate = ActiveGateway(node, mine.address, underlay, now)
        if store.compare_and_put(keys.CLUSTERSET_ACTIVE_GATEWAY, dumps(candidate.to_json()), 0, ttl=ttl):
            log.info("clusterset: %s is the gateway in charge now", node)
            return candidate
        active, _ = read_active(store, view.problems)
    return active


def write_self(store: Store, info: ClusterInfo) -> None:
    store.put(keys.CLUSTERSET_SELF, dumps(info.to_json()))


def write_peer(store: Store, peer: ClusterPeer) -> None:
    store.put(keys.clusterset_peer(peer.name), dumps(peer.to_json()))


def write_tunnel_secret(store: Store, peer: str, secret: bytes) -> None:
    import base64

    store.put(keys.clusterset_tunnel_key(peer), dumps({"secret": base64.b64encode(secret).decode()}))


def write_candidate(store: Store, candidate: GatewayCandidate) -> None:
    store.put(keys.clusterset_gateway(candidate.node), dumps(candidate.to_json()))
