"""The lab's WAN: one namespace, `pn-wan-<name>`, joining several labs side by side.

Why its own object: a lab owns everything its state file records, and `lab down`
deletes all of it. What joins two labs must belong to neither: tearing down lab east
must not cut lab west's link, and the WAN outlives the labs it joins (labs come and go,
the clusterset's addressing stays). So the WAN has its own state file
(`/run/podnet/wan-<name>.json`), its own `podnet wan up|down`, and only `pn-wan-*`
namespaces are ever deleted here.

Layout: a bridge `br0` in the WAN namespace owns the cidr's first host (100.64.0.1/24).
Each plugged namespace (a lab node) gets a veth `wan0` whose peer `w<8 hex of
sha256(owner)>` sits in the WAN, enslaved to br0, and the lowest free address from .10
upward. A lab's teardown deletes its node namespaces and with them their veth pairs: the
leg is then "gone", and plugging it again re-creates it with the same address.
Everything is recorded before it is made, so `down` removes it even after a crash.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from podnet.fileio import remove, write_atomic
from podnet.lab.state import NETNS_DIR, RUN_DIR, LabError, ip

WAN_PREFIX = "pn-wan-"
DEFAULT_CIDR = "100.64.0.0/24"
DEFAULT_IFNAME = "wan0"
BRIDGE = "br0"
FIRST_LEG_HOST = 10
PREFIX_RANGE = (16, 29)
_WAN_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$")
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


# --- pure: names, ranges, addresses --------------------------------------------------

def check_wan_name(name: str) -> str:
    if not _WAN_NAME.fullmatch(name):
        raise LabError(f"NAME: {name!r} is not a valid WAN name",
                       "use 1-12 lowercase letters, digits or '-', starting and ending with a letter or digit")
    return name


def check_cidr(text: str) -> ipaddress.IPv4Network:
    """The WAN's range: an IPv4 network of /16../29, away from loopback."""
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError:
        raise LabError(f"--cidr: {text!r} is not an IPv4 network (a.b.c.d/len, host bits zero)") from None
    low, high = PREFIX_RANGE
    if not low <= net.prefixlen <= high:
        raise LabError(f"--cidr: {text!r} must be a /{low} to /{high} network",
                       "it holds the WAN's own address and one per plugged node")
    if net.overlaps(_LOOPBACK):
        raise LabError(f"--cidr: {net} overlaps the loopback range {_LOOPBACK}")
    return net


def wan_netns(name: str) -> str:
    return WAN_PREFIX + name


def state_path(name: str) -> Path:
    return RUN_DIR / f"wan-{name}.json"


def leg_peer(owner: str) -> str:
    """The WAN-side end of `owner`'s veth: stable, short enough for IFNAMSIZ, distinct per owner."""
    return "w" + hashlib.sha256(owner.encode()).hexdigest()[:8]


def own_address(net: ipaddress.IPv4Network) -> str:
    return f"{net.network_address + 1}/{net.prefixlen}"


def leg_address(net: ipaddress.IPv4Network, taken: Iterable[str]) -> str:
    """The lowest free host from .10 upward (from .2 in a /29, which has no .10), never
    the WAN's own address nor one in `taken` ("a.b.c.d/len")."""
    used = {ipaddress.IPv4Interface(address).ip for address in taken} | {net.network_address + 1}
    last = net.num_addresses - 2  # the broadcast address is no host
    first = FIRST_LEG_HOST if last >= FIRST_LEG_HOST else 2
    for offset in range(first, last + 1):
        host = net.network_address + offset
        if host not in used:
            return f"{host}/{net.prefixlen}"
    raise LabError(f"WAN {net} has no free address", "unplug a leg, or up a WAN with a larger --cidr")


# --- state and kernel ---------------------------------------------------------------

