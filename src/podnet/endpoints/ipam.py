"""The IPAM of one request, behind one interface with two implementations.

- **built-in** (`ipam.type` podnet-ipam or podnet): IpamService over the network's
  store. It is `transactional`: ADD reserves in the same store transaction that writes
  the pending endpoint record, so both commit together (or neither does).
- **delegated** (any other `ipam.type`): the plugin of that name exec'd from CNI_PATH
  (cni/delegate.py) with the request's config. Never inside a store transaction: the
  store's write lock would be held while another process runs.

`ipam_for` chooses once per request. Both hand back typed addresses (IpamResult, a
delegate's JSON parsed once by ipam/result.py), which ADD keeps until skel writes the
reply.

Standard library only: podnet-ipam runs BuiltinIpam too.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack, suppress
from typing import Any, Protocol

from podnet.cni.config import CniCall, names_store, requested_ips
from podnet.cni.skel import CniRequest
from podnet.errors import (
    DelegateError,
    IncompatibleVersion,
    InvalidConfig,
    PluginNotAvailable,
    PodnetError,
)
from podnet.identity import NodeIdentity
from podnet.ipam.config import IpamConfig
from podnet.ipam.result import IpamResult, IPInterface, parse_result
from podnet.ipam.service import IpamService, gc_scope
from podnet.ipam.survey import Survey
from podnet.model.ipam import Reservation
from podnet.store.base import Store


class Ipam(Protocol):
    """The addresses of one attachment (the request's container ID and ifname)."""

    transactional: bool  # True: add() runs inside the caller's store transaction

    def prepare(self) -> None:
        """Before the store transaction add() runs in: read what add() starts from
        (ipam/survey.py), so the transaction reads only the keys it decides on."""
        ...

    def add(self, undo: ExitStack) -> IpamResult:
        """Addresses for the attachment; pushes onto `undo` what gives them back."""
        ...

    def confirm(self) -> None:
        """ADD finished: its addresses are no longer candidates for rollback."""
        ...

    def release(self) -> None:
        """Give the attachment's addresses back (idempotent)."""
        ...

    def check(self, addresses: tuple[IPInterface, ...]) -> None:
        """CHECK: the IPAM still holds what the runtime was given."""
        ...

    def forget(self, stale: CniRequest) -> None:
        """GC found a stale endpoint: release what its ADD reserved, if GC won't."""
        ...

    def gc(self, valid: set[tuple[str, str]]) -> list[str]:
        """Release every reservation of an attachment not in `valid`; what went."""
        ...

    def status(self) -> None:
        """STATUS: raise PluginNotAvailable (code 50) when no ADD could succeed."""
        ...


def ipam_for(call: CniCall, store: Store, identity: NodeIdentity | None = None) -> Ipam:
    """The IPAM the network's config names, chosen once for the whole request;
    `identity`: the node its reservations belong to (default: this machine's)."""
    if call.conf.builtin_ipam:
        return BuiltinIpam(store, call.conf.name, call.conf.ipam, call.request, identity)
    return DelegatedIpam(call.conf.ipam_type, call.request)


class BuiltinIpam:
    """IpamService for one attachment. `config` is the raw `ipam` section (parsed when
    an operation needs it: DEL never does) or an already parsed IpamConfig."""

    transactional = True

    def __init__(self, store: Store, network: str, config: IpamConfig | Mapping[str, Any],
                 request: CniRequest, identity: NodeIdentity | None = None) -> None:
        self.service = IpamService(store, identity=identity)
        self.network = network
        self.config = config
        self.request = request
        self._survey: Survey | None = None
        self._addresses: list[str] | None = None  # what add() reserved: confirm() reads them by key

    def reserve(self, ready: bool = False) -> IpamResult:
        """One address per range set (the requested ones if CNI_ARGS IP= or
        runtimeConfig.ips ask); `ready`: no pending phase (podnet-ipam's ADD)."""
        req = self.request
        look, self._survey = self._survey, None  # one look per attempt: a retry prepares again
        result = self.service.allocate(self.network, req.container_id, req.ifname, self.config,
                                       requested_ips(req.args, req.config), mark_ready=ready, look=look)
        self._addresses = [str(ip.address) for ip in result.ips]
        return result

    def prepare(self) -> None:
        req = self.request
        self._survey = self.service.survey(self.network, req.container_id, req.ifname, self.config)

    def add(self, undo: ExitStack) -> IpamResult:
        result = self.reserve()
        undo.callback(self.release)
        return result

    def confirm(self) -> None:
        self.service.mark_ready(self.network, self.request.container_id, self.request.ifname, self._addresses)

    def release(self) -> None:
        self.service.release(self.network, self.request.container_id, self.request.ifname)

    def held(self) -> list[Reservation]:
        return self.service.lookup(self.network, self.request.container_id, self.request.ifname)

    def check(self, addresses: tuple[IPInterface, ...]) -> None:
        held = {r.address for r in self.held()}
        missing = {str(ip.ip) for ip in addresses} - held
        if missing:
            raise PodnetError(f"IPAM holds no reservation for {', '.join(sorted(missing))}")

    def forget(self, stale: CniRequest) -> None:
        """Nothing: gc() releases the stale attachment's addresses with the rest."""

    def gc(self, valid: set[tuple[str, str]]) -> list[str]:
        # A store the config names may be shared by several nodes: judge only the
        # addresses of this config's ranges (other nodes' runtimes own the rest).
        within = gc_scope(self.config) if names_store(self.request.config) else None
        return [r.address for r in self.service.gc(self.network, valid, within)]

    def status(self) -> None:
        if self.service.free_count(self.network, self.config) <= 0:
            raise PluginNotAvailable(f"network {self.network} has no free address left")


class DelegatedIpam:
    """The `ipam.type` plugin, exec'd with the request's environment and config. An
    empty `plugin` (the config has no `ipam`) fails ADD and makes the rest no-ops."""

    transactional = False

    def __init__(self, plugin: str, request: CniRequest) -> None:
        self.plugin = plugin
        self.request = request

    def prepare(self) -> None:
        """Nothing: a delegate reads its own state."""

    def add(self, undo: ExitStack) -> IpamResult:
        if not self.plugin:
            raise InvalidConfig("the network has no 'ipam' section")
        raw = self._exec("ADD", self.request.env())
        undo.callback(self.release)
        try:
            return parse_result(raw, "result")
        except InvalidConfig as exc:
            raise DelegateError(f"IPAM plugin {self.plugin} returned an unusable {exc.msg}") from None

    def confirm(self) -> None:
        """Nothing: a delegate has no pending phase."""

    def release(self) -> None:
        if self.plugin:
            self._exec("DEL", {**self.request.env(), "CNI_COMMAND": "DEL"})

    def check(self, addresses: tuple[IPInterface, ...]) -> None:
        if self.plugin:
            self._exec("CHECK", self.request.env())

    def forget(self, stale: CniRequest) -> None:
        with suppress(PodnetError):
            DelegatedIpam(self.plugin, stale).release()

    def gc(self, valid: set[tuple[str, str]]) -> list[str]:
        """The delegate's own GC (it reads the valid attachments from the config)."""
        if self.plugin:
            try:
                self._exec("GC", {"CNI_COMMAND": "GC"})  # the whole network: no container
            except (DelegateError, IncompatibleVersion) as exc:
                if exc.code != 1:  # a delegate older than CNI 1.1 simply has no GC
                    raise
        return []

    def status(self) -> None:
        if self.plugin:
            try:
                self._exec("STATUS", {"CNI_COMMAND": "STATUS"})
            except DelegateError as exc:
                if exc.code != 1:
                    raise

    def _exec(self, command: str, env: Mapping[str, str]) -> dict | None:
        # Imported here: subprocess would cost podnet-ipam, which never delegates, ~3 ms
        # of start-up.
        from podnet.cni.delegate import exec_plugin

        return exec_plugin(self.plugin, command, env, self.request.config, self.request.path)
