"""A client of HAProxy 2.6's runtime API (edge), and the parsers of its replies (pure).

The sidecar's config opens the API with `stats socket PATH mode 600 level admin`. The
protocol (HAProxy's doc/management.txt, "Unix Socket commands"): without `prompt`, a
connection takes one command line and HAProxy closes it after the reply, so a reply is
everything read until EOF. A command may carry a payload: the line ends with `<<`, the
payload follows, and an empty line ends it (hence PEM bundles without blank lines).

Replies carry no status code, only text. Each helper knows what success looks like
(`set server ...` answers an empty line, `commit ssl cert` ends with `Success!`, ...) and
raises HAProxyError quoting the reply otherwise; captured replies of a real HAProxy 2.6
are in tests/unit/test_mesh_haproxy_api.py.

What 2.6 does, checked against Debian's 2.6.12:
- `set ssl cert F <<` + `commit ssl cert F` swaps the certificate of every `bind ... crt F`
  without a reload: connections after the commit get the new one, open ones keep theirs.
  One transaction at a time per process; a failed commit leaves it open, so
  `update_cert` aborts it. F is the path exactly as the config spells it.
- `add server B/S ADDR:PORT` needs a backend with a dynamic algorithm (roundrobin,
  leastconn, first, consistent hashing) and creates the server in maintenance;
  `del server` refuses a server that is not in maintenance or still has connections.

The port is one function, `send(text) -> reply`: the UNIX socket's by default, a
test's fake with `HaproxyApi(path, send=fake)`.
"""

from __future__ import annotations

import csv
import socket
from collections.abc import Callable, Iterable

from podnet.errors import PodnetError

DEFAULT_TIMEOUT = 5.0
MAX_REPLY = 16 * 1024 * 1024  # bytes; `show stat` of a big sidecar is tens of KiB
SERVER_STATES = ("ready", "drain", "maint")
Send = Callable[[str], str]


class HAProxyError(PodnetError):
    """HAProxy refused a command, could not be reached, or answered nonsense."""


class HAProxyUnreachable(HAProxyError):
    """Nothing answers on the runtime API socket (HAProxy not started, stopped, or stuck)."""


def unix_send(path: str, timeout: float = DEFAULT_TIMEOUT) -> Send:
    """A `send` over HAProxy's UNIX socket: one command per connection, read to EOF."""

    def send(text: str) -> str:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(text.encode())
            chunks, size = [], 0
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY:
                    raise HAProxyError(f"HAProxy runtime API at {path}: reply over {MAX_REPLY} bytes")
        except TimeoutError:
            raise HAProxyUnreachable(
                f"HAProxy runtime API at {path}: no complete reply within {timeout:g} s") from None
        except OSError as exc:
            raise HAProxyUnreachable(f"HAProxy runtime API at {path}: {exc.strerror or exc}") from None
        finally:
            sock.close()
        return b"".join(chunks).decode(errors="replace")

    return send


class HaproxyApi:
    """Commands to the HAProxy whose runtime API is at `socket_path`, and their replies.
    `send` replaces the socket (tests pass captured replies)."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT,
                 send: Send | None = None) -> None:
        self.where = f"HAProxy runtime API at {socket_path}"
        self._send = send if send is not None else unix_send(socket_path, timeout)

    def command(self, text: str) -> str:
        """One command line (no newline in it); its reply's text."""
        if "\n" in text or not text.strip():
            raise HAProxyError(f"{self.where}: one non-empty command line expected, got {text!r}")
        return self._send(text + "\n")

    def _expect(self, text: str, ok: Callable[[str], bool], payload: str | None = None) -> str:
        if payload is None:
            reply = self.command(text)
        else:
            reply = self._send(f"{text} <<\n{payload.rstrip(chr(10))}\n\n")
        if not ok(reply):
            raise HAProxyError(f"{self.where}: {text!r} refused: {_one_line(reply)}")
        return reply

    # -- certificates ---------------------------------------------------------

    def update_cert(self, path: str, pem_bundle: str) -> None:
        """Replace the certificate HAProxy loaded from `path` (as the config names it) with
        `pem_bundle`, hitlessly; a refused commit is aborted so the next update can start."""
        _check_word(path, "certificate path")
        if "\n\n" in pem_bundle.strip("\n") or not pem_bundle.strip():
            raise HAProxyError(f"{self.where}: the PEM bundle for {path} is empty or has a blank line")
        self._expect(f"set ssl cert {path}", _starts("Transaction created", "Transaction updated"),
                     payload=pem_bundle)
        try:
            self._expect(f"commit ssl cert {path}", lambda r: "Success!" in r)
        except HAProxyError:
            self.command(f"abort ssl cert {path}")  # best effort: its reply does not matter
            raise

    def show_ssl_cert(self, path: str) -> dict[str, str]:
        """What HAProxy serves for `path` now: Serial (hex), notAfter, Subject, ..."""
        _check_word(path, "certificate path")
        return parse_key_values(self._expect(f"show ssl cert {path}", _starts("Filename:")))

    # -- servers --------------------------------------------------------------

    def set_server_weight(self, backend: str, server: str, weight: int) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
            raise HAProxyError(f"{self.where}: weight of {backend}/{server}: {weight!r} is not 0-256")
        self._expect(f"set server {_server(backend, server)} weight {weight}", _empty)

    def set_server_state(self, backend: str, server: str, state: str) -> None:
        if state not in SERVER_STATES:
            raise HAProxyError(f"{self.where}: state of {backend}/{server}: {state!r} is not one "
                               f"of {', '.join(SERVER_STATES)}")
        self._expect(f"set server {_server(backend, server)} state {state}", _empty)

    def add_server(self, backend: str, server: str, address: str, port: int,
                   options: Iterable[str] = (), ready: bool = True) -> None:
        """A dynamic server (HAProxy creates it in maintenance; `ready` puts it in service)."""
        words = [f"{address}:{port}", *options]
        for word in words:
            _check_word(word, "server option")
        self._expect(f"add server {_server(backend, server)} {' '.join(words)}",
                     _starts("New server registered"))
        if ready:
            self.set_server_state(backend, server, "ready")

    def del_server(self, backend: str, server: str) -> None:
        """Put the server in maintenance, then delete it; HAProxy refuses while it still
        has connections (the error says so: retry once they have closed)."""
        self.set_server_state(backend, server, "maint")
        self._expect(f"del server {_server(backend, server)}", _starts("Server deleted"))

    def show_servers_state(self, backend: str | None = None) -> list[dict[str, str]]:
        text = "show servers state" + (f" {_check_word(backend, 'backend')}" if backend else "")
        return parse_servers_state(self._expect(text, _starts("1\n")), self.where)

    def show_stat(self) -> list[dict[str, str]]:
        return parse_stat_csv(self._expect("show stat", _starts("# pxname,")), self.where)


