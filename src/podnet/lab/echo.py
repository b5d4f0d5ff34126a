"""The lab's built-in echo server: one process per node (serving each of its pods,
every socket opened inside that pod's namespace) or for the outside world, serving
every declared port, so probes learn *who* answered.

- TCP: each line received is answered with `<name> <line>`; a request that starts like
  HTTP (`GET /...`) gets an HTTP/1.0 200 whose body is `<name>\\n`, so curl and urllib
  work too. With `--report-peer` (the outside world and pods: services check which source
  address a backend sees), `GET /peer` answers with
  the client's address instead, so a probe can verify masquerade.
- UDP (IPv4): every datagram is answered with `<name>`, from the address it was sent to.

`python -m podnet.lab.echo --name NAME [--tcp PORT]... [--udp PORT]... [--ready FILE] [--report-peer]`
binds everything first, then creates FILE (the lab waits for it), then serves until
SIGTERM. `--spec FILE.json` instead serves a list of {name, tcp, udp, netns} (one
process for all the pods of a node). One thread waits on every listening socket; each
TCP connection gets its own thread.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import selectors
import signal
import socket
import socketserver
import struct
import sys
from pathlib import Path

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ")


def peer_address(client: tuple) -> str:
    """The client's IPv4 address as seen on a dual-stack socket (`::ffff:a.b.c.d` -> `a.b.c.d`)."""
    host = str(client[0])
    return host.removeprefix("::ffff:")


def tcp_handler(name: str, report_peer: bool = False) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        timeout = 30

        def handle(self) -> None:
            try:
                first = self.rfile.readline(65536)
                if first.startswith(HTTP_METHODS):
                    while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                        pass
                    peer = report_peer and first.split(b" ", 2)[1:2] == [b"/peer"]
                    body = f"{peer_address(self.client_address) if peer else name}\n".encode()
                    self.wfile.write(
                        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
                    )
                    return
                line = first
                while line:
                    self.wfile.write(name.encode() + b" " + line.rstrip(b"\r\n") + b"\n")
                    line = self.rfile.readline(65536)
            except OSError:
                pass

    return Handler


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


def udp_serve(sock: socket.socket, name: str) -> None:
    """Answer every datagram with `name` until the socket fails (see _udp_reply)."""
    reply = name.encode()
    while _udp_reply(sock, reply):
        pass


class _TCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    address_family = socket.AF_INET6
    request_queue_size = 128  # a probe matrix opens dozens of connections at once


def _dual_stack(server: socketserver.BaseServer) -> None:
    server.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)


def _udp_reply(sock: socket.socket, reply: bytes) -> bool:
    """Answer one pending datagram with `reply`, from the address it was sent to (a
    wildcard socket would pick the source by route, and a masqueraded flow would drop
    it). False when the socket itself failed."""
    try:
        _data, ancdata, _flags, addr = sock.recvmsg(65535, socket.CMSG_SPACE(20))
    except OSError:
        return False
    cmsgs = []
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            _ifindex, _spec, dst = struct.unpack("=i4s4s", data[:12])
            cmsgs = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, dst, bytes(4)))]
        elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            cmsgs = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, data[:16] + struct.pack("=I", 0))]
    with contextlib.suppress(OSError):
        sock.sendmsg([reply], cmsgs, 0, addr)
    return True


def _udp_socket(family: int, port: int) -> socket.socket | None:
    """A UDP socket on every address of `family` that reports each datagram's
    destination; None for IPv6 where the namespace has none (IPv6 disabled)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            sock.bind(("::", port))
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if family == socket.AF_INET6 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            return None
        raise
    return sock


class _Stop(Exception):
    pass


def _bind(name: str, tcp: list[int], udp: list[int], report_peer: bool,
          servers: list[socketserver.BaseServer], udp_socks: list[tuple[socket.socket, bytes]]) -> None:
    for port in tcp:
        server = _TCP(("::", port), tcp_handler(name, report_peer), bind_and_activate=False)
        try:
            _dual_stack(server)
            server.server_bind()
            server.server_activate()
            server.socket.setblocking(False)  # served from a selector: never block in accept
        except OSError:
            server.server_close()
            raise
        servers.append(server)
    for port in udp:  # one socket per family: a dual-stack pod answers on both
        for family in (socket.AF_INET, socket.AF_INET6):
            sock = _udp_socket(family, port)
            if sock is not None:
                udp_socks.append((sock, name.encode()))


def serve_many(specs: list[dict], ready: str | None = None, report_peer: bool = False) -> None:
    """Serve several echo identities from one process: each spec is {"name", "tcp",
    "udp", and optionally "netns" (a namespace path)}. A spec's sockets are created
    inside its namespace (a socket keeps the namespace it was created in), so one
    process serves every pod of a node exactly like one echo process per pod would.
    Binds everything, signals readiness, serves until SIGTERM/SIGINT."""
    from podnet.kernel.netns import entered, open_netns

    servers: list[socketserver.BaseServer] = []
    udp_socks: list[tuple[socket.socket, bytes]] = []
    for spec in specs:
        args = (str(spec["name"]), [int(p) for p in spec.get("tcp", [])], [int(p) for p in spec.get("udp", [])])
        if spec.get("netns"):
            fd = open_netns(str(spec["netns"]))
            try:
                with entered(fd):
                    _bind(*args, report_peer, servers, udp_socks)
            finally:
                os.close(fd)
        else:
            _bind(*args, report_peer, servers, udp_socks)
    selector = selectors.DefaultSelector()
    for server in servers:
        selector.register(server.socket, selectors.EVENT_READ, ("tcp", server))
    for sock, reply in udp_socks:
        selector.register(sock, selectors.EVENT_READ, ("udp", (sock, reply)))

    def stop(*_: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready:
        Path(ready).touch()
    try:
        while True:  # one thread waits on every socket: no idle wakeups
            for key, _events in selector.select():
                kind, target = key.data
                if kind == "tcp":
                    target._handle_request_noblock()  # accept, then a thread per connection
                else:
                    _udp_reply(*target)
    except _Stop:
        pass
    finally:
        selector.close()
        for server in servers:
            server.server_close()
        for sock, _reply in udp_socks:
            sock.close()


def serve(name: str, tcp: list[int], udp: list[int], ready: str | None = None, report_peer: bool = False) -> None:
    """Bind all ports (IPv4 and IPv6), signal readiness, serve until SIGTERM/SIGINT."""
    serve_many([{"name": name, "tcp": tcp, "udp": udp}], ready, report_peer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podnet-lab-echo")
    parser.add_argument("--name")
    parser.add_argument("--spec", help="JSON file: a list of {name, tcp, udp, netns} served by this one process")
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--udp", type=int, action="append", default=[])
    parser.add_argument("--ready", help="file created once every port is bound")
    parser.add_argument("--report-peer", action="store_true", help="HTTP GET /peer answers the client's address")
    args = parser.parse_args(argv)
    if not args.spec and not args.name:
        parser.error("--name or --spec is required")
    try:
        if args.spec:
            serve_many(json.loads(Path(args.spec).read_text()), args.ready, args.report_peer)
        else:
            serve(args.name, args.tcp, args.udp, args.ready, args.report_peer)
    except (OSError, ValueError) as exc:
        print(f"echo {args.name or args.spec}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
