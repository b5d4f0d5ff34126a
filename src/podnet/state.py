"""Where a podnet host keeps its state: one directory (default /var/lib/podnet, or
$PODNET_STATE_DIR) with the store, the rendered conflists and per-container files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from podnet.defaults import DEFAULT_STATE_DIR
from podnet.rpc.wire import DEFAULT_SOCKET


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @classmethod
    def resolve(cls, state_dir: str | None = None) -> StatePaths:
        return cls(Path(state_dir or os.environ.get("PODNET_STATE_DIR") or DEFAULT_STATE_DIR))

    @property
    def store(self) -> Path:
        return self.root / "store.db"

    @property
    def bird_dir(self) -> Path:
        """This node's BIRD (bgp fabric): bird.conf, its control socket and pid file."""
        return self.root / "bird"

    @property
    def mesh_dir(self) -> Path:
        """This node's mesh sidecars (agent/mesh_service.py): a work directory per pod, the CA, the log socket."""
        return self.root / "mesh"

    @property
    def gossip_dir(self) -> Path:
        """The gossip fabric's saved ring and documents (agent/gossip_service.py)."""
        return self.root / "gossip"

    @property
    def net_d(self) -> Path:
        """Rendered CNI conflists, one per network (what a runtime's conf dir holds)."""
        return self.root / "net.d"

    @property
    def cni_bin(self) -> Path:
        """podnet's own CNI executables (installed on demand by install_cni)."""
        return self.root / "bin"

    def container_dir(self, container_id: str) -> Path:
        """Logs, resolv.conf, hosts and the CNI result cache of one container."""
        return self.root / "containers" / container_id


def agent_socket(explicit: str | None = None) -> str:
    return explicit or os.environ.get("PODNET_AGENT_SOCKET") or DEFAULT_SOCKET
