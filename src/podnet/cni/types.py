"""CNI versions and result conversion (spec 0.3.0 ... 1.1.0).

podnet keeps every result typed (`CniResult`) until skel writes the reply: only then
is it rendered in the 1.0 shape (`as_cni`) and converted to the request's version, so
the rest of the code knows one format. Standard library only.
"""

from __future__ import annotations

import copy
from typing import Protocol

from podnet.errors import IncompatibleVersion

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
# Operations introduced by spec 1.1.0; a config declaring an older version must not ask.
V11_COMMANDS = frozenset({"GC", "STATUS"})


class CniResult(Protocol):
    """What ADD answers (the podnet plugin's AddResult, podnet-ipam's IpamResult)."""

    def as_cni(self) -> dict:
        """The result in the CNI 1.0 shape (skel converts it to the request's version)."""
        ...


def version_key(version: str) -> tuple[int, ...]:
    """'1.0.0' -> (1, 0, 0); raises IncompatibleVersion for garbage."""
    try:
        parts = tuple(int(p) for p in version.split("."))
    except (ValueError, AttributeError):
        raise IncompatibleVersion(f"invalid cniVersion {version!r}") from None
    if len(parts) != 3:
        raise IncompatibleVersion(f"invalid cniVersion {version!r}")
    return parts


def check_supported(version: object) -> str:
    """Return the version if podnet speaks it, else raise the spec's code 1."""
    if not isinstance(version, str) or not version:
        raise IncompatibleVersion("cniVersion is missing from the network configuration")
    if version not in SUPPORTED_VERSIONS:
        version_key(version)
        raise IncompatibleVersion(
            f"incompatible CNI version {version}",
            f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return version


def version_result(config_version: str | None = None) -> dict:
    """The answer to VERSION."""
    return {
        "cniVersion": config_version if config_version in SUPPORTED_VERSIONS else CURRENT_VERSION,
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


def convert_result(result: dict, version: str) -> dict:
    """A 1.0-shaped result -> the wire format of `version`."""
    out = copy.deepcopy(result)
    out["cniVersion"] = version
    if version_key(version) < (1, 0, 0):
        for ip in out.get("ips", []):
            ip["version"] = "6" if ":" in ip["address"] else "4"
    if not out.get("dns"):
        out.pop("dns", None)
    for key in ("interfaces", "routes"):
        if not out.get(key):
            out.pop(key, None)
    out.setdefault("ips", [])
    return out
