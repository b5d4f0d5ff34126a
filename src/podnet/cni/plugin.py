"""The `podnet` CNI executable.

Fast path: a pipe to the node agent. The plugin forwards its CNI_* environment and
stdin untouched over the agent's UNIX socket, with its own network namespace (where the
host side must land) and the container's attached as fds (SCM_RIGHTS), and prints the
agent's answer untouched. The agent validates, acts and formats every result or spec
error. This path imports only C modules, so a call costs little more than the
interpreter's start-up (json alone would add ~5 ms through `re`).

Fallback: when no agent answers, import the whole stack (slow: pyroute2) and do the
same work in-process, so a bare host still works. Its records name this machine (its
id: podnet/identity.py), which the agent of this machine owns too, and it notes every
store it uses beside the socket where no agent answered (endpoints/stores.py), so the
agent's first resync keeps these pods instead of sweeping them as orphans.
"""

# No `from __future__ import annotations`, `typing` or `os` here: each costs the plugin
# start-up measurable time (os ~0.9 ms, typing ~3 ms); `posix` is already loaded.
import _json
import _socket
import posix
import sys

from podnet.rpc import wire
from podnet.rpc.wire import DEFAULT_SOCKET

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

O_RDONLY_CLOEXEC = posix.O_RDONLY | posix.O_CLOEXEC

AGENT_TIMEOUT = 300.0
CONNECT_PATIENCE = 10.0


class _NoAgent(Exception):
    """Nothing listens on the socket: do the work in-process."""


class _ScanContext:
    """What the C JSON scanner needs (json.decoder would import `re`)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name.replace("Infinity", "inf"))


def config_value(stdin: bytes, key: str):
    """A top-level value of the network config, or None; never raises (a broken config
    is reported by the agent or the fallback, with the spec's error)."""
    if key.encode() not in stdin:
        return None
    try:
        text = stdin.decode("utf-8")
        start = len(text) - len(text.lstrip())
        config, _ = _json.make_scanner(_ScanContext())(text, start)
    except Exception:  # noqa: BLE001 - garbage in: let the full parser explain it
        return None
    return config.get(key) if isinstance(config, dict) else None


def _meta(environ) -> bytes:
    enc = _json.encode_basestring_ascii
    pairs = ",".join(f"{enc(k)}:{enc(v)}" for k, v in environ.items() if k.startswith("CNI_"))
    return ('{"op":"cni","env":{' + pairs + "}}").encode()


def _open_fds(environ) -> list[int]:
    """Our namespace, and the container's when it opens (the agent judges the rest)."""
    fds = [posix.open("/proc/self/ns/net", O_RDONLY_CLOEXEC)]
    netns = environ.get("CNI_NETNS", "")
    if netns:
        try:  # noqa: SIM105 - importing contextlib would cost the plugin start-up
            fds.append(posix.open(netns, O_RDONLY_CLOEXEC))
        except OSError:
            pass
    return fds


def _connect(path: str):
    """Connect, waiting while the agent's accept backlog is full (EAGAIN)."""
    import time

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(AGENT_TIMEOUT)
    delay, deadline = 0.002, time.monotonic() + CONNECT_PATIENCE
    while True:
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise _NoAgent from None
        except BlockingIOError:
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def forward(sock_path: str, environ, stdin: bytes) -> tuple[int, bytes]:
    """Hand one invocation to the agent; (exit code, stdout bytes)."""
    fds = _open_fds(environ)
    try:
        sock = _connect(sock_path)
        try:
            wire.send(sock, wire.pack_request(_meta(environ), stdin), fds)
            return wire.recv_reply(sock)
        finally:
            sock.close()
    finally:
        for fd in fds:
            posix.close(fd)


def try_again_later(stdin: bytes, msg: str) -> bytes:
    version = config_value(stdin, "cniVersion")
    version = version if isinstance(version, str) and version else "1.0.0"
    enc = _json.encode_basestring_ascii
    return f'{{"cniVersion":{enc(version)},"code":11,"msg":{enc(msg)}}}\n'.encode()


def run_in_process(environ, stdin: bytes, extra_paths: "Sequence[str]", sock_path: str = DEFAULT_SOCKET) -> tuple[int, bytes]:
    """The fallback: the same service the agent runs (podnet.endpoints), in this
    process; nothing of the agent package is imported. `sock_path`: the agent that did
    not answer, which finds the stores used here beside its socket."""
    for path in extra_paths:
        if path not in sys.path:
            sys.path.append(path)
    import io

    from podnet.endpoints.service import CniService

    service = CniService(agent_socket=sock_path)
    out = io.StringIO()
    try:
        code = service.run_invocation(environ, stdin, out, host_fd=None, container_fd=None)
    finally:
        service.close()
    return code, out.getvalue().encode()


def _read_stdin() -> bytes:
    chunks = []
    try:
        while chunk := posix.read(0, 1 << 16):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


def _environ() -> dict:
    """posix.environ has bytes; decode it as os.environ would (without importing os)."""
    return {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in posix.environ.items()}


def main(extra_paths: "Sequence[str]" = ()) -> int:
    environ = _environ()
    stdin = _read_stdin()
    sock_path = environ.get("PODNET_AGENT_SOCKET") or config_value(stdin, "agentSocket")
    if not isinstance(sock_path, str) or not sock_path:
        sock_path = DEFAULT_SOCKET
    try:
        code, out = forward(sock_path, environ, stdin)
    except _NoAgent:
        code, out = run_in_process(environ, stdin, extra_paths, sock_path)
    except (OSError, ConnectionError) as exc:
        # The agent took the request and died (or hangs): the runtime should retry; the
        # restarted agent rolls back whatever was half-built.
        code, out = 1, try_again_later(stdin, f"the podnet agent at {sock_path} failed mid-request: {exc}")
    view = memoryview(out)
    while view:
        view = view[posix.write(1, view) :]
    return code


def exec_main(extra_paths: "Sequence[str]" = ()) -> None:
    """Entry of the installed executable: exit without interpreter teardown (~1.5 ms)."""
    code = main(extra_paths)
    posix._exit(code)


if __name__ == "__main__":
    exec_main()
