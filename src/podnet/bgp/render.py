"""bird.conf from a `BirdSpec` (pure).

Design notes (BIRD 2.0.12's own documentation, doc/bird.sgml):
- **Only BGP routes and the node's block blackholes reach the kernel.** The kernel
  protocol exports `source = RTS_BGP` with a usable next hop only (`dest = RTD_UNICAST`:
  a BGP route whose next hop does not resolve would otherwise be installed as an
  `unreachable` route), and of the static originations exactly the `kernel_blackholes`
  (the node's own blocks, as Calico installs them: the node reaches its pods through
  their more specific host routes, and an address of the block without a pod is dropped
  instead of looping through the default route). Borrowed /32s and service ranges stay
  inside BIRD: a blackholed service range would fail the node's own connects before
  DNAT. BIRD tags what it
  installs with proto bird (12) and, at its scans, removes only routes of that proto it
  did not install.
- **It learns nothing from the kernel** (`learn off`, `import none`: connected routes and
  podnet's fabric routes, proto 77, never enter BIRD) while every session is `direct`.
  A multihop session's next hop is resolved recursively through BIRD's own table, which
  then needs the underlay's routes: the connected networks (`protocol direct`) and the
  kernel's unicast routes of other sources (`learn on`, proto 77 refused), both below
  every other source's preference and exported nowhere (the kernel and BGP export
  filters take only RTS_BGP/RTS_STATIC). Without them a multihop peer's routes stay
  unreachable (measured with BIRD 2.0.12).
- **Restarts keep forwarding.** `persist` leaves BIRD's routes in the kernel when it
  stops; `graceful restart` on the kernel protocol defers the first kernel sync while a
  graceful-restart recovery runs (BIRD started with `-R`), so a restarted BIRD does not
  flush the routes it left; BGP `graceful restart on` makes peers keep our routes
  (stale) for `graceful restart time` while we are away. The recovery ends when every
  session is back and has sent its routes, or after `graceful restart wait`: one peer
  that never comes back would otherwise hold every new route out of the kernel for
  BIRD's default 240 s (measured).
- **Sessions start at once.** BIRD waits `connect delay time` (default 5 s) between a
  session's start and its first connect, and `connect retry time` (default 120 s) after
  a connect that failed (the peer was not listening yet). podnet renders 1 s and 3 s
  (`BirdSpec`), Calico's values: a new node, a restarted BIRD or a new peer carries
  routes a second after it starts, not five, and a peer that came up a moment late is
  reached within seconds, not minutes. Both sides still connect (either may win, BGP's
  collision detection keeps one), and a closing session's `error wait time` (60 s, the
  back-off against a flapping peer) is left as BIRD has it.
- **Exports.** iBGP sessions announce the static originations; a route reflector
  (`rr_cluster_id` set) also passes BGP routes on (`rr client` on its client sessions,
  BIRD keeps their original next hop). eBGP sessions (a ToR) announce BGP routes too,
  without `next hop self` (Calico dropped it too): BIRD then gives its own address
  only when a route's next hop is not on the neighbour's link, so a ToR sends a node
  its rack mates' blocks with the rack mate as next hop (same-rack traffic does not
  hairpin through the ToR) and other racks' blocks via itself. A router on several
  links gives a session the source address of its own link (`Neighbor.local_address`).
- **Names:** BGP sessions are `pn_<Neighbor.name>` (a prefix no BIRD keyword has: a bare
  `bgp_path` would be one), podnet's other protocols and filters `podnet_*`.
- **Imports** accept only prefixes within `spec.accept` (`net ~ [ p+ ]`).
- **Deterministic:** every value is validated first (a bad one raises ValueError naming
  the field), lists are sorted and deduplicated, so the same spec gives the same bytes
  and the caller can skip `birdc configure` when nothing changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from podnet import addresses
from podnet.bgp.model import PODNET_ROUTE_PROTO, BirdSpec, Neighbor
from podnet.errors import InvalidConfig

PROTOCOL_PREFIX = "pn_"  # BGP protocol names: "pn_" + Neighbor.name (never a BIRD keyword)
DEVICE_PROTOCOL = "podnet_device"
KERNEL_PROTOCOL = "podnet_kernel"
STATIC_PROTOCOL = "podnet_static"
DIRECT_PROTOCOL = "podnet_direct"
IMPORT_FILTER = "podnet_import"
EXPORT_ORIGINATED = "podnet_export_originated"  # our static originations only
EXPORT_ALL = "podnet_export_all"  # originations and BGP routes (reflectors, eBGP)
KERNEL_EXPORT = "podnet_kernel_export"
KERNEL_IMPORT = "podnet_kernel_import"  # multihop only: the underlay's routes, to resolve next hops
UNDERLAY_PREFERENCE = 50  # below static (200), BGP (100): only used when nothing else has the net

_NAME = re.compile(r"[a-z0-9_]+")
_SYMBOL_MAX = 64  # BIRD's SYM_MAX_LEN
ASN_MAX = 4294967295
GR_TIME_MAX = 4095  # the restart time is a 12-bit field of the BGP capability (RFC 4724)
TABLE_MAX = 4294967295


def protocol_name(neighbor: Neighbor) -> str:
    """The BIRD protocol name of a neighbour's session (what `show protocols` lists)."""
    return PROTOCOL_PREFIX + neighbor.name


