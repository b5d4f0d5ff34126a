"""CNI port mappings and masquerade in nftables: pure rendering plus a small manager.

Layout (tables `ip podnet` and `ip6 podnet` in the caller's namespace):

    prerouting  (nat, priority dstnat)  DNAT of packets arriving from outside/containers
    output      (nat, priority -100)    DNAT of connections made by the host itself
    postrouting (nat, priority srcnat)  masquerade so replies come back through the NAT

Every rule carries the comment `podnet:<net_id>:<attach_id>` (see podnet.naming), so
DEL and GC delete rules by handle without keeping any state outside the kernel: the
kernel's table *is* the record of what is installed.

Decisions:
- DNAT targets the first container address of each family. A second DNAT rule for the
  same host port would never match (the first rule wins), so rendering it would only
  mislead CHECK.
- hostIP follows the CNI portmap plugin: an IPv4 hostIP maps only IPv4, an IPv6 one
  only IPv6; unset maps both; an unspecified address (0.0.0.0, ::) means "every local
  address of that family" (`fib daddr type local`).
- Connections from 127.0.0.0/8 are DNATed and masqueraded (needs route_localnet on the
  host-side interface). IPv6 has no route_localnet: the kernel drops ::1 on non-loopback
  devices, so `[::1]:hostPort` is not mapped.
- Hairpin (a container reaching itself through the host port) needs the masquerade
  here *and*, when br_netfilter is loaded with bridge-nf-call-iptables=1 (the default
  in every new namespace), hairpin mode on the container's bridge port: br_netfilter
  DNATs in the bridge path and sends the frame back out of the port it came from.
- Each change is one `nft -f -` transaction: `add table`/`add chain` are no-ops when
  present, so creating the layout and the rules cannot half-succeed. Re-ADD of the same
  attachment replaces its rules in the same transaction (idempotent ADD).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from podnet import naming
from podnet.errors import InvalidConfig, KernelError, PortInUse, TryAgainLater
from podnet.kernel.nft import NftPort

TABLE = "podnet"
FAMILIES = ("ip", "ip6")
CHAIN_SPECS = {
    "prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "output": "type nat hook output priority -100; policy accept;",
    "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
}
PROTOCOLS = ("tcp", "udp", "sctp")
DEFAULT_LOCK_PATH = "/run/podnet/nft.lock"
LOCK_TIMEOUT = 30.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_ATTACH_RE = re.compile(r"^[0-9a-f]{12}$")
_COMMENT_RE = re.compile(r"^podnet:([0-9a-f]{8}):([0-9a-f]{12})$")
_LOOPBACK4 = ipaddress.IPv4Network("127.0.0.0/8")
_NO_MASQ = {"ip": "224.0.0.0/4", "ip6": "ff00::/8"}  # never masquerade multicast


# ---------------------------------------------------------------- input model


@dataclass(frozen=True)
class PortMapping:
    """One validated CNI port mapping. host_ip None: any address of either family."""

    host_port: int
    container_port: int
    protocol: str
    host_ip: IPAddress | None = None

    def applies_to(self, family: str) -> bool:
        return self.host_ip is None or _family(self.host_ip) == family

    def host_match(self) -> IPAddress | None:
        """The address to match, or None for "every local address"."""
        if self.host_ip is None or self.host_ip.is_unspecified:
            return None
        return self.host_ip

    def needs_localnet(self) -> bool:
        """Whether 127.0.0.0/8 on the host reaches this mapping (IPv4 only)."""
        if self.host_ip is None:
            return True
        if self.host_ip.version != 4:
            return False
        return self.host_ip.is_unspecified or self.host_ip in _LOOPBACK4


def _family(addr: IPAddress | IPInterface) -> str:
    return "ip" if addr.version == 4 else "ip6"


def _port(pm: dict, key: str) -> int:
    value = pm.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidConfig(f"port mapping {key} must be an integer 1..65535, got {value!r}")
    return value


def parse_port_mappings(raw: Iterable[Any]) -> list[PortMapping]:
    """Validate CNI `portMappings` entries; InvalidConfig on bad input or clashes.

    Exact duplicates collapse into one; two entries that claim the same host port for
    different targets are rejected, since only the first DNAT rule could ever match.
    """
    if raw is None:
        return []
    if isinstance(raw, dict | str) or not isinstance(raw, Iterable):
        raise InvalidConfig("portMappings must be a list")
    out: list[PortMapping] = []
    for pm in raw:
        if not isinstance(pm, dict):
            raise InvalidConfig(f"port mapping must be an object, got {pm!r}")
        proto = pm.get("protocol", "tcp")
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            raise InvalidConfig(f"port mapping protocol must be tcp, udp or sctp, got {proto!r}")
        host_ip_raw = pm.get("hostIP")
        host_ip: IPAddress | None = None
        if host_ip_raw not in (None, ""):
            if not isinstance(host_ip_raw, str):
                raise InvalidConfig(f"port mapping hostIP must be a string, got {host_ip_raw!r}")
            try:
                host_ip = ipaddress.ip_address(host_ip_raw)
            except ValueError:
                raise InvalidConfig(
                    f"port mapping hostIP {host_ip_raw!r} is not an IP address"
                ) from None
        mapping = PortMapping(
            _port(pm, "hostPort"), _port(pm, "containerPort"), proto.lower(), host_ip
        )
        if mapping in out:
            continue
        for fam in FAMILIES:
            if not mapping.applies_to(fam):
                continue
            for prev in out:
                if prev.applies_to(fam) and _overlap(_key(prev, fam), _key(mapping, fam)):
                    raise InvalidConfig(
                        f"port mappings {_key_text(_key(prev, fam))} and "
                        f"{_key_text(_key(mapping, fam))} claim the same host port"
                    )
        out.append(mapping)
    return out


# A DNAT key: (family, host address or None for every local address, port, protocol).
MapKey = tuple[str, str | None, int, str]


def _key(pm: PortMapping, family: str) -> MapKey:
    match = pm.host_match()
    return (family, str(match) if match is not None else None, pm.host_port, pm.protocol)


def _overlap(a: MapKey, b: MapKey) -> bool:
    """Same family, port and protocol, and the host addresses intersect."""
    return a[0] == b[0] and a[2:] == b[2:] and (a[1] is None or b[1] is None or a[1] == b[1])


def _key_text(k: MapKey) -> str:
    host = k[1] or ("0.0.0.0" if k[0] == "ip" else "::")
    return f"{k[3]} {'[' + host + ']' if ':' in host else host}:{k[2]}"


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rule:
    """One rule to install: its family, chain and nft body (without the comment)."""

    family: str
    chain: str
    body: str
    key: MapKey | None = None  # set on prerouting DNAT rules, for conflict checks

    def describe(self) -> str:
        return f"{self.family} {self.chain} {self.body}"


def comment(network: str, attach: str) -> str:
    return f"podnet:{naming.net_id(network)}:{attach}"


def _check_attach_id(attach: str) -> None:
    if not isinstance(attach, str) or not _ATTACH_RE.match(attach):
        raise InvalidConfig(f"attach_id must be 12 lowercase hex digits, got {attach!r}")


def _net_text(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """A network as nft prints it: a host route is a bare address, not a /32."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _target(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def plan_rules(
    container_ips: Iterable[IPInterface],
    mappings: list[PortMapping],
    ip_masq: bool,
    masq_exclude: Iterable[str] = (),
) -> list[Rule]:
    """The rules one attachment needs, in install order (pure). `masq_exclude` are
    destinations ipMasq leaves alone (Flannel does not masquerade pod-to-pod traffic
    inside the cluster CIDR, so the far pod sees the real client address)."""
    ips = list(container_ips)
    excluded = [ipaddress.ip_network(c) for c in masq_exclude]
    rules: list[Rule] = []
    for fam in FAMILIES:
        fam_ips = [i for i in ips if _family(i) == fam]
        if not fam_ips:
            continue
        cip = fam_ips[0]
        fam_maps = [m for m in mappings if m.applies_to(fam)]
        for m in fam_maps:
            host = m.host_match()
            match = f"{fam} daddr {host}" if host is not None else "fib daddr type local"
            body = (
                f"{match} {m.protocol} dport {m.host_port} "
                f"dnat to {_target(cip.ip, m.container_port)}"
            )
            rules.append(Rule(fam, "prerouting", body, _key(m, fam)))
            rules.append(Rule(fam, "output", body))
        if fam_maps:
            dnat_tail = f"{fam} daddr {cip.ip} ct status dnat masquerade"
            rules.append(Rule(fam, "postrouting", f"{fam} saddr {cip.ip} {dnat_tail}"))
            if fam == "ip" and any(m.needs_localnet() for m in fam_maps):
                rules.append(Rule(fam, "postrouting", f"ip saddr {_LOOPBACK4} {dnat_tail}"))
            if cip.network.prefixlen < cip.network.max_prefixlen:
                subnet = _net_text(cip.network)
                rules.append(Rule(fam, "postrouting", f"{fam} saddr {subnet} {dnat_tail}"))
        if ip_masq:
            for i in fam_ips:
                rules.append(
                    Rule(
                        fam,
                        "postrouting",
                        f"{fam} saddr {i.ip} {fam} daddr != {_net_text(i.network)} "
                        f"{fam} daddr != {_NO_MASQ[fam]} "
                        + "".join(f"{fam} daddr != {_net_text(n)} " for n in excluded if _family(n) == fam)
                        + "masquerade",
                    )
                )
    return rules


