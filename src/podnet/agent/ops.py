"""The agent's services beyond CNI, as an explicit registry (no import side effects).

A service is started after the socket is bound and stopped on shutdown; it may answer
JSON ops on the agent socket (`ops()` maps an op name to a handler taking the decoded
request and the fds that came with it, returning a JSON-able result or raising a
PodnetError). An op that may wait long (a grace period) is named in the service's
`long_ops` too. Later issues add services here: the container supervisor, DNS, network
isolation.
"""

from __future__ import annotations

from collections.abc import Callable

from podnet.agent.cluster_dns_service import ClusterDnsService
from podnet.agent.clusterset_service import ClustersetService
from podnet.agent.context import AgentContext, AgentService
from podnet.agent.dns_service import dns_service
from podnet.agent.gossip_service import GossipService
from podnet.agent.isolation_service import IsolationService
from podnet.agent.mesh_service import MeshService
from podnet.agent.node_service import NodeService
from podnet.agent.policy_service import PolicyService
from podnet.agent.readiness_service import ReadinessService
from podnet.agent.services_service import ServicesService
from podnet.agent.supervisor_service import SupervisorService
from podnet.agent.trace_service import TraceService

# name -> factory(agent); order is start order (stop runs in reverse)
SERVICES: dict[str, Callable[[AgentContext], AgentService]] = {
    "isolation": IsolationService.for_agent,  # networks/ -> the inet podnet-iso table
    "dns": dns_service,  # networks/ + containers/ -> a DNS server on each bridge gateway
    "supervisor": SupervisorService,  # parent of detached containers; finishes dead ones
    "gossip": GossipService,  # --fabric gossip: peers, the ring -> blocks/, documents <-> the local store
    "node": NodeService,  # --node: lease a block, render cluster.conflist, converge the fabric
    "policy": PolicyService,  # --node: policy/ in the cluster store -> inet podnet-policy; flows
    "readiness": ReadinessService,  # --node: probes this node's pods, publishes readiness/
    "services": ServicesService,  # --node: services/, endpointslices/, pods -> inet podnet-svc
    "clusterset": ClustersetService,  # --node: routes, tunnel and gateway election toward the other clusters
    "mesh": MeshService,  # --node: a sidecar (HAProxy) per local meshed pod, its certificate, golden signals
    "cluster-dns": ClusterDnsService,  # --cluster-dns-netns: <svc>.<ns>.svc.<domain> in the node's DNS pod
    "trace": TraceService,  # podnet trace: a packet's path from this node's kernel; traced probes
}


def build_services(agent: AgentContext) -> list[AgentService]:
    return [factory(agent) for factory in SERVICES.values()]


def long_ops(services: list[AgentService]) -> frozenset[str]:
    """The ops that may wait long (a service lists them in its `long_ops`): the agent
    serves them on a pool of their own, so a CNI request never queues behind them."""
    return frozenset(op for svc in services for op in getattr(svc, "long_ops", ()))
