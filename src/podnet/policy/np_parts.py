"""One endpoint's NetworkPolicy allow chains for one direction, kept between compiles
(pure): what lets one changed policy among 10,000 cost what changed.

An endpoint isolated by k policies jumps to k chains of their own (policy/compile.py).
Rebuilding that part from a per-policy memo still walked all k policies per endpoint
and direction on every compile (about 25 ms of CPU at 10,000 policies, the largest
share of one change's time). An `NpPart` holds the part's chains, sets, rule names and
jump lines; the compiler reuses it whole while the endpoint's isolating list is the
very same list (policy/compile.py `isolating` keeps it while no policy selecting the
endpoint came or went), and otherwise updates it by the policies that left and joined
(an edited policy is a new object: it leaves and joins): only the joining ones are
compiled; an edit in place keeps the part's layout, anything else lays it out again in
the isolating order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from podnet.policy.objects import NetworkPolicy
from podnet.policy.table import NftSet


@dataclass(frozen=True)
class Entry:
    """One policy's allow chain for one endpoint and direction (name None: no line)."""

    policy: NetworkPolicy
    name: str | None
    lines: tuple[str, ...]
    sets: dict[str, NftSet]
    rules: dict[str, str]


@dataclass
class NpPart:
    isolating: Sequence[NetworkPolicy] = ()
    entries: dict[int, Entry] = field(default_factory=dict)  # id(policy) -> its entry
    jumps: tuple[str, ...] = ()  # in the isolating order
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)
    refs: str = ""  # the isolating policies' namespace/name, comma-joined (the default deny names them)

    def updated(self, isolating: Sequence[NetworkPolicy], entry: Callable[[NetworkPolicy], Entry]) -> NpPart:
        """The part for `isolating`: this one's entries for the policies still in it
        (the same objects), `entry(policy)` for the others; chains in the isolating
        order, as a compile without this part lays them out. A new part: the compile
        that made this one may still diff against it."""
        current = {id(p): p for p in isolating}
        gone = [self.entries[i] for i in self.entries.keys() - current.keys()]
        made = [entry(current[i]) for i in current.keys() - self.entries.keys()]
        entries = {i: e for i, e in self.entries.items() if i in current}
        entries.update((id(e.policy), e) for e in made)
        # sets and log prefixes are named by their policy: drop the leaving ones' first
        sets, rules = dict(self.sets), dict(self.rules)
        for old in gone:
            for name in old.sets:
                del sets[name]
            for prefix in old.rules:
                del rules[prefix]
        for new in made:
            sets.update(new.sets)
            rules.update(new.rules)
        before = {(e.policy.namespace, e.policy.name): e.name for e in gone}
        if len(gone) == len(made) and all(before.get((e.policy.namespace, e.policy.name), "") == e.name
                                          for e in made):
            # policies edited in place (the same names in the same order): their lines only
            chains = dict(self.chains)
            chains.update((e.name, e.lines) for e in made if e.name is not None)
            return NpPart(isolating, entries, self.jumps, chains, sets, rules, self.refs)
        chains = {e.name: e.lines for e in (entries[id(p)] for p in isolating) if e.name is not None}
        jumps = tuple(f"jump {name}" for name in chains)
        refs = ",".join(f"{p.namespace}/{p.name}" for p in isolating)
        return NpPart(isolating, entries, jumps, chains, sets, rules, refs)
