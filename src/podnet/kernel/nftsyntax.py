"""Tokens of nft scripts (pure): the one way a variable value enters `nft -f -`.

Why one module: an nft script is a program. A value carrying a quote, a newline or a
semicolon ends its statement and starts another (`"; flush ruleset`), and without
this only nft's lexer would stand in the way. The renderers (kernel/nat/render.py,
kernel/isolation.py) build every variable token here; each function returns the
token's exact text or raises InvalidConfig, so nothing that could read as more than
one token ever reaches a script:

- `comment(text)`: a quoted comment: printable ASCII without `"`, `\\`, `;` (so no
  newline either), cut to nft's 128-byte limit.
- `ifname(name)`: a quoted interface name: the kernel's rule (naming.is_ifname) and a
  narrow character set (no quote, no `*`, which nft reads as a wildcard).
- `address(addr)` / `network(net)`: str() of an ipaddress object, never a scope ID
  (`fe80::1%<anything>` keeps the text after "%" in str()); a host route is printed
  as its bare address, as nft prints it back.
- `integer(value, lo, hi)`: a decimal integer in range (ports, handles).
- `keyword(value, allowed)`: one of a fixed set of words (families, protocols, chains).
- `identifier(name)`: a name made from data (a chain, set or map named after a
  service): a letter, then letters, digits, `_` or `-`, at most 64 bytes.
- `elements(tokens)`: an anonymous set `{ a, b }` of tokens made here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable

from podnet import naming
from podnet.errors import InvalidConfig

COMMENT_MAX = 128  # bytes: NFTNL_UDATA_COMMENT_MAXLEN, nft refuses a longer comment
FORBIDDEN = frozenset('"\\;')  # inside quotes too: no token ever carries one
_IFNAME = re.compile(r"[A-Za-z0-9_.@+=-]{1,15}")
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_safe_text(text: object) -> bool:
    """Printable ASCII (space to "~") without a quote, backslash or semicolon."""
    return isinstance(text, str) and all(" " <= c <= "~" and c not in FORBIDDEN for c in text)


def comment(text: str) -> str:
    """`"text"`, cut to 128 bytes (ASCII: bytes are characters)."""
    if not is_safe_text(text):
        raise InvalidConfig(f"nft comment {text!r} must be printable ASCII without quote, backslash or ';'")
    return f'"{text[:COMMENT_MAX]}"'


def is_ifname(name: object) -> bool:
    """A name the kernel takes that is also a single safe nft string."""
    return naming.is_ifname(name) and isinstance(name, str) and _IFNAME.fullmatch(name) is not None


def ifname(name: str) -> str:
    """`"name"` for iifname/oifname matches."""
    if not is_ifname(name):
        raise InvalidConfig(f"interface name {name!r} cannot be put in an nft rule",
                            "names of 1-15 characters of A-Z a-z 0-9 _ . @ + = -")
    return f'"{name}"'


def address(addr: IPAddress) -> str:
    """An IP address object as nft text; refuses anything else and scope IDs."""
    if not isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise InvalidConfig(f"not an IP address: {addr!r}")
    return _no_scope(str(addr))


def network(net: IPNetwork) -> str:
    """A network object as nft text; a host route is its bare address (nft prints it so)."""
    if not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
        raise InvalidConfig(f"not an IP network: {net!r}")
    if net.prefixlen == net.max_prefixlen:
        return address(net.network_address)
    return _no_scope(str(net))


def _no_scope(text: str) -> str:
    if "%" in text:
        raise InvalidConfig(f"address {text!r} carries a scope ID ('%'), which never goes into nft")
    return text


def integer(value: int, lo: int, hi: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidConfig(f"expected an integer {lo}..{hi} in an nft rule, got {value!r}")
    return str(value)


def port(value: int) -> str:
    return integer(value, 1, 65535)


def keyword(value: str, allowed: Collection[str]) -> str:
    """One of `allowed` (each a plain identifier), as is."""
    if not isinstance(value, str) or value not in allowed or not _IDENTIFIER.fullmatch(value):
        raise InvalidConfig(f"{value!r} is not one of {', '.join(sorted(allowed))}")
    return value


def identifier(name: str) -> str:
    """A table, chain, set or map name built from data, as is (nft reads it as one word)."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise InvalidConfig(f"{name!r} is not an nft name (a letter, then letters, digits, '_' or '-'; "
                            "at most 64 bytes)")
    return name


def elements(tokens: Iterable[str]) -> str:
    """`{ a, b }` of tokens built by this module; an empty set is refused (nft would)."""
    items = list(tokens)
    if not items:
        raise InvalidConfig("an nft set needs at least one element")
    return "{ " + ", ".join(items) + " }"
