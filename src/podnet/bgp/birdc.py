"""A client of BIRD 2's control socket (edge), and the parsers of its replies (pure).

Why the socket and not `birdc -s PATH`: a reply over the socket keeps BIRD's numeric
codes (birdc prints only the text, so a refused `configure` could be told from a good
one only by its wording), and it costs ~0.06 ms against ~1.1 ms for a birdc process.

The protocol (BIRD's nest/cli.c, doc/reply_codes): BIRD greets with `0001 BIRD <ver>
ready.`; a command is one line; a reply is lines `DDDD-text` (more to come) and ends with
the first `DDDD text` line. A line starting with a space continues the previous code;
`+` lines are spontaneous printouts. Codes 0xxx: done, 1xxx/2xxx: table rows and
headings, 8xxx: run-time error, 9xxx: parse error.

The parsers take the reply lines (what `BirdControl.command` returns, or text captured
from a real BIRD) and validate every number they convert: a reply that does not look
like BIRD's raises BirdError, never a half-filled dict.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from podnet.errors import PodnetError

MAX_REPLY = 16 * 1024 * 1024  # bytes; `show protocols all` of a big node is a few hundred KiB
_PROTOCOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SINCE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)(?:\s+(.*))?$")
_COUNT = re.compile(r"(\d+) of (\d+) routes for (\d+) networks in table (\S+)$")
_TOTAL = re.compile(r"Total: (\d+) of (\d+) routes for (\d+) networks in (\d+) tables?$")
_KEY_VALUE = re.compile(r"([A-Za-z][A-Za-z0-9 ./-]*?):\s*(.*)$")


class BirdError(PodnetError):
    """BIRD refused a command, or could not be reached, or answered nonsense."""

    def __init__(self, msg: str, code: int | None = None) -> None:
        super().__init__(msg)
        self.bird_code = code


class BirdUnreachable(BirdError):
    """No BIRD answers on the socket (not started, stopped, or stuck)."""


class BirdConfigError(BirdError):
    """`configure` refused the file (code 8002, e.g. a syntax error): the old config stays in force."""


class NoSuchProtocol(BirdError, LookupError):
    """`show protocols all NAME` of a protocol this BIRD does not have."""


@dataclass(frozen=True)
class Line:
    """One reply line: its code (continuations carry the code of the line before) and text."""

    code: int
    text: str


# ---- pure: framing and parsers ------------------------------------------------


def line_ends_reply(raw: str) -> bool:
    """Is this raw line the last one of a reply (`DDDD text`)?"""
    return len(raw) >= 5 and raw[:4].isdigit() and raw[4] == " "


def parse_lines(raw_lines: Iterable[str]) -> list[Line]:
    """Raw socket lines to coded lines (continuations get their code, `+` lines dropped)."""
    out: list[Line] = []
    code: int | None = None
    for raw in raw_lines:
        if raw.startswith("+"):
            continue
        if raw.startswith(" "):
            if code is None:
                raise BirdError(f"BIRD reply starts with a continuation line: {raw!r}")
            out.append(Line(code, raw[1:]))
        elif len(raw) >= 5 and raw[:4].isdigit() and raw[4] in " -":
            code = int(raw[:4])
            out.append(Line(code, raw[5:]))
        else:
            raise BirdError(f"not a BIRD reply line: {raw!r}")
    return out


def check_reply(lines: list[Line]) -> list[Line]:
    """`lines` unchanged, or BirdError carrying BIRD's message when it ends with an error code."""
    if not lines:
        raise BirdError("empty reply from BIRD")
    last = lines[-1]
    if last.code >= 8000:
        cls = BirdConfigError if last.code == 8002 else BirdError
        raise cls(f"BIRD: {last.text} (code {last.code})", last.code)
    return lines


def parse_protocols(lines: list[Line]) -> list[dict]:
    """`show protocols` rows (code 1002): name, proto, table, state, since, info."""
    return [_protocol_row(line.text) for line in lines if line.code == 1002]


