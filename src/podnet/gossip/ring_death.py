"""Death records of the ring (ring.py): how peers agree that a peer is gone before its
space is reclaimed.

A record per suspected peer holds one vote per voter: `gone` (and since when, on the
voter's clock) or "seen again", plus the taker the voter proposes (the lowest-named
live peer it knows). Only the voter changes its vote, each change with the next
version, so records merge like tokens: per voter the higher version wins. Once a
reclaim or `peers rm` happened the record names the taker (`reclaimed_by`) and is final.

Who must agree: every live peer (as the reclaimer sees them: those it is in contact
with now, because the vote of a peer it cannot reach may be out of date), with no voter
still seeing the peer, and those live peers must be a strict majority of the ring's
members (the peers of the initial claim and those owning space, the dead one counted). During a partition each side sees
the other as dead; the majority rule lets at most one side reclaim, never both, and
`Ring.at_risk` tells a peer that it is on the side that may lose its space (out of
contact with more than half the members): the gossip layer stops its allocations then,
before the other side's grace period is over. A ring of two members thus never
reclaims by itself: that is what `podnet peers rm` is for.
Clocks: `last_seen` is each voter's own clock and the reclaimer compares it with its
`now`, so the grace period must be far longer than the clocks' skew (minutes, not seconds).
Pure: times are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from podnet.gossip.ring_parts import Death, RingConflict, RingError, Vote, peer_name


def proposed_taker(dead_peer: str, voter: str, live_peers: set[str]) -> str:
    """Whom `voter` proposes to take `dead_peer`'s space: the lowest-named live peer."""
    return min((live_peers | {voter}) - {dead_peer})


def vote(death: Death | None, dead_peer: str, voter: str, gone: bool, last_seen: float,
         live_peers: set[str]) -> Death:
    """`death` with `voter`'s vote replaced by its next version."""
    peer_name(voter, "voter")
    if voter == dead_peer:
        raise RingError(f"peer {voter} cannot vote on its own death")
    if not math.isfinite(last_seen):
        raise RingError(f"vote of {voter}: last_seen {last_seen!r} is no time")
    death = death or Death()
    previous = death.votes.get(voter)
    taker = proposed_taker(dead_peer, voter, live_peers) if gone else ""
    new = Vote((previous.version if previous else 0) + 1, gone, float(last_seen), taker)
    return Death({**death.votes, voter: new}, death.reclaimed_by)


def reclaim_refusal(death: Death | None, dead_peer: str, by_peer: str, now: float, live_peers: set[str],
                    grace: float, members: set[str]) -> str:
    """Why `by_peer` may not take `dead_peer`'s space yet, or "" when every condition of
    the module doc holds. `members`: the ring's members, the dead peer included."""
    live = live_peers - {dead_peer}
    if dead_peer in live_peers:
        return f"{dead_peer} is live"
    if by_peer not in live:
        return f"{by_peer} is not among the live peers"
    # a voter whose own space was reclaimed or removed votes no more: its last word
    # ("seen", from before it died) must not hold another dead peer's space for ever
    ballots = {voter: ballot for voter, ballot in (death.votes if death else {}).items() if voter in members}
    if not ballots:
        return f"no peer voted that {dead_peer} is gone"
    seen = sorted(v for v, ballot in ballots.items() if not ballot.gone)
    if seen:
        return f"{', '.join(seen)} still see(s) {dead_peer}"
    missing = sorted(live - set(ballots))
    if missing:
        return f"not agreed by {', '.join(missing)}"
    takers = {ballot.taker for ballot in ballots.values()}
    if takers != {by_peer}:
        return f"the votes name {', '.join(sorted(takers))} as taker, not only {by_peer}"
    if len(live & members) * 2 <= len(members):
        return (f"the live peers are {len(live & members)} of the ring's {len(members)} members "
                "(a strict majority is needed)")
    latest = max(ballot.last_seen for ballot in ballots.values())
    if now - latest < grace:
        return f"grace period of {grace:g}s not over ({now - latest:g}s since {dead_peer} was last seen)"
    return ""


def merge_deaths(a: Mapping[str, Death], b: Mapping[str, Death]) -> dict[str, Death]:
    """Per dead peer, per voter the higher version; one taker at most."""
    out = dict(a)
    for peer, theirs in b.items():
        mine = out.get(peer)
        if mine is None:
            out[peer] = theirs
            continue
        votes = dict(mine.votes)
        for voter, ballot in theirs.votes.items():
            have = votes.get(voter)
            if have is None or ballot.version > have.version:
                votes[voter] = ballot
            elif ballot.version == have.version and ballot != have:
                raise RingConflict(f"ring merge: vote {ballot.version} of {voter} on {peer} differs between copies")
        if mine.reclaimed_by and theirs.reclaimed_by and mine.reclaimed_by != theirs.reclaimed_by:
            raise RingConflict(f"ring merge: {peer}'s space was reclaimed by both {mine.reclaimed_by} "
                            f"and {theirs.reclaimed_by}")
        out[peer] = Death(votes, mine.reclaimed_by or theirs.reclaimed_by)
    return out
