"""Reading IP addresses and networks from outside: users, configs, runtimes, stores.

Python's ipaddress accepts IPv6 scope IDs (`fe80::1%<anything>`, newlines and ";"
included) and str() keeps them, so a value that passed ipaddress could still carry a
script into `nft -f -`. Every address podnet reads goes through `address`, `network`
or `interface` here, which refuse any "%". Networks that podnet hands out (a network's
subnets, IPAM ranges) must also leave the machine's own address space alone:
`check_assignable` refuses the whole address space, "this network", loopback,
link-local (which holds the cloud metadata address 169.254.169.254), multicast and the
reserved 240.0.0.0/4, in both families.

Pure, standard library only (podnet-ipam reads its ranges through it).
"""

from __future__ import annotations

import ipaddress

from podnet.errors import InvalidConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

NOT_ASSIGNABLE: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why) for net, why in (
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
        ("169.254.0.0/16", "link-local (169.254.0.0/16, with the cloud metadata address)"),
        ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
        ("::/128", "the unspecified address (::)"),
        ("::1/128", "loopback (::1)"),
        ("fe80::/10", "link-local (fe80::/10)"),
        ("ff00::/8", "multicast (ff00::/8)"),
    )
)


def refuse_scope(value: str, where: str) -> str:
    """`value` unless it holds a "%" (an IPv6 scope ID, or anything riding on one)."""
    if "%" in value:
        raise InvalidConfig(f"{where} {value!r} carries a scope ID ('%'), which podnet does not take")
    return value


def _text(value: object, where: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidConfig(f"{where} must be {what} string, got {value!r}")
    return refuse_scope(value, where)


def address(value: object, where: str) -> IPAddress:
    """An IP address, no scope ID."""
    text = _text(value, where, "an IP address")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidConfig(f"{where} {text!r} is not a valid IP address") from None


def network(value: object, where: str, strict: bool = True) -> IPNetwork:
    """A CIDR, no scope ID; `strict`: no host bits set (the hint names the fix)."""
    text = _text(value, where, "a CIDR")
    try:
        return ipaddress.ip_network(text, strict=strict)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidConfig(f"{where} {text!r} is not a valid CIDR", "e.g. 10.89.1.0/24") from None
    raise InvalidConfig(f"{where} {text!r} has host bits set", f"did you mean {loose}?")


def interface(value: object, where: str) -> IPInterface:
    """An address with its prefix length (`10.89.1.5/24`), no scope ID."""
    text = _text(value, where, "an address/prefix")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidConfig(f"{where} {text!r} is not an address with a prefix length") from None


def check_assignable(net: IPNetwork, where: str) -> IPNetwork:
    """A subnet podnet may number containers from: not the whole address space, and
    overlapping none of the ranges the machine keeps for itself."""
    if net.prefixlen == 0:
        raise InvalidConfig(f"{where} {net} is the whole address space", "give the subnet the containers get")
    for reserved, why in NOT_ASSIGNABLE:
        if reserved.version == net.version and net.overlaps(reserved):  # type: ignore[arg-type]
            raise InvalidConfig(f"{where} {net} overlaps {why}", "containers cannot be numbered from it")
    return net
