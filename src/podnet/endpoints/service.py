"""The CNI operations (ADD, DEL, CHECK, GC, STATUS) for the `podnet` plugin.

Runs inside the agent (warm) or inside the plugin process when no agent answers.
Every ADD first records a *pending* endpoint owned by this process, then builds with an
ExitStack that undoes each step if a later one fails, then marks the endpoint ready.
A crash between those points leaves a pending record whose owner is dead, which the
agent's resync rolls back (see agent/resync.py): no leaked address, link or rule.

Every record and reservation names its node (podnet/identity.py): GC judges only this
node's, since a store may be shared by machines whose namespaces look alike. The
plugin's fallback notes every store it ADDs into beside the agent's socket
(endpoints/stores.py), so the agent finds the fallback's pods too.

One invocation is one pass (`run_invocation`):

```
CNI_* + stdin ─skel.read_request─> CniRequest ─parse_call─> CniCall (+ PodnetConf)
   ─execute─> ipam_for(call) once ─> add/delete/check/gc/status ─> AddResult | None
   ─skel.reply / skel.error_reply─> stdout, exit code
```
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from typing import IO, TypeVar

from podnet import keys
from podnet.attach import ATTACH
from podnet.cni import skel
from podnet.cni.config import (
    DEFAULT_STORE,
    HOST_ROUTED_MODES,
    CniCall,
    PodnetConf,
    conf_dns,
    parse_call,
)
from podnet.cni.skel import CniRequest
from podnet.endpoints import hostports
from podnet.endpoints import stores as registry
from podnet.endpoints.ipam import Ipam, ipam_for
from podnet.endpoints.result import AddResult, addressing, as_routed, attach_context, on_segment
from podnet.errors import (
    InvalidConfig,
    InvalidNetNS,
    PluginNotAvailable,
    PodnetError,
    StoreConflict,
)
from podnet.identity import NodeIdentity
from podnet.ipam.result import IpamResult, parse_addresses
from podnet.kernel import netns
from podnet.kernel.libnft import LibNft
from podnet.kernel.nat.manager import NatManager
from podnet.kernel.nftgen import ruleset_generation
from podnet.kernel.tombstone import Reaper
from podnet.model.base import CorruptRecord
from podnet.model.endpoint import PENDING, EndpointRecord
from podnet.naming import attach_id
from podnet.store import open_store
from podnet.store.base import Store

_T = TypeVar("_T")
CONFLICT_RETRIES = 8


class CniService:
    """Stateless between calls except for warm stores; safe to call from many threads.

    `identity`: the node whose records it writes and judges (default: this machine,
    no node name). `agent_socket`: the agent this service is, or stands in for; beside
    its socket is the registry of stores (endpoints/stores.py), where the plugin's
    fallback notes every store it ADDs into and which the agent (`track_stores`: it
    remembers every store in its own) reads at start-up. `reaper`: the agent's; DEL
    then retires a pod's veth pair and deletes it just after (kernel/tombstone.py);
    without one (the plugin's fallback, which exits at once) DEL deletes it itself.
    `keep_nat`: the agent's; its NAT manager keeps what it read of the NAT tables
    between ADDs (kernel/nat/manager.py). A process per call gains nothing from it,
    and the netlink socket it asks on would cost its exit a few ms."""

    def __init__(
        self,
        default_store: str = DEFAULT_STORE,
        nat_factory: Callable[[], NatManager] | None = None,
        track_stores: bool = False,
        identity: NodeIdentity | None = None,
        agent_socket: str | None = None,
        wrap_store: Callable[[Store], Store] | None = None,
        reaper: Reaper | None = None,
        keep_nat: bool = False,
    ) -> None:
        self.default_store = default_store
        self.reaper = reaper
        self.track_stores = track_stores
        self.identity = identity or NodeIdentity.local()
        self.store_registry = registry.registry_for(agent_socket) if agent_socket else None
        self._stores: dict[str, Store] = {}
        self._stores_lock = threading.Lock()
        if nat_factory is None:  # one libnftables for every ADD: no `nft` process per call (issue 19)
            shared = NatManager(LibNft(), generation=ruleset_generation if keep_nat else None)
            nat_factory = lambda: shared  # noqa: E731 - one manager: it remembers what it read (nat/manager.py)
        self._nat_factory = nat_factory
        self._wrap_store = wrap_store  # the agent's: time every store call (agent/store_metrics.py)
        # told of each new attachment before its ADD returns: (store, key, record); must not raise
        self.after_add: list[Callable[[str, str, EndpointRecord], None]] = []  # (agent/pod_policy.py)

    def _open(self, path: str) -> Store:
        store = open_store(path)
        return store if self._wrap_store is None else self._wrap_store(store)

    # -- plumbing ---------------------------------------------------------------------
    def store(self, path: str) -> Store:
        with self._stores_lock:
            store = self._stores.get(path)
            if store is None:
                store = self._stores[path] = self._open(path)
                if self.track_stores and path != self.default_store:
                    self._remember_store(path)
            return store

    def _remember_store(self, path: str) -> None:
        """The agent notes every store a network points it at (dataDir), so its next
        start-up resync also finds the endpoints kept there."""
        default = self._stores.get(self.default_store) or self._open(self.default_store)
        self._stores[self.default_store] = default
        registry.remember(default, path)

    def known_stores(self) -> list[str]:
        """Every store that may hold this machine's endpoints (endpoints/stores.py)."""
        return registry.known(self.store(self.default_store), self.default_store, self.store_registry,
                            remember_noted=self.track_stores)

    def host_netns(self, fd: int) -> tuple[int, int]:
        """The (dev, inode) that records carry for the namespace `fd`."""
        return self.identity.netns_override or netns.identity(fd)

    def owns(self, record: EndpointRecord, host_netns: tuple[int, int] | None) -> bool:
        """Is an endpoint record this node's to judge (GC, repair, roll back)? Never
        another node's; this node's (or one of before, with no node) only when built
        in `host_netns` (None: whichever namespace)."""
        if not self.identity.owns(record.node):
            return False
        return host_netns is None or record.host_netns == host_netns

    def stores(self) -> dict[str, Store]:
        with self._stores_lock:
            return dict(self._stores)

    def nat(self) -> NatManager:
        """A NAT manager acting in the calling thread's namespace."""
        return self._nat_factory()

    def close(self) -> None:
        if self.reaper is not None:
            self.reaper.stop()  # the tombstones left are deleted now
        with self._stores_lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()

    # -- one invocation ---------------------------------------------------------------
    def run_invocation(
        self,
        environ: Mapping[str, str],
        stdin: bytes,
        out: IO[str],
        host_fd: int | None,
        container_fd: int | None,
    ) -> int:
        """One plugin invocation, from raw CNI_* environment and stdin to what the plugin
        prints and its exit code. `host_fd`/`container_fd` are the caller's namespace and
        the one it opened from CNI_NETNS (None: open here)."""
        try:
            request = skel.read_request(environ, stdin)
            result = None
            if request.command != "VERSION":
                busy = self.reaper.request() if self.reaper is not None else nullcontext()
                with busy, _namespaces(request, host_fd, container_fd) as (host, container):
                    result = self.execute(parse_call(request, self.default_store), host, container)
            code, text = skel.reply(request, result)
        except Exception as exc:  # noqa: BLE001 - the edge: skel reports it as spec error JSON
            code, text = skel.error_reply(exc, stdin)
        out.write(text)
        return code

    def execute(self, call: CniCall, host_fd: int, container_fd: int | None) -> AddResult | None:
        """Dispatch one parsed call; only ADD has a result."""
        store = self.store(call.store)
        ipam = ipam_for(call, store, self.identity)
        command = call.request.command
        if command == "ADD":
            return self.add(call, store, ipam, host_fd, container_fd)
        if command == "DEL":
            self.delete(call, store, ipam, host_fd, container_fd)
        elif command == "CHECK":
            self.check(call, ipam, host_fd, container_fd)
        elif command == "GC":
            self.gc(call, store, ipam, host_fd)
        elif command == "STATUS":
            self.status(store, ipam)
        else:
            raise InvalidConfig(f"unsupported command {command}")
        return None

    # -- ADD ----------------------------------------------------------------------------
    def add(self, call: CniCall, store: Store, ipam: Ipam, host_fd: int, container_fd: int | None) -> AddResult:
        req, conf = call.request, call.conf
        if container_fd is None:
            raise InvalidConfig("ADD needs a network namespace")
        key = keys.endpoint(conf.name, req.container_id, req.ifname)
        aid = attach_id(conf.name, req.container_id, req.ifname)
        attacher = ATTACH[conf.mode]
        if self.store_registry and not self.track_stores:  # the fallback: tell the agent
            registry.note(self.store_registry, call.store)
        with ExitStack() as undo:
            pending = EndpointRecord(
                state=PENDING, owner=self.identity.owner(), attach_id=aid, mode=conf.mode, netns=req.netns,
                host_netns=self.host_netns(host_fd), config=req.config, env=req.env(), ts=time.time(),
                node=self.identity.node,
            )
            addresses = _write_pending(store, key, pending, ipam, undo)
            if conf.mode == "routed":
                addresses = as_routed(addresses)
            elif conf.segments:
                for subnet, router in conf.segments:
                    addresses = on_segment(addresses, subnet, router)
            if not addresses.ips:
                raise InvalidConfig(f"IPAM plugin {conf.ipam_type} returned no address")
            hostports.claim(call, store, self.identity.node, undo)  # a node port of the cluster refuses
            ctx = attach_context(conf, req, host_fd, container_fd, *addressing(conf, addresses))
            attached = attacher.add(ctx, undo)
            _fault_point("after-attach")
            nat = bool(conf.port_mappings or conf.ip_masq) and conf.mode in HOST_ROUTED_MODES
            if nat:
                manager = self.nat()
                with netns.entered(host_fd):
                    manager.add(conf.name, aid, list(ctx.ips), list(conf.port_mappings), conf.masq_families,
                                attached.host_if, masq_exclude=conf.ip_masq_exclude)
                undo.callback(self._nat_remove, host_fd, conf.name, aid)
            result = AddResult(attached, addresses, dict(conf_dns(req.config, req.args)) or addresses.dns)
            ready = pending.ready(tuple(str(ip) for ip in ctx.ips), attacher.host_links(ctx), nat, result.as_cni())

            def commit() -> None:
                with store.transaction():
                    ipam.confirm()
                    store.put(key, ready.encode())

            retry_conflicts(commit)
            undo.pop_all()
        for hook in self.after_add:
            hook(call.store, key, ready)
        return result

    def _nat_remove(self, host_fd: int, network: str, aid: str) -> None:
        manager = self.nat()
        with netns.entered(host_fd):
            manager.remove(network, aid)

    # -- DEL ----------------------------------------------------------------------------
    def delete(self, call: CniCall, store: Store, ipam: Ipam, host_fd: int, container_fd: int | None) -> None:
        """Idempotent: whatever is already gone is skipped, never an error. With the
        agent's reaper, the pod's veth pair is retired (gone from the container's and
        the host's view, names and addresses free) rather than deleted before DEL
        answers; its deletion follows on the reaper's thread (kernel/tombstone.py)."""
        conf, req = call.conf, call.request
        key = keys.endpoint(conf.name, req.container_id, req.ifname)
        entry = store.get(key)
        record = read_record(entry.value) if entry else None
        self.teardown(conf, req, record, host_fd, container_fd, self.reaper)
        retry_conflicts(ipam.release)
        hostports.release(call, store, record)  # before the record: a holder without one is garbage
        store.delete(key)

    def teardown(
        self,
        conf: PodnetConf,
        req: CniRequest,
        record: EndpointRecord | None,
        host_fd: int,
        container_fd: int | None,
        reaper: Reaper | None = None,
    ) -> None:
        """Remove the links and NAT rules of one attachment (not its addresses); with
        a `reaper`, a veth pair is retired now and deleted just after."""
        aid = attach_id(conf.name, req.container_id, req.ifname)
        ATTACH[conf.mode].delete(attach_context(conf, req, host_fd, container_fd), reaper)
        # Without a record (or while pending) we cannot know whether rules exist; look,
        # it is idempotent.
        if (record is None or record.nat is not False) and conf.mode in HOST_ROUTED_MODES:
            self._nat_remove(host_fd, conf.name, aid)

    # -- CHECK --------------------------------------------------------------------------
    def check(self, call: CniCall, ipam: Ipam, host_fd: int, container_fd: int | None) -> None:
        conf, req = call.conf, call.request
        if conf.prev_result is None:
            raise InvalidConfig("CHECK needs prevResult")
        ips = tuple(ip.ip_interface for ip in parse_addresses(conf.prev_result, "prevResult"))
        ATTACH[conf.mode].check(attach_context(conf, req, host_fd, container_fd, ips))
        ipam.check(ips)
        if conf.port_mappings:
            with netns.entered(host_fd):
                rules = self.nat().rules(conf.name)
            if not rules.get(attach_id(conf.name, req.container_id, req.ifname)):
                raise PodnetError("the port mapping rules of this container are missing")

    # -- GC -----------------------------------------------------------------------------
    def gc(self, call: CniCall, store: Store, ipam: Ipam, host_fd: int) -> dict[str, list]:
        """Remove every attachment of this network not listed in valid-attachments:
        its links, rules and addresses. Returns what was removed (for logs/tests)."""
        conf, req = call.conf, call.request
        valid = set(conf.valid_attachments or ())
        removed: dict[str, list] = {"endpoints": [], "addresses": [], "rules": []}
        # Another node's attachments are its runtime's to judge. A store the config
        # names (the cluster's, shared by every node) may also hold records of before
        # (no node) of other nodes: there, judge only those built in the caller's
        # namespace, and only addresses inside this config's ranges.
        me = self.host_netns(host_fd) if call.shared_store else None
        for entry in store.list(keys.endpoints(conf.name)):
            _network, cid, ifname = keys.parse_endpoint(entry.key)
            if (cid, ifname) in valid:
                continue
            record = read_record(entry.value)
            if record is None or not self.owns(record, me):
                continue  # unreadable, or another node's: not ours to judge
            if record.pending and self.identity.owner_alive(record.owner):
                continue  # an ADD in flight: not ours to judge yet
            stale = teardown_request(cid, ifname, record, req.path, record.config or req.config)
            with suppress(PodnetError):
                self.teardown(conf, stale, record, host_fd, None)
            ipam.forget(stale)
            store.delete(entry.key)
            removed["endpoints"].append((cid, ifname))
        removed["addresses"] = retry_conflicts(ipam.gc, valid)
        removed["ports"] = hostports.prune(call, store)
        if conf.mode in HOST_ROUTED_MODES:
            keep = {attach_id(conf.name, cid, ifname) for cid, ifname in valid}
            with netns.entered(host_fd):
                removed["rules"] = sorted(self.nat().gc(conf.name, keep))
        return removed

    # -- STATUS -------------------------------------------------------------------------
    def status(self, store: Store, ipam: Ipam) -> None:
        try:
            store.revision()
        except PodnetError as exc:
            raise PluginNotAvailable(f"the store is not usable: {exc.msg}") from None
        ipam.status()


def read_record(text: str) -> EndpointRecord | None:
    """A stored endpoint record; None when it is corrupt (DEL then removes what the
    attachment's names derive, GC and resync leave it alone)."""
    try:
        return EndpointRecord.decode(text)
    except CorruptRecord:
        return None


def teardown_request(cid: str, ifname: str, record: EndpointRecord, path: tuple[str, ...],
                     config: Mapping) -> CniRequest:
    """A DEL of a recorded attachment, for GC and the agent's resync."""
    return CniRequest(command="DEL", container_id=cid, ifname=ifname, netns=record.netns, path=path, config=config)


def _write_pending(store: Store, key: str, pending: EndpointRecord, ipam: Ipam, undo: ExitStack) -> IpamResult:
    """The pending record and the reservation commit together (one write), but never
    hold the store's write lock while a delegated IPAM plugin runs. The IPAM surveys
    the network first, outside the transaction (ipam/survey.py), so the commit checks
    only the keys it decided on. A commit that lost to another node's write (a shared
    etcd store) wrote nothing: it is run again, a few times, before the runtime hears
    code 11. A node's own ADDs to one store survey and commit one at a time (as
    Calico's host-wide IPAM lock does): together they would pick the same next free
    address, and eight at once on etcd ran out of retries about once in 45 runs
    (tests/unit/test_ipam_shared_etcd.py)."""
    for attempt in range(CONFLICT_RETRIES):
        step = ExitStack()
        try:
            with _ipam_turn(store) if ipam.transactional else nullcontext():
                ipam.prepare()
                with store.transaction() if ipam.transactional else nullcontext():
                    store.put(key, pending.encode())
                    step.callback(store.delete, key)
                    addresses = ipam.add(step)
        except StoreConflict:
            step.pop_all()  # nothing was written: nothing to undo
            if not ipam.transactional or attempt == CONFLICT_RETRIES - 1:
                raise
            _conflict_pause(attempt)
            continue
        except BaseException:
            step.close()  # a delegated IPAM failed after the record was written: remove it
            raise
        undo.enter_context(step.pop_all())
        return addresses
    raise AssertionError("unreachable")


_IPAM_TURNS: weakref.WeakKeyDictionary[Store, threading.Lock] = weakref.WeakKeyDictionary()
_IPAM_TURNS_LOCK = threading.Lock()


def _ipam_turn(store: Store) -> threading.Lock:
    """This process's lock for IPAM writes to `store` (one per store object: one per
    node; a store shared by several nodes still settles their races by conflicts)."""
    with _IPAM_TURNS_LOCK:
        turn = _IPAM_TURNS.get(store)
        if turn is None:
            turn = _IPAM_TURNS[store] = threading.Lock()
        return turn


def _conflict_pause(attempt: int) -> None:
    time.sleep(random.uniform(0.002, 0.02) * (attempt + 1))


def retry_conflicts(fn: Callable[..., _T], *args: object) -> _T:
    """Run a store transaction again when it lost to a concurrent writer (StoreConflict:
    nothing was written); after CONFLICT_RETRIES the conflict (code 11) is raised."""
    for attempt in range(CONFLICT_RETRIES):
        try:
            return fn(*args)
        except StoreConflict:
            if attempt == CONFLICT_RETRIES - 1:
                raise
            _conflict_pause(attempt)
    raise AssertionError("unreachable")


@contextmanager
def _namespaces(req: CniRequest, host_fd: int | None, container_fd: int | None) -> Iterator[tuple[int, int | None]]:
    """The caller's namespace and the container's: the fds the agent received, or
    opened here (and closed after) in the plugin's fallback."""
    with ExitStack() as fds:
        host = host_fd
        if host is None:
            host = netns.current_netns_fd()
            fds.callback(os.close, host)
        container = container_fd
        if container is not None:
            netns.check_netns(container, req.netns)
        else:
            container = _open_container_netns(req)
            if container is not None:
                fds.callback(os.close, container)
        yield host, container


def _open_container_netns(req: CniRequest) -> int | None:
    """The container namespace; a missing one is an error except for DEL (idempotent)."""
    if not req.netns:
        return None
    try:
        return netns.open_netns(req.netns)
    except InvalidNetNS:
        if req.command == "ADD" or req.command == "CHECK":
            raise
        return None


def _fault_point(name: str) -> None:
    """Crash-consistency tests stop the process here: PODNET_FAULT=<name>:<seconds>
    makes ADD sleep at that point so a test can kill -9 the agent mid-ADD."""
    fault = os.environ.get("PODNET_FAULT", "")
    point, _, seconds = fault.partition(":")
    if point == name:
        time.sleep(float(seconds or 30))
