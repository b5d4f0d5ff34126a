"""The eBPF fast path of the vxlan and host-gw fabrics (`--fastpath ebpf`): pod-to-pod
packets between nodes skip both nodes' bridge, br_netfilter, nftables and IP forwarding
(Cilium's host routing, done with two small tc programs).

Design notes:
- Two cls_bpf programs in direct-action mode, assembled in Python
  (fabric/fastpath_prog.py, kernel/bpf.py: no compiler on the node). `podnet_out` on
  the ingress of every pod's host veth sends a packet for a peer's block straight to
  the fabric's device (vxlan: pnvx0; host-gw: the underlay NIC) with
  bpf_redirect_neigh; `podnet_in` on that device's ingress hands a packet for one of
  this node's pods straight to the pod with bpf_redirect_peer. Both decrement the TTL,
  as a router does. Anything else returns TC_ACT_OK: the kernel path, unchanged.
- NAT stays right: a packet to a ClusterIP is in no peer's block, so it leaves through
  the kernel (DNAT, conntrack); the answer comes back to a node whose conntrack knows
  the flow, and `podnet_in` asks conntrack (bpf_skb_ct_lookup, a kfunc found by its
  BTF id, kernel/btf.py) before taking a packet: a known flow stays on the kernel path,
  where its translation is undone. Flows the fast path carries from their first packet
  are never tracked. Without the kfunc (an older kernel) only `podnet_out` is loaded.
- Pods' addresses come from the kernel: the bridge's neighbour entries (address ->
  MAC, made when a pod first talks to its gateway or the node first forwards to it)
  and its FDB (MAC -> port). A pod the node has not met yet takes the kernel path
  until a pass after that (a few seconds); the kernel path is what makes the node meet
  it. An entry stays while the pod's veth does: the neighbour entry ages out, and the
  bridge stops learning the MAC once the pod's packets skip it.
- Policy: skipping the forward hook skips the node's policy. Both programs check a
  switch (an array map) first; it is on only while this node enforces no policy at
  all: the policy service calls `policy_enforced(True)` before it applies a table and
  `policy_enforced(False)` only when it knows there is none. It starts off, so a node
  fails closed to the kernel path. Not per pod: any policy turns it off for all pods
  of the node (every node holds the table once any policy exists).
- The vxlan fabric's tunnel in tc (`Tunnel`, fabric/fastpath_tunnel.py): on the vxlan
  fabric the pod veths carry `podnet_encap` instead of `podnet_out`, which writes the
  VXLAN header itself and sends the packet out of the underlay, and the underlay's
  ingress carries `podnet_decap`, which takes it off again and hands the inner packet
  to the pod. Both skip pnvx0 and the nodes' IP stacks for the outer header. The trie's
  value is then the peer's (`fastpath_tunnel.peer_value`, from the fabric's own
  route, neighbour and FDB entries); a block without one takes the kernel path.
- The maps and programs live in this process. A restarted agent loads new ones and
  replaces the filters (the old programs are freed with their last filter); deleting a
  pod's veth deletes its filter; `close` deletes the filters, then the programs.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from podnet.errors import KernelError
from podnet.fabric import fastpath_prog as prog
from podnet.fabric import fastpath_tunnel as tunnel_prog
from podnet.kernel import bpf, btf

log = logging.getLogger("podnet.fabric.fastpath")

MODES = ("kernel", "ebpf")
INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
EGRESS = 0xFFFFFFF3
PRIORITY = 1  # ahead of any filter someone else adds later
MAX_BLOCKS = 4096
MAX_PODS = 4096
MAP_TYPE_HASH = 1
NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT

# What the policy service last said (one agent process serves one node): a new FastPath
# starts held unless the policy service already knows this node enforces no policy.
_registry_lock = threading.Lock()
_policy_free = False
_active: FastPath | None = None


@dataclass(frozen=True)
class Tunnel:
    """The vxlan fabric's side of the tunnel in tc: this node's underlay link and
    address, its VTEP MAC, the fabric's UDP port and VNI."""

    underlay: str
    local: str
    vtep_mac: str
    port: int
    vni: int


@dataclass(frozen=True)
class TunnelPeer:
    """Where a peer's block goes through the tunnel: its underlay address, VTEP MAC."""

    underlay: str
    vtep_mac: str


def policy_enforced(enforced: bool) -> None:
    """The policy service's word: `True` before it applies a policy table (the fast
    path turns off at once), `False` when it knows the node has none."""
    global _policy_free
    with _registry_lock:
        _policy_free = not enforced
        active = _active
    if active is not None:
        active.hold() if enforced else active.release()


