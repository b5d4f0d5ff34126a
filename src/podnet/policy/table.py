"""The nftables table one node enforces, as data (pure): sets, verdict maps and chains
of lines, rendered whole or as the difference to the table in force; and the text of
the log prefixes and comments those lines carry.

Why prefixes and comments get their own rule (`nft_text`): they come from names users
chose (policies, tiers, rule names: any UTF-8), while nft takes at most 127 bytes of
log prefix (NFLOG's 128 with the NUL) and 128 of comment, and one script that nft
refuses keeps the whole table from changing on every node. So every such text is
printable ASCII without a quote, backslash or semicolon, cut by bytes (ASCII: one
byte a character), and a text that had to change ends in `~` and a hash of the
original, so two rules never share a prefix (the flows' rule name) or a comment (the
counters' key) after cutting.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

FAMILY, TABLE = "inet", "podnet-policy"
GENERATION_SET = "generation"  # declared in every table; a pod table stamps its element (pod_table.py)
GENERATION_COUNTER = "generation_"  # the node table's: a named counter generation_<N> (Compiled.stamp)
LOG_GROUP = 100
PREFIX_MAX = 120  # NFLOG prefixes are at most 127 bytes (the rule adds a space)
COMMENT_MAX = 120  # nft comments are at most 128 bytes
_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - frozenset('"\\;')


def short_hash(*parts: object) -> str:
    """10 hex digits naming `parts` (chains, sets, cut texts)."""
    return hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()[:10]


def nft_text(text: str, limit: int) -> str:
    """`text` as a quoted nft prefix or comment takes it: itself when it is safe and
    short enough, else its safe characters (others as "?") cut to leave room for "~"
    and a hash of the original: at most `limit` bytes, unique per original."""
    if len(text) <= limit and all(ch in _SAFE for ch in text):
        return text
    tag = "~" + short_hash(text)
    return "".join(ch if ch in _SAFE else "?" for ch in text[: limit - len(tag)]) + tag


# What names a rule line: its NFLOG prefix (after a verdict letter), its comment (after
# the kind), the rule counters and `podnet trace` (observe/trace_parse.py) read back.
def cluster_rule_what(tier: str, name: str, direction: str, index: int, rule_name: str | None = None) -> str:
    return f"{tier}/{name} {direction.lower()}[{index}]" + (f" {rule_name}" if rule_name else "")


def np_rule_what(ref: str, direction: str, index: int) -> str:
    """`ref`: the NetworkPolicy's `namespace/name`."""
    return f"{ref} {direction.lower()}[{index}]"


def isolation_what(direction: str, endpoint: str, names: str) -> str:
    """The default deny of `endpoint` (`ns/name`), isolated by `names` (comma-joined)."""
    return f"default deny {direction.lower()} {endpoint} (isolated by {names})"


@dataclass(frozen=True)
class NftSet:
    type: str  # "ipv4_addr", "ipv6_addr", "ipv4_addr . inet_service", ...
    interval: bool
    elements: tuple[str, ...]

    def render(self, name: str) -> str:
        flags = "\n    flags interval" if self.interval else ""
        elements = f"\n    elements = {{ {', '.join(self.elements)} }}" if self.elements else ""
        return f"  set {name} {{\n    type {self.type}{flags}{elements}\n  }}"


