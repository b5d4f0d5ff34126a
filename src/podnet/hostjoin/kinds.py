"""Host, the kind `podnet get hosts` lists: the plain machines of `hosts/<name>`.

Hosts are not applied by users: the lab registers them, `podnet host join` writes
their podnet address. The registry shows a record as a manifest (its name is its
key's: objects/store.py fills it in), so `get hosts` reads like the other kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnet import keys
from podnet.model.cluster import HostRecord
from podnet.schema.kind import Column, Kind, manifest


def host_manifest(raw: Any) -> dict[str, Any]:
    """A stored host record as a podnet.io/v1 Host manifest (the name comes from the key)."""
    record = HostRecord.from_json(raw)
    return manifest("podnet.io/v1", "Host", "", None, {}, {
        "underlayIP": record.underlay_ip, "podIP": record.pod_ip, "rack": record.rack, "joined": record.joined})


def _spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("spec") or {}


HOST = Kind(
    "Host", "podnet.io/v1", "hosts", keys.HOSTS, name_is_label=True, manifest=host_manifest,
    columns=(Column("UNDERLAY", lambda d: _spec(d).get("underlayIP")),
             Column("POD-IP", lambda d: _spec(d).get("podIP") or "-"),
             Column("RACK", lambda d: _spec(d).get("rack")),
             Column("JOINED", lambda d: "yes" if _spec(d).get("joined") else "no")))

HOST_KINDS: tuple[Kind, ...] = (HOST,)
