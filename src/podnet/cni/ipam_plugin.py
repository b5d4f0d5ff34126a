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
from podnet.cni.config import store_path_for
from podnet.endpoints.ipam import BuiltinIpam
from podnet.errors import DecodingFailure, InvalidConfig, UnknownContainer
from podnet.ipam.config import parse_ipam_config
from podnet.ipam.result import IpamResult
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


def handle(req: skel.CniRequest) -> IpamResult | None:
    """The podnet plugin's built-in IPAM (endpoints/ipam.py), with no pending phase:
    podnet-ipam's ADD is done when it answers."""
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
        ipam = BuiltinIpam(store, name, ipam_conf, req)
        if req.command == "ADD":
            return ipam.reserve(ready=True)
        if req.command == "DEL":
            ipam.release()
        elif req.command == "CHECK":
            if not ipam.held():
                raise UnknownContainer(f"no address is reserved for {req.container_id}/{req.ifname}")
        elif req.command == "GC":
            ipam.gc(_valid_attachments(req.config))
        elif req.command == "STATUS":
            ipam.status()
        else:
            raise InvalidConfig(f"unsupported command {req.command}")
        return None
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
