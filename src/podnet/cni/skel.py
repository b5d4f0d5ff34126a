"""The CNI environment contract: read CNI_* + stdin into a request, validate it as
the spec says, and turn every outcome into either a result or spec error JSON.

One pass: `read_request` parses the invocation once into a typed CniRequest; the
plugin acts on it and returns a typed result (or raises); `reply`/`error_reply` write
the answer at the very end. skel never calls into the service that uses it.

Standard library only: podnet-ipam and the plugin's in-process fallback run it.
"""

from __future__ import annotations

import json
import re
import sys

from podnet.cni.types import (
    V11_COMMANDS,
    check_supported,
    convert_result,
    version_key,
    version_result,
)
from podnet.errors import (
    DecodingFailure,
    IncompatibleVersion,
    InvalidConfig,
    InvalidEnvironment,
    PodnetError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import IO

    from podnet.cni.types import CniResult

COMMANDS = frozenset({"ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"})
# Which CNI_* variables each command requires (spec section "Parameters").
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}
KNOWN_ARGS = frozenset(
    {
        "IgnoreUnknown",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
        "IP",
        "MAC",
    }
)
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_NETWORK_NAME = _CONTAINER_ID  # the spec gives network names the same rule
_MAX_STDIN = 4 * 1024 * 1024


class CniRequest:
    """One invocation of the plugin, validated."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "config")

    def __init__(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: Mapping[str, str] | None = None,
        path: tuple[str, ...] = (),
        config: Mapping | None = None,
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = dict(args or {})
        self.path = tuple(path)
        self.config = config if config is not None else {}

    def __repr__(self) -> str:
        return f"CniRequest({self.command} {self.container_id}/{self.ifname} netns={self.netns!r})"

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion", "1.0.0"))

    def env(self) -> dict[str, str]:
        """The CNI_* environment to hand to a delegated plugin."""
        out = {"CNI_COMMAND": self.command, "CNI_PATH": ":".join(self.path)}
        if self.container_id:
            out["CNI_CONTAINERID"] = self.container_id
        if self.netns:
            out["CNI_NETNS"] = self.netns
        if self.ifname:
            out["CNI_IFNAME"] = self.ifname
        if self.args:
            out["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in self.args.items())
        return out


def validate_container_id(value: str) -> str:
    if not value:
        raise InvalidEnvironment("CNI_CONTAINERID is empty")
    if not _CONTAINER_ID.fullmatch(value):
        raise InvalidEnvironment(
            f"invalid CNI_CONTAINERID {value!r}",
            "must start with a letter or digit, then letters, digits, '_', '.' or '-'",
        )
    return value


def validate_ifname(value: str) -> str:
    if not value:
        raise InvalidEnvironment("CNI_IFNAME is empty")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # undecodable bytes in the environment (surrogateescape)
        raise InvalidEnvironment(f"CNI_IFNAME {value!r} is not valid UTF-8") from None
    if size > 15:
        raise InvalidEnvironment(f"CNI_IFNAME {value!r} is longer than 15 bytes")
    if value in (".", ".."):
        raise InvalidEnvironment(f"CNI_IFNAME {value!r} is not a valid interface name")
    if any(c in value for c in "/:\0") or any(c.isspace() for c in value):
        raise InvalidEnvironment(
            f"CNI_IFNAME {value!r} contains '/', ':', NUL or whitespace", "not allowed by the spec"
        )
    return value


def parse_cni_args(raw: str) -> dict[str, str]:
    """'A=1;B=2' -> {'A': '1', 'B': '2'}. Unknown keys need IgnoreUnknown=1 (as the
    reference plugins require), so a typo is reported instead of silently ignored."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidEnvironment(f"invalid CNI_ARGS pair {pair!r}", "expected KEY=VALUE")
        out[key] = value
    ignore = out.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(out) - KNOWN_ARGS)
    if unknown and not ignore:
        raise InvalidEnvironment(
            f"unknown CNI_ARGS key(s): {', '.join(unknown)}", "set IgnoreUnknown=1 to ignore them"
        )
    return out


