"""Readiness probes (pure): what a pod declares.

A pod record (and a lab topology's pod) may carry a Kubernetes-style
`readinessProbe`: `tcpSocket: {port}` or `httpGet: {path, port}`, with
`initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`, `successThreshold` and
`failureThreshold` (Kubernetes' defaults: 0, 10, 1, 1, 3). The node agent that runs
the pod probes it (agent/readiness_service.py; services/probes.py turns results into
readiness). A port may be a number or the name of one of the pod's ports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podnet.errors import InvalidConfig
from podnet.schema.fields import is_port_name

DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
            "failureThreshold": 3}
LIMITS = {"initialDelaySeconds": (0, 3600), "periodSeconds": (1, 3600), "timeoutSeconds": (1, 3600),
          "successThreshold": (1, 100), "failureThreshold": (1, 100)}
FIELDS = ("tcpSocket", "httpGet", *DEFAULTS)


@dataclass(frozen=True)
class ReadinessProbe:
    kind: str  # "tcp" or "http"
    port: int | str  # a number, or the name of one of the pod's ports
    path: str = "/"
    initial_delay: int = 0
    period: int = 10
    timeout: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    def to_dict(self) -> dict[str, Any]:
        action = {"tcpSocket": {"port": self.port}} if self.kind == "tcp" else {
            "httpGet": {"path": self.path, "port": self.port}}
        values = (self.initial_delay, self.period, self.timeout, self.success_threshold, self.failure_threshold)
        return {**action, **{k: v for k, v in zip(DEFAULTS, values, strict=True) if DEFAULTS[k] != v}}

    def resolve_port(self, named: Mapping[str, int]) -> int | None:
        """The port number to probe, given the pod's named ports (None: no such name)."""
        return self.port if isinstance(self.port, int) else named.get(self.port)


def _integer(raw: Mapping[str, Any], name: str, where: str) -> int:
    value = raw.get(name, DEFAULTS[name])
    low, high = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidConfig(f"{where}.{name}: {value!r} is not an integer {low}..{high}")
    return value


def _port(value: Any, where: str) -> int | str:
    if is_port_name(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    raise InvalidConfig(f"{where}: {value!r} is not a port number or a port name")


def parse_probe(raw: Any, where: str = "readinessProbe") -> ReadinessProbe:
    """A readinessProbe mapping, checked field by field (errors name the path)."""
    if not isinstance(raw, Mapping):
        raise InvalidConfig(f"{where}: must be a mapping")
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:
        raise InvalidConfig(f"{where}.{unknown[0]}: unknown field", f"known: {', '.join(FIELDS)}")
    actions = [k for k in ("tcpSocket", "httpGet") if k in raw]
    if len(actions) != 1:
        raise InvalidConfig(f"{where}: give exactly one of tcpSocket or httpGet")
    action = raw[actions[0]]
    allowed = ("port",) if actions[0] == "tcpSocket" else ("port", "path")
    if not isinstance(action, Mapping) or sorted(set(action) - set(allowed)):
        raise InvalidConfig(f"{where}.{actions[0]}: a mapping of {', '.join(allowed)}")
    port = _port(action.get("port"), f"{where}.{actions[0]}.port")
    path = action.get("path", "/")
    if actions[0] == "httpGet" and (not isinstance(path, str) or not path.startswith("/") or
                                    not all("!" <= c <= "~" for c in path) or len(path) > 1024):
        raise InvalidConfig(f"{where}.httpGet.path: {path!r} must be an absolute path of printable ASCII")
    return ReadinessProbe("tcp" if actions[0] == "tcpSocket" else "http", port, path,
                          *(_integer(raw, name, where) for name in DEFAULTS))