def render(spec: BirdSpec) -> str:
    """The whole bird.conf for `spec`; ValueError (naming the field) on any bad value."""
    router_id = _ipv4(spec.router_id, "router_id", nonzero=True)
    asn = _asn(spec.asn, "asn")
    local = _ipv4(spec.local_address, "local_address", nonzero=True)
    local6 = None if spec.local_address6 is None else _ip(spec.local_address6, "local_address6", 6)
    listen_port = _port(spec.listen_port, "listen_port")
    gr_time = _int(spec.graceful_restart_time, "graceful_restart_time", 1, GR_TIME_MAX)
    table = _int(spec.kernel_table, "kernel_table", 1, TABLE_MAX)
    scan_time = _int(spec.scan_time, "scan_time", 1, 86400)
    gr_wait = _int(spec.graceful_restart_wait, "graceful_restart_wait", 1, 86400)
    timers = (_int(spec.connect_delay_time, "connect_delay_time", 1, 65535),
              _int(spec.connect_retry_time, "connect_retry_time", 1, 65535))
    cluster_id = None if spec.rr_cluster_id is None else _ipv4(spec.rr_cluster_id, "rr_cluster_id", nonzero=True)
    originate = _prefixes(spec.originate, "originate", local6 is not None)
    blackholes = _prefixes(spec.kernel_blackholes, "kernel_blackholes", local6 is not None)
    if set(blackholes) - set(originate):
        raise ValueError(f"kernel_blackholes: {sorted(set(blackholes) - set(originate))[0]} is not originated")
    accept = _prefixes(spec.accept, "accept", local6 is not None)
    neighbors = _neighbors(spec, local, asn, cluster_id, local6)
    multihop = any(not n.direct for n in neighbors)
    families = sorted({4, *(6 for p in (*originate, *accept) if ":" in p), *(6 for n in neighbors if ":" in n.address)})

    out = [
        "# Written by podnet (bgp/render.py): do not edit, it is rewritten on change.",
        f"router id {router_id};",
        f"graceful restart wait {gr_wait};",
        "log stderr all;",
        "timeformat protocol iso long;",
        "",
        *_filter(IMPORT_FILTER, [_in(v, [p + "+" for p in accept], len(families) > 1) for v in families if _of(v, accept)]),
        *_filter(EXPORT_ORIGINATED, ["source = RTS_STATIC"]),
        *_filter(EXPORT_ALL, ["source = RTS_STATIC", "source = RTS_BGP"]),
        *_filter(KERNEL_EXPORT, ["source = RTS_BGP && dest = RTD_UNICAST",
                                 *(f"source = RTS_STATIC && {_in(v, blackholes, len(families) > 1)}" for v in families
                                   if _of(v, blackholes))]),
    ]
    if multihop:  # the underlay's routes, for recursive next hops (module docstring)
        out += _filter(KERNEL_IMPORT, [f"krt_source != {PODNET_ROUTE_PROTO} && dest = RTD_UNICAST"])
    out += [f"protocol device {DEVICE_PROTOCOL} {{", "}", ""]
    if multihop:
        out += [
            f"protocol direct {DIRECT_PROTOCOL} {{",
            *(f"  {_CHANNEL[v]} {{ preference {UNDERLAY_PREFERENCE}; import all; export none; }};" for v in families),
            '  interface "*";',
            "}",
            "",
        ]
    kernel_import = f"preference {UNDERLAY_PREFERENCE}; import filter {KERNEL_IMPORT};" if multihop else "import none;"
    for v in families:  # a kernel and a static protocol per family: a BIRD 2 channel carries one
        out += [
            f"protocol kernel {KERNEL_PROTOCOL}{_SUFFIX[v]} {{",
            f"  {_CHANNEL[v]} {{ {kernel_import} export filter {KERNEL_EXPORT}; }};",
            f"  kernel table {table};",
            f"  scan time {scan_time};",
            f"  learn {'on' if multihop else 'off'};",
            "  persist on;",
            "  graceful restart on;",
            "  merge paths off;",
            "}",
            "",
            f"protocol static {STATIC_PROTOCOL}{_SUFFIX[v]} {{",
            f"  {_CHANNEL[v]};",
            *(f"  route {prefix} blackhole;" for prefix in _of(v, originate)),
            "}",
            "",
        ]
    out.pop()
    for n in neighbors:
        out += ["", *_bgp(n, asn, local6 if ":" in n.address and local6 else local, listen_port, gr_time,
                          cluster_id, spec.transit, timers=timers)]
    return "\n".join(out) + "\n"


