"""Exec another CNI plugin found on CNI_PATH (e.g. `"ipam": {"type": "host-local"}`),
exactly as the spec's delegation section describes. Standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence

from podnet.errors import DelegateError, InvalidConfig, IOFailure

_TIMEOUT = 60.0


def find_plugin(plugin_type: str, path: Sequence[str]) -> str:
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise InvalidConfig(f"invalid plugin type {plugin_type!r}")
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise InvalidConfig(
        f"plugin {plugin_type!r} not found in CNI_PATH", f"searched: {':'.join(path) or '(empty)'}"
    )


def exec_plugin(
    plugin_type: str,
    command: str,
    env: Mapping[str, str],
    config: Mapping,
    path: Sequence[str],
) -> dict | None:
    """Run the plugin; return its parsed result (None when it prints nothing, as DEL
    may). A failing delegate raises DelegateError carrying the delegate's own code."""
    binary = find_plugin(plugin_type, path)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    child_env.update(env)
    child_env["CNI_COMMAND"] = command
    child_env["CNI_PATH"] = ":".join(path)
    try:
        proc = subprocess.run(
            [binary],
            input=json.dumps(config).encode(),
            env=child_env,
            capture_output=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IOFailure(f"cannot run delegate plugin {plugin_type}: {exc}") from None
    out = proc.stdout.decode(errors="replace").strip()
    parsed: dict | None = None
    if out:
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = None
    if proc.returncode != 0:
        if isinstance(parsed, dict) and "code" in parsed:
            raise DelegateError(
                f"{plugin_type}: {parsed.get('msg', 'failed')}",
                str(parsed.get("details", "")),
                code=int(parsed["code"]),
            )
        detail = (proc.stderr.decode(errors="replace") or out).strip()[-2000:]
        raise DelegateError(f"{plugin_type} failed with exit code {proc.returncode}", detail)
    if out and parsed is None:
        raise DelegateError(f"{plugin_type} printed something that is not JSON", out[:2000])
    return parsed