def _protocol_row(text: str) -> dict:
    fields = text.split(None, 4)
    if len(fields) < 4:
        raise BirdError(f"not a `show protocols` row: {text!r}")
    name, proto, table, state = fields[:4]
    rest = fields[4].strip() if len(fields) == 5 else ""
    matched = _SINCE.match(rest)
    if matched:  # `timeformat protocol iso long`: the time has a space in it
        since, info = matched.group(1), (matched.group(2) or "").strip()
    else:
        since, _, info = rest.partition(" ")
        info = info.strip()
    return {"name": name, "proto": proto, "table": table, "state": state, "since": since, "info": info}


def parse_protocol_detail(lines: list[Line]) -> dict:
    """`show protocols all NAME`: the row, then the protocol's `Key: value` lines (keys as
    snake_case: bgp_state, neighbor_address, neighbor_as, local_as, source_address,
    last_error, ...), `routes` summed over its channels, and `channels` each with its
    own keys, `routes` and `route_change_stats`. AS numbers and counts become ints;
    `neighbor_graceful_restart_active` is True while the peer's routes are kept stale."""
    rows = [line.text for line in lines if line.code == 1002]
    if len(rows) != 1:
        raise BirdError(f"expected one protocol in the reply, found {len(rows)}")
    detail = _protocol_row(rows[0])
    channels: dict[str, dict] = {}
    channel: dict | None = None
    stats: dict | None = None
    for line in lines:
        if line.code != 1006:
            continue
        text = line.text.rstrip()
        indent = len(text) - len(text.lstrip(" "))
        body = text.strip()
        if not body:
            continue
        if indent == 2 and body.startswith("Channel "):
            channel = {"routes": {}, "route_change_stats": {}}
            channels[body.split(None, 1)[1]] = channel
            stats = None
            continue
        if indent > 4:  # nested blocks: capabilities, or the rows of the route stats
            if stats is not None and channel is not None:
                _stats_row(body, stats, channel)
            continue
        stats = None
        matched = _KEY_VALUE.match(body)
        if not matched:
            if body == "Neighbor graceful restart active":  # we keep its routes, stale
                detail["neighbor_graceful_restart_active"] = True
            continue  # else a heading such as "Local capabilities"
        key, value = _snake(matched.group(1)), matched.group(2).strip()
        target = channel if channel is not None else detail
        if key == "route_change_stats" and channel is not None:
            stats = {"columns": value.split()}
        elif key == "routes" and channel is not None:
            channel["routes"] = _route_counts(value)
        else:
            target[key] = value
    for key in ("neighbor_as", "local_as"):
        if key in detail:
            detail[key] = _number(detail[key], key)
    for ch in channels.values():
        ch["route_change_stats"] = {k: v for k, v in ch["route_change_stats"].items() if k != "columns"}
    detail["channels"] = channels
    totals: dict[str, int] = {}
    for ch in channels.values():
        for kind, count in ch["routes"].items():
            totals[kind] = totals.get(kind, 0) + count
    detail["routes"] = totals
    return detail


def _stats_row(body: str, stats: dict, channel: dict) -> None:
    """One row of the "Route change stats" table ("---" where BIRD has no number)."""
    label, _, numbers = body.partition(":")
    values = numbers.split()
    columns = stats["columns"]
    if len(values) != len(columns):
        raise BirdError(f"route stats row {body!r} does not match its columns {columns}")
    channel["route_change_stats"][_snake(label)] = {
        col: None if v == "---" else _number(v, f"{label} {col}") for col, v in zip(columns, values, strict=True)
    }


def _route_counts(value: str) -> dict[str, int]:
    """"1 imported, 2 exported, 1 preferred" -> {"imported": 1, ...}."""
    counts: dict[str, int] = {}
    for part in value.split(","):
        words = part.split()
        if len(words) != 2:
            raise BirdError(f"not a route count: {value!r}")
        counts[words[1]] = _number(words[0], f"routes {words[1]}")
    return counts


