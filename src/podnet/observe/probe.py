"""One connectivity probe, run inside the source namespace as a script.

`nsenter --net=/run/netns/NS python -I -S probe.py '{"kind": ..., "dst": ..., ...}'`
prints one JSON line `{"ok": bool, "detail": str, "ms": float}` and exits 0 (a probe
that cannot even start is the runner's failure). Standard library only, no podnet
import: it runs with `-I -S` so it starts in a few milliseconds.

Kinds (every one bounded by `timeout` seconds):

- `icmp`: one echo request on a raw socket; ok on the reply from `dst`.
- `tcp`: connect to `dst:port`, send a line, ok when the answer starts with `expect`
  (the lab's echo servers answer `<pod name> <line>`, so the right pod must answer).
- `udp`: one datagram, ok when the answer is `expect`.
- `http`: GET `path` from `dst:port`; ok when the body is `expect`.
- `pmtu`: DF set (IP_PMTUDISC_DO) on a UDP socket: a datagram of `mtu - 28` bytes must
  be answered by `expect`, one byte more must fail locally with EMSGSIZE (IPv6: never
  fragmented by routers, `mtu - 48` bytes).

Every kind speaks the family of `dst` (an IPv6 address: ICMPv6, AF_INET6 sockets).
- `refused`: a TCP connect must be refused (a service without ready backends must
  refuse at once, not time out).

- `dns`: one query for `name` (`qtype` A, AAAA, SRV or PTR) to `dst:port` over UDP (or
  TCP with `"tcp": true`); the detail is `answer <records, sorted, comma-joined>` or
  the rcode (`NXDOMAIN`...), ok when it equals `expect` (a DNS server answering at all,
  for instance at a ClusterIP under NetworkPolicy, is what the lab's checks look at).

`tcp` and `udp` take `expect_any` (a list) instead of `expect`: any of those names may
answer (a service's backends).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
import time

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
IP_MTU = getattr(socket, "IP_MTU", 14)
UDP_IP_OVERHEAD = 28  # IPv4 header 20 + UDP (or ICMP) header 8
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
IPV6_PMTUDISC_DO = 2
IPV6_MTU = getattr(socket, "IPV6_MTU", 24)
UDP_IP6_OVERHEAD = 48  # IPv6 header 40 + UDP header 8


def family(dst: str) -> int:
    """AF_INET6 for an IPv6 address, else AF_INET: every kind probes either family."""
    return socket.AF_INET6 if ":" in dst else socket.AF_INET


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp(dst: str, timeout: float) -> tuple[bool, str]:
    if family(dst) == socket.AF_INET6:
        return icmp6(dst, timeout)
    ident, payload = os.getpid() & 0xFFFF, b"podnet-connectivity"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, 1) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (dst, 0))
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data, addr = sock.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            kind, _code, _sum, got_id = struct.unpack("!BBHH", data[ihl:ihl + 6])
            if addr[0] == dst and kind == 0 and got_id == ident:
                return True, f"echo reply from {dst}"
            if kind == 3 and _about_us(data[ihl + 8:], ident):
                return False, f"ICMP destination unreachable (code {_code}) from {addr[0]}"


def icmp6(dst: str, timeout: float) -> tuple[bool, str]:
    """ICMPv6 echo: the kernel fills in the checksum and strips the IPv6 header."""
    ident, payload = os.getpid() & 0xFFFF, b"podnet-connectivity"
    packet = struct.pack("!BBHHH", 128, 0, 0, ident, 1) + payload
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        sock.sendto(packet, (dst, 0))
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data, addr = sock.recvfrom(2048)
            kind, code, _sum, got_id = struct.unpack("!BBHH", data[:6])
            if socket.inet_pton(socket.AF_INET6, addr[0]) == socket.inet_pton(socket.AF_INET6, dst) \
                    and kind == 129 and got_id == ident:
                return True, f"echo reply from {dst}"
            inner = data[8:]  # the quoted packet: IPv6 header 40, then our echo request
            if kind == 1 and len(inner) >= 46 and inner[40] == 128 and struct.unpack("!H", inner[44:46])[0] == ident:
                return False, f"ICMPv6 destination unreachable (code {code}) from {addr[0]}"


def _about_us(inner: bytes, ident: int) -> bool:
    """Does an ICMP error quote our echo request (the original IP header + 8 bytes)?"""
    if len(inner) < 20:
        return False
    ihl = (inner[0] & 0x0F) * 4
    return len(inner) >= ihl + 6 and inner[ihl] == 8 and struct.unpack("!H", inner[ihl + 4:ihl + 6])[0] == ident


def tcp(dst: str, port: int, expect: str, timeout: float) -> tuple[bool, str]:
    with socket.create_connection((dst, port), timeout=timeout) as sock:
        sock.sendall(b"podnet-connectivity\n")
        answer = sock.makefile("rb").readline(4096).decode(errors="replace").strip()
    return answer.split(" ", 1)[0] == expect, f"answer {answer!r}"


def udp(dst: str, port: int, expect: str, timeout: float) -> tuple[bool, str]:
    with socket.socket(family(dst), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((dst, port))
        sock.send(b"podnet-connectivity")
        answer = sock.recv(4096).decode(errors="replace").strip()
    return answer == expect, f"answer {answer!r}"


def http(dst: str, port: int, path: str, expect: str, timeout: float) -> tuple[bool, str]:
    with socket.create_connection((dst, port), timeout=timeout) as sock:
        host = f"[{dst}]" if family(dst) == socket.AF_INET6 else dst
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    raw = b"".join(chunks).decode(errors="replace")
    status, _, body = raw.partition("\r\n\r\n")
    if not status.startswith("HTTP/1.") or " 200 " not in status.split("\r\n", 1)[0] + " ":
        return False, f"bad answer {status.splitlines()[0] if status else raw!r}"
    body = body.strip()
    if path == "/peer":  # the outside world reports the address it saw: masquerade check
        ok = body == expect
        return ok, f"outside saw the client as {body}" + ("" if ok else f", not as {expect} (masquerade?)")
    return body == expect, f"answer {body!r}"


def pmtu(dst: str, port: int, expect: str, timeout: float) -> tuple[bool, str]:
    v6 = family(dst) == socket.AF_INET6
    with socket.socket(family(dst), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sock.connect((dst, port))
        mtu = sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU) if v6 else sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
        size = mtu - (UDP_IP6_OVERHEAD if v6 else UDP_IP_OVERHEAD)
        sock.send(b"x" * size)
        try:
            answer = sock.recv(4096).decode(errors="replace").strip()
        except TimeoutError:
            return False, f"no answer to {size} B with DF (path MTU {mtu}): dropped on the way?"
        except OSError as exc:
            return False, f"{size} B with DF (path MTU {mtu}): {exc.strerror or exc}"
        if answer != expect:
            return False, f"{size} B with DF: answer {answer!r}"
        try:
            sock.send(b"x" * (size + 1))
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return True, f"MTU {mtu}: {size} B with DF answered, {size + 1} B refused (EMSGSIZE)"
            return False, f"{size + 1} B with DF: {exc.strerror or exc} (expected EMSGSIZE)"
        return False, f"{size + 1} B with DF was sent although the path MTU is {mtu}"


def refused(dst: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        socket.create_connection((dst, port), timeout=timeout).close()
    except ConnectionRefusedError:
        return True, "refused"
    return False, "connected (expected a refusal)"


DNS_TYPES = {"A": 1, "PTR": 12, "AAAA": 28, "SRV": 33}
DNS_RCODES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _dns_name(data: bytes, at: int) -> tuple[str, int]:
    """The name at `at` (following compression pointers) and the offset after it."""
    labels, end, hops = [], None, 0
    while True:
        size = data[at]
        if size & 0xC0 == 0xC0:
            end = at + 2 if end is None else end
            at, hops = ((size & 0x3F) << 8) | data[at + 1], hops + 1
            if hops > 32:
                raise ValueError("compression loop")
            continue
        if size == 0:
            return ".".join(labels), (at + 1 if end is None else end)
        labels.append(data[at + 1:at + 1 + size].decode("ascii", "replace"))
        at += 1 + size


def _dns_rdata(data: bytes, rtype: int, at: int, size: int) -> str:
    if rtype == 1:
        return socket.inet_ntop(socket.AF_INET, data[at:at + size])
    if rtype == 28:
        return socket.inet_ntop(socket.AF_INET6, data[at:at + size])
    if rtype == 33:
        priority, weight, port = struct.unpack("!HHH", data[at:at + 6])
        return f"{priority} {weight} {port} {_dns_name(data, at + 6)[0]}"
    return _dns_name(data, at)[0]


def dns(dst: str, port: int, name: str, qtype: str, timeout: float, over_tcp: bool) -> tuple[bool, str]:
    ident = os.getpid() & 0xFFFF
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.strip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", DNS_TYPES[qtype], 1)
    with socket.socket(family(dst), socket.SOCK_STREAM if over_tcp else socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((dst, port))
        if over_tcp:
            sock.sendall(struct.pack("!H", len(query)) + query)
            size, data = None, b""
            while size is None or len(data) < size + 2:
                chunk = sock.recv(65535)
                if not chunk:
                    return False, "connection closed"
                data += chunk
                size = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            data = data[2:]
        else:
            sock.send(query)
            data = sock.recv(65535)
    got_id, flags, _qd, answers = struct.unpack("!HHHH", data[:8])
    if got_id != ident:
        return False, "a reply to another query"
    if flags & 0xF:
        return False, DNS_RCODES.get(flags & 0xF, f"rcode {flags & 0xF}")
    at, records = _dns_name(data, 12)[1] + 4, []
    for _ in range(answers):
        at = _dns_name(data, at)[1]
        rtype, _cls, _ttl, size = struct.unpack("!HHIH", data[at:at + 10])
        if rtype == DNS_TYPES[qtype]:
            records.append(_dns_rdata(data, rtype, at + 10, size))
        at += 10 + size
    return True, "answer " + ",".join(sorted(records))


def run(spec: dict) -> dict:
    """Run one probe described by `spec`; never raises."""
    timeout = float(spec.get("timeout", 2.0))
    kind, dst, port = spec["kind"], spec["dst"], int(spec.get("port", 0))
    expect = str(spec.get("expect", ""))
    anyof = [str(name) for name in spec.get("expect_any") or []]
    start = time.monotonic()
    try:
        if kind == "icmp":
            ok, detail = icmp(dst, timeout)
        elif kind in ("tcp", "udp") and anyof:
            _, detail = (tcp if kind == "tcp" else udp)(dst, port, "", timeout)
            ok = detail.startswith("answer ") and detail[8:-1].split(" ", 1)[0] in anyof
            expect = " or ".join(anyof)
        elif kind == "tcp":
            ok, detail = tcp(dst, port, expect, timeout)
        elif kind == "udp":
            ok, detail = udp(dst, port, expect, timeout)
        elif kind == "refused":
            ok, detail = refused(dst, port, timeout)
        elif kind == "http":
            ok, detail = http(dst, port, spec.get("path", "/"), expect, timeout)
        elif kind == "pmtu":
            ok, detail = pmtu(dst, port, expect, timeout)
        elif kind == "dns":
            _, detail = dns(dst, port or 53, spec["name"], spec.get("qtype", "A"), timeout, bool(spec.get("tcp")))
            ok = detail == expect
        else:
            ok, detail = False, f"unknown probe kind {kind!r}"
    except TimeoutError:
        ok, detail = False, f"timed out after {timeout:g}s"
    except OSError as exc:
        ok, detail = False, exc.strerror or str(exc)
    except (ValueError, IndexError, KeyError, struct.error) as exc:  # a reply that does not parse
        ok, detail = False, f"bad reply: {exc}"
    if not ok and expect and detail.startswith("answer"):
        detail += f", expected {expect!r}"
    return {"ok": ok, "detail": detail, "ms": round((time.monotonic() - start) * 1000, 1)}


def main(argv: list[str]) -> int:
    print(json.dumps(run(json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