@dataclass
class Compiled:
    """The table for one node: sets, verdict maps, chains (lines), rule descriptions."""

    sets: dict[str, NftSet] = field(default_factory=dict)
    maps: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)  # name -> (type, elems)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)  # log prefix -> what it means

    def render(self, table: str = TABLE) -> str:
        """The whole table, replacing any previous one in the same transaction;
        `table`: its name (a macvlan pod's own table, policy/pod_table.py)."""
        parts = [f"table {FAMILY} {table} {{", f"  set {GENERATION_SET} {{\n    type mark\n  }}",
                 *[s.render(n) for n, s in sorted(self.sets.items())]]
        for name, (kind, elements) in sorted(self.maps.items()):
            body = f"\n    elements = {{ {', '.join(elements)} }}" if elements else ""
            parts.append(f"  map {name} {{\n    type {kind} : verdict{body}\n  }}")
        for name, lines in self.chains.items():
            parts.append(f"  chain {name} {{\n" + "".join(f"    {line}\n" for line in lines) + "  }")
        parts.append("}")
        return (f"table {FAMILY} {table}\ndelete table {FAMILY} {table}\n" + "\n".join(parts) + "\n")

    def diff(self, old: Compiled) -> str:
        """One transaction taking table `old` to this one, touching only what changed."""
        t = f"{FAMILY} {TABLE}"
        out: list[str] = []
        # (compiles share unchanged sets and chains: `is` settles most without comparing)
        old_sets, old_chains = old.sets, old.chains
        changed_sets = sorted(name for name, s in self.sets.items()
                              if old_sets.get(name) is not s and old_sets.get(name) != s)
        for name in changed_sets:
            s = self.sets[name]
            if name not in old_sets:
                out.append("add " + s.render(name).strip().replace("set ", f"set {t} ", 1))
            else:
                out.append(f"flush set {t} {name}")
                if s.elements:
                    out.append(f"add element {t} {name} {{ {', '.join(s.elements)} }}")
        changed = [name for name, lines in self.chains.items()
                   if old_chains.get(name) is not lines and old_chains.get(name) != lines]
        for name in changed:
            if name not in old_chains:
                first = self.chains[name][0] if self.chains[name] else ""
                hook = f" {{ {first} }}" if first.startswith("type ") else ""  # a base chain (host_in)
                out.append(f"add chain {t} {name}{hook}")
        for name in changed:
            lines = self.chains[name]
            if name in old_chains:
                out.append(f"flush chain {t} {name}")
            out.extend(f"add rule {t} {name} {line}" for line in lines if not line.startswith("type "))
        for name, (kind, elements) in sorted(self.maps.items()):
            if old.maps.get(name) == (kind, elements):
                continue
            out.append(f"flush map {t} {name}")
            if elements:
                out.append(f"add element {t} {name} {{ {', '.join(elements)} }}")
        gone = [n for n in old_chains if n not in self.chains]
        out.extend(f"flush chain {t} {name}" for name in gone)
        out.extend(f"delete chain {t} {name}" for name in gone)
        out.extend(f"delete set {t} {name}" for name in sorted(old_sets.keys() - self.sets.keys()))
        return "\n".join(out) + ("\n" if out else "")

    @staticmethod
    def stamp(generation: int, previous: int | None = None) -> str:
        """Script lines recording `generation` in the node's table (append to a
        transaction): a named counter `generation_<N>`. `previous`: the generation the
        transaction was computed against; deleting its counter first makes nft refuse
        the whole transaction when the kernel holds another table (changed by hand): a
        compare-and-swap, without reading the table.

        Why a counter and not a set element (as the pod tables): nft 1.0.6 answers any
        element command by reading the elements of every interval set of the ruleset
        first (ipBlock and nets sets): 0.6 s of CPU at 5,000 of them, against ~10 ms
        for a rule, a chain or a counter (bench/README.md, policy_scale)."""
        check = f"delete counter {FAMILY} {TABLE} {GENERATION_COUNTER}{previous}\n" if previous is not None else ""
        return f"{check}add counter {FAMILY} {TABLE} {GENERATION_COUNTER}{generation}\n"


def stamped_generation(counters: dict | None) -> int | None:
    """The generation a `nft -j list counters table` document of the node's table
    carries (Compiled.stamp); None without exactly one."""
    found = [item["counter"].get("name", "") for item in (counters or {}).get("nftables", []) if "counter" in item]
    found = [name[len(GENERATION_COUNTER):] for name in found if name.startswith(GENERATION_COUNTER)]
    return int(found[0]) if len(found) == 1 and found[0].isdigit() else None