class FastPath:
    """The programs, their maps and the links they sit on, in the namespace of the
    thread that calls `sync` (the node's)."""

    def __init__(self, device: str | None, bridge: str | None, tunnel: Tunnel | None = None) -> None:
        self.device, self.bridge, self.tunnel = device, bridge, tunnel
        self.blocks: bpf.BpfMap | None = None
        self.pods: bpf.BpfMap | None = None
        self.switch: bpf.BpfMap | None = None
        self.out_fd = self.in_fd = -1
        self.attached: dict[int, str] = {}  # ifindex -> name of the pod veths carrying podnet_out
        self.device_index: int | None = None  # pnvx0, carrying podnet_in
        self.decap_fd = -1
        self.ct_kfuncs: tuple[int, int] | None = None  # BTF ids of bpf_skb_ct_lookup, bpf_ct_release
        self.decap_for: tuple[int, str] | None = None  # (underlay index, address) podnet_decap is on
        self.peers: dict[str, TunnelPeer] = {}  # tunnel mode: the peers' blocks' ends
        self.routed: set[str] = set()  # the peers' blocks in the trie
        self.local: dict[bytes, bytes] = {}  # the pods map's content
        self.error: str | None = None
        self.inbound = "not loaded"
        self._lock = threading.Lock()
        global _active
        with _registry_lock:
            self.held = not _policy_free  # off until the policy service says this node enforces no policy
            previous, _active = _active, self
        if previous is not None:  # a node that joined again: its filters are replaced by ours
            previous.close()

    # -- the policy switch (any thread)

    def hold(self) -> None:
        """Off now: this node is about to enforce policy (before its table is applied)."""
        with self._lock:
            self.held = True
            self._set_switch()

    def release(self) -> None:
        """On: this node enforces no policy."""
        with self._lock:
            self.held = False
            self._set_switch()

    def _set_switch(self) -> None:
        if self.switch is not None:
            self.switch.update(struct.pack("<I", 0), struct.pack("<I", 0 if self.held else 1))

    # -- the node thread

    def _load(self) -> None:
        self.switch = bpf.BpfMap(bpf.MAP_TYPE_ARRAY, 4, 4, 1)
        self._set_switch()
        if self.tunnel is None:
            self.blocks = bpf.BpfMap(bpf.MAP_TYPE_LPM_TRIE, 8, 4, MAX_BLOCKS, bpf.F_NO_PREALLOC)
            self.out_fd = bpf.load_program(prog.program_out(self.blocks.fd, self.switch.fd), prog.OUT)
        else:
            self.blocks = bpf.BpfMap(bpf.MAP_TYPE_LPM_TRIE, 8, tunnel_prog.PEER_VALUE_SIZE, MAX_BLOCKS,
                                     bpf.F_NO_PREALLOC)
            self.out_fd = bpf.load_program(tunnel_prog.program_encap(self.blocks.fd, self.switch.fd, self.tunnel.port,
                                                                     self.tunnel.vni), tunnel_prog.ENCAP)
        lookup, release = btf.function_id("bpf_skb_ct_lookup"), btf.function_id("bpf_ct_release")
        if lookup is None or release is None:
            self.inbound = "no bpf_skb_ct_lookup in this kernel: inbound packets take the kernel path"
            return
        self.ct_kfuncs = (lookup, release)
        self.pods = bpf.BpfMap(MAP_TYPE_HASH, 4, 16, MAX_PODS)
        self.in_fd = bpf.load_program(prog.program_in(self.pods.fd, self.switch.fd, lookup, release), prog.IN)
        self.inbound = "on"

    @property
    def out_name(self) -> str:
        return prog.OUT if self.tunnel is None else tunnel_prog.ENCAP

    def sync(self, ipr: IPRoute, blocks: Iterable[str], peers: Mapping[str, TunnelPeer] | None = None) -> None:
        """The trie holds exactly `blocks` (peers' IPv4 blocks via the fabric device;
        tunnel mode: those of them `peers` says where to send), the pods map this
        node's pods, and every link carries its program."""
        with self._lock:
            if self.device is None:
                return  # the fabric's setup names it
            try:
                if self.out_fd < 0:
                    self._load()
                links = ipr.get_links()
                index_of = {m.get("IFLA_IFNAME"): m["index"] for m in links}
                device = index_of.get(self.device)
                if device is None:
                    raise KernelError(f"fast path: device {self.device} does not exist")
                if self.tunnel is None:  # every value written again: the device's index may have changed
                    self._sync_blocks(dict.fromkeys(sorted(set(blocks)), struct.pack("<I", device)))
                else:
                    self.peers = dict(peers if peers is not None else self.peers)
                    self._sync_blocks(self._tunnel_values(index_of, set(blocks)))
                veths = self._pod_veths(links)
                for index, name in veths.items():
                    if self.attached.get(index) != name:
                        attach(ipr, index, self.out_fd, self.out_name)
                self.attached = veths
                if self.in_fd >= 0:
                    self._sync_pods(ipr, links)
                    if self.device_index != device:
                        attach(ipr, device, self.in_fd, prog.IN)
                        self.device_index = device
                    if self.tunnel is not None:
                        self._sync_decap(ipr, index_of)
                self.error = None
            except (KernelError, NetlinkError, OSError) as exc:
                error = f"{exc}" + (f": {exc.details}" if isinstance(exc, KernelError) and exc.details else "")
                if error != self.error:  # once per distinct text, not every pass
                    log.warning("fast path: %s (what it does not cover takes the kernel path)", error)
                self.error = error

    def _sync_blocks(self, values: Mapping[str, bytes]) -> None:
        """The trie holds exactly `values` (block -> its value)."""
        assert self.blocks is not None
        for block, value in values.items():
            self.blocks.update(prog.lpm_key(block), value)
        for block in self.routed - set(values):
            self.blocks.delete(prog.lpm_key(block))
        self.routed = set(values)

    def _underlay(self, index_of: Mapping[str | None, int]) -> int:
        assert self.tunnel is not None
        underlay = index_of.get(self.tunnel.underlay)
        if underlay is None:
            raise KernelError(f"fast path: underlay {self.tunnel.underlay} does not exist")
        return underlay

    def _tunnel_values(self, index_of: Mapping[str | None, int], blocks: set[str]) -> dict[str, bytes]:
        """Tunnel mode: each block with a peer -> `peer_value` (a malformed one is left
        to the kernel path, which refuses it too)."""
        assert self.tunnel is not None
        underlay, values = self._underlay(index_of), {}
        for block in sorted(blocks):
            peer = self.peers.get(block)
            if peer is None:
                continue
            try:
                values[block] = tunnel_prog.peer_value(underlay, self.tunnel.local, self.tunnel.vtep_mac,
                                                       peer.underlay, peer.vtep_mac)
            except ValueError as exc:
                log.warning("fast path: block %s takes the kernel path: %s", block, exc)
        return values

    def _sync_decap(self, ipr: IPRoute, index_of: Mapping[str | None, int]) -> None:
        """`podnet_decap` on the underlay, for this node's underlay address (a new
        address: a new program)."""
        assert self.tunnel is not None and self.pods is not None and self.switch is not None
        assert self.ct_kfuncs is not None  # (inbound is on)
        where = (self._underlay(index_of), self.tunnel.local)
        if self.decap_for == where:
            return
        fd = bpf.load_program(tunnel_prog.program_decap(self.pods.fd, self.switch.fd, *self.ct_kfuncs,
                                                        self.tunnel.local, self.tunnel.port, self.tunnel.vni),
                              tunnel_prog.DECAP)
        if self.decap_for is not None and self.decap_for[0] != where[0]:
            detach(ipr, self.decap_for[0])
        attach(ipr, where[0], fd, tunnel_prog.DECAP)
        if self.decap_fd >= 0:
            os.close(self.decap_fd)
        self.decap_fd, self.decap_for = fd, where

    def _bridge(self, links: list) -> Any:
        return next((m for m in links if m.get("IFLA_IFNAME") == self.bridge), None)

    def _pod_veths(self, links: list) -> dict[int, str]:
        bridge = self._bridge(links)
        if bridge is None:
            return {}
        return {m["index"]: m.get("IFLA_IFNAME") for m in links
                if m.get("IFLA_MASTER") == bridge["index"] and m.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "veth"}

    def _sync_pods(self, ipr: IPRoute, links: list) -> None:
        """address -> (host veth, pod MAC, gateway MAC) of every pod the bridge knows."""
        assert self.pods is not None
        bridge = self._bridge(links)
        # a pod keeps its entry while its veth is a port of ours: the neighbour entry ages
        # out, and the bridge stops learning the MAC once the pod's packets skip it
        want = {key: value for key, value in self.local.items()
                if struct.unpack_from("<I", value)[0] in self.attached}
        if bridge is not None and self.attached:
            port_of = {str(n.get("NDA_LLADDR")).lower(): n["ifindex"]
                       for n in ipr.get_neighbours(family=socket.AF_BRIDGE, master=bridge["index"])
                       if n.get("NDA_LLADDR") and n["ifindex"] in self.attached}
            gateway = str(bridge.get("IFLA_ADDRESS"))
            for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=bridge["index"]):
                mac = str(n.get("NDA_LLADDR") or "").lower()
                if n["state"] & NUD_VALID and mac in port_of and n.get("NDA_DST"):
                    want[prog.pod_key(str(n.get("NDA_DST")))] = prog.pod_value(port_of[mac], mac, gateway)
        for key, value in want.items():
            if self.local.get(key) != value:
                self.pods.update(key, value)
        for key in set(self.local) - set(want):
            self.pods.delete(key)
        self.local = want

    def close(self, ipr: IPRoute | None = None) -> None:
        """Filters off every link (when `ipr` is given: the node's namespace), then the
        programs and their maps."""
        with self._lock:
            if ipr is not None:
                for index in [*self.attached, *([self.device_index] if self.device_index else []),
                              *([self.decap_for[0]] if self.decap_for else [])]:
                    detach(ipr, index)
            self.attached, self.device_index, self.decap_for = {}, None, None
            for fd in (self.out_fd, self.in_fd, self.decap_fd):
                if fd >= 0:
                    os.close(fd)
            self.out_fd = self.in_fd = self.decap_fd = -1
            for m in (self.blocks, self.pods, self.switch):
                if m is not None:
                    m.close()
            self.blocks = self.pods = self.switch = None
            self.routed, self.local, self.peers = set(), {}, {}

    def status(self) -> dict[str, Any]:
        with self._lock:
            state = "error" if self.error else "off (this node enforces policy)" if self.held else "on"
            return {"mode": "ebpf", "state": state, "pods": len(self.attached), "blocks": len(self.routed),
                    "inbound": self.inbound, "known_pods": len(self.local),
                    "tunnel": self._tunnel_text(),
                    **({"error": self.error} if self.error else {})}

    def _tunnel_text(self) -> str:
        if self.tunnel is None:
            return "none"
        if self.decap_for is None:
            return f"encap in tc, decap by {self.device}"
        return f"in tc (encap on pod veths, decap on {self.tunnel.underlay})"


