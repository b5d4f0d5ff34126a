"""Reading a user's manifest field by field, with the field path in every error.

Every kind's parser reads its YAML through these accessors, so a mistake is reported
the same way everywhere: the document, then the path
(`NetworkPolicy x/deny-all: spec.ingress[0].ports[1].port: 70000 is not a port
(1-65535)`), then a hint. Unknown fields are errors wherever a parser names the
allowed ones: a typo such as `podselector` must not silently widen a policy.

Also here: Kubernetes' rules for names and labels, which every kind's metadata obeys.
Pure, standard library only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from podnet.errors import ObjectError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
# Kubernetes IsQualifiedName / IsValidLabelValue.
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
LABEL_NAME_MAX = 63
LABEL_PREFIX_MAX = 253


@dataclass(frozen=True)
class Loc:
    """Where in which document: renders as `NetworkPolicy x/a: spec.ingress[0]`."""

    doc: str
    path: str = ""

    def field(self, name: str) -> Loc:
        return Loc(self.doc, f"{self.path}.{name}" if self.path else name)

    def item(self, i: int) -> Loc:
        return Loc(self.doc, f"{self.path}[{i}]")

    def __str__(self) -> str:
        return f"{self.doc}: {self.path}" if self.path else self.doc

    def error(self, msg: str, hint: str = "") -> ObjectError:
        return ObjectError(f"{self}: {msg}", hint)


def mapping(obj: Any, loc: Loc, allowed: Iterable[str] | None = None) -> Mapping[str, Any]:
    """A mapping; with `allowed`, any other key is an error naming the known ones."""
    if not isinstance(obj, Mapping):
        raise loc.error("must be a mapping")
    if allowed is not None:
        allowed = tuple(allowed)
        unknown = sorted(str(k) for k in obj if k not in allowed)
        if unknown:
            raise loc.field(unknown[0]).error("unknown field", f"known: {', '.join(allowed)}")
    return obj


def items(obj: Any, loc: Loc) -> list[Any]:
    if not isinstance(obj, list):
        raise loc.error("must be a list")
    return obj


def integer(obj: Any, loc: Loc) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int):
        raise loc.error(f"{obj!r} is not an integer")
    return obj


def number(obj: Any, loc: Loc) -> int | float:
    if isinstance(obj, bool) or not isinstance(obj, int | float) or obj != obj:
        raise loc.error(f"{obj!r} is not a number")
    return obj


def port_number(obj: Any, loc: Loc) -> int:
    value = integer(obj, loc)
    if not 1 <= value <= 65535:
        raise loc.error(f"{value} is not a port (1-65535)")
    return value


def dns_name(obj: Any, loc: Loc, *, label: bool) -> str:
    """A DNS-1123 label (namespaces, tiers, nodes) or subdomain (other object names)."""
    if label:
        if not isinstance(obj, str) or not DNS_LABEL_RE.fullmatch(obj):
            raise loc.error(f"{obj!r} is not a DNS label",
                            "at most 63 lowercase alphanumerics or '-', starting and ending "
                            "with an alphanumeric")
    elif not isinstance(obj, str) or len(obj) > 253 or not DNS_SUBDOMAIN_RE.fullmatch(obj):
        raise loc.error(f"{obj!r} is not a DNS subdomain name",
                        "at most 253 lowercase alphanumerics, '-' or '.'")
    return obj


# IANA_SVC_NAME (a named port): at most 15 lowercase alphanumerics and '-', at least
# one letter, no leading, trailing or doubled '-'.
_PORT_NAME_RE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def is_port_name(text: object) -> bool:
    return isinstance(text, str) and len(text) <= 15 and _PORT_NAME_RE.fullmatch(text) is not None and \
        any("a" <= c <= "z" for c in text)


def address(obj: Any, loc: Loc) -> str:
    """One IP address, normalised, never with a scope ID (ipaddress keeps whatever
    follows a '%', and it would reach nft)."""
    if isinstance(obj, str) and "%" in obj:
        raise loc.error(f"{obj!r} carries a scope ID ('%'), which podnet does not take")
    try:
        if not isinstance(obj, str):
            raise ValueError(obj)
        return str(ipaddress.ip_address(obj))
    except ValueError:
        raise loc.error(f"{obj!r} is not an IP address") from None


def cidr(obj: Any, loc: Loc, *, bare_ip: bool = False) -> IPNetwork:
    """A CIDR without host bits (or, with `bare_ip`, a single address)."""
    if not isinstance(obj, str):
        raise loc.error(f"{obj!r} is not a CIDR")
    if "%" in obj:  # an IPv6 scope ID: ipaddress keeps whatever follows it
        raise loc.error(f"{obj!r} carries a scope ID ('%'), which podnet does not take")
    if bare_ip and "/" not in obj:
        try:
            return ipaddress.ip_network(obj)
        except ValueError:
            raise loc.error(f"{obj!r} is not an IP address or CIDR") from None
    if "/" not in obj:
        raise loc.error(f"{obj!r} is not a CIDR (address/prefix-length)")
    try:
        return ipaddress.ip_network(obj)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(obj, strict=False)
    except ValueError:
        raise loc.error(f"{obj!r} is not a CIDR") from None
    raise loc.error(f"{obj!r} has host bits set", f"did you mean {net}?")


# --- labels ---------------------------------------------------------------------------


def label_key_problem(key: object) -> str | None:
    """Why `key` is not a Kubernetes label key (None when it is one)."""
    if not isinstance(key, str) or not key:
        return f"{key!r} is not a label key (a non-empty string)"
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > LABEL_PREFIX_MAX or not DNS_SUBDOMAIN_RE.fullmatch(prefix)):
        return (f"label key {key!r}: the prefix must be a DNS subdomain "
                f"(lowercase alphanumerics, '-' and '.', at most {LABEL_PREFIX_MAX} characters)")
    if len(name) > LABEL_NAME_MAX or not _LABEL_NAME_RE.fullmatch(name):
        return (f"label key {key!r}: the name must be at most {LABEL_NAME_MAX} characters of "
                "[A-Za-z0-9_.-], starting and ending with an alphanumeric")
    return None


def label_value_problem(value: object) -> str | None:
    """Why `value` is not a Kubernetes label value (None when it is one; '' is one)."""
    if not isinstance(value, str):
        return f"{value!r} is not a label value (a string)"
    if value and (len(value) > LABEL_NAME_MAX or not _LABEL_NAME_RE.fullmatch(value)):
        return (f"label value {value!r} must be at most {LABEL_NAME_MAX} characters of "
                "[A-Za-z0-9_.-], starting and ending with an alphanumeric (or empty)")
    return None


def parse_labels(obj: Any, where: str) -> dict[str, str]:
    """A `labels`/`matchLabels` mapping, validated; {} for None."""
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise ObjectError(f"{where}: must be a mapping of label keys to values")
    out: dict[str, str] = {}
    for k, v in obj.items():
        problem = label_key_problem(k) or label_value_problem(v)
        if problem:
            raise ObjectError(f"{where}: {problem}")
        out[k] = v
    return dict(sorted(out.items()))


def frozen_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """Labels as an immutable, sorted mapping (objects are hashed and shared)."""
    return MappingProxyType(dict(sorted(labels.items())))
