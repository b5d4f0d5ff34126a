"""Durations as the Gateway API and Go write them ("500ms", "2s", "1m30s"), read into
seconds (float) and written back in the same form (pure).

Accepted: Go's `time.ParseDuration` grammar without a sign (the Gateway API's
`^([0-9]{1,5}(h|m|s|ms)){1,4}$` is a subset of it), and "0". Refused, with the field
path: a negative duration, a bare number (which unit?), anything else, and more than
MAX_SECONDS (a day: no request timeout or ejection time of the mesh is longer, and
HAProxy's timers end at 24.8 days).
"""

from __future__ import annotations

import re
from typing import Any

from podnet.schema.fields import Loc

MAX_SECONDS = 86400
_NS_PER_UNIT = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "µs": 10**3,
                "ns": 1}
_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_HINT = 'a number with a unit, e.g. "500ms", "2s", "1m30s" (units h, m, s, ms, us, ns)'


def _nanoseconds(text: str) -> int | None:
    """Go's duration text in whole nanoseconds; None: not a duration."""
    if text == "0":
        return 0
    total, at = 0, 0
    while at < len(text):
        part = _PART_RE.match(text, at)
        if part is None:
            return None
        number, unit = part.groups()
        whole, _, fraction = number.partition(".")
        scale = _NS_PER_UNIT[unit]
        total += int(whole or "0") * scale + (int(fraction) * scale // 10 ** len(fraction) if fraction else 0)
        at = part.end()
    return total if text else None


def parse_duration(obj: Any, loc: Loc, *, zero: bool = False) -> float:
    """A duration in seconds; 0 only where `zero` (a Gateway API timeout of "0s": none)."""
    if isinstance(obj, int | float):  # bool too
        raise loc.error(f"{obj!r} has no unit", _HINT)
    if not isinstance(obj, str):
        raise loc.error(f"{obj!r} is not a duration", _HINT)
    if obj.startswith("-"):
        raise loc.error(f"{obj!r} is negative", "a duration is at least 0")
    nanoseconds = _nanoseconds(obj.removeprefix("+"))
    if nanoseconds is None:
        raise loc.error(f"{obj!r} is not a duration", _HINT)
    if nanoseconds == 0 and not zero:
        raise loc.error(f"{obj!r} is zero", "give a positive duration")
    if nanoseconds > MAX_SECONDS * 10**9:
        raise loc.error(f"{obj!r} is longer than {format_duration(MAX_SECONDS)}")
    return nanoseconds / 10**9


def format_duration(seconds: float) -> str:
    """Seconds as the shortest exact duration text ("1m30s", "500ms", "0s"), which
    `parse_duration` reads back to the same float."""
    left = round(seconds * 10**9)
    if left <= 0:
        return "0s"
    parts = []
    for unit in ("h", "m", "s", "ms", "us", "ns"):
        count, left = divmod(left, _NS_PER_UNIT[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
