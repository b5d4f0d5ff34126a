"""The nftables table inside a meshed pod's namespace that hands its TCP to the
sidecar (pure): `inet podnet-mesh`, one atomic script.

    prerouting (nat)  inbound TCP to a port the app serves -> redirect :15006
    output (nat)      the pod's own outbound TCP            -> redirect :15001
                      except the sidecar's (meta skuid 1337), loopback, and IPv6
                      (the sidecar listens on IPv4 only)
    input (filter)    inbound IPv6 TCP to a port the app serves -> TCP reset: in a
                      dual-stack cluster neither mTLS nor MeshAuthorizationPolicy can
                      be walked round over IPv6 (a client retries the IPv4 address)

REDIRECT keeps the original destination in conntrack, where HAProxy reads it
(SO_ORIGINAL_DST): the sidecar knows which service or pod the app asked for.
Unmeshed pods have no such table and are untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

from podnet.mesh.spec import INBOUND_PORT, OUTBOUND_PORT, SIDECAR_UID

TABLE = "podnet-mesh"
IPV6_REFUSED = "meshed app port over IPv6: the sidecar is IPv4 only"


def intercept_script(inbound_ports: Iterable[int]) -> str:
    ports = sorted(set(inbound_ports))
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{",
             "  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;",
             '    iifname "lo" return']
    if ports:
        lines.append(f"    meta nfproto ipv4 tcp dport {{ {', '.join(map(str, ports))} }} redirect to :{INBOUND_PORT}")
    lines += ["  }", "  chain output {", "    type nat hook output priority -100; policy accept;",
              f"    meta skuid {SIDECAR_UID} return", '    oifname "lo" return',
              f"    meta nfproto ipv4 meta l4proto tcp redirect to :{OUTBOUND_PORT}", "  }"]
    if ports:  # the sidecar judges IPv4 only: IPv6 to the app is refused, never let past it
        lines += ["  chain input {", "    type filter hook input priority filter; policy accept;",
                  '    iifname "lo" accept',
                  f"    meta nfproto ipv6 tcp dport {{ {', '.join(map(str, ports))} }} "
                  f'reject with tcp reset comment "{IPV6_REFUSED}"', "  }"]
    return "\n".join(lines + ["}"]) + "\n"


def removal_script() -> str:
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n"
