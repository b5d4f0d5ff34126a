"""The exception tree. Each class carries the CNI error code the spec assigns to it,
so any failure anywhere becomes spec error JSON at the plugin's edge.

Standard library only: the thin plugin imports this module.
"""

from __future__ import annotations


class PodnetError(Exception):
    """Base of every error podnet reports. `code` is the CNI error code."""

    code = 999  # generic "plugin-specific" failure (spec: codes >= 100 are plugin's own)

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def to_cni(self, cni_version: str) -> dict:
        out: dict = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class IncompatibleVersion(PodnetError):
    code = 1


class UnsupportedField(PodnetError):
    code = 2


class UnknownContainer(PodnetError):
    """The container is unknown or does not exist."""

    code = 3


class InvalidEnvironment(PodnetError):
    """A CNI_* environment variable is missing or invalid."""

    code = 4


class IOFailure(PodnetError):
    code = 5


class DecodingFailure(PodnetError):
    """stdin could not be decoded (not JSON, wrong types)."""

    code = 6


class InvalidConfig(PodnetError):
    """The network configuration is semantically invalid."""

    code = 7


class TryAgainLater(PodnetError):
    """A transient condition: the runtime should retry (e.g. store locked)."""

    code = 11


class StoreConflict(TryAgainLater):
    """A store transaction lost to a concurrent writer and wrote nothing: re-running
    it at once is safe (the agent does, a few times, before answering code 11)."""


class PluginNotAvailable(PodnetError):
    """STATUS: the plugin cannot currently service ADD (CNI 1.1 code 50)."""

    code = 50


class LimitedConnectivity(PodnetError):
    """STATUS: the plugin can ADD, but connectivity is limited (CNI 1.1 code 51)."""

    code = 51


class InvalidNetNS(PodnetError):
    """The network namespace path does not name a network namespace."""

    code = 3


class AddressExhausted(PodnetError):
    """No free address is left in any range of the network (podnet code 100)."""

    code = 100


class AddressInUse(PodnetError):
    """A specifically requested address is taken (podnet code 101)."""

    code = 101


class KernelError(PodnetError):
    """A netlink or nftables operation failed (podnet code 102)."""

    code = 102


class DelegateError(PodnetError):
    """A delegated plugin (e.g. host-local via CNI_PATH) failed; keeps its code."""

    def __init__(self, msg: str, details: str = "", code: int = 999) -> None:
        super().__init__(msg, details)
        self.code = code


class StoreError(PodnetError):
    """The datastore failed in a way that is not transient (podnet code 103)."""

    code = 103


class PortInUse(PodnetError):
    """A requested host port is already mapped by another attachment (podnet code 104)."""

    code = 104


class ObjectError(PodnetError):
    """An object a user applies (a manifest, a selector, a query) is invalid; the
    message names the document and the field path."""
