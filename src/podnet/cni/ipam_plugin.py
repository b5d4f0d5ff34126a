"""The `podnet-ipam` CNI IPAM executable, usable by any main plugin (e.g. the
reference `bridge`). Entirely in-process and standard library only: it needs no
netlink, and SQLite serialises concurrent callers across processes. An etcd store
(`ipam.store: "etcd://..."`) is refused with a clear error: the podnet plugin serves
the same IPAM from the agent, which has the etcd client.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from podnet.cni import skel
from podnet.cni.config import names_store, requested_ips, store_path_for
from podnet.cni.types import convert_result, normalize_result, version_result
from podnet.errors import DecodingFailure, InvalidConfig, PluginNotAvailable, UnknownContainer
from podnet.ipam.config import parse_ipam_config
from podnet.ipam.service import IpamService, gc_scope
from podnet.store import open_store


def _ipam_section(config: Mapping) -> Mapping:
    ipam = config.get("ipam")
    if not isinstance(ipam, Mapping):
        raise DecodingFailure("the network configuration has no 'ipam' object")
    return ipam


def _valid_attachments(config: Mapping) -> set[tuple[str, str]]:
    items = config.get("cni.dev/valid-attachments", [])
    if not isinstance(items, list):
        raise DecodingFailure("'cni.dev/valid-attachments' must be a list")
    try:
        return {(str(i["containerID"]), str(i.get("ifname", ""))) for i in items}
    except (TypeError, KeyError):
        raise DecodingFailure("invalid entry in 'cni.dev/valid-attachments'") from None


def handle(req: skel.CniRequest) -> dict | None:
    if req.command == "VERSION":
        return version_result(req.config.get("cniVersion"))
    ipam_conf = parse_ipam_config(_ipam_section(req.config))
    name = str(req.config["name"])
    location = store_path_for(req.config)
    if location.startswith("etcd://"):
        # Standard library only: the etcd client (aetcd, grpc) is not importable here.
        raise InvalidConfig(
            f"podnet-ipam cannot use the etcd store {location!r}",
            "use it through the podnet plugin (served by the agent), or a SQLite store",
        )
    store = open_store(location)
    try:
        service = IpamService(store)
        if req.command == "ADD":
            result = service.allocate(
                name, req.container_id, req.ifname, ipam_conf, requested_ips(req.args, req.config), mark_ready=True
            )
            return convert_result(normalize_result(result.as_cni()), req.cni_version)
        if req.command == "DEL":
            service.release(name, req.container_id, req.ifname)
            return None
        if req.command == "CHECK":
            if not service.lookup(name, req.container_id, req.ifname):
                raise UnknownContainer(f"no address is reserved for {req.container_id}/{req.ifname}")
            return None
        if req.command == "GC":
            within = gc_scope(ipam_conf) if names_store(req.config) else None
            service.gc(name, _valid_attachments(req.config), within)
            return None
        if req.command == "STATUS":
            if service.free_count(name, ipam_conf) <= 0:
                raise PluginNotAvailable(f"network {name} has no free address left")
            return None
        raise InvalidConfig(f"unsupported command {req.command}")
    finally:
        store.close()


def main(extra_paths: Sequence[str] = ()) -> int:
    del extra_paths  # podnet-ipam never needs the fallback's third-party packages
    try:
        stdin = sys.stdin.buffer.read()
    except OSError:
        stdin = b""
    return skel.run(handle, os.environ, stdin)


def exec_main(extra_paths: Sequence[str] = ()) -> None:
    """Entry of the installed executable: flush, then exit without interpreter teardown."""
    code = main(extra_paths)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    exec_main()