@contextmanager
def _locked() -> Iterator[None]:
    """One WAN change at a time on this machine (two labs plugging at once)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(RUN_DIR / "wan.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(name: str) -> dict | None:
    path = state_path(check_wan_name(name))
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise LabError(f"{path} is not valid JSON: {exc}") from None


def _require(name: str) -> dict:
    state = _load(name)
    if state is None:
        raise LabError(f"NAME: no WAN named {name!r}", f"podnet wan up {name}; WANs here: {', '.join(list_wans()) or 'none'}")
    return state


def _save(state: dict) -> None:
    write_atomic(state_path(state["name"]), json.dumps(state, indent=1))


def _netns_exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def _link_exists(ns: str, ifname: str) -> bool:
    return ip("-n", ns, "link", "show", "dev", ifname, check=False).returncode == 0


def _delete_leg(ns: str, peer: str) -> str | None:
    """Delete a leg's WAN end (its veth peer goes with it); what went wrong, or None
    when it is gone. Gone also when the delete did not find it: a node namespace that
    `lab down` deleted takes its veth pair along later, in the kernel's own cleanup,
    and that can land between the look and the delete."""
    if not _link_exists(ns, peer):
        return None
    result = ip("-n", ns, "link", "del", peer, check=False)
    if result.returncode == 0 or not _link_exists(ns, peer):
        return None
    return f"ip link del {peer}: {result.stderr.strip()}"


def wan_up(name: str, cidr: str = DEFAULT_CIDR) -> dict:
    """Create the WAN (or return it when it is up with this cidr)."""
    check_wan_name(name)
    net = check_cidr(cidr)
    ns = wan_netns(name)
    with _locked():
        state = _load(name)
        if state is not None and state["cidr"] != str(net):
            raise LabError(f"--cidr: WAN {name} is up with {state['cidr']}, not {net}",
                           f"give --cidr {state['cidr']}, or podnet wan down {name} first")
        if _netns_exists(ns):
            if state is None:
                raise LabError(f"namespace {ns} exists but WAN {name} has no state", f"podnet wan down {name} removes it")
            return state
        # new, or recorded but its namespace is gone (a reboot): build it again, legs kept as "gone"
        state = state or {"name": name, "cidr": str(net), "netns": ns, "address": own_address(net), "legs": {}}
        _save(state)  # recorded before it is made
        try:
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "add", BRIDGE, "type", "bridge")
            ip("-n", ns, "addr", "add", state["address"], "dev", BRIDGE)
            ip("-n", ns, "link", "set", BRIDGE, "up")
        except BaseException:
            if _netns_exists(ns):
                ip("netns", "del", ns, check=False)
            remove(state_path(name))
            raise
        return state


def plug(wan: str, netns: str, owner: str, ifname: str = DEFAULT_IFNAME) -> str:
    """Plug namespace `netns` into the WAN as leg `owner`; its address ("a.b.c.d/len")."""
    with _locked():
        state = _require(wan)
        ns, legs = state["netns"], state["legs"]
        if not _netns_exists(ns):
            raise LabError(f"WAN {wan} is down: no namespace {ns}", f"podnet wan up {wan} --cidr {state['cidr']}")
        if not _netns_exists(netns):
            raise LabError(f"netns: no namespace {netns!r}", f"{NETNS_DIR / netns} does not exist")
        leg, peer = legs.get(owner), leg_peer(owner)
        if leg is not None and _link_exists(ns, leg["peer"]):
            if (leg["netns"], leg["ifname"]) != (netns, ifname):
                raise LabError(f"owner: {owner!r} is plugged into WAN {wan} from {leg['netns']} ({leg['ifname']})",
                               "unplug it first")
            return leg["address"]
        clash = next((other for other, entry in legs.items() if other != owner and entry["peer"] == peer), None)
        if clash is not None:
            raise LabError(f"owner: {owner!r} and {clash!r} both map to link {peer} in WAN {wan}", "rename one")
        if _link_exists(netns, ifname):
            raise LabError(f"ifname: {ifname} already exists in {netns} and is not a leg of WAN {wan}",
                           "choose another ifname, or remove that link")
        address = leg["address"] if leg else leg_address(ipaddress.IPv4Network(state["cidr"]),
                                                          (entry["address"] for entry in legs.values()))
        legs[owner] = {"netns": netns, "ifname": ifname, "peer": peer, "address": address}
        _save(state)  # recorded before it is made
        try:
            ip("-n", ns, "link", "add", peer, "type", "veth", "peer", "name", ifname, "netns", netns)
            ip("-n", ns, "link", "set", peer, "master", BRIDGE, "up")
            ip("-n", netns, "addr", "add", address, "dev", ifname)
            ip("-n", netns, "link", "set", ifname, "up")
        except BaseException:
            ip("-n", ns, "link", "del", peer, check=False)
            if leg is None:
                del legs[owner]
                _save(state)
            raise
        return address


def unplug(wan: str, owner: str) -> bool:
    """Delete `owner`'s leg (the WAN end takes its veth peer along) and forget it."""
    with _locked():
        state = _require(wan)
        leg = state["legs"].get(owner)
        if leg is None:
            return False
        problem = _delete_leg(state["netns"], leg["peer"])
        if problem:
            raise LabError(f"WAN {wan}: could not unplug {owner}: {problem}")
        del state["legs"][owner]
        _save(state)
        return True


def wan_status(name: str) -> dict:
    """The state, whether the namespace is there, and per leg whether its link is "up" or "gone"."""
    state = _require(name)
    present = _netns_exists(state["netns"])
    legs = {owner: {**leg, "link": "up" if present and _link_exists(state["netns"], leg["peer"]) else "gone"}
            for owner, leg in state["legs"].items()}
    return {**state, "present": present, "legs": legs}


def wan_down(name: str) -> list[str]:
    """Delete every leg, the namespace, then the state file; the problems (none: clean).
    The state stays when something could not be deleted, so `down` can be run again."""
    with _locked():
        state = _load(name)
        ns = state["netns"] if state else wan_netns(name)
        if not ns.startswith(WAN_PREFIX):
            raise LabError(f"refusing to delete namespace {ns!r}: not a WAN namespace ({WAN_PREFIX}*)",
                           f"{state_path(name)} names it")
        problems = []
        present = _netns_exists(ns)
        for owner, leg in (state or {}).get("legs", {}).items():
            problem = _delete_leg(ns, leg["peer"]) if present else None
            if problem:
                problems.append(f"leg {owner}: {problem}")
        if present:
            result = ip("netns", "del", ns, check=False)
            if result.returncode != 0:
                problems.append(f"ip netns del {ns}: {result.stderr.strip()}")
        if not problems:
            remove(state_path(name))
        return problems


def list_wans() -> list[str]:
    return sorted(path.name[len("wan-"):-len(".json")] for path in RUN_DIR.glob("wan-*.json"))
