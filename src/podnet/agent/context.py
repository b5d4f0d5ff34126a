"""What an agent service sees of the agent, and what it gives back: a narrow interface
instead of the daemon itself, so the services depend on this module and the daemon
depends on them (agent/ops.py lists them), never the other way round."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from podnet.agent.metrics import AgentMetrics
    from podnet.cluster.options import NodeOptions
    from podnet.endpoints.service import CniService
    from podnet.state import StatePaths

# an op on the agent socket: (decoded request, fds that came with it) -> a JSON-able
# result, or a PodnetError
OpHandler = Callable[[dict, list[int]], object]


class AgentContext(Protocol):
    """The agent (agent/daemon.py `Agent`) as its services use it."""

    socket_path: str
    store_path: str
    state: StatePaths
    service: CniService  # the CNI service: its one warm handle per store
    node_options: NodeOptions | None  # None: not a cluster node
    policy_host: str | None  # a plain host whose HostEndpoint policy this agent enforces
    dns_upstream: str | None
    metrics: AgentMetrics  # this agent's Prometheus registry (agent/metrics.py)


def state_store_path(agent: AgentContext) -> str:
    """The state dir's store (where the CLI writes networks and containers) under the
    name the CNI service caches it by: the agent's own path when it is the same file,
    so its services share one SqliteStore (and one watch tail, one inotify instance)
    per file and process."""
    path = str(agent.state.store)
    return agent.store_path if os.path.realpath(agent.store_path) == os.path.realpath(path) else path


class AgentService(Protocol):
    def ops(self) -> dict[str, OpHandler]: ...

    def start(self) -> None: ...

    def request_stop(self) -> None: ...  # ask to stop, return at once (stop() waits)

    def stop(self) -> None: ...
