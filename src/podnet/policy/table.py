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
GENERATION_SET = "generation"  # one element: which apply the kernel holds (cheap drift check)
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
        for name, s in sorted(self.sets.items()):
            if name not in old.sets:
                out.append("add " + s.render(name).strip().replace("set ", f"set {t} ", 1))
            elif old.sets[name] != s:
                out.append(f"flush set {t} {name}")
                if s.elements:
                    out.append(f"add element {t} {name} {{ {', '.join(s.elements)} }}")
        new_chains = [n for n in self.chains if n not in old.chains]
        for name in new_chains:
            first = self.chains[name][0] if self.chains[name] else ""
            hook = f" {{ {first} }}" if first.startswith("type ") else ""  # a base chain (host_in)
            out.append(f"add chain {t} {name}{hook}")
        for name, lines in self.chains.items():
            if name in old.chains and old.chains[name] == lines:
                continue
            if name in old.chains:
                out.append(f"flush chain {t} {name}")
            out.extend(f"add rule {t} {name} {line}" for line in lines if not line.startswith("type "))
        for name, (kind, elements) in sorted(self.maps.items()):
            if old.maps.get(name) == (kind, elements):
                continue
            out.append(f"flush map {t} {name}")
            if elements:
                out.append(f"add element {t} {name} {{ {', '.join(elements)} }}")
        gone = [n for n in old.chains if n not in self.chains]
        out.extend(f"flush chain {t} {name}" for name in gone)
        out.extend(f"delete chain {t} {name}" for name in gone)
        out.extend(f"delete set {t} {name}" for name in sorted(old.sets) if name not in self.sets)
        return "\n".join(out) + ("\n" if out else "")

    @staticmethod
    def stamp(generation: int) -> str:
        """Script lines recording `generation` in the table (append to a transaction)."""
        return (f"flush set {FAMILY} {TABLE} {GENERATION_SET}\n"
                f"add element {FAMILY} {TABLE} {GENERATION_SET} {{ {generation} }}\n")
