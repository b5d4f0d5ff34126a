"""Calico's selector text, the subset BGPPeer needs: which nodes a peer applies to
(`spec.nodeSelector`) and which nodes are the peers (`spec.peerSelector`).

    all()               every node
    k == 'v'            label k is v
    k != 'v'            label k is not v, or k is absent (as Calico)
    has(k)   !has(k)    label k is present / absent
    a && b              both

Parsed once, at apply: anything else (`||`, `in {...}`, parentheses, a bare word) is
refused with the field path, never read as "matches nothing". Keys and values obey the
label rules (schema/fields.py): a value no label can hold is a typo. A selector is a
frozen value that renders back to one canonical text, which is what the store keeps.
Pure, standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from podnet.schema.fields import Loc, label_key_problem, label_value_problem

ALL = "all()"
SUPPORTED = "all(), k == 'v', k != 'v', has(k), !has(k), joined by &&"

_KEY = r"[^\s()=!'\"&|]+"
_HAS_RE = re.compile(rf"(!?)has\(\s*({_KEY})\s*\)")
_COMPARE_RE = re.compile(rf"({_KEY})\s*(==|!=)\s*(?:'([^']*)'|\"([^\"]*)\")")
_ALL_RE = re.compile(r"all\(\s*\)")


@dataclass(frozen=True)
class Term:
    """One condition: `op` is "==", "!=", "has" or "!has" (value "" for the last two)."""

    op: str
    key: str
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "==":
            return labels.get(self.key) == self.value
        if self.op == "!=":
            return labels.get(self.key) != self.value
        return (self.key in labels) == (self.op == "has")

    @property
    def text(self) -> str:
        if self.op in ("has", "!has"):
            return f"{self.op}({self.key})"
        return f"{self.key} {self.op} '{self.value}'"


@dataclass(frozen=True)
class Selector:
    """Terms ANDed together; no terms: `all()`."""

    terms: tuple[Term, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(term.matches(labels) for term in self.terms)

    @property
    def text(self) -> str:
        return " && ".join(term.text for term in self.terms) or ALL

    def __str__(self) -> str:
        return self.text


def _term(part: str, text: str, loc: Loc) -> Term | None:
    """One `&&`-separated part; None for `all()`."""
    if _ALL_RE.fullmatch(part):
        return None
    found = _HAS_RE.fullmatch(part)
    if found:
        term = Term("!has" if found.group(1) else "has", found.group(2))
    else:
        found = _COMPARE_RE.fullmatch(part)
        if not found:
            raise loc.error(f"cannot read {part!r} in {text!r}", f"podnet reads {SUPPORTED}")
        value = found.group(3) if found.group(3) is not None else found.group(4)
        term = Term(found.group(2), found.group(1), value)
        problem = label_value_problem(value)
        if problem:
            raise loc.error(f"{problem} (in {text!r})")
    problem = label_key_problem(term.key)
    if problem:
        raise loc.error(f"{problem} (in {text!r})")
    return term


def parse_selector(obj: object, loc: Loc) -> Selector:
    """A selector's text (`rack == 'r0' && has(route-reflector)`) into its value."""
    if not isinstance(obj, str):
        raise loc.error(f"{obj!r} is not a selector (a string such as \"rack == 'r0'\" or \"all()\")")
    if not obj.strip():
        raise loc.error("an empty selector", "leave the field out, or write all() for every node")
    terms = [_term(part.strip(), obj, loc) for part in obj.split("&&")]
    return Selector(tuple(t for t in terms if t is not None))