def parse_route_count(lines: list[Line]) -> dict:
    """`show route count`: {"tables": {name: {"routes", "networks"}}, "routes", "networks"}."""
    tables: dict[str, dict[str, int]] = {}
    total: tuple[int, int] | None = None
    for line in lines:
        text = line.text.strip()
        if (matched := _COUNT.match(text)) is not None:
            tables[matched.group(4)] = {"routes": int(matched.group(2)), "networks": int(matched.group(3))}
        elif (matched := _TOTAL.match(text)) is not None:
            total = int(matched.group(2)), int(matched.group(3))
        elif line.code in (14, 1007) and text:
            raise BirdError(f"not a route count line: {text!r}")
    if total is None:
        if not tables:
            raise BirdError("no route count in BIRD's reply")
        total = sum(t["routes"] for t in tables.values()), sum(t["networks"] for t in tables.values())
    return {"tables": tables, "routes": total[0], "networks": total[1]}


def _snake(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")


def _number(value: str, what: str) -> int:
    if not value.isdigit():
        raise BirdError(f"{what}: {value!r} is not a number")
    return int(value)


# ---- edge: the socket -----------------------------------------------------------


class BirdControl:
    """One BIRD's control socket; every call is its own connection (cheap, and nothing
    to repair when BIRD restarts between calls)."""

    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def command(self, command: str) -> list[Line]:
        """Send one command, return its reply lines; BirdError if BIRD answers an error."""
        if "\n" in command or "\r" in command or not command.strip():
            raise ValueError(f"a BIRD command is one non-empty line, not {command!r}")
        return check_reply(parse_lines(self._exchange(command)))

    def alive(self) -> bool:
        """Does a BIRD answer on the socket, and is it not shutting down?"""
        try:
            last = self.command("show status")[-1]
        except BirdError:
            return False
        return last.code == 13 and "shutdown" not in last.text.lower()

    def configure(self) -> None:
        """Reload the config file BIRD was started with. BirdConfigError with BIRD's
        message when it refuses the file (the old config then stays in force)."""
        last = self.command("configure")[-1]
        if last.code not in (3, 4, 5):  # reconfigured, in progress, queued
            raise BirdError(f"BIRD did not reconfigure: {last.text} (code {last.code})", last.code)

    def protocols(self) -> list[dict]:
        return parse_protocols(self.command("show protocols"))

    def protocol_detail(self, name: str) -> dict:
        if not isinstance(name, str) or not _PROTOCOL_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a BIRD protocol name")
        try:
            lines = self.command(f"show protocols all {name}")
        except BirdError as exc:
            # An unknown name is an undefined symbol to BIRD's parser (9001), or 8003.
            if exc.bird_code == 8003 or (exc.bird_code == 9001 and "UNDEFINED" in str(exc)):
                raise NoSuchProtocol(f"BIRD has no protocol {name!r}", exc.bird_code) from None
            raise
        return parse_protocol_detail(lines)

    def routes_count(self) -> dict:
        return parse_route_count(self.command("show route count"))

    def _exchange(self, command: str) -> list[str]:
        deadline = time.monotonic() + self.timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
                reader = _Reader(sock, deadline)
                greeting = reader.reply()
                if not greeting or not greeting[-1].startswith("0001"):
                    raise BirdError(f"unexpected BIRD greeting: {greeting!r}")
                sock.sendall(command.encode() + b"\n")
                return reader.reply()
        except (OSError, TimeoutError) as exc:
            raise BirdUnreachable(f"BIRD at {self.socket_path}: {exc}") from exc


class _Reader:
    """Reads whole lines off the socket until a line ends the reply."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.total = 0

    def reply(self) -> list[str]:
        lines: list[str] = []
        while True:
            while b"\n" not in self.buffer:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no complete reply in time")
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise BirdUnreachable("BIRD closed the socket mid-reply")
                self.total += len(chunk)
                if self.total > MAX_REPLY:
                    raise BirdError(f"BIRD's reply is longer than {MAX_REPLY} bytes")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\n", 1)
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            if line_ends_reply(line):
                return lines
