"""Field readers the mesh's manifests share (pure): required fields, bounded numbers,
percentages, and the reference to a Service that routes and policies attach to."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from podnet.schema import fields
from podnet.schema.fields import Loc


def required(spec: Mapping[str, Any], name: str, loc: Loc) -> Any:
    if spec.get(name) is None:
        raise loc.field(name).error("required")
    return spec[name]


def bounded(obj: Any, loc: Loc, low: float, high: float | None = None, *, whole: bool = True) -> Any:
    value = fields.integer(obj, loc) if whole else fields.number(obj, loc)
    if value < low or (high is not None and value > high):
        raise loc.error(f"{value} is not {low}..{high}" if high is not None else f"{value} is below {low}")
    return value


def percent(obj: Any, loc: Loc, low: float = 0) -> float:
    return float(bounded(obj, loc, low, 100, whole=False))


def shown(number: float) -> int | float:
    """A float written as an integer when it is one (`10`, not `10.0`)."""
    return int(number) if float(number).is_integer() else number


def service_ref(raw: Any, loc: Loc, namespace: str, *, port: bool) -> tuple[str, int | None]:
    """A reference to a Service of `namespace` (parentRef, targetRef): its name and port."""
    allowed = ("group", "kind", "name", "namespace", *(("port",) if port else ()))
    ref = fields.mapping(raw, loc, allowed)
    if ref.get("group") not in (None, ""):
        raise loc.field("group").error(f"{ref['group']!r}: only the core group (\"\") is supported")
    if ref.get("kind") != "Service":
        raise loc.field("kind").error(f"{ref.get('kind')!r}: must be Service", "the mesh attaches to services")
    if ref.get("namespace") not in (None, namespace):
        raise loc.field("namespace").error(
            f"{ref['namespace']!r}: must be the object's own namespace {namespace!r}")
    name = fields.dns_name(required(ref, "name", loc), loc.field("name"), label=True)
    number = fields.port_number(ref["port"], loc.field("port")) if ref.get("port") is not None else None
    return name, number


def service_ref_dict(name: str, port: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"group": "", "kind": "Service", "name": name}
    if port is not None:
        out["port"] = port
    return out


def optional(spec: Mapping[str, Any], name: str, loc: Loc, read: Callable[[Any, Loc], Any],
             default: Any = None) -> Any:
    """`read(spec[name], loc.name)`, or `default` when the field is absent or null."""
    return default if spec.get(name) is None else read(spec[name], loc.field(name))
