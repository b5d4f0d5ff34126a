"""The sleeve forwarder: `Sleeve` and `PeerRoute` (datapath.py, where the design is
described) and `python -m podnet.fabric.sleeve.forwarder ...`, one sleeve as a
process, for the lab tests and the bench (the agent runs `Sleeve` in-process). Stops on SIGTERM or
SIGINT; `--stats FILE` is rewritten every half second and at exit (JSON counters), and
its first appearance says the TUN is up. The session secret comes from a file (hex),
never the command line, which every process can read.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import threading

from podnet.fabric.sleeve.crypto import SleeveCryptoError, derive_sleeve_keys
from podnet.fabric.sleeve.datapath import PeerRoute, Sleeve, parse_address
from podnet.fabric.sleeve.routes import RouteError
from podnet.fabric.sleeve.tun import DEFAULT_MTU, TunError, TunOptions, check_name

STATS_EVERY = 0.5
__all__ = ["PeerRoute", "Sleeve", "main"]


def _pair(text: str, field: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    left, sep, right = text.partition("=")
    if not sep or not left or not right:
        parser.error(f"{field}: {text!r} is not NAME=VALUE")
    return left, right


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podnet.fabric.sleeve.forwarder")
    parser.add_argument("--tun", required=True, help="TUN device name (pnsl...)")
    parser.add_argument("--address", action="append", default=[], help="CIDR on the TUN")
    parser.add_argument("--listen", required=True, help="HOST[:PORT] of the UDP socket")
    parser.add_argument("--name", required=True, help="this peer's name")
    parser.add_argument("--peer", action="append", default=[], help="NAME=HOST[:PORT]")
    parser.add_argument("--route", action="append", default=[], help="PREFIX=PEER")
    parser.add_argument("--secret-file", help="hex session secret: encrypt to every peer")
    parser.add_argument("--queues", type=int, default=1, help="TUN queues = worker pairs")
    parser.add_argument("--threads-per-queue", type=int, choices=(1, 2), default=1,
                        help="1: both directions on one thread; 2: one thread each")
    parser.add_argument("--mtu", type=int, default=DEFAULT_MTU)
    parser.add_argument("--no-offload", action="store_true", help="no vnet header / GSO")
    parser.add_argument("--no-udp-gso", action="store_true",
                        help="one datagram per message, fragmented by IP (no UDP GSO/GRO)")
    parser.add_argument("--stats", help="file to write the counters to (JSON)")
    return parser


def _peers(args, parser) -> dict[str, PeerRoute]:
    secret = None
    if args.secret_file:
        try:
            with open(args.secret_file) as handle:
                secret = bytes.fromhex(handle.read().strip())
        except (OSError, ValueError) as exc:
            parser.error(f"--secret-file: {exc}")
    peers = {}
    for text in args.peer:
        name, where = _pair(text, "--peer", parser)
        try:
            host, port = parse_address(where)
            keys = derive_sleeve_keys(secret, args.name, name) if secret else (None, None)
        except (ValueError, SleeveCryptoError) as exc:
            parser.error(f"--peer {text!r}: {exc}")
        peers[name] = PeerRoute(host, port, *keys)
    return peers


def _write_stats(path: str, stats: dict) -> None:
    from podnet.fileio import write_atomic

    write_atomic(path, json.dumps(stats))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    peers = _peers(args, parser)
    routes = dict(_pair(text, "--route", parser) for text in args.route)
    for prefix, peer in routes.items():
        if peer not in peers:
            parser.error(f"--route {prefix}={peer}: no --peer named {peer!r}")
    for address in args.address:
        try:
            ipaddress.ip_interface(address)
        except ValueError:
            parser.error(f"--address: {address!r} is not an address/prefix")
    if not 1 <= args.queues <= 16:
        parser.error(f"--queues: {args.queues} must be 1..16")
    if not 576 <= args.mtu <= 65535:
        parser.error(f"--mtu: {args.mtu} must be 576..65535")
    try:
        check_name(args.tun)
    except TunError as exc:
        parser.error(f"--tun: {exc}")
    try:
        listen = parse_address(args.listen)
        sleeve = Sleeve(
            args.tun,
            listen,
            peers,
            local=args.name,
            routes=routes,
            addresses=tuple(args.address),
            options=TunOptions(queues=args.queues, offload=not args.no_offload, mtu=args.mtu),
            udp_gso=not args.no_udp_gso,
            threads_per_queue=args.threads_per_queue,
        )
    except (ValueError, RouteError) as exc:
        parser.error(f"--listen/--route: {exc}")
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    try:
        sleeve.start()
    except (TunError, OSError) as exc:
        parser.exit(1, f"sleeve: {exc}\n")
    try:
        while not done.is_set():
            if args.stats:
                _write_stats(args.stats, sleeve.stats())
            done.wait(STATS_EVERY)
    finally:
        sleeve.stop()
        if args.stats:
            _write_stats(args.stats, sleeve.stats())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
