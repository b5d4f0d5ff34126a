"""The `podnet` plugin's network configuration, parsed and validated (pure).

Field names follow the reference plugins (bridge: bridge, isGateway, isDefaultGateway,
ipMasq, mtu, hairpinMode; macvlan: master, mode, mtu) so an existing conflist only needs
its `type` changed; podnet adds `gsoMaxSize` (kernel/gso.py) and, for macvlan, `vlan`
(the children sit on the sub-interface `<master>.<vlan>`, kernel/vlan.py). `parse_call`
turns one request into a CniCall: the request and its config, each parsed once, and
where the network's state lives. Standard library only.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from podnet import addresses
from podnet.cni.gokeys import go_field
from podnet.defaults import DEFAULT_STORE
from podnet.errors import DecodingFailure, InvalidConfig
from podnet.naming import is_ifname
from podnet.rpc.wire import DEFAULT_SOCKET

TYPE_CHECKING = False
if TYPE_CHECKING:
    from podnet.cni.skel import CniRequest

DEFAULT_BRIDGE = "podnet0"
MODES = ("bridge", "routed", "macvlan")
HOST_ROUTED_MODES = ("bridge", "routed")  # traffic passes the node's stack: NAT and port mappings work
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")
MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")
# Our own IPAM answers to these type names without exec'ing anything.
BUILTIN_IPAM = frozenset({"podnet-ipam", "podnet"})


@dataclass(frozen=True)
class PodnetConf:
    cni_version: str
    name: str
    mode: str = "bridge"
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = True
    is_default_gateway: bool = False
    ip_masq: bool = False
    ip_masq_exclude: tuple[str, ...] = ()  # destinations never masqueraded (the cluster CIDR)
    ip_masq_ipv6: bool = False  # `ipMasqIPv6`: IPv6 masqueraded too (default: as ipMasq)
    mtu: int | None = None
    gso_max_size: int | None = None  # instead of the GSO limit detected from the uplink
    gso_max_size_ipv6: int | None = None  # `gsoMaxSizeIPv6`: the pod's IPv6 GSO at most this
    hairpin_mode: bool = False
    master: str | None = None
    macvlan_mode: str = "bridge"
    vlan: int | None = None  # macvlan on the 802.1Q sub-interface <master>.<vlan>
    segments: tuple[tuple[str, str], ...] = ()  # macvlan: (on-link subnet, its router) per family, fabric/macvlan.py
    ipam: Mapping = field(default_factory=dict)
    agent_socket: str = DEFAULT_SOCKET
    port_mappings: tuple[Mapping, ...] = ()
    prev_result: Mapping | None = None
    valid_attachments: tuple[tuple[str, str], ...] | None = None

    @property
    def masq_families(self) -> tuple[str, ...]:
        """The nft families ipMasq masquerades: both, or IPv4 alone when `ipMasqIPv6` is
        false (a dual-stack cluster's default: IPv6 pod addresses are routed, not NATed)."""
        if not self.ip_masq:
            return ()
        return ("ip", "ip6") if self.ip_masq_ipv6 else ("ip",)

    @property
    def builtin_ipam(self) -> bool:
        return self.ipam.get("type") in BUILTIN_IPAM

    @property
    def ipam_type(self) -> str:
        return str(self.ipam.get("type", ""))


def _bool(raw: Mapping, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise InvalidConfig(f"'{key}' must be true or false, got {value!r}")
    return value


def _str(raw: Mapping, key: str, default: str | None) -> str | None:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise InvalidConfig(f"'{key}' must be a string, got {value!r}")
    return value


def _ifname(value: str, key: str) -> str:
    if not is_ifname(value):
        raise InvalidConfig(f"'{key}' {value!r} is not a valid interface name (1-15 bytes)")
    return value


def _mtu(raw: Mapping) -> int | None:
    mtu = raw.get("mtu")
    if mtu is None or mtu == 0:
        return None
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise InvalidConfig(f"'mtu' must be an integer between 68 and 65535, got {mtu!r}")
    return mtu


def _gso_max_size(raw: Mapping, key: str = "gsoMaxSize") -> int | None:
    """podnet's `gsoMaxSize`: the pods' GSO/GRO limit instead of the uplink's (kernel/gso.py);
    `gsoMaxSizeIPv6`: a cap on the pod's own IPv6 GSO only (a cluster node's pods:
    a forwarding node refuses IPv6 BIG TCP packets a pod sends, measured)."""
    size = raw.get(key)
    if size is None or size == 0:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or not 16384 <= size <= 524280:
        # below 64 KiB: an egress that takes less, e.g. the gossip fabric's sleeve TUN (62 KiB)
        raise InvalidConfig(f"'{key}' must be an integer between 16384 and 524280, got {size!r}")
    return size


def _vlan(raw: Mapping, attach: str) -> int | None:
    """macvlan's `vlan`: an 802.1Q id (1-4094; 0 and 4095 are reserved)."""
    vlan = raw.get("vlan")
    if vlan is None:
        return None
    if not isinstance(vlan, int) or isinstance(vlan, bool) or not 1 <= vlan <= 4094:
        raise InvalidConfig(f"'vlan' must be an integer between 1 and 4094, got {vlan!r}")
    if attach != "macvlan":
        raise InvalidConfig(f"'vlan' applies to macvlan networks only, not mode {attach!r}")
    return vlan


def _segments(raw: Mapping, attach: str) -> tuple[tuple[str, str], ...]:
    """macvlan's `segment` {subnet, gateway}, or a list of them, one per family (a
    dual-stack pod segment): the L2 prefix pods sit on (the IPAM's address of that
    family gets its prefix length, whichever block it came from) and its router."""
    segment = raw.get("segment")
    if segment is None:
        return ()
    if attach != "macvlan":
        raise InvalidConfig(f"'segment' applies to macvlan networks only, not mode {attach!r}")
    items = segment if isinstance(segment, list) else [segment]
    out = tuple(_segment(item, f"'segment[{i}]'" if isinstance(segment, list) else "'segment'")
                for i, item in enumerate(items))
    if len({ipaddress.ip_network(subnet).version for subnet, _ in out}) != len(out):
        raise InvalidConfig("'segment': at most one segment per IP family")
    return out


def _segment(segment: object, where: str) -> tuple[str, str]:
    if not isinstance(segment, Mapping):
        raise InvalidConfig(f"{where} must be an object with 'subnet' and 'gateway', got {segment!r}")
    try:
        subnet = ipaddress.ip_network(str(segment.get("subnet")))
    except ValueError as exc:
        raise InvalidConfig(f"{where[:-1]}.subnet': {exc}") from None
    try:
        gateway = ipaddress.ip_address(str(segment.get("gateway")))
    except ValueError as exc:
        raise InvalidConfig(f"{where[:-1]}.gateway': {exc}") from None
    if gateway not in subnet:
        raise InvalidConfig(f"{where[:-1]}.gateway' {gateway} is outside {where[:-1]}.subnet' {subnet}")
    return str(subnet), str(gateway)


def _cidrs(raw: Mapping, key: str) -> tuple[str, ...]:
    """A list of CIDRs, normalised (host bits must be zero: a typo is not a network)."""
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidConfig(f"'{key}' must be a list of CIDR strings, got {value!r}")
    try:
        return tuple(str(ipaddress.ip_network(addresses.refuse_scope(v, f"'{key}'"))) for v in value)
    except ValueError as exc:
        raise InvalidConfig(f"'{key}': {exc}") from None


def _runtime_config(raw: Mapping) -> Mapping:
    """The config's runtimeConfig (the capabilities a runtime sent). Its key and the
    capability names in it match as in the reference plugins (Go: case-insensitively,
    cni/gokeys.py); containerd's entries are {"HostPort": ...}."""
    runtime = go_field(raw, "runtimeConfig") or {}
    if not isinstance(runtime, Mapping):
        raise DecodingFailure("'runtimeConfig' must be an object")
    return runtime


def _port_mappings(raw: Mapping) -> tuple[Mapping, ...]:
    """The raw entries; kernel/nat/parse.py validates them (keys in any case, as Go)."""
    mappings = go_field(_runtime_config(raw), "portMappings") or []
    if not isinstance(mappings, list) or not all(isinstance(m, Mapping) for m in mappings):
        raise InvalidConfig("runtimeConfig.portMappings must be a list of objects")
    return tuple(mappings)


def _valid_attachments(raw: Mapping) -> tuple[tuple[str, str], ...] | None:
    if "cni.dev/valid-attachments" not in raw:
        return None
    items = raw["cni.dev/valid-attachments"]
    if not isinstance(items, list):
        raise DecodingFailure("'cni.dev/valid-attachments' must be a list")
    out = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("containerID"), str):
            raise DecodingFailure(f"invalid entry in cni.dev/valid-attachments: {item!r}")
        ifname = item.get("ifname", "")
        if not isinstance(ifname, str):
            raise DecodingFailure(f"invalid ifname in cni.dev/valid-attachments: {item!r}")
        out.append((item["containerID"], ifname))
    return tuple(out)


def _attachment_kind(raw: Mapping) -> tuple[str, str]:
    """(attachment, macvlan mode). `mode` names the attachment ("bridge" default,
    "routed": a /32 pod behind its own veth, attach/routed.py, "macvlan"), except in a macvlan config copied from the reference plugin, which has
    a `master` and uses `mode` for the macvlan mode."""
    mode = _str(raw, "mode", None)
    macvlan_mode = _str(raw, "macvlanMode", "bridge") or "bridge"
    if "master" in raw and mode in MACVLAN_MODES:
        return "macvlan", mode
    attach = mode or ("macvlan" if "master" in raw else "bridge")
    if attach not in MODES:
        raise InvalidConfig(f"unknown mode {attach!r}", f"podnet supports: {', '.join(MODES)}")
    if attach == "macvlan" and macvlan_mode not in MACVLAN_MODES:
        raise InvalidConfig(
            f"unknown macvlan mode {macvlan_mode!r}", f"expected one of {', '.join(MACVLAN_MODES)}"
        )
    return attach, macvlan_mode


def parse_conf(raw: Mapping) -> PodnetConf:
    """Validate a podnet plugin config; raise InvalidConfig/DecodingFailure with the field."""
    attach, macvlan_mode = _attachment_kind(raw)
    ipam = raw.get("ipam") or {}
    if not isinstance(ipam, Mapping):
        raise DecodingFailure("'ipam' must be an object")
    if ipam and not isinstance(ipam.get("type"), str):
        raise InvalidConfig("'ipam.type' is required when 'ipam' is given")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, Mapping):
        raise DecodingFailure("'prevResult' must be an object")
    master = _str(raw, "master", None)
    port_mappings = _port_mappings(raw)
    return PodnetConf(
        cni_version=str(raw["cniVersion"]),
        name=str(raw["name"]),
        mode=attach,
        bridge=_ifname(_str(raw, "bridge", DEFAULT_BRIDGE) or DEFAULT_BRIDGE, "bridge"),
        is_gateway=_bool(raw, "isGateway", True) or _bool(raw, "isDefaultGateway", False),
        is_default_gateway=_bool(raw, "isDefaultGateway", False),
        ip_masq=_bool(raw, "ipMasq", False),
        ip_masq_exclude=_cidrs(raw, "ipMasqExclude"),
        ip_masq_ipv6=_bool(raw, "ipMasqIPv6", _bool(raw, "ipMasq", False)),
        mtu=_mtu(raw),
        gso_max_size=_gso_max_size(raw),
        gso_max_size_ipv6=_gso_max_size(raw, "gsoMaxSizeIPv6"),
        # Hairpin (a container reaching itself through a DNAT) matters with published
        # ports; unless the config says otherwise, it costs a netlink call only then.
        hairpin_mode=_bool(raw, "hairpinMode", bool(port_mappings)),
        master=_ifname(master, "master") if master else None,
        macvlan_mode=macvlan_mode,
        vlan=_vlan(raw, attach),
        segments=_segments(raw, attach),
        ipam=ipam,
        agent_socket=_str(raw, "agentSocket", DEFAULT_SOCKET) or DEFAULT_SOCKET,
        port_mappings=port_mappings,
        prev_result=prev,
        valid_attachments=_valid_attachments(raw),
    )