def render_rules(network: str, attach: str, rules: list[Rule]) -> str:
    """Layout (idempotent) plus `add rule` lines; "" when there are no rules."""
    if not rules:
        return ""
    tag = comment(network, attach)
    lines: list[str] = []
    for fam in FAMILIES:
        fam_rules = [r for r in rules if r.family == fam]
        if not fam_rules:
            continue
        lines.append(f"add table {fam} {TABLE}")
        lines.extend(
            f"add chain {fam} {TABLE} {name} {{ {spec} }}" for name, spec in CHAIN_SPECS.items()
        )
        lines.extend(
            f'add rule {fam} {TABLE} {r.chain} {r.body} comment "{tag}"' for r in fam_rules
        )
    return "\n".join(lines) + "\n"


def render_add(
    network: str,
    attach_id: str,
    container_ips: list[IPInterface],
    port_mappings: list[dict],
    ip_masq: bool,
    masq_exclude: Iterable[str] = (),
) -> str:
    """The script of one transaction adding an attachment's NAT; "" if nothing to do."""
    _check_attach_id(attach_id)
    rules = plan_rules(container_ips, parse_port_mappings(port_mappings), ip_masq, masq_exclude)
    return render_rules(network, attach_id, rules)


def render_delete(rules: Iterable[InstalledRule]) -> str:
    """`delete rule ... handle N` lines: handles make deletion exact, never by pattern."""
    return "".join(f"delete rule {r.family} {TABLE} {r.chain} handle {r.handle}\n" for r in rules)


