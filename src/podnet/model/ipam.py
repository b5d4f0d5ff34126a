"""Reservation: one address held by one attachment (`ipam/<network>/ip/<address>`).

The value is {"id", "ifname", "state", "owner", "ts"}; the network and the address
are the key's, the revision the entry's (releases are guarded by it). A reservation is
"pending" while its ADD runs and "ready" after it; `owner` is the tag of the process
that took it (procs.py: `<node>:<boot_id>:<pid>:<starttime>`, or `<pid>:<starttime>`
when written before nodes were recorded), so a resync can roll back what a killed
process left, and a node judges only its own node's reservations.

Decoding never fails on the value: a corrupt one still marks its address taken (with
an empty owner, so GC can clean it up); only a key that is no reservation's is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from podnet import keys
from podnet.model.base import CorruptRecord
from podnet.procs import parse_owner
from podnet.store.base import Entry, dumps

PENDING = "pending"
READY = "ready"


@dataclass(frozen=True)
class Reservation:
    network: str
    address: str
    container_id: str
    ifname: str
    state: str
    owner: str
    ts: float
    revision: int = 0

    @property
    def attachment(self) -> tuple[str, str]:
        return self.container_id, self.ifname

    @property
    def node(self) -> str:
        """The node whose process took it ("": a tag of before, or none)."""
        owner = parse_owner(self.owner)
        return owner.node if owner else ""

    @property
    def key(self) -> str:
        return keys.ipam_address(self.network, self.address)

    def to_json(self) -> dict[str, object]:
        return {"id": self.container_id, "ifname": self.ifname, "state": self.state,
                "owner": self.owner, "ts": self.ts}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_entry(cls, entry: Entry) -> Reservation:
        where = keys.parse_ipam_address(entry.key)
        if where is None:
            raise CorruptRecord(f"{entry.key!r} is not a reservation's key")
        try:
            data = json.loads(entry.value)
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        ts = data.get("ts", 0.0)
        return cls(
            network=where[0], address=where[1], container_id=str(data.get("id", "")),
            ifname=str(data.get("ifname", "")), state=str(data.get("state", "")),
            owner=str(data.get("owner", "")),
            ts=float(ts) if isinstance(ts, int | float) else 0.0,
            revision=entry.revision,
        )
