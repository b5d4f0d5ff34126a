"""The CNI operations (ADD, DEL, CHECK, GC, STATUS) for the `podnet` plugin.

Runs inside the agent (warm) or inside the plugin process when no agent answers.
Every ADD first records a *pending* endpoint owned by this process, then builds with an
ExitStack that undoes each step if a later one fails, then marks the endpoint ready.
A crash between those points leaves a pending record whose owner is dead, which the
agent's resync rolls back (see agent/resync.py): no leaked address, link or rule.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, nullcontext, suppress
from typing import IO, TypeVar

from podnet import procs
from podnet.attach import ATTACH
from podnet.attach.base import AttachContext
from podnet.cni import skel
from podnet.cni.config import (
    DEFAULT_STORE,
    PodnetConf,
    names_store,
    parse_conf,
    requested_ips,
    store_path_for,
)
from podnet.cni.delegate import exec_plugin
from podnet.cni.skel import CniRequest
from podnet.cni.types import convert_result, normalize_result, version_result
from podnet.errors import (
    DelegateError,
    IncompatibleVersion,
    InvalidConfig,
    InvalidNetNS,
    PluginNotAvailable,
    PodnetError,
    StoreConflict,
)
from podnet.ipam.config import parse_ipam_config
from podnet.ipam.service import IpamService, gc_scope
from podnet.kernel import netns
from podnet.kernel.nft import Nft
from podnet.kernel.portmap import NatManager
from podnet.naming import attach_id
from podnet.store import open_store
from podnet.store.base import Store

_T = TypeVar("_T")
ENDPOINT_PREFIX = "endpoints/"
STORES_PREFIX = "meta/stores/"


def endpoint_key(network: str, container_id: str, ifname: str) -> str:
    return f"{ENDPOINT_PREFIX}{network}/{container_id}/{ifname}"


def attach_context(
    conf: PodnetConf,
    req: CniRequest,
    host_fd: int,
    container_fd: int | None,
    ips: tuple = (),
    gateways: tuple[str, ...] = (),
    routes: tuple[tuple[str, str | None], ...] = (),
) -> AttachContext:
    return AttachContext(
        conf=conf,
        container_id=req.container_id,
        ifname=req.ifname,
        netns_path=req.netns,
        attach_id=attach_id(conf.name, req.container_id, req.ifname),
        host_fd=host_fd,
        container_fd=container_fd,
        ips=ips,
        gateways=gateways,
        routes=routes,
    )


class CniService:
    """Stateless between calls except for warm stores; safe to call from many threads."""

    def __init__(
        self,
        default_store: str = DEFAULT_STORE,
        nat_factory: Callable[[], NatManager] | None = None,
        track_stores: bool = False,
    ) -> None:
        self.default_store = default_store
        self.track_stores = track_stores
        self._stores: dict[str, Store] = {}
        self._stores_lock = threading.Lock()
        self._nat_factory = nat_factory or (lambda: NatManager(Nft()))

    # -- plumbing ---------------------------------------------------------------------
    def store(self, path: str) -> Store:
        with self._stores_lock:
            store = self._stores.get(path)
            if store is None:
                store = self._stores[path] = open_store(path)
                if self.track_stores and path != self.default_store:
                    self._remember_store(path)
            return store

    def _remember_store(self, path: str) -> None:
        """The agent notes every store a network points it at (dataDir), so its next
        start-up resync also finds the endpoints kept there."""
        default = self._stores.get(self.default_store) or open_store(self.default_store)
        self._stores[self.default_store] = default
        key = STORES_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:16]
        if default.get(key) is None:
            default.put(key, json.dumps(path))

    def known_stores(self) -> list[str]:
        """The default store and every store it remembers."""
        paths = [self.default_store]
        for entry in self.store(self.default_store).list(STORES_PREFIX):
            path = json.loads(entry.value)
            if path not in paths and os.path.exists(path):
                paths.append(path)
        return paths

    def stores(self) -> dict[str, Store]:
        with self._stores_lock:
            return dict(self._stores)

    def nat(self) -> NatManager:
        """A NAT manager acting in the calling thread's namespace."""
        return self._nat_factory()

    def close(self) -> None:
        with self._stores_lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()

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

        def handler(req: CniRequest) -> dict | None:
            if req.command == "VERSION":
                return version_result(req.config.get("cniVersion"))
            with ExitStack() as fds:
                host = host_fd
                if host is None:
                    host = netns.current_netns_fd()
                    fds.callback(os.close, host)
                cont = container_fd
                if cont is not None:
                    netns.check_netns(cont, req.netns)
                else:
                    cont = _open_container_netns(req)
                    if cont is not None:
                        fds.callback(os.close, cont)
                return self.handle(req, host, cont)

        return skel.run(handler, environ, stdin, out)

    def handle(self, req: CniRequest, host_fd: int, container_fd: int | None) -> dict | None:
        conf = parse_conf(req.config)
        # Not on DEL: the runtime cleans up a refused ADD with the same config, and a
        # macvlan DEL never touches NAT anyway.
        if conf.port_mappings and conf.mode != "bridge" and req.command != "DEL":
            raise InvalidConfig("port mappings need mode 'bridge' (macvlan traffic bypasses the host)")
        store = self.store(store_path_for(req.config, self.default_store))
        if req.command == "ADD":
            return self.add(req, conf, store, host_fd, container_fd)
        if req.command == "DEL":
            self.delete(req, conf, store, host_fd, container_fd)
            return None
        if req.command == "CHECK":
            self.check(req, conf, store, host_fd, container_fd)
            return None
        if req.command == "GC":
            self.gc(req, conf, store, host_fd)
            return None
        if req.command == "STATUS":
            self.status(req, conf, store)
            return None
        raise InvalidConfig(f"unsupported command {req.command}")

    # -- IPAM ---------------------------------------------------------------------------
    def _ipam_add(self, req: CniRequest, conf: PodnetConf, store: Store, undo: ExitStack) -> dict:
        if conf.builtin_ipam:
            ipam = IpamService(store)
            result = ipam.allocate(
                conf.name,
                req.container_id,
                req.ifname,
                parse_ipam_config(conf.ipam),
                requested_ips(req.args, req.config),
            )
            undo.callback(ipam.release, conf.name, req.container_id, req.ifname)
            return normalize_result(result.as_cni())
        if not conf.ipam_type:
            raise InvalidConfig("the network has no 'ipam' section")
        raw = exec_plugin(conf.ipam_type, "ADD", req.env(), req.config, req.path)
        undo.callback(self._ipam_delegate_del, req, conf)
        return normalize_result(raw)

    def _ipam_delegate_del(self, req: CniRequest, conf: PodnetConf) -> None:
        exec_plugin(conf.ipam_type, "DEL", {**req.env(), "CNI_COMMAND": "DEL"}, req.config, req.path)

    def ipam_release(self, req: CniRequest, conf: PodnetConf, store: Store) -> None:
        if conf.builtin_ipam:
            IpamService(store).release(conf.name, req.container_id, req.ifname)
        elif conf.ipam_type:
            self._ipam_delegate_del(req, conf)

    # -- ADD ----------------------------------------------------------------------------
    def add(
        self,
        req: CniRequest,
        conf: PodnetConf,
        store: Store,
        host_fd: int,
        container_fd: int | None,
    ) -> dict:
        if container_fd is None:
            raise InvalidConfig("ADD needs a network namespace")
        key = endpoint_key(conf.name, req.container_id, req.ifname)
        aid = attach_id(conf.name, req.container_id, req.ifname)
        attacher = ATTACH[conf.mode]
        with ExitStack() as undo:
            record = {
                "state": "pending",
                "owner": procs.process_owner(),
                "attach_id": aid,
                "mode": conf.mode,
                "netns": req.netns,
                "host_netns": list(netns.identity(host_fd)),
                "config": req.config,
                "env": req.env(),
                "ts": time.time(),
            }
            # The pending record and the reservation commit together (one write), but
            # never hold the store's write lock while a delegated IPAM plugin runs.
            # A commit that lost to another node's write (a shared etcd store) wrote
            # nothing: it is run again, a few times, before the runtime hears code 11.
            for attempt in range(CONFLICT_RETRIES):
                step = ExitStack()
                try:
                    with store.transaction() if conf.builtin_ipam else nullcontext():
                        store.put(key, json.dumps(record))
                        step.callback(store.delete, key)
                        ipam = self._ipam_add(req, conf, store, step)
                except StoreConflict:
                    step.pop_all()  # nothing was written: nothing to undo
                    if not conf.builtin_ipam or attempt == CONFLICT_RETRIES - 1:
                        raise
                    _conflict_pause(attempt)
                    continue
                undo.enter_context(step.pop_all())
                break
            ips = tuple(ipaddress.ip_interface(ip["address"]) for ip in ipam["ips"])
            if not ips:
                raise InvalidConfig(f"IPAM plugin {conf.ipam_type} returned no address")
            gateways = tuple(ip.get("gateway") or "" for ip in ipam["ips"])
            ctx = attach_context(
                conf, req, host_fd, container_fd, ips, gateways, self._routes(conf, ipam, gateways, ips)
            )
            attached = attacher.add(ctx, undo)
            _fault_point("after-attach")
            nat = bool(conf.port_mappings or conf.ip_masq) and conf.mode == "bridge"
            if nat:
                manager = self.nat()
                with netns.entered(host_fd):
                    manager.add(conf.name, aid, list(ips), list(conf.port_mappings), conf.ip_masq, attached.host_if,
                                masq_exclude=conf.ip_masq_exclude)
                undo.callback(self._nat_remove, host_fd, conf.name, aid)
            result = {
                "interfaces": attached.interfaces,
                "ips": [
                    {**ip, "interface": attached.container_index} for ip in ipam["ips"]
                ],
                "routes": ipam.get("routes", []),
                "dns": dict(conf_dns(req.config)) or ipam.get("dns", {}),
            }
            record.update(
                state="ready",
                ips=[str(ip) for ip in ips],
                host_links=list(attacher.host_links(ctx)),
                nat=nat,
                result=result,
            )
            record.pop("owner")

            def commit() -> None:
                with store.transaction():
                    if conf.builtin_ipam:
                        IpamService(store).mark_ready(conf.name, req.container_id, req.ifname)
                    store.put(key, json.dumps(record))

            retry_conflicts(commit)
            undo.pop_all()
        return convert_result(result, conf.cni_version)

    def _routes(
        self, conf: PodnetConf, ipam: dict, gateways: tuple[str, ...], ips: tuple
    ) -> tuple[tuple[str, str | None], ...]:
        routes: list[tuple[str, str | None]] = []
        for route in ipam.get("routes", []) or []:
            dst = route["dst"]
            gw = route.get("gw")
            if gw is None and conf.mode == "bridge":
                version = ipaddress.ip_network(dst, strict=False).version
                gw = next((g for g, ip in zip(gateways, ips, strict=False) if g and ip.version == version), None)
            routes.append((dst, gw))
        if conf.is_default_gateway:
            have = {ipaddress.ip_network(d, strict=False) for d, _ in routes}
            for gw, ip in zip(gateways, ips, strict=False):
                default = "0.0.0.0/0" if ip.version == 4 else "::/0"
                if gw and ipaddress.ip_network(default) not in have:
                    routes.append((default, gw))
        return tuple(routes)

    def _nat_remove(self, host_fd: int, network: str, aid: str) -> None:
        manager = self.nat()
        with netns.entered(host_fd):
            manager.remove(network, aid)

    # -- DEL ----------------------------------------------------------------------------
    def delete(
        self,
        req: CniRequest,
        conf: PodnetConf,
        store: Store,
        host_fd: int,
        container_fd: int | None,
    ) -> None:
        """Idempotent: whatever is already gone is skipped, never an error."""
        key = endpoint_key(conf.name, req.container_id, req.ifname)
        entry = store.get(key)
        record = json.loads(entry.value) if entry else {}
        self.teardown(conf, req, record, host_fd, container_fd)
        retry_conflicts(self.ipam_release, req, conf, store)
        store.delete(key)

    def teardown(
        self,
        conf: PodnetConf,
        req: CniRequest,
        record: Mapping,
        host_fd: int,
        container_fd: int | None,
    ) -> None:
        """Remove the links and NAT rules of one attachment (not its addresses)."""
        aid = attach_id(conf.name, req.container_id, req.ifname)
        ATTACH[conf.mode].delete(attach_context(conf, req, host_fd, container_fd))
        # Without a record we cannot know whether rules exist; look, it is idempotent.
        if record.get("nat", True) and conf.mode == "bridge":
            self._nat_remove(host_fd, conf.name, aid)

    # -- CHECK --------------------------------------------------------------------------
    def check(
        self,
        req: CniRequest,
        conf: PodnetConf,
        store: Store,
        host_fd: int,
        container_fd: int | None,
    ) -> None:
        if conf.prev_result is None:
            raise InvalidConfig("CHECK needs prevResult")
        prev = normalize_result(conf.prev_result)
        ips = tuple(ipaddress.ip_interface(ip["address"]) for ip in prev["ips"])
        aid = attach_id(conf.name, req.container_id, req.ifname)
        ATTACH[conf.mode].check(attach_context(conf, req, host_fd, container_fd, ips))
        if conf.builtin_ipam:
            held = {r.address for r in IpamService(store).lookup(conf.name, req.container_id, req.ifname)}
            missing = {str(ip.ip) for ip in ips} - {str(a) for a in held}
            if missing:
                raise PodnetError(f"IPAM holds no reservation for {', '.join(sorted(missing))}")
        elif conf.ipam_type:
            exec_plugin(conf.ipam_type, "CHECK", req.env(), req.config, req.path)
        if conf.port_mappings:
            with netns.entered(host_fd):
                rules = self.nat().rules(conf.name)
            if not rules.get(aid):
                raise PodnetError("the port mapping rules of this container are missing")

    # -- GC -----------------------------------------------------------------------------
    def gc(self, req: CniRequest, conf: PodnetConf, store: Store, host_fd: int) -> dict:
        """Remove every attachment of this network not listed in valid-attachments:
        its links, rules and addresses. Returns what was removed (for logs/tests)."""
        valid = set(conf.valid_attachments or ())
        removed: dict[str, list] = {"endpoints": [], "addresses": [], "rules": []}
        # A store the config names (the cluster's, shared by every node) also holds
        # other nodes' attachments: judge only those built in the caller's namespace,
        # and only addresses inside this config's ranges.
        shared = names_store(req.config)
        me = list(netns.identity(host_fd)) if shared else None
        prefix = f"{ENDPOINT_PREFIX}{conf.name}/"
        for entry in store.list(prefix):
            cid, _, ifname = entry.key[len(prefix) :].partition("/")
            if (cid, ifname) in valid:
                continue
            record = json.loads(entry.value)
            if me is not None and record.get("host_netns") != me:
                continue
            if record.get("state") == "pending" and procs.owner_alive(record.get("owner", "")):
                continue  # an ADD in flight: not ours to judge yet
            stale = CniRequest(
                command="DEL", container_id=cid, ifname=ifname, netns=record.get("netns", ""),
                path=req.path, config=record.get("config", req.config),
            )
            with suppress(PodnetError):
                self.teardown(conf, stale, record, host_fd, None)
            if not conf.builtin_ipam and conf.ipam_type:
                with suppress(PodnetError):
                    self._ipam_delegate_del(stale, conf)
            store.delete(entry.key)
            removed["endpoints"].append((cid, ifname))
        if conf.builtin_ipam:
            within = gc_scope(parse_ipam_config(conf.ipam)) if shared else None
            released = retry_conflicts(IpamService(store).gc, conf.name, valid, within)
            removed["addresses"] = [str(a) for a in released]
        elif conf.ipam_type:
            try:
                exec_plugin(conf.ipam_type, "GC", {"CNI_COMMAND": "GC"}, req.config, req.path)
            except (DelegateError, IncompatibleVersion) as exc:
                if exc.code != 1:  # a delegate older than CNI 1.1 simply has no GC
                    raise
        if conf.mode == "bridge":
            keep = {attach_id(conf.name, cid, ifname) for cid, ifname in valid}
            with netns.entered(host_fd):
                removed["rules"] = sorted(self.nat().gc(conf.name, keep))
        return removed

    # -- STATUS -------------------------------------------------------------------------
    def status(self, req: CniRequest, conf: PodnetConf, store: Store) -> None:
        try:
            store.revision()
        except PodnetError as exc:
            raise PluginNotAvailable(f"the store is not usable: {exc.msg}") from None
        if conf.builtin_ipam:
            free = IpamService(store).free_count(conf.name, parse_ipam_config(conf.ipam))
            if free <= 0:
                raise PluginNotAvailable(f"network {conf.name} has no free address left")
        elif conf.ipam_type:
            try:
                exec_plugin(conf.ipam_type, "STATUS", {"CNI_COMMAND": "STATUS"}, req.config, req.path)
            except DelegateError as exc:
                if exc.code != 1:
                    raise


CONFLICT_RETRIES = 8


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


def conf_dns(raw: Mapping) -> Mapping:
    dns = raw.get("dns") or {}
    if not isinstance(dns, Mapping):
        raise InvalidConfig("'dns' must be an object")
    return dns
