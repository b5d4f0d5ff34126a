"""What a user asked for, parsed and validated before anything is built (pure).

Everything here runs before the first namespace exists, so a typo in `-p` or a bad
name costs nothing to undo. The record a request becomes (`new_record`) and its `ls`
row are made here; its shape is podnet.model.container's.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from podnet import addresses
from podnet.errors import InvalidConfig, PodnetError
from podnet.model.container import Attachment, ContainerRecord

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")  # Docker's rule
MAX_NAME = 128
LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
PROTOCOLS = ("tcp", "udp", "sctp")
PORT_SYNTAX = "[IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]"
NETNS_PREFIX = "pnc-"
NETNS_DIR = "/run/netns"
IFNAME = "eth0"
DEFAULT_NETWORK = "podnet"


class ContainerError(PodnetError):
    """A container request that cannot be served as asked."""

    code = 1


class NameInUse(ContainerError):
    pass


class ContainerNotFound(ContainerError):
    pass


class BadSpec(ContainerError):
    """The command line asks for something malformed or contradictory."""


@dataclass(frozen=True)
class NetworkChoice:
    """--network, decoded: mode plus the network (bridge) or the joined container."""

    mode: str
    network: str | None = None
    joined: str | None = None
    defaulted: bool = False

    @property
    def label(self) -> str:
        """How `ls` shows it (Docker's spelling)."""
        if self.mode == "bridge":
            return self.network or "-"
        return f"container:{self.joined}" if self.mode == "container" else self.mode


@dataclass(frozen=True)
class RunRequest:
    name: str
    choice: NetworkChoice
    cmd: tuple[str, ...]
    ports: tuple[dict, ...] = ()
    ip: str | None = None
    aliases: tuple[str, ...] = ()
    hostname: str | None = None
    detached: bool = False
    env: dict[str, str] = field(default_factory=dict)
    auto_remove: bool = False
    interactive: bool = False
    extra_networks: tuple[str, ...] = ()  # --network given again: eth1, eth2, ...

    @property
    def networks(self) -> tuple[str, ...]:
        """Every named network, primary first (empty unless bridge mode)."""
        primary = (self.choice.network or DEFAULT_NETWORK,) if self.choice.mode == "bridge" else ()
        return primary + self.extra_networks


def check_name(name: str, what: str = "container name") -> str:
    if not NAME_RE.fullmatch(name or "") or len(name) > MAX_NAME:
        raise BadSpec(
            f"invalid {what} {name!r}",
            f"use 1-{MAX_NAME} characters [a-zA-Z0-9_.-], starting with a letter or digit",
        )
    return name


def check_hostname(hostname: str) -> str:
    """RFC 1123: dot-separated labels, at most 64 bytes (the kernel's UTS limit)."""
    if len(hostname) > 64 or not all(LABEL_RE.fullmatch(p) for p in hostname.split(".")):
        raise BadSpec(f"invalid hostname {hostname!r}", "use letters, digits, '-' and '.' (at most 64)")
    return hostname


def default_hostname(name: str) -> str:
    """The name, made a valid hostname ('_' is not allowed in one)."""
    text = re.sub(r"[^A-Za-z0-9.-]", "-", name)[:63].strip("-.")
    return text or "container"


def parse_network(value: str | None) -> NetworkChoice:
    if value is None or value == "":
        return NetworkChoice("bridge", DEFAULT_NETWORK, defaulted=True)
    if value in ("host", "none"):
        return NetworkChoice(value)
    if value.startswith("container:"):
        other = value.split(":", 1)[1]
        return NetworkChoice("container", joined=check_name(other, "container name in --network"))
    if value == "bridge":
        raise BadSpec("--network bridge names no network",
                      "give a network made with `podnet network create`, or host, none, container:NAME")
    return NetworkChoice("bridge", check_name(value, "network name"))


def parse_networks(values: Sequence[str] | None) -> tuple[NetworkChoice, tuple[str, ...]]:
    """Repeated --network: the first decides the mode (and is the primary network);
    every further one must name a network, and none may repeat."""
    values = list(values or [])
    choice = parse_network(values[0] if values else None)
    extras = tuple(values[1:])
    if extras and choice.mode != "bridge":
        raise BadSpec(f"--network {choice.label} cannot be combined with other networks",
                      "only named networks can be joined together (give each with --network NET)")
    for extra in extras:
        if extra in ("host", "none", "bridge") or extra.startswith("container:"):
            raise BadSpec(f"--network {extra} can only be the sole --network",
                          "further --network options must name networks made with `podnet network create`")
        check_name(extra, "network name")
    named = [choice.network, *extras]
    repeated = sorted({n for n in named if named.count(n) > 1})
    if repeated:
        raise BadSpec(f"--network {repeated[0]} is given twice", "a container is on each network once")
    return choice, extras


def _port_number(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BadSpec(f"bad -p {spec!r}: {text!r} is not a port (1-65535)", f"expected {PORT_SYNTAX}")
    return int(text)


def _address(text: str, where: str, hint: str = "") -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address a user typed; no scope ID (it would ride into nft rules)."""
    try:
        return addresses.address(text, where)
    except InvalidConfig as exc:
        raise BadSpec(exc.msg.replace("a valid IP address", "an IP address"), hint) from None


def parse_port(spec: str) -> dict:
    """`[IP:]HOSTPORT:CONTAINERPORT[/proto]` -> a CNI portMappings entry (hostIP ""
    means every address). An IPv6 host IP may be written in brackets."""
    body, slash, proto = spec.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in PROTOCOLS:
        raise BadSpec(f"bad -p {spec!r}: protocol {proto!r} is not tcp, udp or sctp", f"expected {PORT_SYNTAX}")
    parts = body.rsplit(":", 2)
    if len(parts) < 2:
        raise BadSpec(f"bad -p {spec!r}: both a host port and a container port are needed",
                      f"expected {PORT_SYNTAX}")
    host_ip = parts[0].strip("[]") if len(parts) == 3 else ""
    if host_ip:
        host_ip = str(_address(host_ip, f"bad -p {spec!r}:", f"expected {PORT_SYNTAX}"))
    return {
        "hostIP": host_ip,
        "hostPort": _port_number(parts[-2], spec),
        "containerPort": _port_number(parts[-1], spec),
        "protocol": proto,
    }


def parse_ports(specs: list[str] | tuple[str, ...]) -> tuple[dict, ...]:
    out: list[dict] = []
    for spec in specs:
        port = parse_port(spec)
        for prev in out:
            same_ip = not prev["hostIP"] or not port["hostIP"] or prev["hostIP"] == port["hostIP"]
            if same_ip and (prev["hostPort"], prev["protocol"]) == (port["hostPort"], port["protocol"]):
                raise BadSpec(f"host port {port['hostPort']}/{port['protocol']} is published twice")
        out.append(port)
    return tuple(out)


def parse_env(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or "\0" in item:
            raise BadSpec(f"bad -e {item!r}", "expected KEY=VALUE")
        env[key] = value
    return env


def check_request(req: RunRequest) -> RunRequest:
    """Options that only make sense with a network of podnet's own."""
    check_name(req.name)
    if not req.cmd:
        raise BadSpec("no command given", "usage: podnet container run [OPTIONS] -- CMD [ARG...]")
    bridge = req.choice.mode == "bridge"
    for flag, used in (("-p", req.ports), ("--ip", req.ip), ("--alias", req.aliases)):
        if used and not bridge:
            raise BadSpec(f"{flag} needs a network; --network {req.choice.label} has none of its own")
    if req.ip:
        _address(req.ip, "--ip")
    for alias in req.aliases:
        check_name(alias, "alias")
    if req.hostname:
        check_hostname(req.hostname)
    if req.choice.mode == "container" and req.choice.joined == req.name:
        raise BadSpec("a container cannot join its own network namespace")
    return req


def new_id() -> str:
    return secrets.token_hex(32)


def netns_path(container_id: str) -> str:
    return f"{NETNS_DIR}/{NETNS_PREFIX}{container_id[:12]}"


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell reports it: death by signal N is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def signal_number(value: str | int) -> int:
    """'TERM', 'SIGTERM', '15' or 15 -> 15."""
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    name = str(value).upper()
    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise BadSpec(f"unknown signal {value!r}") from None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_record(req: RunRequest, container_id: str, netns: str | None, hostname: str,
               owner: str) -> ContainerRecord:
    """The `containers/<name>` record as it is first written (state "created").
    `supervisor` names the process ("pid:starttime") answerable for the container: the
    CLI while it builds and for a foreground run, the agent for a detached one."""
    return ContainerRecord(
        name=req.name,
        id=container_id,
        network_mode=req.choice.mode,
        network=req.choice.network if req.choice.mode == "bridge" else None,
        joined=req.choice.joined,
        netns=netns,
        ifname=IFNAME,
        attachments=tuple(Attachment(net, ifname_at(i)) for i, net in enumerate(req.networks)),
        aliases=tuple(req.aliases),
        hostname=hostname,
        ports=tuple(dict(p) for p in req.ports),
        cmd=tuple(req.cmd),
        supervisor=owner,
        detached=req.detached,
        auto_remove=req.auto_remove,
        created=now(),
    )


def port_text(port: Mapping) -> str:
    host = f"{port['hostIP']}:" if port.get("hostIP") else ""
    return f"{host}{port['hostPort']}->{port['containerPort']}/{port['protocol']}"


def network_label(record: ContainerRecord) -> str:
    if record.network_mode == "bridge" and len(record.networks) > 1:
        return ",".join(record.networks)
    return NetworkChoice(record.network_mode, record.network, record.joined).label


def ifname_at(index: int) -> str:
    """The interface of a container's index-th network: eth0 (primary), eth1, ..."""
    return f"eth{index}"


def next_ifname(used: Sequence[str]) -> str:
    """The lowest ethN not in use (a disconnected eth1 is reused, as Docker does)."""
    index = 0
    while ifname_at(index) in used:
        index += 1
    return ifname_at(index)


def ls_row(record: ContainerRecord) -> dict:
    """One `ls` table row (the JSON output keeps whole records)."""
    state = record.state
    if state == "exited":
        state = f"exited ({'?' if record.exit_code is None else record.exit_code})"
    return {
        "NAME": record.name,
        "ID": record.id[:12],
        "NETWORK": network_label(record),
        "IPS": [ip.split("/")[0] for ip in record.ips],
        "PORTS": [port_text(p) for p in record.ports],
        "STATE": state,
        "CMD": _short_cmd(record.cmd),
    }


def _short_cmd(cmd: Sequence[str], width: int = 30) -> str:
    """The program's base name and its arguments, cut to fit a table cell."""
    text = " ".join([cmd[0].rsplit("/", 1)[-1], *cmd[1:]]) if cmd else ""
    return text if len(text) <= width else text[: width - 1] + "…"
