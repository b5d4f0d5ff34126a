"""JSON keys matched to a field name the way Go's encoding/json does (pure, stdlib only).

Why: the reference plugins decode their config into Go structs, and encoding/json
matches an object key to a struct field case-insensitively. Runtimes rely on it:
containerd's CNI library (go-cni) sends runtimeConfig.portMappings entries from a Go
struct without JSON tags, as {"HostPort": .., "ContainerPort": .., "Protocol": ..,
"HostIP": ..}, and the portmap plugin takes them. podnet reads the capabilities it
claims (`CAPABILITIES`) through `go_field`, so it takes what the reference plugins take.

The rule, for one field (encoding/json, decode.go `object`): every key equal to the
field's name under Go's folding sets the field, so the last such key of the object
wins (an exact match is one of them; "exact match first" only chooses between two
fields whose names fold alike, which podnet's records never have). Go folds with
Unicode simple case folding; for the ASCII names podnet looks up, that is ASCII case
plus the two letters that fold onto ASCII: U+017F (long s) ~ s and U+212A (Kelvin
sign) ~ k. Full folding (German sharp s ~ "ss") is not Go's.

Python's `json` keeps the document's key order, except that a key repeated verbatim
keeps its first position with its last value; that one case may differ from Go.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The capabilities podnet's plugins read from runtimeConfig. Every conflist podnet
# writes claims exactly these (tests/unit/test_capability_keys.py): libcni passes a
# runtime's capability only to a plugin whose conflist entry names it verbatim.
CAPABILITIES = ("portMappings", "ips")

_SPECIAL = {"\u017f": "S", "\u212a": "K"}  # long s, Kelvin sign


def go_fold(name: str) -> str:
    """`name` folded as Go compares struct field names (exact for ASCII field names)."""
    if name.isascii():
        return name.upper()
    return "".join(_SPECIAL.get(c, c.upper() if c.isascii() else c) for c in name)


def go_equal_fold(key: str, name: str) -> bool:
    """Whether encoding/json would decode the JSON key `key` into field `name`."""
    return len(key) == len(name) and go_fold(key) == go_fold(name)


def go_field(obj: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """The value Go would decode into field `name` of `obj`: that of the last key
    matching it under Go's folding; `default` when no key does."""
    found = default
    folded = go_fold(name)
    for key, value in obj.items():
        if key == name or (isinstance(key, str) and len(key) == len(name) and go_fold(key) == folded):
            found = value
    return found