@dataclass(frozen=True)
class CniCall:
    """One invocation of the `podnet` plugin, parsed once: the request skel read, its
    network config, and the store that keeps the network's state (`store_path_for`)."""

    request: CniRequest
    conf: PodnetConf
    store: str

    @property
    def shared_store(self) -> bool:
        return names_store(self.request.config)


def parse_call(request: CniRequest, default_store: str = DEFAULT_STORE) -> CniCall:
    """The config of a request (not VERSION) parsed and checked for its command."""
    conf = parse_conf(request.config)
    # Not on DEL: the runtime cleans up a refused ADD with the same config, and a
    # macvlan DEL never touches NAT anyway.
    if conf.port_mappings and conf.mode not in HOST_ROUTED_MODES and request.command != "DEL":
        raise InvalidConfig("port mappings need mode 'bridge' or 'routed' (macvlan traffic bypasses the host)")
    return CniCall(request, conf, store_path_for(request.config, default_store))


def conf_dns(raw: Mapping, args: Mapping[str, str] | None = None) -> Mapping:
    """The config's `dns` (for ADD's result); checked only when ADD uses it.

    With podnet's `clusterDomain` (the cluster conflist: the kubelet's --cluster-domain)
    the search list is Kubernetes' for the pod's namespace (K8S_POD_NAMESPACE):
    `<ns>.svc.<domain> svc.<domain> <domain>`, before any configured domains, and
    `ndots:5` unless options are given, so `web` and `web.other` resolve as in a pod."""
    dns = raw.get("dns") or {}
    if not isinstance(dns, Mapping):
        raise InvalidConfig("'dns' must be an object")
    domain = raw.get("clusterDomain")
    if domain is None:
        return dns
    if not isinstance(domain, str) or not _DNS_NAME.match(domain):
        raise InvalidConfig(f"'clusterDomain' must be a DNS name such as cluster.local, got {domain!r}")
    namespace = (args or {}).get("K8S_POD_NAMESPACE", "")
    search = [f"svc.{domain}", domain]
    if _DNS_LABEL.match(namespace):
        search.insert(0, f"{namespace}.svc.{domain}")
    configured = dns.get("search") or []
    if not isinstance(configured, list):
        raise InvalidConfig("'dns.search' must be a list")
    return {**dns, "search": [*search, *(s for s in configured if s not in search)],
            "options": dns.get("options") or ["ndots:5"]}


