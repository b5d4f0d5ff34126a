"""The ring's parts (ring.py): tokens, death records and votes, the errors, and the
peer-name rule, shared by the ring, its death records (ring_death.py) and its JSON
(ring_json.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from podnet.gossip.topology import TopologyError, check_peer_name


class RingError(ValueError):
    """A ring operation or a ring read back that does not hold (the message says which)."""


class RingConflict(RingError):
    """A merge that would make two peers own one address (or mixes unrelated rings)."""


class ReclaimRefused(RingError):
    """A reclaim asked for before the peers agreed and the grace period passed."""


def peer_name(obj: object, what: str) -> str:
    """A valid peer name (gossip/topology.py's rule), or RingError naming `what`."""
    try:
        return check_peer_name(obj, what)
    except TopologyError as exc:
        raise RingError(str(exc)) from None


@dataclass(frozen=True)
class Vote:
    version: int
    gone: bool
    last_seen: float  # the voter's clock: when it last heard from the peer
    taker: str  # whom it proposes to take the space ("" when not gone)


@dataclass(frozen=True)
class Death:
    votes: Mapping[str, Vote] = field(default_factory=dict)
    reclaimed_by: str = ""  # set once: the record is then a tombstone


@dataclass(frozen=True)
class Token:
    """`owner` holds start..end; `version` counts the owner's changes to this token."""

    start: int
    end: int
    owner: str
    version: int
