"""The ring (ring.py) as JSON for the gossip, and read back with every field checked:
a ring comes from other peers, so nothing in it is trusted (RingError names the field).

    {"cidr": "10.32.0.0/12", "genesis": ["a", "b"], "joined": ["a", "b", "c"],
     "tokens": [{"start": "10.32.0.0", "end": "10.39.255.255", "owner": "a", "version": 1}, ...],
     "deaths": {"c": {"reclaimedBy": "a",
                      "votes": {"a": {"version": 1, "gone": true, "lastSeen": 12.5, "taker": "a"}}}}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network

from podnet.gossip.ring_parts import Death, RingError, Token, Vote, peer_name

MAX_TOKENS = 65536
MAX_DEATHS = 4096
MAX_VERSION = 2**63 - 1


def ring_to_json(cidr: IPv4Network, genesis: tuple[str, ...], joined: frozenset[str], tokens: tuple[Token, ...],
                 deaths: Mapping[str, Death]) -> dict:
    return {
        "cidr": str(cidr),
        "genesis": list(genesis),
        "joined": sorted(joined),
        "tokens": [{"start": str(IPv4Address(t.start)), "end": str(IPv4Address(t.end)), "owner": t.owner,
                    "version": t.version} for t in tokens],
        "deaths": {peer: {"reclaimedBy": d.reclaimed_by,
                          "votes": {voter: {"version": v.version, "gone": v.gone, "lastSeen": v.last_seen,
                                            "taker": v.taker} for voter, v in sorted(d.votes.items())}}
                   for peer, d in sorted(deaths.items())},
    }


def ring_from_json(obj: object) -> tuple[IPv4Network, tuple[str, ...], frozenset[str], tuple[Token, ...],
                                          dict[str, Death]]:
    """The ring's fields, each checked on its own; ring.py checks the whole."""
    doc = _dict(obj, "ring")
    cidr = doc.get("cidr")
    if not isinstance(cidr, str):
        raise RingError(f"ring.cidr: not a CIDR: {str(cidr)[:80]!r}")
    try:
        net = IPv4Network(cidr)
    except ValueError as exc:
        raise RingError(f"ring.cidr: {exc}") from None
    genesis = _list(doc.get("genesis", []), "ring.genesis", MAX_TOKENS)
    names = tuple(peer_name(p, f"ring.genesis[{i}]") for i, p in enumerate(genesis))
    if list(names) != sorted(set(names)):
        raise RingError("ring.genesis: not sorted names without repeats")
    joined = frozenset(peer_name(p, f"ring.joined[{i}]")
                       for i, p in enumerate(_list(doc.get("joined", []), "ring.joined", MAX_TOKENS)))
    tokens = tuple(_token(t, net, f"ring.tokens[{i}]")
                   for i, t in enumerate(_list(doc.get("tokens", []), "ring.tokens", MAX_TOKENS)))
    if tokens and not names:
        raise RingError("ring.genesis: empty, but the ring has tokens")
    if [t.start for t in tokens] != sorted({t.start for t in tokens}):
        raise RingError("ring.tokens: not sorted by start, or a start repeated")
    deaths_doc = _dict(doc.get("deaths", {}), "ring.deaths")
    if len(deaths_doc) > MAX_DEATHS:
        raise RingError(f"ring.deaths: more than {MAX_DEATHS} records")
    deaths = {peer_name(peer, "ring.deaths key"): _death(d, f"ring.deaths.{peer}") for peer, d in deaths_doc.items()}
    if not set(names) <= joined:
        raise RingError("ring.joined: misses peers of ring.genesis")
    for token in tokens:
        if token.owner not in joined:
            raise RingError(f"ring.tokens: {IPv4Address(token.start)} is owned by {token.owner}, "
                            "who is not in ring.joined")
    return net, names, joined, tokens, deaths


def _token(obj: object, net: IPv4Network, where: str) -> Token:
    doc = _dict(obj, where)
    start = _address(doc.get("start"), net, f"{where}.start")
    end = _address(doc.get("end"), net, f"{where}.end")
    if end < start:
        raise RingError(f"{where}: end {IPv4Address(end)} before start {IPv4Address(start)}")
    return Token(start, end, peer_name(doc.get("owner"), f"{where}.owner"), _version(doc.get("version"), f"{where}.version"))


def _death(obj: object, where: str) -> Death:
    doc = _dict(obj, where)
    taker = doc.get("reclaimedBy", "")
    if taker != "":
        taker = peer_name(taker, f"{where}.reclaimedBy")
    votes_doc = _dict(doc.get("votes", {}), f"{where}.votes")
    votes = {}
    for voter, raw in votes_doc.items():
        at = f"{where}.votes.{str(voter)[:63]}"
        peer_name(voter, f"{where}.votes key")
        ballot = _dict(raw, at)
        gone = ballot.get("gone")
        if not isinstance(gone, bool):
            raise RingError(f"{at}.gone: not true or false")
        seen = ballot.get("lastSeen")
        if isinstance(seen, bool) or not isinstance(seen, int | float) or not math.isfinite(seen):
            raise RingError(f"{at}.lastSeen: not a time: {str(seen)[:80]!r}")
        proposed = ballot.get("taker", "")
        if gone:
            proposed = peer_name(proposed, f"{at}.taker")
        elif proposed != "":
            raise RingError(f"{at}.taker: set on a vote that is not 'gone'")
        votes[voter] = Vote(_version(ballot.get("version"), f"{at}.version"), gone, float(seen), proposed)
    return Death(votes, taker)


def _address(obj: object, net: IPv4Network, where: str) -> int:
    try:
        address = IPv4Address(obj) if isinstance(obj, str) else None
    except ValueError:
        address = None
    if address is None or address not in net:
        raise RingError(f"{where}: not an address of {net}: {str(obj)[:80]!r}")
    return int(address)


def _version(obj: object, where: str) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int) or not 1 <= obj <= MAX_VERSION:
        raise RingError(f"{where}: not a version (an integer from 1): {str(obj)[:80]!r}")
    return obj


def _dict(obj: object, where: str) -> dict:
    if not isinstance(obj, dict):
        raise RingError(f"{where}: not an object")
    return obj


def _list(obj: object, where: str, limit: int) -> list:
    if not isinstance(obj, list) or len(obj) > limit:
        raise RingError(f"{where}: not a list of at most {limit} items")
    return obj