# -- parsers (pure) -------------------------------------------------------------


def parse_servers_state(reply: str, where: str = "HAProxy") -> list[dict[str, str]]:
    """`show servers state`: a version line `1`, a `# name name ...` header, rows of words."""
    lines = [line for line in reply.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        raise HAProxyError(f"{where}: 'show servers state' reply of an unknown format: {_one_line(reply)}")
    if len(lines) == 1:
        return []  # no server at all
    if not lines[1].startswith("# "):
        raise HAProxyError(f"{where}: 'show servers state' reply without a header: {_one_line(reply)}")
    names = lines[1][2:].split()
    rows = []
    for line in lines[2:]:
        values = line.split()
        if len(values) != len(names):
            raise HAProxyError(f"{where}: 'show servers state' row has {len(values)} fields, "
                               f"the header {len(names)}: {line!r}")
        rows.append(dict(zip(names, values, strict=True)))
    return rows


def parse_stat_csv(reply: str, where: str = "HAProxy") -> list[dict[str, str]]:
    """`show stat`: CSV whose header starts `# pxname,` and whose lines end with a comma."""
    if not reply.startswith("# "):
        raise HAProxyError(f"{where}: 'show stat' reply is not CSV: {_one_line(reply)}")
    rows = list(csv.reader(line for line in reply[2:].splitlines() if line))
    names = rows[0][:-1] if rows[0] and rows[0][-1] == "" else rows[0]
    out = []
    for row in rows[1:]:
        if len(row) < len(names):
            raise HAProxyError(f"{where}: 'show stat' row has {len(row)} fields, the header "
                               f"{len(names)}: {','.join(row)[:120]!r}")
        out.append(dict(zip(names, row[:len(names)], strict=True)))
    return out


def parse_key_values(reply: str) -> dict[str, str]:
    """`Key: value` lines (`show ssl cert PATH`); lines without a colon are skipped."""
    out = {}
    for line in reply.splitlines():
        key, sep, value = line.partition(": ")
        if not sep and line.endswith(":"):
            key, sep, value = line[:-1], ":", ""
        if sep:
            out[key.strip()] = value.strip()
    return out


def _server(backend: str, server: str) -> str:
    return f"{_check_word(backend, 'backend')}/{_check_word(server, 'server')}"


def _check_word(word: str, what: str) -> str:
    """One word of a command line: HAProxy splits on spaces, and `;` separates commands."""
    if not isinstance(word, str) or not word or any(c in word for c in " \t\n\r;\\#"):
        raise HAProxyError(f"{what} {word!r} is not one word of a runtime API command")
    return word


def _empty(reply: str) -> bool:
    return not reply.strip()


def _starts(*prefixes: str) -> Callable[[str], bool]:
    return lambda reply: reply.startswith(prefixes)


def _one_line(reply: str) -> str:
    text = " / ".join(line.strip() for line in reply.splitlines() if line.strip())
    return (text[:300] + "...") if len(text) > 300 else (text or "(empty reply)")