# ---------------------------------------------------------------- reading tables back


@dataclass(frozen=True)
class InstalledRule:
    """A podnet rule found in the kernel, parsed from `nft -j list table`."""

    family: str
    chain: str
    handle: int
    net_id: str
    attach_id: str
    body: str
    key: MapKey | None = None

    def describe(self) -> str:
        return f"{self.family} {self.chain} {self.body}"


def _left_text(left: Any) -> str:
    if isinstance(left, dict):
        if "payload" in left:
            p = left["payload"]
            return f"{p.get('protocol')} {p.get('field')}"
        if "fib" in left:
            f = left["fib"]
            return f"fib {' . '.join(f.get('flags', []))} {f.get('result')}"
        if "ct" in left:
            return f"ct {left['ct'].get('key')}"
        if "meta" in left:
            return f"meta {left['meta'].get('key')}"
    return json.dumps(left, sort_keys=True)


def _value_text(value: Any) -> str:
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    if isinstance(value, dict) and "set" in value:
        return "{ " + ", ".join(_value_text(v) for v in value["set"]) + " }"
    if isinstance(value, list):
        return ", ".join(_value_text(v) for v in value)
    return json.dumps(value, sort_keys=True)


def _expr_text(expr: dict) -> str:
    """One JSON statement as nft text, for the statements podnet writes (others: JSON)."""
    if "match" in expr:
        m = expr["match"]
        op = m.get("op", "==")
        sep = " " if op in ("==", "in") else f" {op} "
        return f"{_left_text(m.get('left'))}{sep}{_value_text(m.get('right'))}"
    if "dnat" in expr or "snat" in expr:
        kind = "dnat" if "dnat" in expr else "snat"
        d = expr[kind] or {}
        addr = str(d.get("addr", ""))
        if "port" in d:
            addr = f"[{addr}]:{d['port']}" if ":" in addr else f"{addr}:{d['port']}"
        return f"{kind} to {addr}"
    if "masquerade" in expr and not expr["masquerade"]:
        return "masquerade"
    if "counter" in expr:
        return "counter"
    return json.dumps(expr, sort_keys=True)


