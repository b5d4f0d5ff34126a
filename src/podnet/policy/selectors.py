"""Kubernetes label selectors: the dict form of manifests and kubectl's text form.

Every policy decision starts with "which endpoints does this select", so this module is
the one place that knows Kubernetes' selector rules: matchLabels and matchExpressions
are ANDed, `{}` selects everything, `NotIn` matches when the key is absent, `In` does
not. A selector is a frozen value (sorted pairs, sorted value sets) so two spellings of
the same selector compare equal and can be hashed, cached and rendered back.

Errors are ObjectErrors naming the location the caller passes in
(`"NetworkPolicy x/a: spec.podSelector"`), so a user sees which document and field is
wrong. Label keys and values follow schema/fields.py (the rules of every kind's labels).

Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podnet.errors import ObjectError
from podnet.schema.fields import label_key_problem, label_value_problem, parse_labels

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry. `values` is sorted and de-duplicated (a set in k8s)."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = label_key_problem(self.key)
        if problem:
            raise ObjectError(problem)
        if self.operator not in OPERATORS:
            raise ObjectError(f"operator {self.operator!r} is not one of {', '.join(OPERATORS)}")
        for v in self.values:
            problem = label_value_problem(v)
            if problem:
                raise ObjectError(problem)
        if self.operator in ("In", "NotIn") and not self.values:
            raise ObjectError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ObjectError(f"operator {self.operator} takes no values")
        object.__setattr__(self, "values", tuple(sorted(set(self.values))))

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.values:
            out["values"] = list(self.values)
        return out

    def to_text(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return "!" + self.key
        if self.operator == "NotIn" and len(self.values) == 1 and self.values[0]:
            return f"{self.key}!={self.values[0]}"
        word = "in" if self.operator == "In" else "notin"
        return f"{self.key} {word} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes LabelSelector; the empty selector selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "match_labels", tuple(sorted(self.match_labels)))

    @classmethod
    def parse(cls, obj: Any, path: str) -> LabelSelector:
        """The k8s dict form. `path` names the location for errors; None is refused here
        because only the caller knows whether a missing selector means "all" or "none"."""
        if not isinstance(obj, Mapping):
            raise ObjectError(f"{path}: must be a label selector mapping "
                              "(matchLabels and/or matchExpressions; {} selects everything)")
        unknown = sorted(set(obj) - {"matchLabels", "matchExpressions"})
        if unknown:
            raise ObjectError(f"{path}.{unknown[0]}: unknown field",
                              "a selector has matchLabels and matchExpressions")
        labels = parse_labels(obj.get("matchLabels"), f"{path}.matchLabels")
        exprs_obj = obj.get("matchExpressions")
        if exprs_obj is None:
            exprs_obj = []
        if not isinstance(exprs_obj, list):
            raise ObjectError(f"{path}.matchExpressions: must be a list")
        exprs = []
        for i, e in enumerate(exprs_obj):
            where = f"{path}.matchExpressions[{i}]"
            if not isinstance(e, Mapping):
                raise ObjectError(f"{where}: must be a mapping with key, operator, values")
            unknown = sorted(set(e) - {"key", "operator", "values"})
            if unknown:
                raise ObjectError(f"{where}.{unknown[0]}: unknown field")
            values = e.get("values")
            if values is None:
                values = []
            if not isinstance(values, list):
                raise ObjectError(f"{where}.values: must be a list of strings")
            try:
                exprs.append(Requirement(e.get("key"), e.get("operator"), tuple(values)))
            except ObjectError as err:
                raise ObjectError(f"{where}: {err.msg}") from None
        return cls(tuple(labels.items()), tuple(exprs))

    @property
    def selects_all(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [r.to_dict() for r in self.match_expressions]
        return out

    def to_text(self) -> str:
        """kubectl's text form ('' = everything); parse_selector_text reads it back."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        parts += [r.to_text() for r in self.match_expressions]
        return ",".join(parts)

    def __str__(self) -> str:
        return self.to_text() or "<all>"


