"""EndpointRecord: one CNI attachment as ADD built it (`endpoints/<net>/<cid>/<ifname>`).

ADD writes it *pending* (with the owner tag of the process doing the work, procs.py)
before it builds anything, and rewrites it *ready* with what it built once everything
stands. DEL, CHECK, GC, the agent's resync and the cluster's cleanup of a dead node's
block all read it back through this one type. `node` names the node it belongs to
(podnet/identity.py): a store may be shared by many machines, and their root
namespaces all have one `host_netns`.

Field names and the JSON text are what release 0.1.0 wrote (`json.dumps` in field
order, as `encode` does): stores written then read the same now
(tests/unit/test_model_golden.py). `node` came later: a record without one (written
before) has none in its text either, and belongs to the namespace that wrote it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from podnet.errors import PodnetError
from podnet.model.base import Fields, parse_json
from podnet.naming import is_ifname

PENDING = "pending"
READY = "ready"
_ATTACH_ID = re.compile(r"^[0-9a-f]{12}$")


@dataclass(frozen=True)
class EndpointRecord:
    """`host_netns` is the (dev, inode) of the namespace the host side was built in,
    `node` the node that built it ("" in a record of before); `owner` is set while
    pending; `ips`, `host_links`, `nat`, `result` once ready."""

    state: str
    attach_id: str
    mode: str
    netns: str
    host_netns: tuple[int, int]
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    ts: float = 0.0
    owner: str = ""
    ips: tuple[str, ...] = ()
    host_links: tuple[str, ...] = ()
    nat: bool | None = None  # None: not known yet (pending), so DEL looks for rules anyway
    result: Mapping[str, Any] = field(default_factory=dict, hash=False)
    node: str = ""

    @property
    def pending(self) -> bool:
        return self.state == PENDING

    def local_to(self, node: str) -> bool:
        """A ready pod of `node` with a namespace to reach it in."""
        return self.node == node and not self.pending and bool(self.netns)

    def ready(self, ips: tuple[str, ...], host_links: tuple[str, ...], nat: bool,
              result: Mapping[str, Any]) -> EndpointRecord:
        """The record once ADD has built everything: no owner any more."""
        return replace(self, state=READY, owner="", ips=tuple(ips), host_links=tuple(host_links),
                       nat=nat, result=result)

    @property
    def cni_path(self) -> tuple[str, ...]:
        """CNI_PATH of the ADD: where a DEL of this attachment finds delegates."""
        return tuple(p for p in self.env.get("CNI_PATH", "").split(":") if p)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.pending:
            out["owner"] = self.owner
        out.update(attach_id=self.attach_id, mode=self.mode, netns=self.netns,
                   host_netns=list(self.host_netns))
        if self.node:
            out["node"] = self.node
        out.update(config=self.config, env=self.env, ts=self.ts)
        if not self.pending:
            out.update(ips=list(self.ips), host_links=list(self.host_links), nat=self.nat,
                       result=self.result)
        return out

    def encode(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: object, what: str = "endpoint record") -> EndpointRecord:
        f = Fields(raw, what)
        state = f.text("state")
        if state not in (PENDING, READY):
            raise f.error("state", f"must be {PENDING} or {READY}, got {state!r}")
        attach_id = f.text("attach_id")
        if not _ATTACH_ID.match(attach_id):
            raise f.error("attach_id", f"is not 12 hex digits: {attach_id!r}")
        host_netns = f.raw.get("host_netns")
        if (not isinstance(host_netns, list) or len(host_netns) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in host_netns)):
            raise f.error("host_netns", f"must be [dev, inode], got {host_netns!r}")
        env = f.mapping("env")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise f.error("env", "must map strings to strings")
        links = f.texts("host_links")
        bad = [name for name in links if not is_ifname(name)]
        if bad:
            raise f.error("host_links", f"holds a name that is no interface name: {bad[0]!r}")
        return cls(
            state=state, attach_id=attach_id, mode=f.text("mode", "bridge"), netns=f.text("netns", ""),
            host_netns=(host_netns[0], host_netns[1]), config=f.mapping("config"), env=env,
            ts=f.number("ts"), owner=f.text("owner", ""), ips=f.texts("ips"), host_links=links,
            nat=f.flag("nat") if f.has("nat") else None, result=f.mapping("result"), node=f.text("node", ""),
        )

    @classmethod
    def decode(cls, text: str, what: str = "endpoint record") -> EndpointRecord:
        return cls.from_json(parse_json(text, what), what)


def decode_entries(entries: Iterable[Any]) -> list[EndpointRecord]:
    """The records among store entries of `endpoints/` (key, value); one that does not
    decode is skipped (`podnet doctor` names such records)."""
    out = []
    for entry in entries:
        try:
            out.append(EndpointRecord.decode(entry.value, entry.key))
        except (PodnetError, ValueError):
            continue
    return out