def _dnat_key(family: str, exprs: list[dict]) -> MapKey | None:
    """(family, host address or None, port, protocol) of a DNAT rule podnet wrote."""
    if not any(isinstance(e, dict) and "dnat" in e for e in exprs):
        return None
    host: str | None = None
    port: int | None = None
    proto: str | None = None
    for e in exprs:
        m = e.get("match") if isinstance(e, dict) else None
        if not m or m.get("op", "==") != "==" or not isinstance(m.get("left"), dict):
            continue
        p = m["left"].get("payload")
        if p and p.get("field") == "daddr" and p.get("protocol") in FAMILIES:
            host = str(m.get("right"))
        elif p and p.get("field") == "dport" and p.get("protocol") in PROTOCOLS:
            port, proto = m.get("right"), p["protocol"]
    if not isinstance(port, int) or proto is None:
        return None
    return (family, host, port, proto)


def parse_table(doc: dict | None) -> list[InstalledRule]:
    """The podnet-tagged rules of one `nft -j list table` document (others ignored)."""
    out: list[InstalledRule] = []
    for item in (doc or {}).get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not rule:
            continue
        tag = _COMMENT_RE.match(str(rule.get("comment", "")))
        if not tag:
            continue
        exprs = [e for e in rule.get("expr", []) if isinstance(e, dict)]
        family = rule.get("family", "")
        chain = rule.get("chain", "")
        out.append(
            InstalledRule(
                family=family,
                chain=chain,
                handle=int(rule["handle"]),
                net_id=tag.group(1),
                attach_id=tag.group(2),
                body=" ".join(_expr_text(e) for e in exprs),
                key=_dnat_key(family, exprs) if chain == "prerouting" else None,
            )
        )
    return out


# ---------------------------------------------------------------- the manager

_THREAD_LOCK = threading.Lock()  # process-wide: flock alone also serialises, but cheaply


