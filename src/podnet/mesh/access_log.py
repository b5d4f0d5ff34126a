"""The sidecars' access log: one line per HTTP request, and its parser (pure).

HAProxy's built-in exporter gives averages only; golden signals (mesh/golden.py) need
every request, so each sidecar logs one line per request to the node agent's sink
(mesh/log_sink.py), a UNIX datagram socket: `log_line(path)` is the `global` line.

Design notes (each checked against Debian's HAProxy 2.6.12, tests/ns/test_mesh_log_sink.py):
- The sidecar's frontends run in TCP mode and switch to HTTP per connection, and 2.6
  refuses HTTP-only log variables there (`%Ta`, `%Tr`, `%HM`, `%HPO`, ... "reserved for
  HTTP mode"). So the format uses what TCP mode allows: `%ST`, `%Tc`, `%rc`, `%ts`,
  `%ID`, and the fetches `capture.req.method` and `capture.req.uri` (the query cut off
  in HAProxy: it may carry secrets). Times come from `date(0,us)` stamps the frontend
  takes (`HTTP_RULES`): total = at log time - at the request, response = at the
  response headers - at the request, in microseconds (`%Ta` would be whole ms only).
- Fields are separated by one space. Every free-text field is quoted by HAProxy
  (`%{+Q,+E}`: `"`, `\\` and `]` escaped with a backslash), so a space, a `|` or a quote in a
  path, a header-borne request id or a certificate CN cannot shift the fields; the
  unquoted ones are numbers, termination codes and HAProxy names (no spaces).
- The variable-length fields come last, the path at the very end: a line cut at the
  `len` of the log line loses the end of the path only. HAProxy closes the quote of a
  field it cuts, so such a path looks whole (`len 4096` keeps paths whole); a line cut
  without its closing quote (e.g. by a relay) is still read, `truncated`.
- `date` is the wall clock: a clock step during a request gives a wrong (possibly
  negative, then ignored) latency for that request.
- TCP passthrough streams (not HTTP) log a line too: `http` is False (no method).
- `parse` skips whatever precedes the tag, so an rfc3164 header (`<134>Dec  5 ...
  haproxy[12]: `) is tolerated; `format raw` sends none and is what `log_line` asks.
"""

from __future__ import annotations

import re
from typing import NamedTuple

TAG = "podnet-mesh/1"

# Rules the sidecar's HTTP frontends must run first, right after the request id header
# is set (before any return/deny/routing): the request's start stamp, the request id
# fixed while its header is still there (HAProxy builds %ID lazily; after a local
# `return` the headers are gone and the id would log empty), the response's stamp.
HTTP_RULES = (
    "http-request set-var(txn.t0) date(0,us)",
    "http-request set-var(txn.id) unique-id",
    "http-response set-var(txn.t1) date(0,us)",
)

# name, HAProxy log-format item; quoted fields are the `%{+Q,+E}` ones.
_WORDS = (
    ("time", "%Ts.%ms"),  # accept date, unix seconds with ms
    ("frontend", "%ft"),  # "outbound", "inbound", "in_tls~" ("~": TLS)
    ("backend", "%b"),
    ("server", "%s"),
    ("status", "%ST"),  # -1: no response (TCP, or the client went away first)
    ("connect_ms", "%Tc"),  # -1: no connection to a server
    ("response_us", "%[var(txn.t1),sub(txn.t0)]"),  # "-": no response headers from a server
    ("total_us", "%[date(0,us),sub(txn.t0)]"),  # "-": HTTP_RULES did not run
    ("bytes_out", "%B"),  # to the client
    ("bytes_in", "%U"),  # from the client
    ("retries", "%rc"),  # "+N" after a redispatch
    ("termination", "%ts"),
)
_QUOTED = (
    ("pod", "%[var(txn.pod)]"),
    ("service", "%[var(txn.service)]"),
    ("route", "%[var(txn.route)]"),
    ("peer", "%[var(txn.peer)]"),  # the client's mTLS identity (CN), set on the TLS frontend
    ("method", "%[capture.req.method]"),
    ("request_id", "%ID"),
    ("path", "%[capture.req.uri,field(1,?)]"),
)


def _quoted_item(item: str) -> str:
    return "%{+Q,+E}" + item.removeprefix("%")


LOG_FORMAT = " ".join([TAG, *(item for _, item in _WORDS), *(_quoted_item(item) for _, item in _QUOTED)])


def log_line(socket_path: str, length: int = 4096) -> str:
    """The `global` section's log line sending LOG_FORMAT lines to the sink at
    `socket_path` (raw: no syslog header; `length` bytes at most per line, HAProxy's
    default 1024 would cut long paths)."""
    return f"log unix@{socket_path} len {length} format raw local0"


DIRECTIONS = {"outbound": "outbound", "inbound": "inbound", "in_tls": "inbound"}
# First letter of %ts: who ended the request badly. Server-side and proxy-internal
# failures count as errors; client aborts/timeouts (C, c) and HAProxy's own deny or
# return (P, L: 403/429 are counted apart) do not.
FAILED_BY = frozenset("SsRIDK")


