"""`podnet lab link cut|heal|list`: cut the underlay link between two machines of a rack.

For partial-mesh tests (issue 14) a link is cut where a real one would break, in the
fabric: an nft table `bridge podnet-cuts` in the rack's bridge namespace `fab<rack>`
drops every IPv4 packet between the two machines' underlay addresses, both ways (the
gossip control link TCP 6783, the sleeve UDP 6784 and VXLAN UDP 8472 alike); the
machines themselves are never touched. Pods' traffic that crosses the link unencapsulated
(host-gw, bgp) carries pod addresses and is not matched.

The cuts are recorded in the lab state (`cuts`: sorted name pairs) before the kernel
changes, and each change re-renders a rack's whole table in one `nft -f -` transaction
from that record, so applying it twice is harmless. A link between racks goes through
the router and is not cut this way. The table lives in the lab's own namespace:
`lab down` deleting the namespace removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from podnet.errors import PodnetError
from podnet.kernel import netns
from podnet.kernel.nft import Nft, counter_totals
from podnet.lab import topology as topo
from podnet.lab.state import NETNS_DIR, LabError, LabState, lab_dir

TABLE = "podnet-cuts"
CHAIN = "drop_cut_links"


@dataclass(frozen=True)
class Link:
    """A cut link: two machines of one rack, in name order, and their underlay addresses."""

    a: str
    b: str
    a_ip: str
    b_ip: str
    rack: int

    @property
    def label(self) -> str:
        return f"{self.a}-{self.b}"


def render(links: Iterable[Link]) -> str:
    """The whole table as one transaction: created if missing, deleted, and made again
    with a drop rule per direction of each link (no links: the table is gone)."""
    lines = [f"table bridge {TABLE} {{}}", f"delete table bridge {TABLE}"]
    rules = [f"    ip saddr {src} ip daddr {dst} counter drop comment \"{link.label}\""
             for link in links for src, dst in ((link.a_ip, link.b_ip), (link.b_ip, link.a_ip))]
    if rules:
        lines += [f"table bridge {TABLE} {{", f"  chain {CHAIN} {{",
                  "    type filter hook forward priority 0; policy accept;", *rules, "  }", "}"]
    return "\n".join(lines) + "\n"


def machines(data: dict) -> dict[str, dict]:
    """The lab's machines on the fabric (nodes and plain hosts): name -> state entry."""
    return {**(data.get("hosts") or {}), **(data.get("nodes") or {})}


def check_cut(data: dict, a: str, b: str) -> tuple[str, str]:
    """Two machines of one rack of this lab, as a sorted pair; LabError naming A or B."""
    racks = {name: int(entry["rack"]) for name, entry in machines(data).items()}
    try:
        return topo.check_link(racks, a, b, ("A", "B"), kind="machine")
    except topo.TopologyError as exc:
        raise LabError(exc.msg, exc.details) from None


def recorded(data: dict) -> list[tuple[str, str]]:
    return [(a, b) for a, b in data.get("cuts") or []]


def links(data: dict, rack: int | None = None) -> list[Link]:
    """The recorded cuts with their addresses (those of `rack` only, if given)."""
    found = machines(data)
    out = []
    for a, b in recorded(data):
        link = Link(a, b, _address(found[a]), _address(found[b]), int(found[a]["rack"]))
        if rack is None or link.rack == rack:
            out.append(link)
    return out


def _address(entry: dict) -> str:
    return str(entry["underlay"]).split("/")[0]


def set_cuts(state: LabState, cuts: Iterable[tuple[str, str]]) -> None:
    """Record `cuts` as the lab's whole set of cut links, then render the table of every
    rack that had or has one; when the kernel refuses, the old record is restored."""
    wanted = sorted({check_cut(state.data, a, b) for a, b in cuts})
    before = recorded(state.data)
    found = machines(state.data)
    racks = sorted({int(found[a]["rack"]) for a, _ in {*before, *wanted}})
    state.data["cuts"] = [list(pair) for pair in wanted]
    state.save()
    try:
        for rack in racks:
            _apply(state, rack)
    except PodnetError:
        state.data["cuts"] = [list(pair) for pair in before]
        state.save()
        with contextlib.suppress(PodnetError):  # the first error is the one to report
            for rack in racks:
                _apply(state, rack)
        raise


def cut(lab: str, a: str, b: str) -> tuple[str, str]:
    """Cut the link between machines `a` and `b` (already cut: its table is made again)."""
    with _locked(lab):
        state = LabState.load(lab)
        pair = check_cut(state.data, a, b)
        set_cuts(state, [*recorded(state.data), pair])
        return pair


def heal(lab: str, a: str, b: str) -> tuple[str, str]:
    """Heal the link between `a` and `b` (not cut: nothing to do)."""
    with _locked(lab):
        state = LabState.load(lab)
        pair = check_cut(state.data, a, b)
        set_cuts(state, [c for c in recorded(state.data) if c != pair])
        return pair


def listing(lab: str) -> list[dict]:
    """Each recorded cut, whether its rack's table has it, and the packets it dropped."""
    state = LabState.load(lab)
    rows = []
    by_rack: dict[int, dict[str, tuple[int, int]]] = {}
    for link in links(state.data):
        if link.rack not in by_rack:
            with _in_fabric(state, link.rack) as nft:
                by_rack[link.rack] = counter_totals(nft.list_table_json("bridge", TABLE))
        counted = by_rack[link.rack].get(link.label)
        rows.append({"link": link.label, "a": link.a, "b": link.b, "a_ip": link.a_ip, "b_ip": link.b_ip,
                     "rack": link.rack, "in_kernel": counted is not None,
                     "dropped_packets": counted[0] if counted else 0})
    return rows


def _apply(state: LabState, rack: int) -> None:
    with _in_fabric(state, rack) as nft:
        nft.apply(render(links(state.data, rack)))


@contextmanager
def _in_fabric(state: LabState, rack: int) -> Iterator[Nft]:
    """nft run in the rack's bridge namespace (entered by this thread, and left)."""
    ns = topo.netns_name(state.name, f"fab{rack}")
    if ns not in state.data.get("namespaces", []):
        raise LabError(f"lab {state.name} has no fabric namespace for rack {rack}")
    fd = netns.open_netns(str(NETNS_DIR / ns))
    try:
        with netns.entered(fd):
            yield Nft()
    finally:
        os.close(fd)


@contextmanager
def _locked(lab: str) -> Iterator[None]:
    """One change of a lab's cuts at a time (read, record, apply)."""
    topo.check_lab_name(lab)
    where = lab_dir(lab)
    if not where.is_dir():
        raise LabError(f"no lab named {lab!r}", f"{where} does not exist")
    fd = os.open(where / "cuts.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
