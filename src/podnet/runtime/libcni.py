"""The runtime side of CNI: execute a plugin or a whole conflist the way libcni does
(ADD in chain order with prevResult, DEL in reverse, CHECK with the cached result).
Used by the demo, the tests and the benchmarks to drive podnet exactly like podman.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class PluginResult:
    returncode: int
    output: dict | None
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error_code(self) -> int | None:
        return None if self.ok or not self.output else self.output.get("code")


def invoke(
    plugin: str,
    command: str,
    config: Mapping | bytes | str,
    *,
    container_id: str = "",
    netns: str = "",
    ifname: str = "",
    cni_path: Sequence[str] = (),
    args: str = "",
    netns_exec: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 120,
    enter: Sequence[str] = (),
) -> PluginResult:
    """Exec one plugin binary; `netns_exec` runs it inside that named namespace (the
    caller's namespace, where host-side links land). `enter` is an argv prefix that
    does the same without a private mount namespace, e.g. ["nsenter", "--net=PATH", "--"]."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({"CNI_COMMAND": command, "CNI_PATH": ":".join(cni_path)})
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    if ifname:
        env["CNI_IFNAME"] = ifname
    if args:
        env["CNI_ARGS"] = args
    env.update(extra_env or {})
    if isinstance(config, Mapping):
        data = json.dumps(config).encode()
    else:
        data = config.encode() if isinstance(config, str) else config
    argv = [plugin] if netns_exec is None else ["ip", "netns", "exec", netns_exec, plugin]
    argv = [*enter, *argv]
    proc = subprocess.run(argv, input=data, env=env, capture_output=True, timeout=timeout, check=False)
    out = proc.stdout.decode(errors="replace").strip()
    try:
        parsed = json.loads(out) if out else None
    except ValueError:
        parsed = {"unparsable": out}
    return PluginResult(proc.returncode, parsed, proc.stderr.decode(errors="replace"))


class CniFailure(Exception):
    def __init__(self, plugin: str, command: str, result: PluginResult) -> None:
        output = result.output or {}
        msg = output.get("msg", result.stderr.strip()[-500:])
        details = f" ({output['details']})" if output.get("details") else ""
        super().__init__(f"{plugin} {command} failed (code {result.error_code}): {msg}{details}")
        self.result = result


def plugin_config(conflist: Mapping, plugin: Mapping, runtime_config: Mapping | None) -> dict:
    """What libcni sends one plugin of a conflist: the plugin's object plus name and
    cniVersion, and runtimeConfig filtered by the plugin's declared capabilities."""
    conf = copy.deepcopy(dict(plugin))
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist["cniVersion"]
    caps = conf.pop("capabilities", {}) or {}
    wanted = {k: v for k, v in (runtime_config or {}).items() if caps.get(k)}
    if wanted:
        conf["runtimeConfig"] = wanted
    return conf


@dataclass
class Conflist:
    """A network configuration list, executed plugin by plugin."""

    config: Mapping
    cni_path: Sequence[str]
    netns_exec: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    enter: Sequence[str] = ()  # argv prefix for every plugin exec (see invoke)

    def _find(self, plugin_type: str) -> str:
        for d in self.cni_path:
            path = os.path.join(d, plugin_type)
            if os.access(path, os.X_OK):
                return path
        raise FileNotFoundError(f"plugin {plugin_type} not found in {list(self.cni_path)}")

    def _run(self, command: str, plugin: Mapping, conf: dict, **kw) -> PluginResult:
        result = invoke(
            self._find(plugin["type"]), command, conf, cni_path=self.cni_path,
            netns_exec=self.netns_exec, extra_env=self.extra_env, enter=self.enter, **kw,
        )
        if not result.ok:
            raise CniFailure(plugin["type"], command, result)
        return result

    def add(self, container_id: str, netns: str, ifname: str = "eth0", runtime_config=None, args: str = "") -> dict:
        prev: dict | None = None
        for plugin in self.config["plugins"]:
            conf = plugin_config(self.config, plugin, runtime_config)
            if prev is not None:
                conf["prevResult"] = prev
            result = self._run("ADD", plugin, conf, container_id=container_id, netns=netns, ifname=ifname, args=args)
            prev = result.output
        return prev or {}

    def check(self, container_id: str, netns: str, prev: Mapping, ifname: str = "eth0", runtime_config=None) -> None:
        for plugin in self.config["plugins"]:
            conf = plugin_config(self.config, plugin, runtime_config)
            conf["prevResult"] = prev
            self._run("CHECK", plugin, conf, container_id=container_id, netns=netns, ifname=ifname)

    def delete(self, container_id: str, netns: str, ifname: str = "eth0", prev: Mapping | None = None, runtime_config=None) -> None:
        for plugin in reversed(self.config["plugins"]):
            conf = plugin_config(self.config, plugin, runtime_config)
            if prev is not None:
                conf["prevResult"] = prev
            self._run("DEL", plugin, conf, container_id=container_id, netns=netns, ifname=ifname)

    def gc(self, valid: Sequence[tuple[str, str]]) -> None:
        for plugin in self.config["plugins"]:
            conf = plugin_config(self.config, plugin, None)
            conf["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": i} for c, i in valid]
            self._run("GC", plugin, conf)

    def status(self) -> None:
        for plugin in self.config["plugins"]:
            self._run("STATUS", plugin, plugin_config(self.config, plugin, None))
