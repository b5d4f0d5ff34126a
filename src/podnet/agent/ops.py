"""The agent's services beyond CNI, as an explicit registry (no import side effects).

A service is started after the socket is bound and stopped on shutdown; it may answer
JSON ops on the agent socket (`ops()` maps an op name to a handler taking the decoded
request and the fds that came with it, returning a JSON-able result or raising a
PodnetError). Later issues add services here: the container supervisor, DNS, network
isolation.
"""

from __future__ import annotations

from collections.abc import Callable

from podnet.agent.context import AgentContext, AgentService
from podnet.agent.dns_service import dns_service
from podnet.agent.isolation_service import IsolationService
from podnet.agent.node_service import NodeService
from podnet.agent.policy_service import PolicyService
from podnet.agent.supervisor_service import SupervisorService

# name -> factory(agent); order is start order (stop runs in reverse)
SERVICES: dict[str, Callable[[AgentContext], AgentService]] = {
    "isolation": IsolationService.for_agent,  # networks/ -> the inet podnet-iso table
    "dns": dns_service,  # networks/ + containers/ -> a DNS server on each bridge gateway
    "supervisor": SupervisorService,  # parent of detached containers; finishes dead ones
    "node": NodeService,  # --node: lease a block, render cluster.conflist, converge the fabric
    "policy": PolicyService,  # --node: policy/ in the cluster store -> inet podnet-policy; flows
}


def build_services(agent: AgentContext) -> list[AgentService]:
    return [factory(agent) for factory in SERVICES.values()]