def attach(ipr: IPRoute, index: int, prog_fd: int, name: str) -> None:
    """Program `prog_fd` on the ingress of link `index` (clsact added if missing; an
    older program of ours is replaced)."""
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
    ipr.tc("replace-filter", "bpf", index, fd=prog_fd, name=name, parent=INGRESS, prio=PRIORITY,
           direct_action=True, handle=1)  # every protocol (pyroute2's default, ETH_P_ALL)


def detach(ipr: IPRoute, index: int) -> None:
    """Our filter off link `index`, and the clsact qdisc with it when nothing else is
    on it (gone already: nothing to do)."""
    try:
        ipr.tc("del-filter", "bpf", index, handle=1, parent=INGRESS, prio=PRIORITY)
        if not ipr.get_filters(index=index, parent=INGRESS) and not ipr.get_filters(index=index, parent=EGRESS):
            ipr.tc("del", "clsact", index)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise


def clear(ipr: IPRoute, device: str, bridge: str | None, underlay: str | None = None) -> list[str]:
    """Our programs off the bridge's ports, `device` and `underlay`, wherever an
    earlier agent left them (`--fastpath kernel` after `ebpf`: a left program would
    still skip policy); the links it cleared."""
    links = ipr.get_links()
    by_name = {m.get("IFLA_IFNAME"): m["index"] for m in links}
    bridge_index = by_name.get(bridge) if bridge else None
    candidates = [m["index"] for m in links if bridge_index is not None and m.get("IFLA_MASTER") == bridge_index]
    candidates += [by_name[name] for name in dict.fromkeys((device, underlay)) if name in by_name]
    ours = {prog.OUT, prog.IN, tunnel_prog.ENCAP, tunnel_prog.DECAP}
    cleared = []
    for index in candidates:
        if set(attached_programs(ipr, index)) & ours:
            detach(ipr, index)
            cleared.append(next(name for name, i in by_name.items() if i == index))
    return cleared


def attached_programs(ipr: IPRoute, index: int) -> list[str]:
    """Names of the bpf filters on link `index`'s ingress (tests, status)."""
    try:
        msgs = ipr.get_filters(index=index, parent=INGRESS)
    except NetlinkError:
        return []
    names = []
    for msg in msgs:
        opts = msg.get_attr("TCA_OPTIONS")
        if msg.get_attr("TCA_KIND") == "bpf" and opts is not None:
            names.append(opts.get_attr("TCA_BPF_NAME"))
    return names
