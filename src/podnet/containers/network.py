"""A container's network side: the network (store record + conflist in net.d), its
network namespace, and CNI ADD/DEL through the installed executables exactly as a
runtime does it (VERSION check, ADD in chain order with prevResult, a result cache,
DEL in reverse with the cached result).

Networks are read straight from the store and net.d (the `networks` package writes
them); this module never creates one.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from podnet import keys
from podnet.containers.files import ContainerFiles
from podnet.containers.spec import DEFAULT_NETWORK, ContainerError, NetworkChoice
from podnet.fileio import write_atomic
from podnet.model.network import NetworkRecord
from podnet.runtime.libcni import CniFailure, Conflist, invoke
from podnet.state import StatePaths
from podnet.store.base import Store

REFERENCE_CNI_DIR = "/usr/lib/cni"


class AttachFailed(ContainerError):
    """CNI ADD was refused; carries the plugin's CNI error code."""

    def __init__(self, msg: str, details: str = "", code: int = 1) -> None:
        super().__init__(msg, details)
        self.code = code


@dataclass(frozen=True)
class ContainerNetwork:
    """The network a container joins: its record, and the conflist a runtime executes."""

    record: NetworkRecord
    conflist: dict

    @property
    def name(self) -> str:
        return self.record.name

    def subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [s.subnet for s in self.record.subnets]

    def nameserver(self) -> str | None:
        return self.record.nameserver()

    def capabilities(self) -> set[str]:
        return {cap for plugin in self.conflist.get("plugins", [])
                for cap, on in (plugin.get("capabilities") or {}).items() if on}

    def as_secondary(self) -> ContainerNetwork:
        """The network as a container's second (third...) attachment: the same
        conflist with `isDefaultGateway` off in every plugin and IPAM routes to a
        default destination dropped, so the default route stays on eth0 while the
        network's own subnets are reached through this interface (the kernel's
        connected route). Done in the config, not by deleting routes after ADD, so
        the ADD result, the cache and CHECK all agree with what is in the namespace."""
        return ContainerNetwork(self.record, secondary_conflist(self.conflist))

    def check_request(self, ip: str | None, ports: tuple[dict, ...]) -> None:
        """--ip inside a subnet, and the plugins declare what libcni will hand them
        (runtimeConfig is filtered by capabilities: an undeclared one is dropped)."""
        if ip is not None:
            address = ipaddress.ip_address(ip)
            if not any(address in subnet for subnet in self.subnets()):
                raise ContainerError(
                    f"--ip {ip} is outside network {self.name}",
                    "its subnets: " + (", ".join(map(str, self.subnets())) or "none"),
                )
            if "ips" not in self.capabilities():
                raise ContainerError(f"network {self.name} does not take --ip (no plugin declares 'ips')")
        if ports and "portMappings" not in self.capabilities():
            raise ContainerError(f"network {self.name} cannot publish ports (no plugin declares 'portMappings')")


def secondary_conflist(conflist: dict) -> dict:
    """See ContainerNetwork.as_secondary (pure; the input is left alone)."""
    out = copy.deepcopy(conflist)
    for plugin in out.get("plugins") or []:
        if "isDefaultGateway" in plugin:
            plugin["isDefaultGateway"] = False
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and isinstance(ipam.get("routes"), list):
            ipam["routes"] = [r for r in ipam["routes"] if not _default_destination(r)]
    return out


def _default_destination(route: object) -> bool:
    try:
        return isinstance(route, dict) and ipaddress.ip_network(route.get("dst", ""), strict=False).prefixlen == 0
    except ValueError:
        return False  # the plugin's own parser names a bad route


def load_network(store: Store, paths: StatePaths, choice: NetworkChoice) -> ContainerNetwork:
    return load_named_network(store, paths, choice.network or DEFAULT_NETWORK, choice.defaulted)


def load_named_network(store: Store, paths: StatePaths, name: str, defaulted: bool = False) -> ContainerNetwork:
    raw = store.get_json(keys.network(name))
    if raw is None:
        if defaulted:
            raise ContainerError(
                f"no --network given and the default network {name!r} does not exist",
                f"create it with: podnet network create {name}  (or pass --network NET|host|none)",
            )
        raise ContainerError(f"network {name} not found", "list networks with: podnet network ls")
    path = paths.net_d / f"{name}.conflist"
    try:
        conflist = json.loads(path.read_text())
    except FileNotFoundError:
        raise ContainerError(f"network {name} has no conflist at {path}") from None
    except ValueError as exc:
        raise ContainerError(f"network {name}: {path} is not valid JSON: {exc}") from None
    return ContainerNetwork(NetworkRecord.from_json(raw, keys.network(name)), conflist)


# -- network namespaces ------------------------------------------------------------


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)


def create_netns(path: str) -> None:
    """`ip netns add` plus lo up (the runtime's job: CNI plugins leave lo alone)."""
    name = os.path.basename(path)
    made = _ip("netns", "add", name)
    if made.returncode:
        raise ContainerError(f"cannot create network namespace {name}: {made.stderr.strip()}")
    lo = _ip("-n", name, "link", "set", "lo", "up")
    if lo.returncode:
        delete_netns(path)
        raise ContainerError(f"cannot bring lo up in {name}: {lo.stderr.strip()}")


