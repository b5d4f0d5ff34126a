"""Ring IPAM for `--fabric gossip` (issue 14): one IPv4 range split among peers as
ownership tokens, replicated by gossip with no datastore, after Weave's ipam/ring.

Design notes:
- **Tokens.** The ring is a sorted list of tokens `start -> (owner, version, end)`;
  a token's owner holds the addresses `start..end`. `end` is redundant in a sound ring
  (it is the next token's start - 1) and kept on purpose: it is how a merge sees two
  peers claiming one address (two tokens overlapping) instead of silently taking one.
  Tokens are never deleted, so a merge never has to tell "deleted" from "not seen yet".
- **Only the owner changes a token** (its version goes up by one): to hand part of its
  free space to another peer (`donate`: the owner's token shrinks and new tokens appear
  inside its old span, in one step) or all of it. The one exception is a dead peer's
  tokens (below). A merge keeps, per token, the higher version; the same version with
  other content is refused (`RingConflict`). Why this is safe: a peer's own replica
  always has the newest version of its own tokens (nobody else writes them), so no merge
  can take away space a peer believes it owns, and a peer donates only addresses it has
  not handed out; addresses never have two holders, during a partition or after it
  heals. The join is a per-token maximum, hence commutative, associative and idempotent;
  a ring that breaks the rule (two peers took one span) shows as a same-version conflict
  or as overlapping tokens, and the merge raises naming the span and both peers.
- **Initial claim.** An empty ring is split evenly, in name order, among the peers
  given to `claim_initial` (the gossip layer passes its configured seed list, or waits
  until it knows N peers, as Weave's `--ipalloc-init seed=`/`consensus=N`). Every peer
  that computes it from the same list gets the identical ring (the same tokens, all at
  version 1), so the copies merge as one. Two rings claimed from different lists would
  each give the whole range away: their `genesis` (the list) differs and the merge
  refuses them with a message saying so, instead of letting two peers own one address.
  A peer that joins later owns nothing until another peer donates to it.
- **Members** are the peers ever given space (`joined`, grow-only, minus the dead).
  A peer new to the ring is given space only by a donor in contact with a strict
  majority of the members, so the two sides of a partition cannot both grow their own
  idea of the membership and each believe it is the majority.
- **A dead peer's space** (ring_death.py): each peer records in the ring its vote on
  the members it cannot reach ("gone since t, I propose taker X", X = the lowest live
  peer it knows) and says "seen" again when it reaches them; a voter changes only its
  own vote, and the votes travel with the ring. `reclaim` is allowed once the grace
  period has passed since the peer was last seen, every live peer (in contact with the
  reclaimer now) voted "gone", none still sees it, those live peers are a strict
  majority of the members, and every vote names the same taker (so all peers compute
  the same result). The tokens then move to the taker (version + 1) and the record is
  final (a tombstone); tokens of the dead peer that reach a replica later move to the
  taker on merge, the same way everywhere. `remove` (`podnet peers rm`) does the same
  at once, without votes or grace: the operator vouches that the peer is gone.
- **Partitions.** A partitioned peer looks dead. The majority rule lets at most one side
  reclaim, and `at_risk` tells a peer that it is on the other side (cut off from more
  than half the members): its Allocator then hands out nothing and donates nothing
  (TryAgainLater) until it reaches them again, so the space the majority may take is
  not in use for new pods. With two sides of equal size (or a ring of two members)
  neither side is at risk and neither may reclaim: both keep allocating from their own
  space, and only `peers rm` moves it. Not covered: a partition that falls inside the
  gossip latency of a change (a donation or allocation that no peer of the future
  majority heard of) and then outlasts the grace period.
- **Addresses a dead peer handed out** stay reserved while their pods may run: the ring
  carries no allocations, so the taker's Allocator (ring_alloc.py) is given as
  `reserved` the addresses that the gossiped DNS/endpoint documents (lww.py) still name
  for the dead peer's pods, and skips them (its round-robin order also reuses a
  reclaimed address as late as possible). For a node that died its pods died too, and
  the gossip layer may delete their documents once the space is reclaimed; for a peer
  that comes back from a partition that outlasted the grace period they still run, their
  documents stay, and so does the reservation. Send the DNS documents and the ring in
  the same gossip message, so a taker never holds a ring newer than its documents.
- **A peer declared dead that comes back** must not gossip its old ring: `accepts(peer)`
  is False for a tombstoned peer; the gossip layer refuses it and it rejoins with an
  empty ring under a new peer name (Weave's `weave reset`). Its old changes, if they
  reach the ring anyway, show as a same-version conflict when it changed a token once
  since the reclaim (fenced as above, it should not have changed any).

Pure and deterministic: no clock (times are passed in), no I/O; rings are immutable.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from podnet.gossip.ring_death import merge_deaths, proposed_taker, reclaim_refusal, vote
from podnet.gossip.ring_json import ring_from_json, ring_to_json
from podnet.gossip.ring_parts import (
    Death,
    ReclaimRefused,
    RingConflict,
    RingError,
    Token,
    peer_name,
)

__all__ = ["Ring", "RingConflict", "RingError", "ReclaimRefused", "Token", "Span"]

Span = tuple[int, int]  # inclusive [lo, hi] of integer addresses


def _ip(value: int) -> str:
    return str(IPv4Address(value))


def _span_text(lo: int, hi: int) -> str:
    return _ip(lo) if lo == hi else f"{_ip(lo)}-{_ip(hi)}"


@dataclass(frozen=True)
class Ring:
    """One replica of the ring over `cidr`. Build with `Ring.empty(cidr)`."""

    cidr: IPv4Network
    genesis: tuple[str, ...] = ()  # the peers of the initial claim, sorted
    tokens: tuple[Token, ...] = ()  # sorted by start; empty until claimed
    deaths: Mapping[str, Death] = field(default_factory=dict)
    joined: frozenset[str] = frozenset()  # every peer ever given space (grow-only)

    @classmethod
    def empty(cls, cidr: str | IPv4Network) -> Ring:
        try:
            net = IPv4Network(cidr) if isinstance(cidr, str) else cidr
        except ValueError as exc:
            raise RingError(f"ring range: {exc}") from None
        if not isinstance(net, IPv4Network) or net.prefixlen > 30:
            raise RingError(f"ring range: {cidr} is no IPv4 network of at least 4 addresses")
        return cls(net)

    @property
    def bounds(self) -> Span:
        return int(self.cidr.network_address), int(self.cidr.broadcast_address)

    # -- reading ---------------------------------------------------------------------

    def owner_of(self, address: IPv4Address | int) -> str | None:
        value = int(address)
        for token in self.tokens:
            if token.start <= value <= token.end:
                return token.owner
        return None

    def owned_by(self, peer: str) -> list[Span]:
        """The spans `peer` holds, ascending, adjacent tokens joined."""
        spans: list[Span] = []
        for token in self.tokens:
            if token.owner != peer:
                continue
            if spans and spans[-1][1] + 1 == token.start:
                spans[-1] = (spans[-1][0], token.end)
            else:
                spans.append((token.start, token.end))
        return spans

    def free_ranges(self, peer: str, allocated: Iterable[IPv4Address | int] = ()) -> list[Span]:
        """`peer`'s spans without its allocated addresses and without the range's own
        network and broadcast addresses (never handed out)."""
        return _subtract(self.owned_by(peer), {int(a) for a in allocated} | set(self.bounds))

    def owners(self) -> set[str]:
        return {t.owner for t in self.tokens}

    def size_owned(self, peer: str) -> int:
        return sum(hi - lo + 1 for lo, hi in self.owned_by(peer))

    def members(self) -> set[str]:
        """The peers whose votes count: every peer ever given space, but none whose
        space was reclaimed."""
        return {p for p in self.joined if not self.tombstoned(p)}

    def has_majority(self, in_contact: Iterable[str]) -> bool:
        members = self.members()
        return len(members & set(in_contact)) * 2 > len(members)

    def at_risk(self, peer: str, in_contact: Iterable[str]) -> bool:
        """Could the members `peer` cannot reach reclaim its space (they are more than
        half)? Then it must stop handing out addresses (module doc)."""
        members = self.members() | {peer}
        return len(members - set(in_contact) - {peer}) * 2 > len(members)

    def tombstoned(self, peer: str) -> bool:
        death = self.deaths.get(peer)
        return death is not None and bool(death.reclaimed_by)

    def accepts(self, peer: str) -> bool:
        """False for a peer declared dead here: its old ring must not come back."""
        return not self.tombstoned(peer)

    # -- the owner's changes ---------------------------------------------------------

    def claim_initial(self, peers: Iterable[str]) -> Ring:
        """The empty ring split evenly among `peers` in name order (see the module doc)."""
        names = tuple(sorted({peer_name(p, "initial peer") for p in peers}))
        if not names:
            raise RingError("initial claim: no peers given")
        if self.tokens:
            raise RingError(f"initial claim: the ring of {self.cidr} is already claimed by {', '.join(self.genesis)}")
        lo, hi = self.bounds
        size = hi - lo + 1
        if len(names) > size:
            raise RingError(f"initial claim: {len(names)} peers for {size} addresses")
        cuts = [lo + size * i // len(names) for i in range(len(names) + 1)]
        tokens = tuple(Token(cuts[i], cuts[i + 1] - 1, name, 1) for i, name in enumerate(names))
        return replace(self, genesis=names, tokens=tokens, joined=frozenset(names))

    def donate(self, from_peer: str, to_peer: str, size_hint: int | None = None,
               in_use: Iterable[IPv4Address | int] = (), in_contact: Iterable[str] = ()) -> Ring:
        """`from_peer` hands `to_peer` the upper part of its largest free run (not more
        than `size_hint` addresses, not more than half a run longer than one).
        `in_use`: the donor's allocations. A peer new to the ring joins only while the
        donor is `in_contact` with a strict majority of the members (module doc).
        RingError when it may not or has nothing free."""
        peer_name(to_peer, "donation target")
        if from_peer == to_peer or self.tombstoned(to_peer):
            raise RingError(f"donation: {from_peer} cannot give space to {to_peer}")
        if to_peer not in self.joined and not self.has_majority({from_peer, *in_contact}):
            raise RingError(f"donation: {to_peer} is new to the ring and {from_peer} is not in contact with "
                            "a majority of its members")
        holes = {int(a) for a in in_use} | set(self.bounds)
        runs = _subtract([(t.start, t.end) for t in self.tokens if t.owner == from_peer], holes)
        if not runs:
            raise RingError(f"donation: {from_peer} has no free address to give {to_peer}")
        lo, hi = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
        length = hi - lo + 1
        count = length if length == 1 else length // 2
        if size_hint is not None:
            count = max(1, min(count, int(size_hint)))
        ring = self._split(next(t for t in self.tokens if t.start <= lo <= t.end), hi - count + 1, hi, to_peer)
        return replace(ring, joined=self.joined | {to_peer})

    def _split(self, token: Token, lo: int, hi: int, to_peer: str) -> Ring:
        """`token`'s owner gives lo..hi (inside its span) to `to_peer`, in one step."""
        new: list[Token] = []
        if lo > token.start:
            new.append(Token(token.start, lo - 1, token.owner, token.version + 1))
            new.append(Token(lo, hi, to_peer, 1))
        else:
            new.append(Token(lo, hi, to_peer, token.version + 1))
        if hi < token.end:
            new.append(Token(hi + 1, token.end, token.owner, 1))
        tokens = [t for t in self.tokens if t.start != token.start] + new
        return replace(self, tokens=tuple(sorted(tokens, key=lambda t: t.start)))

    # -- death and removal -----------------------------------------------------------

    def vote(self, dead_peer: str, voter: str, gone: bool, last_seen: float, live_peers: Iterable[str]) -> Ring:
        """`voter`'s view of `dead_peer`: gone (since `last_seen`) or seen again. The
        proposed taker is the lowest of `live_peers` and the voter."""
        peer_name(dead_peer, "dead peer")
        if self.tombstoned(dead_peer):
            return self
        alive = {p for p in live_peers if not self.tombstoned(p)}
        death = vote(self.deaths.get(dead_peer), dead_peer, voter, gone, last_seen, alive)
        return replace(self, deaths={**self.deaths, dead_peer: death})

    def observe(self, voter: str, in_contact: Iterable[str], now: float, last_contact: Mapping[str, float]) -> Ring:
        """`voter`'s votes of one gossip round: "gone" on each member it cannot reach
        (since `last_contact[member]`), "seen" on each it reaches again, and a new vote
        when the taker it proposes changed; votes that still hold are left alone."""
        live = {p for p in (*in_contact, voter) if not self.tombstoned(p)}
        ring = self
        for member in sorted(self.members() - {voter}):
            death = ring.deaths.get(member)
            mine = death.votes.get(voter) if death else None
            if member in live:
                if mine is not None and mine.gone:
                    ring = ring.vote(member, voter, False, now, live)
                continue
            if mine is not None and mine.gone:
                if mine.taker == proposed_taker(member, voter, live):
                    continue
                since = mine.last_seen
            else:
                since = last_contact.get(member, now)
            ring = ring.vote(member, voter, True, since, live)
        return ring

    def reclaimable(self, by_peer: str, now: float, live_peers: Iterable[str], grace: float) -> list[str]:
        """The dead peers whose space `by_peer` may reclaim now."""
        live = set(live_peers)
        return [p for p in sorted(self.deaths) if not self.can_reclaim(p, by_peer, now, live, grace)]

    def can_reclaim(self, dead_peer: str, by_peer: str, now: float, live_peers: Iterable[str],
                    grace: float) -> str:
        """Why `by_peer` may not reclaim `dead_peer`'s space now ("" when it may)."""
        if self.tombstoned(dead_peer):
            return f"{dead_peer}'s space was already reclaimed by {self.deaths[dead_peer].reclaimed_by}"
        if self.tombstoned(by_peer):
            return f"{by_peer} was declared dead itself"
        return reclaim_refusal(self.deaths.get(dead_peer), dead_peer, by_peer, now, set(live_peers), grace,
                               self.members() | {dead_peer})

    def reclaim(self, dead_peer: str, by_peer: str, now: float, live_peers: Iterable[str], grace: float) -> Ring:
        """`dead_peer`'s tokens move to `by_peer`, when `can_reclaim` allows it
        (ReclaimRefused otherwise, naming why)."""
        reason = self.can_reclaim(dead_peer, by_peer, now, live_peers, grace)
        if reason:
            raise ReclaimRefused(f"reclaim of {dead_peer} by {by_peer}: {reason}")
        return self._bury(dead_peer, by_peer)

    def remove(self, peer: str, by_peer: str) -> Ring:
        """`podnet peers rm PEER`: its space goes to `by_peer` at once, no grace, no
        votes. The operator vouches that the peer is gone for good."""
        peer_name(peer, "removed peer")
        peer_name(by_peer, "removing peer")
        if peer == by_peer:
            raise RingError(f"peer {peer} cannot remove itself")
        if self.tombstoned(peer):
            raise RingError(f"peer {peer} was already removed (its space went to {self.deaths[peer].reclaimed_by})")
        if self.tombstoned(by_peer):
            raise RingError(f"peer {by_peer} was removed itself")
        return self._bury(peer, by_peer)

    def _bury(self, dead_peer: str, taker: str) -> Ring:
        death = self.deaths.get(dead_peer) or Death({})
        deaths = {**self.deaths, dead_peer: replace(death, reclaimed_by=taker)}
        return replace(self, deaths=deaths, tokens=_move_tombstoned(self.tokens, deaths), joined=self.joined | {taker})

    # -- merging ---------------------------------------------------------------------

    def merge(self, other: Ring) -> Ring:
        """The join of two replicas (see the module doc); RingConflict when they cannot
        both be right."""
        if self.cidr != other.cidr:
            raise RingConflict(f"ring merge: ranges differ ({self.cidr} and {other.cidr})")
        if self.tokens and other.tokens and self.genesis != other.genesis:
            raise RingConflict(f"ring merge: rings of {self.cidr} claimed by different peer lists "
                               f"({', '.join(self.genesis)} and {', '.join(other.genesis)}); a peer "
                               "must join with an empty ring (start all peers with the same seed list)")
        deaths = merge_deaths(self.deaths, other.deaths)  # first: a double reclaim names itself
        merged: dict[int, Token] = {t.start: t for t in self.tokens}
        for theirs in other.tokens:
            mine = merged.get(theirs.start)
            if mine is None or theirs.version > mine.version:
                merged[theirs.start] = theirs
            elif theirs.version == mine.version and theirs != mine:
                raise RingConflict(f"ring merge: token {_ip(theirs.start)} version {theirs.version} is "
                                   f"{_span_text(mine.start, mine.end)} of {mine.owner} in one copy and "
                                   f"{_span_text(theirs.start, theirs.end)} of {theirs.owner} in the other")
        tokens = _move_tombstoned(tuple(sorted(merged.values(), key=lambda t: t.start)), deaths)
        ring = Ring(self.cidr, self.genesis or other.genesis, tokens, deaths, self.joined | other.joined)
        ring.check()
        return ring

    def check(self) -> None:
        """RingConflict unless the tokens cover the range exactly once."""
        if not self.tokens:
            return
        lo, hi = self.bounds
        expect = lo
        previous: Token | None = None
        for token in self.tokens:
            if token.start < expect and previous is not None:
                raise RingConflict(f"ring: addresses {_span_text(token.start, min(previous.end, token.end))} "
                                   f"would be owned by both {previous.owner} and {token.owner}")
            if token.start != expect:
                raise RingConflict(f"ring: addresses {_span_text(expect, token.start - 1)} are owned by no peer")
            if token.end < token.start:
                raise RingConflict(f"ring: token {_ip(token.start)} ends before it starts")
            expect = token.end + 1
            previous = token
        if expect != hi + 1:
            raise RingConflict(f"ring: addresses {_span_text(expect, hi)} are owned by no peer")

    # -- serialisation ---------------------------------------------------------------

    def to_json(self) -> dict:
        return ring_to_json(self.cidr, self.genesis, self.joined, self.tokens, self.deaths)

    @classmethod
    def from_json(cls, obj: object) -> Ring:
        """A ring read from a peer, every field checked (RingError names the first bad one)."""
        cidr, genesis, joined, tokens, deaths = ring_from_json(obj)
        ring = cls(cls.empty(cidr).cidr, genesis, tokens, deaths, joined)
        ring.check()
        for token in tokens:
            if ring.tombstoned(token.owner):
                raise RingError(f"ring.tokens: {_ip(token.start)} is owned by {token.owner}, whose space "
                                "was reclaimed")
        return ring


def _move_tombstoned(tokens: tuple[Token, ...], deaths: Mapping[str, Death]) -> tuple[Token, ...]:
    """Tokens of a peer whose space was reclaimed go to its taker, or to the taker's
    taker when that one was reclaimed too (version + 1): the same in every replica,
    whenever they arrive."""
    out = []
    for token in tokens:
        owner, seen = token.owner, set()
        while (death := deaths.get(owner)) is not None and death.reclaimed_by and owner not in seen:
            seen.add(owner)
            owner = death.reclaimed_by
        out.append(token if owner == token.owner else Token(token.start, token.end, owner, token.version + 1))
    return tuple(out)


def _subtract(spans: list[Span], holes: set[int]) -> list[Span]:
    """`spans` without the addresses in `holes`."""
    ordered = sorted(holes)
    out: list[Span] = []
    for lo, hi in spans:
        for cut in ordered[bisect_left(ordered, lo):bisect_right(ordered, hi)]:
            if cut > lo:
                out.append((lo, cut - 1))
            lo = cut + 1
        if lo <= hi:
            out.append((lo, hi))
    return out