def decode_config(stdin: bytes) -> dict:
    if len(stdin) > _MAX_STDIN:
        raise DecodingFailure("network configuration on stdin is larger than 4 MiB")
    try:
        config = json.loads(stdin.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodingFailure("cannot decode network configuration from stdin", str(exc)) from None
    if not isinstance(config, dict):
        raise DecodingFailure("network configuration must be a JSON object")
    return config


def read_request(environ: Mapping[str, str], stdin: bytes) -> CniRequest:
    """Validate the environment and stdin of one invocation (spec, 'Parameters')."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise InvalidEnvironment(
            f"invalid CNI_COMMAND {command!r}" if command else "CNI_COMMAND is not set",
            f"expected one of {', '.join(sorted(COMMANDS))}",
        )
    for name in REQUIRED_ENV[command]:
        if name not in environ or (name != "CNI_PATH" and not environ[name]):
            raise InvalidEnvironment(f"{name} is required for {command}")
    config: dict = {}
    if command != "VERSION" or stdin.strip():
        config = decode_config(stdin)
    if command != "VERSION":
        check_supported(config.get("cniVersion"))
        if command in V11_COMMANDS and version_key(config["cniVersion"]) < (1, 1, 0):
            raise IncompatibleVersion(
                f"{command} needs cniVersion 1.1.0 or later, config has {config['cniVersion']}"
            )
        if not isinstance(config.get("name", ""), str) or not config.get("name"):
            raise DecodingFailure("network configuration has no 'name'")
        if not _NETWORK_NAME.fullmatch(config["name"]):
            raise InvalidConfig(
                f"invalid network name {config['name']!r}",
                "an alphanumeric, then alphanumerics, '_', '.' or '-' (CNI spec)",
            )
    container_id = environ.get("CNI_CONTAINERID", "")
    ifname = environ.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        validate_container_id(container_id)
        validate_ifname(ifname)
    path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
    return CniRequest(
        command=command,
        container_id=container_id,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
        path=path,
        config=config,
    )


def error_version(stdin: bytes) -> str:
    """Best-effort cniVersion for an error reply, even when stdin is garbage."""
    try:
        version = json.loads(stdin.decode("utf-8")).get("cniVersion")
    except Exception:  # noqa: BLE001 - any garbage means "use the default"
        return "1.0.0"
    return version if isinstance(version, str) and version else "1.0.0"


def reply(request: CniRequest, result: CniResult | None) -> tuple[int, str]:
    """The success answer (exit code, stdout), serialised only here: VERSION's, a
    typed result in the request's cniVersion, or nothing (DEL, CHECK, GC, STATUS)."""
    if request.command == "VERSION":
        return 0, _line(version_result(request.config.get("cniVersion")))
    if result is None:
        return 0, ""
    return 0, _line(convert_result(result.as_cni(), request.cni_version))


def error_reply(exc: Exception, stdin: bytes) -> tuple[int, str]:
    """Any failure as spec error JSON: a PodnetError keeps its code, anything else is
    999 with its message. Never a traceback."""
    err = exc if isinstance(exc, PodnetError) else PodnetError(f"internal error: {type(exc).__name__}: {exc}")
    return 1, _line(err.to_cni(error_version(stdin)))


def _line(value: dict) -> str:
    return json.dumps(value) + "\n"


def run(
    handler: Callable[[CniRequest], CniResult | None],
    environ: Mapping[str, str],
    stdin: bytes,
    stdout: IO[str] | None = None,
) -> int:
    """A plugin that is one function of its request (podnet-ipam): read the request,
    handle it, print the reply. VERSION is answered here, without the handler."""
    try:
        request = read_request(environ, stdin)
        code, text = reply(request, None if request.command == "VERSION" else handler(request))
    except Exception as exc:  # noqa: BLE001 - the edge: report, never a traceback
        code, text = error_reply(exc, stdin)
    (stdout or sys.stdout).write(text)
    return code
