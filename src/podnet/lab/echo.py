"""The lab's built-in echo server: one process per pod (or the outside world) serving
every declared port, so probes learn *who* answered.

- TCP: each line received is answered with `<name> <line>`; a request that starts like
  HTTP (`GET /...`) gets an HTTP/1.0 200 whose body is `<name>\\n`, so curl and urllib
  work too. With `--report-peer` (the lab's outside world), `GET /peer` answers with
  the client's address instead, so a probe can verify masquerade.
- UDP (IPv4): every datagram is answered with `<name>`, from the address it was sent to.

`python -m podnet.lab.echo --name NAME [--tcp PORT]... [--udp PORT]... [--ready FILE] [--report-peer]`
binds everything first, then creates FILE (the lab waits for it), then serves until
SIGTERM. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
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
    """Answer every datagram with `name`, from the address it was sent to (a wildcard
    socket would pick the source by route, and a masqueraded flow would drop it)."""
    reply = name.encode()
    while True:
        try:
            _data, ancdata, _flags, addr = sock.recvmsg(65535, socket.CMSG_SPACE(12))
        except OSError:
            return
        cmsgs = []
        for level, kind, data in ancdata:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
                _ifindex, _spec, dst = struct.unpack("=i4s4s", data[:12])
                cmsgs = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, dst, bytes(4)))]
        with contextlib.suppress(OSError):
            sock.sendmsg([reply], cmsgs, 0, addr)


class _TCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    address_family = socket.AF_INET6


def _dual_stack(server: socketserver.BaseServer) -> None:
    server.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


def serve(name: str, tcp: list[int], udp: list[int], ready: str | None = None, report_peer: bool = False) -> None:
    """Bind all ports (IPv4 and IPv6), signal readiness, serve until SIGTERM/SIGINT."""
    servers: list[socketserver.BaseServer] = []
    for port in tcp:
        server = _TCP(("::", port), tcp_handler(name, report_peer), bind_and_activate=False)
        _dual_stack(server)
        server.server_bind()
        server.server_activate()
        servers.append(server)
    udp_socks = []
    for port in udp:  # IPv4 only: the lab's pods and underlay are IPv4
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind(("0.0.0.0", port))
        udp_socks.append(sock)
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    for sock in udp_socks:
        threading.Thread(target=udp_serve, args=(sock, name), daemon=True).start()
    if ready:
        Path(ready).touch()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
    for server in servers:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podnet-lab-echo")
    parser.add_argument("--name", required=True)
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--udp", type=int, action="append", default=[])
    parser.add_argument("--ready", help="file created once every port is bound")
    parser.add_argument("--report-peer", action="store_true", help="HTTP GET /peer answers the client's address")
    args = parser.parse_args(argv)
    try:
        serve(args.name, args.tcp, args.udp, args.ready, args.report_peer)
    except OSError as exc:
        print(f"echo {args.name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
