"""What `podnet network` commands refuse, beyond an invalid configuration."""

from __future__ import annotations

from podnet.errors import PodnetError


class NetworkNotFound(PodnetError):
    """No network of that name is in the store."""

    def __init__(self, name: str) -> None:
        super().__init__(f"network {name!r} not found", "list networks with: podnet network ls")
        self.name = name


class NetworkExists(PodnetError):
    """The name is taken (by a network, or by a conflist podnet did not write)."""


class NetworkInUse(PodnetError):
    """Containers are still attached; `rm --force` removes the network anyway."""