def delete_netns(path: str) -> None:
    """Idempotent: a namespace already gone is fine."""
    if not os.path.lexists(path):
        return
    done = _ip("netns", "del", os.path.basename(path))
    if done.returncode and os.path.lexists(path):
        raise ContainerError(f"cannot delete network namespace {path}: {done.stderr.strip()}")


# -- CNI -----------------------------------------------------------------------------


class Cni:
    """libcni for one state dir: podnet's executables first, then the reference ones.
    PODNET_AGENT_SOCKET points the plugin at our agent (it falls back in-process)."""

    def __init__(self, paths: StatePaths, socket_path: str) -> None:
        self.paths = paths
        self.cni_path = [str(paths.cni_bin), REFERENCE_CNI_DIR]
        self.env = {"PODNET_AGENT_SOCKET": socket_path}

    def ensure_installed(self) -> None:
        if not (self.paths.cni_bin / "podnet").exists():
            from podnet.install.cni import install_cni

            install_cni(str(self.paths.cni_bin))

    def _find(self, plugin_type: str) -> str:
        path = shutil.which(plugin_type, path=os.pathsep.join(self.cni_path))
        if path is None or "/" in plugin_type:
            raise ContainerError(f"CNI plugin {plugin_type!r} not found in {self.cni_path}")
        return path

    def check_versions(self, conflist: dict) -> None:
        """VERSION of every plugin in the chain must list the conflist's cniVersion."""
        version = conflist.get("cniVersion", "")
        for plugin in conflist.get("plugins", []):
            out = invoke(self._find(plugin["type"]), "VERSION", {"cniVersion": version},
                         cni_path=self.cni_path, extra_env=self.env)
            supported = (out.output or {}).get("supportedVersions") or []
            if not out.ok or version not in supported:
                raise ContainerError(
                    f"CNI plugin {plugin['type']} does not support cniVersion {version}",
                    f"it supports: {', '.join(supported) or 'nothing (VERSION failed)'}",
                )

    def _conflist(self, config: dict) -> Conflist:
        return Conflist(config, self.cni_path, extra_env=self.env)

    def attach(self, files: ContainerFiles, container_id: str, netns: str, ifname: str,
               network: ContainerNetwork, runtime_config: dict) -> dict:
        """ADD; the cache (one per interface) is written *before* ADD (without a
        result) so a crash in the middle still leaves what DEL needs, and completed
        with the result after."""
        cache_path = files.cni_cache_for(ifname)
        cache = {"kind": "cniCacheV1", "containerId": container_id, "ifName": ifname,
                 "networkName": network.name, "netns": netns, "config": network.conflist,
                 "runtimeConfig": runtime_config, "result": None}
        _write_json(cache_path, cache)
        try:
            result = self._conflist(network.conflist).add(container_id, netns, ifname, runtime_config)
        except CniFailure as exc:
            self.detach(files, ifname)  # libcni: a failed ADD is cleaned up with a DEL
            output = exc.result.output or {}
            raise AttachFailed(
                f"cannot attach to network {network.name}: {output.get('msg') or exc}",
                output.get("details", ""), code=exc.result.error_code or 1,
            ) from None
        _write_json(cache_path, {**cache, "result": result})
        return result

    def detach(self, files: ContainerFiles, ifname: str = "eth0") -> bool:
        """DEL of one attachment in reverse chain order with the cached config and
        result, then forget the cache. False when there was nothing attached."""
        return self._detach_cache(files.cni_cache_for(ifname))

    def detach_all(self, files: ContainerFiles) -> None:
        """DEL of every attachment with a cache, last made first; each is tried, the
        first failure is raised after the others."""
        errors: list[ContainerError] = []
        for path in files.cni_caches():
            try:
                self._detach_cache(path)
            except ContainerError as err:
                errors.append(err)
        if errors:
            raise errors[0]

    def _detach_cache(self, path: Path) -> bool:
        try:
            cache = json.loads(path.read_text())
        except FileNotFoundError:
            return False
        try:
            self._conflist(cache["config"]).delete(
                cache["containerId"], cache["netns"] if os.path.exists(cache["netns"]) else "",
                cache["ifName"], prev=cache.get("result"), runtime_config=cache.get("runtimeConfig"),
            )
        except CniFailure as exc:
            raise ContainerError(f"CNI DEL on network {cache.get('networkName')} failed: {exc}") from None
        path.unlink(missing_ok=True)
        return True


def attachment_summary(result: dict, ifname: str) -> tuple[list[str], str | None]:
    """(addresses with prefix, the container interface's MAC) from an ADD result."""
    interfaces = result.get("interfaces") or []
    mac = next((i.get("mac") for i in interfaces if i.get("name") == ifname and i.get("sandbox")), None)
    return [ip["address"] for ip in result.get("ips") or []], mac


def _write_json(path: Path, value: dict) -> None:
    """The CNI cache: DEL reads it after a crash, so never half of it."""
    write_atomic(path, json.dumps(value, indent=2))
