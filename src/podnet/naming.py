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
    """Is `name` shaped like a pod's host veth (host_veth_name)? The node loop ignores
    their kernel announcements (kernel/rtnl_watch.py)."""
    tail = name[len(HOST_VETH_PREFIX):]
    return name.startswith(HOST_VETH_PREFIX) and len(tail) == 11 and all(c in "0123456789abcdef" for c in tail)


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