_CHANNEL = {4: "ipv4", 6: "ipv6"}
_SUFFIX = {4: "", 6: "6"}  # protocol names: podnet_kernel (IPv4, as before dual stack), podnet_kernel6


def _of(version: int, prefixes: list[str]) -> list[str]:
    """The prefixes of one IP version."""
    return [p for p in prefixes if (":" in p) == (version == 6)]


def _in(version: int, prefixes: list[str], guard: bool) -> str:
    """`net` in a prefix set of one family; `guard` (dual stack): behind a test of the
    net's type (a BIRD 2 prefix set holds one family; matching another family's net
    against it is an error)."""
    match = f"net ~ [ {', '.join(_of(version, prefixes))} ]"
    return f"net.type = {'NET_IP6' if version == 6 else 'NET_IP4'} && {match}" if guard else match


def _filter(name: str, accepted: list[str]) -> list[str]:
    """A filter accepting what matches one of `accepted`, rejecting the rest."""
    return [f"filter {name} {{", *(f"  if {condition} then accept;" for condition in accepted), "  reject;", "}", ""]


def _bgp(n: Neighbor, asn: int, local: str, listen_port: int, gr_time: int, cluster_id: str | None,
         transit: bool = True, *, timers: tuple[int, int]) -> list[str]:
    """One session; `timers`: (connect delay, connect retry) in seconds."""
    internal = n.asn == asn
    reflector = internal and cluster_id is not None
    lines = [
        f"protocol bgp {protocol_name(n)} {{",
        f"  local {n.local_address or local} port {listen_port} as {asn};",
        f"  neighbor {n.address} port {n.port} as {n.asn};",
        "  direct;" if n.direct else "  multihop;",
    ]
    if reflector:
        lines.append(f"  rr cluster id {cluster_id};")
        if n.rr_client:
            lines.append("  rr client;")
    if n.allow_local_as:
        lines.append("  allow local as;")
    lines += [
        f"  connect delay time {timers[0]};",
        f"  connect retry time {timers[1]};",
        "  graceful restart on;",
        f"  graceful restart time {gr_time};",
        f"  {'ipv6' if ':' in n.address else 'ipv4'} {{",
        f"    import filter {IMPORT_FILTER};",
        f"    export filter {EXPORT_ALL if (reflector or (transit and not internal)) else EXPORT_ORIGINATED};",
    ]
    return [*lines, "  };", "}"]


