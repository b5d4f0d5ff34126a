"""What policy reads from the store besides the objects users apply.

- `policy/pods/<namespace>/<name>` -> PodRecord: what an orchestrator knows of a pod
  and CNI does not (labels, named ports, node, addresses), kept as a v1 Pod manifest
  so `podnet get pods -o yaml` shows what kubectl would.
- `policy/settings` -> PolicySettings: cluster-wide switches (`logAllowed`).

Pod addresses and ports become nft set elements: they are checked when read back.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet import addresses, keys
from podnet.errors import InvalidConfig
from podnet.model.base import Fields, parse_json
from podnet.model.probe import ReadinessProbe, parse_probe
from podnet.store.base import dumps

PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class PodRecord:
    namespace: str
    name: str
    node: str = ""
    ips: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Mapping[str, Any], ...] = ()  # {"name", "port", "protocol"}
    readiness: ReadinessProbe | None = None  # probed by the pod's node (agent/readiness_service.py)

    @property
    def key(self) -> str:
        return keys.pod(self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_ports(self, protocol: str = "TCP") -> dict[str, int]:
        return {p["name"]: p["port"] for p in self.ports if p.get("name") and p.get("protocol", "TCP") == protocol}

    def to_json(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"nodeName": self.node, "ports": [dict(p) for p in self.ports]}
        if self.readiness is not None:  # only then: records of 0.1.0 encode to the same bytes
            spec["readinessProbe"] = self.readiness.to_dict()
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels)},
                "spec": spec, "status": {"podIPs": list(self.ips)}}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "pod record") -> PodRecord:
        doc = Fields(raw, what)
        meta = Fields(doc.mapping("metadata"), f"{what}: metadata")
        spec = Fields(doc.mapping("spec"), f"{what}: spec")
        status = Fields(doc.mapping("status"), f"{what}: status")
        ips = status.texts("podIPs")
        for ip in ips:
            try:
                addresses.address(ip, "")
            except InvalidConfig as exc:
                raise status.error("podIPs", f"holds {exc.msg.strip()}") from None
        ports = spec.raw.get("ports") or []
        if not isinstance(ports, list):
            raise spec.error("ports", "must be a list")
        checked = []
        for i, port in enumerate(ports):
            p = Fields(port, f"{what}: spec.ports[{i}]")
            number = p.integer("port")
            if number is None or not 1 <= number <= 65535:
                raise p.error("port", f"is not a port: {number!r}")
            if p.text("protocol", "TCP") not in PROTOCOLS:
                raise p.error("protocol", f"must be one of {', '.join(PROTOCOLS)}")
            p.text("name", "")
            checked.append(dict(port))
        readiness = None
        if spec.raw.get("readinessProbe") is not None:
            try:
                readiness = parse_probe(spec.raw["readinessProbe"], "readinessProbe")
            except InvalidConfig as exc:
                raise spec.error("readinessProbe", exc.msg) from None
        return cls(namespace=keys.segment(meta.text("namespace"), "namespace"),
                   name=keys.segment(meta.text("name"), "pod name"),
                   node=spec.text("nodeName", "") or "", ips=ips, labels=meta.labels("labels"),
                   ports=tuple(checked), readiness=readiness)


@functools.lru_cache(maxsize=4096)
def decode_pod(text: str, key: str) -> PodRecord:
    """A stored pod record from its text, parsed once per process: services, cluster
    DNS, readiness and the policy world all follow pods/, and while a lab's pods
    attached every agent parsed every pod four times. Records are frozen and shared:
    never change one's labels. A bad record raises (CorruptRecord or InvalidConfig,
    naming `key`) each time it is read; only good ones are kept."""
    return PodRecord.from_json(parse_json(text, key), key)


@dataclass(frozen=True)
class PolicySettings:
    log_allowed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"logAllowed": self.log_allowed}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "policy settings") -> PolicySettings:
        return cls(log_allowed=Fields(raw, what).flag("logAllowed"))
