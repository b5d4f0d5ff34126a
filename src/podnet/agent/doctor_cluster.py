"""`podnet doctor`'s checks that look past the node's own memory: routes to blocks no
live lease holds any more (read from the store, not from the node's view of its peers),
and the cluster DNS server that does not answer.

- leases: a route of this node (podnet's proto 77, or BIRD's proto 12 on the bgp
  fabric) to a whole block of the cluster CIDR that no node with a live lease claims
  (its lease expired, or was deleted): pods there are gone, and their addresses may
  be handed out again elsewhere. The fabric drops such routes by itself (its desired
  state is built from live leases only: fabric/base.py), so the fix is the node's
  repair pass (for BIRD: the same pass re-syncs its sessions with the live leases).
  It is judged from the store because the node's in-memory peers are what a stuck
  loop would have wrong.
- dns: one query (A of kube-dns.kube-system.svc.<domain>) with a short timeout to the
  server this node runs in its DNS pod (in that pod's namespace), and to the address
  pods are given (the ClusterIP, through this node's service table). Any answer, even
  NXDOMAIN, means it answers. Explained only: the agent has no restart of its DNS
  server short of a restart of the agent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from podnet.agent.doctor_finding import Finding
from podnet.cluster.dualstack import Pools

if TYPE_CHECKING:
    from podnet.agent.node_service import NodeService

BIRD_PROTO = 12
DNS_TIMEOUT = 1.0
DNS_NAME = "kube-dns.kube-system.svc.{domain}"


def expired_lease_findings(routes: Iterable[tuple[str, str, str]], live: Mapping[str, str], own: Iterable[str],
                           cluster: str, block_prefix: int, last_known: Mapping[str, str],
                           cluster6: str | None = None) -> list[Finding]:
    """`routes`: (destination, next hop, "podnet" | "bird") of this node; `live`: block ->
    node of every claim whose node holds a live lease; `last_known`: block -> node as
    the node last saw them (to name whose lease it was). In a dual-stack cluster
    (`cluster6`) an IPv6 block's route is judged by its IPv4 twin's claim."""
    pool, mine = ipaddress.ip_network(cluster), set(own)
    pools = Pools(ipaddress.IPv4Network(cluster), block_prefix, ipaddress.IPv6Network(cluster6)) if cluster6 else None
    out = []
    for dst, via, proto in sorted(set(routes)):
        net = ipaddress.ip_network(dst, strict=False)
        if net.version == 6 and pools is not None:
            twin_of = pools.block_of_twin(ipaddress.IPv6Network(dst, strict=False))
            if twin_of is None:
                continue
            block = str(twin_of)
        elif net.version != pool.version or not net.subnet_of(pool) or net.prefixlen != block_prefix:  # type: ignore[arg-type]
            continue
        else:
            block = dst
        if block in mine or block in live:
            continue
        whose = f"node {last_known[block]}'s lease" if block in last_known else "its lease"
        fix = ("the node's repair pass re-syncs BIRD with the live leases, ending the session that announced it"
               if proto == "bird" else "the node's repair pass removes routes no live lease wants")
        out.append(Finding("leases", f"block {dst} is still routed via {via or '?'} ({proto}), but no live lease "
                                     f"holds it ({whose} expired or was deleted)",
                           fix + " (podnet doctor --fix, or wait 3 s)", True, (dst,)))
    return out


def dns_findings(asked: Iterable[tuple[str, str, str | None]], name: str) -> list[Finding]:
    """`asked`: (what was asked, the fix to give, why it did not answer or None)."""
    return [Finding("dns", f"the cluster DNS server {where} does not answer ({why}; asked for {name})", fix)
            for where, fix, why in asked if why is not None]


# ------------------------------------------------------------------- reading the node


def lease_findings(node: NodeService) -> list[Finding]:
    from pyroute2 import IPRoute

    from podnet.cluster import leases
    from podnet.fabric.base import MAIN_TABLE, ROUTE_PROTO

    opts, ctx = node.options, node.ctx
    if opts is None or ctx is None:
        return []
    store = node.agent.service.store(node.agent.store_path)
    holders = {lease.name for lease in leases.list_leases(store)}
    live = {block: owner for block, owner in leases.list_claims(store).items() if owner in holders}
    last_known = {**node.claims, **{p.block: name for name, p in node.peers.items()}}
    names = {ROUTE_PROTO: "podnet", BIRD_PROTO: "bird"}
    with IPRoute() as ipr:
        routes = [(str(ipaddress.ip_network(f"{msg.get('RTA_DST')}/{msg['dst_len']}", strict=False)),
                   str(msg.get("RTA_GATEWAY") or ""), names[msg["proto"]])
                  for family in (socket.AF_INET, socket.AF_INET6)
                  for msg in ipr.get_routes(family=family, table=MAIN_TABLE)
                  if msg["proto"] in names and msg.get("RTA_DST") and msg["type"] == 1]  # unicast: not BIRD's blackholes
    own = (ctx.own.block, *node.blocks)
    return expired_lease_findings(routes, live, own, opts.cluster_cidr, opts.block_prefix, last_known,
                                  opts.cluster_cidr6)


def query(address: str, name: str, timeout: float = DNS_TIMEOUT, netns_path: str | None = None) -> str | None:
    """One UDP query for `name` A to `address`:53 (from inside `netns_path` if given):
    None when any answer to it came back, else why not."""
    from dnslib import DNSRecord

    request = DNSRecord.question(name, "A")
    try:
        with _socket(netns_path) as sock:
            sock.settimeout(timeout)
            sock.sendto(request.pack(), (address, 53))
            while True:
                data = sock.recv(4096)
                with contextlib.suppress(Exception):  # noqa: BLE001 - garbage is no answer
                    if DNSRecord.parse(data).header.id == request.header.id:
                        return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def _socket(netns_path: str | None) -> socket.socket:
    """A UDP socket of this thread's namespace, or of `netns_path` (a socket stays in the
    namespace it was made in)."""
    if netns_path is None:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    from podnet.errors import PodnetError
    from podnet.kernel import netns

    try:
        fd = netns.open_netns(netns_path)
    except PodnetError as exc:
        raise OSError(exc.msg) from None
    try:
        with netns.entered(fd):
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    finally:
        os.close(fd)


def cluster_dns_findings(node: NodeService) -> list[Finding]:
    opts = node.options
    if opts is None or not opts.cluster_dns:
        return []
    name = DNS_NAME.format(domain=opts.cluster_domain.strip("."))
    asked = []
    if opts.cluster_dns_netns:
        asked.append((f"this node's agent runs in its DNS pod ({opts.cluster_dns_netns})",
                      "see the node agent's log (cluster dns) and whether the DNS pod exists; restarting the "
                      "node's agent serves it again", query("127.0.0.1", name, netns_path=opts.cluster_dns_netns)))
    asked.append((f"at {opts.cluster_dns} (the address pods are given)",
                  "pods cannot resolve names: check the DNS pods' servers (the other nodes' doctor) and the "
                  "kube-system/kube-dns service's endpoints in this node's service table",
                  query(opts.cluster_dns, name)))
    return dns_findings(asked, name)
