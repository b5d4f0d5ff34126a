"""The service table as named objects, and the scripts that create them or take one
set of them to another (pure): render.py's full table and its incremental updates.

Why objects: every object of the table belongs either to the skeleton (hooks, lookup
chains, maps, the cluster CIDR and node address sets: a change there re-renders the
table) or to exactly one service port (its chains, affinity sets and the elements of
its frontends, all named after its id). So an update renders only the ports whose plan
changed, old and new, and touches only what differs between the two: a port whose one
backend changed gets its balancing chain rewritten (and that backend's affinity set,
hairpin element), and nothing else. With thousands of services a full replacement would cost the kernel a rebuild
(and the affinity sets their contents).

A few set elements are shared instead: `hairpin4/6` holds `B . B` for every backend B,
whichever ports it backs. Each port's objects count the shared elements it holds, and
an update is given how many ports held each before (the agent keeps that count,
services/applied.py): an element is added when its first holder comes and deleted when
its last one goes.

Order inside the one transaction of an update, so that no step refers to what is not
there yet or deletes what is still referred to (the kernel checks both):

    1. add the new sets and chains (empty)
    2. delete the map elements that go or change (they hold `goto` references; a
       verdict cannot be changed in place, the kernel answers "File exists")
    3. flush the chains that change or go (their rules hold references too)
    4. add the rules of the new and changed chains
    5. add the map elements that are new or changed
    6. delete the chains and sets that go
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from podnet.errors import InvalidConfig
from podnet.kernel import nftsyntax as tok

FAMILY = "inet"
TABLE = "podnet-svc"
PREFIX = f"{FAMILY} {TABLE}"


@dataclass
class Objects:
    """Named objects of the table: all of it, or the part one service port owns.

    `sets` maps a set or map name to its declaration (`set NAME { ... }` minus the
    name), `chains` a chain name to its rules, `hooks` a base chain to its spec, and
    `elements` a (map, key) to the rest of its element text (`comment ".." : goto x`),
    and `shared` how many times a (set, key) shared with other ports is held here.
    """

    sets: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> ("set"|"map"|"counter", body)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hooks: dict[str, str] = field(default_factory=dict)
    elements: dict[tuple[str, str], str] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)  # (map, key) -> ref, for errors
    shared: Counter[tuple[str, str]] = field(default_factory=Counter)

    def chain(self, name: str, rules: Sequence[str]) -> None:
        """Add a chain; the same name twice must mean the same rules (one chain reached two ways)."""
        rules = tuple(rules)
        if self.chains.setdefault(name, rules) != rules:
            raise InvalidConfig(f"two different nft chains would be named {name}")

    def element(self, map_name: str, key: str, value: str, ref: str) -> None:
        """Add a map element; a frontend two service ports claim is refused, naming both."""
        if (map_name, key) in self.elements:
            raise InvalidConfig(f"service ports {self.owners[(map_name, key)]!r} and {ref!r} both claim "
                                f"{key} ({map_name})")
        self.elements[(map_name, key)] = value
        self.owners[(map_name, key)] = ref

    def share(self, set_name: str, key: str) -> None:
        """Hold an element of a set that other ports may hold too (module docstring)."""
        self.shared[(set_name, key)] += 1

    def merge(self, other: Objects) -> None:
        for name, body in other.sets.items():
            if self.sets.setdefault(name, body) != body:
                raise InvalidConfig(f"two different nft sets would be named {name}")
        for name, rules in other.chains.items():
            self.chain(name, rules)
        self.hooks.update(other.hooks)
        for (map_name, key), value in other.elements.items():
            self.element(map_name, key, value, other.owners[(map_name, key)])
        self.shared.update(other.shared)


# -- scripts

def declare(objs: Objects, names: Iterable[str] | None = None) -> list[str]:
    """`add set|map` and `add chain` lines (all of `objs`, or only `names`)."""
    wanted = None if names is None else set(names)
    lines = [f"add {kind} {PREFIX} {name} {{ {body} }}" for name, (kind, body) in objs.sets.items()
             if wanted is None or name in wanted]
    for name in objs.chains:
        if wanted is None or name in wanted:
            hook = objs.hooks.get(name)
            lines.append(f"add chain {PREFIX} {name}" + (f" {{ {hook} }}" if hook else ""))
    return lines


def fill(objs: Objects, chains: Iterable[str]) -> list[str]:
    return [f"add rule {PREFIX} {name} {rule}" for name in chains for rule in objs.chains[name]]


def element_lines(verb: str, items: Iterable[tuple[tuple[str, str], str | None]]) -> list[str]:
    """One `add element` / `delete element` line per map; without a value (None, ""): the
    key alone (a delete, or an element of a plain set)."""
    by_map: dict[str, list[str]] = {}
    for (map_name, key), value in sorted(items):
        by_map.setdefault(map_name, []).append(f"{key} {value}" if value else key)
    return [f"{verb} element {PREFIX} {m} {tok.elements(texts)}" for m, texts in by_map.items()]


def script(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def shared_lines(verb: str, keys: Iterable[tuple[str, str]]) -> list[str]:
    return element_lines(verb, [(k, "" if verb == "add" else None) for k in keys])


def shared_change(was: Objects, now: Objects) -> Counter[tuple[str, str]]:
    """How many more (or fewer: negative) ports hold each shared element."""
    change = Counter(now.shared)
    change.subtract(was.shared)
    return Counter({k: n for k, n in change.items() if n})


def diff_lines(was: Objects, now: Objects, held: Mapping[tuple[str, str], int] | None = None) -> list[str]:
    """The commands taking the objects `was` to `now`, in the order the docstring gives;
    `held`: how many ports held each shared element before (None: only these)."""
    new_sets = [n for n in now.sets if n not in was.sets]
    gone_sets = [n for n in was.sets if n not in now.sets]
    new_chains = [n for n in now.chains if n not in was.chains]
    gone_chains = [n for n in was.chains if n not in now.chains]
    changed = [n for n in now.chains if n in was.chains and was.chains[n] != now.chains[n]]
    gone_elements = [(k, None) for k, v in was.elements.items() if now.elements.get(k) != v]
    new_elements = [(k, v) for k, v in now.elements.items() if was.elements.get(k) != v]
    before = was.shared if held is None else held
    change = shared_change(was, now)
    gone_shared = [k for k, n in change.items() if n < 0 and before.get(k, 0) + n <= 0]
    new_shared = [k for k, n in change.items() if n > 0 and before.get(k, 0) <= 0]
    return [
        *declare(now, [*new_sets, *new_chains]),
        *element_lines("delete", gone_elements),
        *shared_lines("delete", gone_shared),
        *(f"flush chain {PREFIX} {n}" for n in [*changed, *gone_chains]),
        *fill(now, [*new_chains, *changed]),
        *element_lines("add", new_elements),
        *shared_lines("add", new_shared),
        *(f"delete chain {PREFIX} {n}" for n in gone_chains),
        *(f"delete {was.sets[n][0]} {PREFIX} {n}" for n in gone_sets),
    ]
