"""Stable names derived from an attachment's key.

An attachment is keyed by (network name, container ID, ifname). Kernel objects cannot
carry that key (interface names fit 15 bytes, nft comments should stay short), so
they carry hashes of it instead; DEL and GC find exactly one attachment's objects by
recomputing the hash. Standard library only: the thin plugin may import it.
"""

from __future__ import annotations

NET_ID_LEN = 8
ATTACH_ID_LEN = 12
HOST_VETH_PREFIX = "pn"
TOMBSTONE_PREFIX = "pnz"  # "z" is no hex digit: never a host veth's name
TOMBSTONE_TOKEN_LEN = 12
_HEX = frozenset("0123456789abcdef")


def net_id(network: str) -> str:
    """First 8 hex of sha256(network name): identifies a network in nft comments."""
    import hashlib  # imported on use: readers of names alone (is_ifname) skip OpenSSL's ~3 ms

    return hashlib.sha256(network.encode()).hexdigest()[:NET_ID_LEN]


def attach_id(network: str, container_id: str, ifname: str) -> str:
    """First 12 hex of sha256("network\\0cid\\0ifname"): one attachment, everywhere.

    NUL separators make the key unambiguous ("a" + "bc" never equals "ab" + "c").
    """
    import hashlib

    key = f"{network}\0{container_id}\0{ifname}".encode()
    return hashlib.sha256(key).hexdigest()[:ATTACH_ID_LEN]


def host_veth_name(attach: str) -> str:
    """Host-side veth name: "pn" + 11 hex = 13 bytes, inside IFNAMSIZ (15)."""
    return HOST_VETH_PREFIX + attach[:11]


def is_host_veth(name: str) -> bool:
    """Is `name` shaped like a pod's host veth (host_veth_name), or the tombstone one
    becomes on DEL (tombstone_name)? The node loop ignores their kernel announcements
    (kernel/rtnl_watch.py): they come and go with every ADD and DEL."""
    tail = name[len(HOST_VETH_PREFIX):]
    if name.startswith(HOST_VETH_PREFIX) and len(tail) == 11 and all(c in _HEX for c in tail):
        return True
    return is_tombstone(name)


def tombstone_name(token: str) -> str:
    """A veth pair's name between DEL and its deletion (kernel/tombstone.py): "pnz" +
    12 random hex = 15 bytes, unlike any host veth ("pn" + 11 hex) or user link."""
    if len(token) != TOMBSTONE_TOKEN_LEN or not set(token) <= _HEX:
        raise ValueError(f"a tombstone token is {TOMBSTONE_TOKEN_LEN} hex digits, not {token!r}")
    return TOMBSTONE_PREFIX + token


def is_tombstone(name: str) -> bool:
    """Is `name` shaped like tombstone_name()? (The sweep also wants its alias.)"""
    tail = name[len(TOMBSTONE_PREFIX):]
    return name.startswith(TOMBSTONE_PREFIX) and len(tail) == TOMBSTONE_TOKEN_LEN and set(tail) <= _HEX


def is_ifname(name: object) -> bool:
    """A Linux interface name as the kernel takes it (dev_valid_name): 1-15 bytes, not
    "." or "..", no "/", ":" or whitespace. The one rule for names from configs, from
    the CNI environment and from records read back from a store."""
    if not isinstance(name, str) or name in (".", ".."):
        return False
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return False
    return 0 < size <= 15 and not any(c in name for c in "/:\0") and not any(c.isspace() for c in name)
