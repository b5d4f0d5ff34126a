"""The fast-path probe's pure parts (agent/gossip_probe.py): ICMP echo packets, reply
parsing, and when a peer counts as down."""

from __future__ import annotations

import socket
import struct

from podnet.agent.gossip_probe import DOWN_AFTER, FastPathProbe, echo_request, parse_reply
from podnet.observe.probe import checksum


def ip_packet(source: str, icmp: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0, socket.inet_aton(source),
                         socket.inet_aton("10.244.0.0"))
    return header + icmp


def test_an_echo_request_carries_a_valid_checksum():
    packet = echo_request(0x1234, 7)
    assert packet[0] == 8 and struct.unpack("!HH", packet[4:8]) == (0x1234, 7)
    assert checksum(packet) == 0  # the checksum over the whole message, its field included


def test_only_replies_to_our_ident_count():
    reply = bytearray(echo_request(0x1234, 7))
    reply[0] = 0  # echo reply
    assert parse_reply(ip_packet("10.244.1.0", bytes(reply)), 0x1234) == "10.244.1.0"
    assert parse_reply(ip_packet("10.244.1.0", bytes(reply)), 0x4321) is None  # another prober's
    assert parse_reply(ip_packet("10.244.1.0", echo_request(0x1234, 7)), 0x1234) is None  # a request
    assert parse_reply(b"\x60" + bytes(40), 0x1234) is None and parse_reply(b"", 0x1234) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_peer_is_down_after_DOWN_AFTER_without_an_answer_and_up_at_the_next():
    clock = Clock()
    probe = FastPathProbe("pnvx0", clock)
    probe._socket = lambda: None  # no raw socket here: only the bookkeeping  # type: ignore[method-assign]
    probe._since = {"b": clock.now}
    clock.now += DOWN_AFTER - 0.1
    assert probe.down() == frozenset()
    clock.now += 0.2
    assert probe.down() == {"b"}
    probe._answered["b"] = clock.now  # an answer came
    assert probe.down() == frozenset()
    probe.round({})  # b is no longer a direct peer: forgotten
    assert probe.down() == frozenset() and not probe._since