class AccessRecord(NamedTuple):  # a tuple: ~4x cheaper to build than a frozen dataclass
    """One request as the sidecar saw it. Times are None when HAProxy had none."""

    time: float
    direction: str  # "outbound" | "inbound" (else the frontend's name)
    tls: bool  # arrived over TLS (mTLS inbound)
    backend: str
    server: str
    status: int  # -1: none
    connect_ms: int | None
    response_us: int | None
    total_us: int | None
    bytes_out: int
    bytes_in: int
    retries: int
    redispatched: bool
    termination: str
    pod: str
    service: str
    route: str
    peer: str
    method: str
    request_id: str
    path: str
    truncated: bool = False

    @property
    def http(self) -> bool:
        """False for a TCP passthrough stream (no HTTP request was parsed)."""
        return bool(self.method)

    @property
    def failed(self) -> bool:
        """An error golden signal: a 5xx, or a request a server or the proxy broke."""
        return self.status >= 500 or self.termination[:1] in FAILED_BY

    @property
    def code_class(self) -> str:
        return f"{self.status // 100}xx" if 100 <= self.status < 600 else "none"


_WORD = r"([^ ]*)"
_QUOTED_FIELD = r'"([^"\\]*(?:\\.[^"\\]*)*)"'  # backslash escapes inside (unrolled: fast)
_LINE = re.compile(" ".join([re.escape(TAG), *([_WORD] * len(_WORDS)), *([_QUOTED_FIELD] * len(_QUOTED))]))
_HEAD = re.compile(" ".join([re.escape(TAG), *([_WORD] * len(_WORDS))]))
_TAIL = re.compile(" " + _QUOTED_FIELD.removesuffix('"') + '("?)')  # no closing quote: cut here
_UNESCAPE = re.compile(r"\\(.)")
_HAPROXY_HEX = re.compile(r"#([0-9A-Fa-f]{2})")


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None  # "-": not measured


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(r"\1", text) if "\\" in text else text


def _path(uri: str) -> str:
    """The path of a request URI (absolute form too), HAProxy's #XX escapes decoded
    (a raw `#` in a request line is refused with 400, so `#XX` is always one)."""
    if uri.startswith(("http://", "https://")):
        slash = uri.find("/", uri.find("//") + 2)
        uri = uri[slash:] if slash >= 0 else "/"
    if "#" in uri:
        uri = _HAPROXY_HEX.sub(lambda m: chr(int(m.group(1), 16)), uri)
    return uri


def parse(line: str) -> AccessRecord | None:
    """One log line (a syslog header before the tag is skipped) -> its record; None
    when it is not one of ours or is damaged before the path."""
    start = line.find(TAG)
    if start < 0:
        return None
    whole = _LINE.match(line, start)
    if whole is not None:
        fields = whole.groups()
        quoted = [_unescape(text) for text in fields[len(_WORDS):]] if "\\" in line else fields[len(_WORDS):]
        truncated = False
        words = fields[:len(_WORDS)]
    else:
        head = _HEAD.match(line, start)
        if head is None:
            return None
        words = head.groups()
        quoted, truncated = _cut_fields(line, head.end())
    if len(quoted) != len(_QUOTED):
        return None  # malformed, or cut before the path: what is left cannot be trusted
    (when, frontend, backend, server, status, connect, response, total, bytes_out, bytes_in, retries,
     termination) = words
    pod, service, route, peer, method, request_id, uri = quoted
    try:
        stamp, status_code, sent, received = float(when), int(status), int(bytes_out), int(bytes_in)
        retry_count = int(retries.lstrip("+"))
    except ValueError:
        return None
    name = frontend.removesuffix("~")
    return AccessRecord(
        time=stamp, direction=DIRECTIONS.get(name, name), tls=frontend.endswith("~"), backend=backend,
        server=server, status=status_code, connect_ms=_none_if_negative(_int(connect)),
        response_us=_int(response), total_us=_int(total), bytes_out=sent, bytes_in=received,
        retries=retry_count, redispatched=retries.startswith("+"), termination=termination,
        pod=pod, service=service, route=route, peer=peer, method=method, request_id=request_id,
        path=_path(uri), truncated=truncated)


def _cut_fields(line: str, pos: int) -> tuple[list[str], bool]:
    """The quoted fields of a line cut short (its last field has no closing quote)."""
    quoted: list[str] = []
    while len(quoted) < len(_QUOTED):
        field = _TAIL.match(line, pos)
        if field is None:
            return quoted, False
        value, closed = field.group(1), field.group(2)
        if not closed:
            quoted.append(_unescape(value.rstrip("\n")))
            return quoted, True
        quoted.append(_unescape(value))
        pos = field.end()
    return quoted, False


def _none_if_negative(value: int | None) -> int | None:
    return None if value is None or value < 0 else value
