"""ContainerRecord: one `podnet container` (`containers/<name>`), Docker style.

Written "created" before anything is built, "running" with its pid, and "exited" with
its code once its network is torn down (so "exited" means its addresses and port
rules are free). `supervisor` and `process` are "pid:starttime" owners: who answers
for the container while it is built or runs, and the container's own process. Every
write is a compare-and-put keyed by name *and* id (containers/records.py).

A bridge-mode container may sit on several networks (`attachments`, primary first:
eth0 with the default route, then eth1...). `network`, `ifname` and `mac` stay the
primary's and `ips` holds every attachment's addresses, so readers that know one
network (and older podnet versions) keep working. `attachments` is stored only for
more than one network; otherwise it is derived from those fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from podnet import keys
from podnet.model.base import Fields, parse_json
from podnet.naming import is_ifname
from podnet.store.base import Entry, dumps

STATES = ("created", "running", "exited")
MODES = ("bridge", "host", "none", "container")


@dataclass(frozen=True)
class Attachment:
    """One network a container is on: its interface and the addresses CNI ADD gave
    (empty while the ADD has not finished)."""

    network: str
    ifname: str
    ips: tuple[str, ...] = ()
    mac: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"network": self.network, "ifname": self.ifname, "ips": list(self.ips), "mac": self.mac}

    @classmethod
    def from_json(cls, raw: object, what: str) -> Attachment:
        f = Fields(raw, what)
        return cls(network=f.text("network"), ifname=f.ifname("ifname"), ips=f.texts("ips"),
                   mac=f.optional_text("mac"))


@dataclass(frozen=True)
class ContainerRecord:
    name: str
    id: str
    network_mode: str
    state: str = "created"
    network: str | None = None
    joined: str | None = None
    netns: str | None = None
    ifname: str = "eth0"
    ips: tuple[str, ...] = ()
    mac: str | None = None
    aliases: tuple[str, ...] = ()
    hostname: str = ""
    ports: tuple[Mapping[str, Any], ...] = ()
    cmd: tuple[str, ...] = ()
    pid: int | None = None
    process: str | None = None
    supervisor: str | None = None
    exit_code: int | None = None
    detached: bool = False
    auto_remove: bool = False
    created: str | None = None
    started: str | None = None
    finished: str | None = None
    attachments: tuple[Attachment, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        return keys.container(self.name)

    @property
    def network_attachments(self) -> tuple[Attachment, ...]:
        """Every network the container is on, primary first. A record made or stored
        without `attachments` (older versions, callers that know one network) is on
        its `network`, as the legacy fields say; derived on access, so `but()` of
        those fields stays consistent."""
        if self.attachments or self.network is None:
            return self.attachments
        return (Attachment(self.network, self.ifname, tuple(self.ips), self.mac),)

    @property
    def networks(self) -> tuple[str, ...]:
        """The names of network_attachments, primary first."""
        return tuple(a.network for a in self.network_attachments)

    def attachment(self, network: str) -> Attachment | None:
        return next((a for a in self.network_attachments if a.network == network), None)

    def with_attachments(self, attachments: tuple[Attachment, ...]) -> ContainerRecord:
        """A copy with these attachments; `ips` and the primary's `mac` follow them."""
        primary = attachments[0] if attachments else None
        return replace(self, attachments=attachments, ips=tuple(ip for a in attachments for ip in a.ips),
                       mac=primary.mac if primary else self.mac)

    def but(self, **changes: Any) -> ContainerRecord:
        """A copy with some fields changed (records are frozen)."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "name": self.name, "id": self.id, "network_mode": self.network_mode,
            "network": self.network, "joined": self.joined, "netns": self.netns,
            "ifname": self.ifname, "ips": list(self.ips), "mac": self.mac,
            "aliases": list(self.aliases), "hostname": self.hostname,
            "ports": [dict(p) for p in self.ports], "cmd": list(self.cmd), "pid": self.pid,
            "process": self.process, "supervisor": self.supervisor, "state": self.state,
            "exit_code": self.exit_code, "detached": self.detached,
            "auto_remove": self.auto_remove, "created": self.created, "started": self.started,
            "finished": self.finished,
            **self._attachments_json(),
        }

    def _attachments_json(self) -> dict[str, Any]:
        """`attachments` is written only for a container on more than one network: a
        one-network record stays exactly as release 0.1.0 wrote it (the legacy fields
        say all), so older readers and scripts see no change."""
        if len(self.network_attachments) < 2:
            return {}
        return {"attachments": [a.to_json() for a in self.network_attachments]}

    def encode(self) -> str:
        return dumps(self.to_json())

    @classmethod
    def from_entry(cls, entry: Entry) -> ContainerRecord:
        """The record a store entry holds; CorruptRecord naming its key otherwise."""
        return cls.from_json(parse_json(entry.value, entry.key), entry.key)

    @classmethod
    def from_json(cls, raw: object, what: str = "container record") -> ContainerRecord:
        f = Fields(raw, what)
        name = f.text("name")
        try:
            keys.segment(name, "container name")
        except keys.BadKey:
            raise f.error("name", f"is not a container name: {name!r}") from None
        state = f.text("state", "created")
        if state not in STATES:
            raise f.error("state", f"must be one of {', '.join(STATES)}, got {state!r}")
        mode = f.text("network_mode", "none")
        if mode not in MODES:
            raise f.error("network_mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        ifname = f.text("ifname", "eth0")
        if not is_ifname(ifname):
            raise f.error("ifname", f"is not an interface name: {ifname!r}")
        ports = f.raw.get("ports") or []
        if not isinstance(ports, list) or not all(isinstance(p, Mapping) for p in ports):
            raise f.error("ports", "must be a list of objects")
        known = cls.__dataclass_fields__.keys() - {"extra"}
        return cls(
            name=name, id=f.text("id"), network_mode=mode, state=state,
            network=f.optional_text("network"), joined=f.optional_text("joined"),
            netns=f.optional_text("netns"), ifname=ifname, ips=f.texts("ips"),
            mac=f.optional_text("mac"), aliases=f.texts("aliases"), hostname=f.text("hostname", ""),
            ports=tuple(dict(p) for p in ports), cmd=f.texts("cmd"), pid=f.integer("pid"),
            process=f.optional_text("process"), supervisor=f.optional_text("supervisor"),
            exit_code=f.integer("exit_code"), detached=f.flag("detached"),
            auto_remove=f.flag("auto_remove"), created=f.optional_text("created"),
            started=f.optional_text("started"), finished=f.optional_text("finished"),
            attachments=_attachments(f), extra={k: v for k, v in f.raw.items() if k not in known},
        )



def _attachments(f: Fields) -> tuple[Attachment, ...]:
    """The stored list, checked; absent in older records (see network_attachments)."""
    raw = f.raw.get("attachments")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise f.error("attachments", f"must be a list of objects, got {raw!r}")
    out = tuple(Attachment.from_json(item, f"{f.what}: attachments[{i}]") for i, item in enumerate(raw))
    names = [a.network for a in out]
    ifnames = [a.ifname for a in out]
    if len(set(names)) != len(names) or len(set(ifnames)) != len(ifnames):
        raise f.error("attachments", "names a network or an interface twice")
    return out