# kubectl's selector text: a tiny lexer + recursive descent. Identifiers cover label keys
# and values (prefix/name, dots, dashes, underscores); everything else is an operator.
_TOKEN_RE = re.compile(r"\s*(?:(?P<word>[A-Za-z0-9_./-]+)|(?P<op>!=|==|=|!|\(|\)|,))")


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if not m:
            bad = text[pos:].lstrip()[:1]
            raise ObjectError(f"selector {text!r}: unexpected character {bad!r}",
                              "use k=v, k!=v, k in (a,b), k notin (a,b), k or !k, comma separated")
        kind = "word" if m.group("word") is not None else "op"
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def parse_selector_text(text: str) -> LabelSelector:
    """kubectl-style selector text: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
    `k`, `!k`, comma separated (AND); '' selects everything."""
    toks = _tokens(text)
    hint = "use k=v, k!=v, k in (a,b), k notin (a,b), k or !k, comma separated"
    pos = 0

    def fail(msg: str) -> ObjectError:
        return ObjectError(f"selector {text!r}: {msg}", hint)

    def peek() -> tuple[str, str] | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks):
            raise fail("unexpected end")
        pos += 1
        return toks[pos - 1]

    def value_after(op: str) -> str:
        tok = peek()
        if tok is None or tok == ("op", ","):
            return ""  # `k=` means the label is present with an empty value
        kind, val = take()
        if kind != "word":
            raise fail(f"expected a value after {op!r}, got {val!r}")
        return val

    def value_set(word: str) -> tuple[str, ...]:
        if take() != ("op", "("):
            raise fail(f"expected '(' after {word!r}")
        values: list[str] = []
        while True:
            kind, val = take()
            if kind == "word":
                values.append(val)
                kind, val = take()
            if (kind, val) == ("op", ")"):
                break
            if (kind, val) != ("op", ","):
                raise fail(f"expected ',' or ')' in the value list of {word!r}, got {val!r}")
        if not values:
            raise fail(f"{word!r} needs at least one value")
        return tuple(values)

    labels: dict[str, str] = {}
    exprs: list[Requirement] = []
    while peek() is not None:
        kind, val = take()
        try:
            if (kind, val) == ("op", "!"):
                kind, key = take()
                if kind != "word":
                    raise fail(f"expected a label key after '!', got {key!r}")
                exprs.append(Requirement(key, "DoesNotExist"))
            elif kind == "word":
                key = val
                nxt = peek()
                if nxt is None or nxt == ("op", ","):
                    exprs.append(Requirement(key, "Exists"))
                elif nxt in (("op", "="), ("op", "==")):
                    op = take()[1]
                    value = value_after(op)
                    problem = label_key_problem(key) or label_value_problem(value)
                    if problem:
                        raise ObjectError(problem)
                    if key in labels:  # `a=1,a=2`: both must hold, so keep both
                        exprs.append(Requirement(key, "In", (value,)))
                    else:
                        labels[key] = value
                elif nxt == ("op", "!="):
                    take()
                    exprs.append(Requirement(key, "NotIn", (value_after("!="),)))
                elif nxt in (("word", "in"), ("word", "notin")):
                    word = take()[1]
                    operator = "In" if word == "in" else "NotIn"
                    exprs.append(Requirement(key, operator, value_set(word)))
                else:
                    raise fail(f"unexpected {nxt[1]!r} after label key {key!r}")
            else:
                raise fail(f"expected a label key, got {val!r}")
        except ObjectError as err:
            if err.msg.startswith("selector "):
                raise
            raise fail(err.msg) from None
        tok = peek()
        if tok is not None:
            if tok != ("op", ","):
                raise fail(f"expected ',' between requirements, got {tok[1]!r}")
            take()
            if peek() is None:
                raise fail("trailing ','")
    return LabelSelector(tuple(labels.items()), tuple(exprs))
