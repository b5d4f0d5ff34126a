"""What every stored record shares: checked reads of JSON fields, and one error.

A record read back from a store may be old, hand-edited or written by a faulty peer,
and its names reach `ip`, `nft` and paths. So `from_json` checks every field's type
(and names' shape) and raises CorruptRecord naming the key family and field, instead
of letting a KeyError or a bad name travel on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnet.errors import StoreError
from podnet.naming import is_ifname


class CorruptRecord(StoreError):
    """A stored value that is not a valid record of its family."""


def parse_json(text: str, what: str) -> Any:
    """A stored value's JSON, or CorruptRecord naming the record."""
    import json

    try:
        return json.loads(text)
    except ValueError as exc:
        raise CorruptRecord(f"{what}: not JSON ({exc})") from None


class Fields:
    """Typed access to one JSON object, errors naming `what.field`."""

    __slots__ = ("raw", "what")

    def __init__(self, raw: object, what: str) -> None:
        if not isinstance(raw, Mapping):
            raise CorruptRecord(f"{what}: expected a JSON object, got {type(raw).__name__}")
        self.raw: Mapping[str, Any] = raw
        self.what = what

    def error(self, name: str, problem: str) -> CorruptRecord:
        return CorruptRecord(f"{self.what}: field {name!r} {problem}")

    def has(self, name: str) -> bool:
        return name in self.raw

    def text(self, name: str, default: str | None = None) -> str:
        value = self.raw.get(name, default)
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {value!r}")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.raw.get(name)
        return None if value is None else self.text(name)

    def number(self, name: str, default: float = 0.0) -> float:
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"must be a number, got {value!r}")
        return float(value)

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.raw.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {value!r}")
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {value!r}")
        return value

    def mapping(self, name: str, default: Mapping | None = None) -> dict[str, Any]:
        value = self.raw.get(name, default if default is not None else {})
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(name, f"must be an object, got {type(value).__name__}")
        return dict(value)

    def texts(self, name: str) -> tuple[str, ...]:
        value = self.raw.get(name) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, f"must be a list of strings, got {value!r}")
        return tuple(value)

    def ifname(self, name: str) -> str:
        value = self.text(name)
        if not is_ifname(value):
            raise self.error(name, f"is not an interface name: {value!r}")
        return value

    def labels(self, name: str) -> dict[str, str]:
        value = self.mapping(name)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise self.error(name, "must map strings to strings")
        return value