def _neighbors(spec: BirdSpec, local: str, asn: int, cluster_id: str | None,
               local6: str | None = None) -> list[Neighbor]:
    if not isinstance(spec.neighbors, tuple | list):
        raise ValueError(f"neighbors: expected a list of Neighbor, got {type(spec.neighbors).__name__}")
    checked: dict[str, Neighbor] = {}
    addresses: dict[str, str] = {}
    for i, n in enumerate(spec.neighbors):
        field = f"neighbors[{i}]"
        if not isinstance(n, Neighbor):
            raise ValueError(f"{field}: expected a Neighbor, got {type(n).__name__}")
        name = _name(n.name, f"{field}.name")
        if isinstance(n.address, str) and ":" in n.address and local6 is not None:  # an IPv6 session
            address = _ip(n.address, f"{field}.address", 6)
            own = None if n.local_address is None else _ip(n.local_address, f"{field}.local_address", 6)
        else:
            address = _ipv4(n.address, f"{field}.address", nonzero=True)
            own = None if n.local_address is None else _ipv4(n.local_address, f"{field}.local_address", nonzero=True)
        if address in (local, local6, own):
            raise ValueError(f"{field}.address: {address} is this node's own local_address")
        peer_asn = _asn(n.asn, f"{field}.asn")
        port = _port(n.port, f"{field}.port")
        for flag in ("rr_client", "direct", "allow_local_as"):
            if not isinstance(getattr(n, flag), bool):
                raise ValueError(f"{field}.{flag}: expected true or false, got {getattr(n, flag)!r}")
        if n.rr_client and peer_asn != asn:
            raise ValueError(f"{field}.rr_client: only an iBGP neighbour (asn {asn}) can be a route reflector client, not AS {peer_asn}")
        if n.rr_client and cluster_id is None:
            raise ValueError(f"{field}.rr_client: a route reflector needs rr_cluster_id")
        if name in checked:
            raise ValueError(f"{field}.name: {name!r} is used by another neighbour")
        if address in addresses:
            raise ValueError(f"{field}.address: {address} is already neighbour {addresses[address]!r}")
        addresses[address] = name
        checked[name] = Neighbor(name, address, peer_asn, n.rr_client, n.direct, port, own, n.allow_local_as)
    return [checked[name] for name in sorted(checked)]


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{field}: {value!r} is not a name of [a-z0-9_]+")
    if len(PROTOCOL_PREFIX + value) > _SYMBOL_MAX:
        raise ValueError(f"{field}: {value!r} is longer than {_SYMBOL_MAX - len(PROTOCOL_PREFIX)} characters")
    return value


def _ipv4(value: object, field: str, nonzero: bool = False) -> str:
    address = _v4(addresses.address, value, field, "address")
    if nonzero and address.is_unspecified:
        raise ValueError(f"{field}: {value!r} is the unspecified address")
    return str(address)


def _ip(value: object, field: str, version: int) -> str:
    """An address of IP `version`, not the unspecified one."""
    try:
        parsed = addresses.address(value, f"{field}:")
    except InvalidConfig as exc:
        raise ValueError(exc.msg) from None
    if parsed.version != version or parsed.is_unspecified:
        raise ValueError(f"{field}: {value!r} is not a usable IPv{version} address")
    return str(parsed)


def _prefixes(values: object, field: str, ipv6: bool = False) -> list[str]:
    """Sorted, deduplicated networks, IPv4 then IPv6 (host bits must be zero); IPv6 ones
    only for a dual-stack spec (`ipv6`: it has local_address6)."""
    if not isinstance(values, tuple | list):
        raise ValueError(f"{field}: expected a list of prefixes, got {values!r}")
    networks = set()
    for i, value in enumerate(values):
        try:
            net = addresses.network(value, f"{field}[{i}]:")
        except InvalidConfig as exc:
            raise ValueError(f"{exc.msg} ({exc.details})" if exc.details else exc.msg) from None
        if net.version == 6 and not ipv6:
            raise ValueError(f"{field}[{i}]: {value!r} is not an IPv4 prefix (IPv6 needs local_address6)")
        networks.add(net)
    return [str(n) for n in sorted(networks, key=lambda n: (n.version, n))]


def _v4(read: Callable, value: object, field: str, what: str):
    """`value` read by podnet's one address reader (no scope IDs), IPv4 only; ValueError."""
    try:
        parsed = read(value, f"{field}:")
    except InvalidConfig as exc:
        raise ValueError(f"{exc.msg} ({exc.details})" if exc.details else exc.msg) from None
    if parsed.version != 4:
        raise ValueError(f"{field}: {value!r} is not an IPv4 {what}")
    return parsed


def _int(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field}: {value!r} is not a whole number in {low}..{high}")
    return value


def _asn(value: object, field: str) -> int:
    return _int(value, field, 1, ASN_MAX)


def _port(value: object, field: str) -> int:
    return _int(value, field, 1, 65535)