def store_path_for(raw_config: Mapping, default: str = DEFAULT_STORE) -> str:
    """Where a network's state (endpoint records, IPAM reservations) lives, first match:

    1. `ipam.store`, else the config's `store`: a store location named explicitly, an
       absolute SQLite path (or `sqlite:///abs/path`) or an `etcd://h:p[,h:p][/prefix]`
       URL, used verbatim. A cluster network names the shared cluster store this way,
       so every node's reservations live where a node reclaiming a dead peer frees them.
    2. `ipam.dataDir`, else the config's `dataDir`: the file `<dir>/podnet.db`.
    3. `default`: the agent's store.

    podnet-ipam uses the same rule, so both always agree."""
    ipam = raw_config.get("ipam") or {}
    ipam = ipam if isinstance(ipam, Mapping) else {}
    explicit = ipam.get("store") or raw_config.get("store")
    if explicit:
        if not isinstance(explicit, str):
            raise InvalidConfig(f"'store' must be a string, got {explicit!r}")
        if explicit.startswith(("etcd://", "sqlite:///")) or (explicit.startswith("/") and "://" not in explicit):
            return explicit
        raise InvalidConfig(
            f"'store' must be an absolute path, sqlite:///path or etcd://host:port URL, got {explicit!r}"
        )
    data_dir = ipam.get("dataDir") or raw_config.get("dataDir")
    if data_dir:
        if not isinstance(data_dir, str) or not data_dir.startswith("/"):
            raise InvalidConfig(f"dataDir must be an absolute path, got {data_dir!r}")
        return os.path.join(data_dir, "podnet.db")
    return default


def names_store(raw_config: Mapping) -> bool:
    """Does the config name its store explicitly (`ipam.store` or `store`)? Such a store
    may be shared by several nodes (the cluster network), so GC there judges only what
    the caller could have made."""
    ipam = raw_config.get("ipam") or {}
    return bool((ipam.get("store") if isinstance(ipam, Mapping) else None) or raw_config.get("store"))


def requested_ips(cni_args: Mapping[str, str], raw_config: Mapping) -> tuple[str, ...]:
    """Static addresses asked for by CNI_ARGS IP=a,b or runtimeConfig.ips (podman sends
    the first for one address, the second for several); the plugin and podnet-ipam
    both honour them."""
    out = [a for a in cni_args.get("IP", "").split(",") if a]
    ips = go_field(_runtime_config(raw_config), "ips") or []
    if not isinstance(ips, list):
        raise InvalidConfig(f"runtimeConfig.ips must be a list of addresses, got {ips!r}")
    out.extend(str(a) for a in ips)
    return tuple(out)
