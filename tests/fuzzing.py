"""Helpers shared by the fuzz tests."""

from __future__ import annotations


def json_slots(value, out: list | None = None) -> list:
    """Every (container, key) in a JSON tree: where a mutation can strike."""
    out = [] if out is None else out
    if isinstance(value, dict):
        for key, child in value.items():
            out.append((value, key))
            json_slots(child, out)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out.append((value, index))
            json_slots(child, out)
    return out