class NatManager:
    """Installs and removes one attachment's NAT in the calling thread's namespace.

    The kernel tables are the only state. Changes are serialised across threads (a
    lock) and processes (flock on `lock_path`) because the plugin's in-process
    fallback and the agent may edit the same table; conflict checks read the table
    inside the same critical section as the change, so two ADDs cannot both win a port.
    """

    def __init__(
        self,
        nft: NftPort,
        lock_path: str = DEFAULT_LOCK_PATH,
        proc_sys: str = "/proc/sys",
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        self.nft = nft
        self.lock_path = lock_path
        self.proc_sys = proc_sys
        self.lock_timeout = lock_timeout

    # -- locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        deadline = time.monotonic() + self.lock_timeout
        if not _THREAD_LOCK.acquire(timeout=self.lock_timeout):
            raise TryAgainLater("nft lock busy (thread)")
        try:
            os.makedirs(os.path.dirname(self.lock_path) or ".", mode=0o755, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                delay = 0.002
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise TryAgainLater(f"nft lock {self.lock_path} busy") from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
                yield
            finally:
                os.close(fd)  # releases the flock
        finally:
            _THREAD_LOCK.release()

    # -- reading

    def installed(self) -> list[InstalledRule]:
        """Every podnet-tagged rule in both tables (absent tables contribute nothing)."""
        out: list[InstalledRule] = []
        for fam in FAMILIES:
            out.extend(parse_table(self.nft.list_table_json(fam, TABLE)))
        return out

    def rules(self, network: str | None = None) -> dict[str, list[str]]:
        """attach_id -> ["<family> <chain> <rule text>", ...], for CHECK and diagnostics."""
        nid = naming.net_id(network) if network is not None else None
        out: dict[str, list[str]] = {}
        for r in self.installed():
            if nid is None or r.net_id == nid:
                out.setdefault(r.attach_id, []).append(r.describe())
        return out

    def check(
        self,
        network: str,
        attach_id: str,
        container_ips: list[IPInterface],
        port_mappings: list[dict],
        ip_masq: bool = False,
        masq_exclude: Iterable[str] = (),
    ) -> list[str]:
        """The expected rules of an attachment that are missing (empty list: all there)."""
        _check_attach_id(attach_id)
        expected = plan_rules(container_ips, parse_port_mappings(port_mappings), ip_masq, masq_exclude)
        have = set(self.rules(network).get(attach_id, []))
        return [r.describe() for r in expected if r.describe() not in have]

    # -- changing

    def add(
        self,
        network: str,
        attach_id: str,
        container_ips: list[IPInterface],
        port_mappings: list[dict],
        ip_masq: bool = False,
        host_if: str | None = None,
        masq_exclude: Iterable[str] = (),
    ) -> None:
        """Install (or replace) an attachment's NAT in one transaction.

        Raises InvalidConfig for bad mappings, PortInUse when another attachment
        (of any network: the table is shared) already maps an overlapping host port.
        """
        _check_attach_id(attach_id)
        if host_if is not None:
            _check_ifname(host_if)
        mappings = parse_port_mappings(port_mappings)
        rules = plan_rules(container_ips, mappings, ip_masq, masq_exclude)
        nid = naming.net_id(network)
        with self._locked():
            installed = self.installed()
            mine = [r for r in installed if (r.net_id, r.attach_id) == (nid, attach_id)]
            others = [r for r in installed if (r.net_id, r.attach_id) != (nid, attach_id)]
            _check_conflicts(rules, others)
            localnet = any(r.family == "ip" and r.key is not None for r in rules) and any(
                m.needs_localnet() for m in mappings if m.applies_to("ip")
            )
            if localnet and host_if is not None:
                self._enable_route_localnet(host_if)
            script = render_delete(mine) + render_rules(network, attach_id, rules)
            self.nft.apply(script)

    def remove(self, network: str, attach_id: str) -> int:
        """Delete an attachment's rules in one transaction; 0 when none (idempotent)."""
        nid = naming.net_id(network)
        gone = self._delete_where(lambda r: r.net_id == nid and r.attach_id == attach_id)
        return len(gone)

    def gc(self, network: str, keep_attach_ids: set[str]) -> set[str]:
        """Delete this network's rules whose attach_id is not kept; other networks stay."""
        nid = naming.net_id(network)
        keep = set(keep_attach_ids)
        gone = self._delete_where(lambda r: r.net_id == nid and r.attach_id not in keep)
        return {r.attach_id for r in gone}

    def remove_unclaimed(self, claimed: set[tuple[str, str]]) -> set[str]:
        """Delete every podnet rule whose (net_id, attach_id) is not claimed, whatever
        its network: the agent's resync uses it to drop rules orphaned by a crash."""
        gone = self._delete_where(lambda r: (r.net_id, r.attach_id) not in claimed)
        return {f"{r.net_id}:{r.attach_id}" for r in gone}

    def _delete_where(self, pred: Callable[[InstalledRule], bool]) -> list[InstalledRule]:
        with self._locked():
            for attempt in (1, 2):
                victims = [r for r in self.installed() if pred(r)]
                if not victims:
                    return []
                try:
                    self.nft.apply(render_delete(victims))
                    return victims
                except KernelError:
                    # Someone outside podnet's lock (an operator's `nft delete`) may have
                    # removed a handle between our listing and the transaction: re-read once.
                    if attempt == 2:
                        raise
        return []  # pragma: no cover - the loop always returns or raises

    def _enable_route_localnet(self, host_if: str) -> None:
        """Let 127.0.0.0/8-sourced packets, DNATed in output, leave via `host_if`.

        /proc/sys/net resolves against the calling thread's namespace. The setting is
        per interface and shared by every attachment on it, so remove() never resets it.
        """
        path = os.path.join(self.proc_sys, "net/ipv4/conf", host_if, "route_localnet")
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    return
            with open(path, "w") as f:
                f.write("1\n")
        except OSError as exc:
            raise KernelError(
                f"cannot enable route_localnet on {host_if}", details=str(exc)
            ) from None


def _check_ifname(name: str) -> None:
    """An interface name safe to put in a /proc path (kernel rules: <=15 bytes, no / : ws)."""
    if (
        not isinstance(name, str)
        or not 0 < len(name.encode()) <= 15
        or name in (".", "..")
        or any(c in name for c in "/:\0")
        or any(c.isspace() for c in name)
    ):
        raise InvalidConfig(f"invalid host interface name {name!r}")


def _check_conflicts(rules: list[Rule], others: list[InstalledRule]) -> None:
    for r in rules:
        if r.key is None:
            continue
        for o in others:
            if o.key is not None and _overlap(r.key, o.key):
                raise PortInUse(
                    f"host port {_key_text(r.key)} is already mapped "
                    f"(as {_key_text(o.key)}) by attachment {o.attach_id} "
                    f"of network {o.net_id}"
                )
