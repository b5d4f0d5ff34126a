"""The sleeve's cryptography: per-direction keys, sealing with counter nonces, replay.

Why this shape:
- Keys come from the gossip session (an authenticated key exchange gives both peers
  one 32-byte secret per session); HKDF-SHA256 turns it into one key per direction,
  bound to the two peer names, so A's transmit key is B's receive key and a datagram
  can never be reflected back to its sender as valid.
- One AEAD message per datagram, AES-256-GCM (cryptography's C code: ~60 Gbit/s on
  one core with AES-NI here, ChaCha20-Poly1305 ~26), so Python only touches headers.
- The nonce is the 64-bit message counter of its direction (zero-padded to 96 bits):
  never reused under one key, and sent in clear as the frame's counter, so the
  receiver needs no state but a sliding window to refuse replays.
- The frame header is the AEAD's associated data: a changed sender or counter fails
  authentication.
Pure: no sockets, no kernel.
"""

from __future__ import annotations

import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
TAG_BYTES = 16
SECRET_MIN_BYTES = 16
COUNTER_LIMIT = 2**64 - 1  # the counter is a u64 on the wire
REPLAY_WINDOW = 4096  # datagrams: reordering by parallel workers stays well inside
_SALT = b"podnet sleeve v1"


class SleeveCryptoError(ValueError):
    """A key or counter that cannot be used."""


def _direction_key(secret: bytes, sender: str, receiver: str) -> bytes:
    info = b"podnet-sleeve-key|" + sender.encode() + b"|" + receiver.encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_SALT, info=info)
    return hkdf.derive(secret)


def derive_sleeve_keys(session_secret: bytes, local: str, remote: str) -> tuple[bytes, bytes]:
    """(tx, rx) keys of `local` talking to `remote`; the remote's call with the names
    swapped gives the same two keys the other way round."""
    if len(session_secret) < SECRET_MIN_BYTES:
        raise SleeveCryptoError(
            f"session_secret: {len(session_secret)} bytes, need at least {SECRET_MIN_BYTES}"
        )
    for field, name in (("local", local), ("remote", remote)):
        if not name or "|" in name:
            raise SleeveCryptoError(f"{field}: {name!r} is empty or contains '|'")
    if local == remote:
        raise SleeveCryptoError(f"local and remote are the same peer {local!r}")
    return (
        _direction_key(session_secret, local, remote),
        _direction_key(session_secret, remote, local),
    )


def nonce(counter: int) -> bytes:
    if not 0 <= counter <= COUNTER_LIMIT:
        raise SleeveCryptoError(f"counter {counter} is outside 0..2**64-1")
    return b"\0\0\0\0" + counter.to_bytes(8, "big")


class Sealer:
    """Seals one direction's payloads; the caller supplies a fresh counter per message
    (the forwarder's per-peer itertools.count, atomic under the GIL)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(_checked_key(key))

    def seal(self, counter: int, header: bytes, payload) -> bytes:
        return self._aead.encrypt(nonce(counter), payload, header)


class Opener:
    """Opens one direction's messages; None for a forgery or a corrupted message."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(_checked_key(key))

    def open(self, counter: int, header: bytes, sealed) -> bytes | None:
        try:
            return self._aead.decrypt(nonce(counter), sealed, header)
        except InvalidTag:
            return None


def _checked_key(key: bytes) -> bytes:
    if len(key) != KEY_BYTES:
        raise SleeveCryptoError(f"key: {len(key)} bytes, need {KEY_BYTES}")
    return bytes(key)


class ReplayWindow:
    """Which counters were already accepted: the highest seen and a bitmap of the
    `size` below it. `check` before authenticating (cheap refusal), `accept` only after
    (a forged counter must not move the window). Thread-safe: the forwarder's receive
    workers share one window per peer."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if size < 1:
            raise SleeveCryptoError(f"replay window size {size} must be positive")
        self.size = size
        self.highest = -1
        self._seen = 0  # bit i: counter highest - i was accepted
        self._lock = threading.Lock()

    def check(self, counter: int) -> bool:
        """True if `counter` is new and not too old to judge."""
        if counter > self.highest:
            return True
        age = self.highest - counter
        return age < self.size and not (self._seen >> age) & 1

    def accept(self, counter: int) -> bool:
        """Record `counter`; False when it was replayed (a racing worker took it)."""
        with self._lock:
            if not self.check(counter):
                return False
            if counter > self.highest:
                shift = counter - self.highest
                self._seen = ((self._seen << shift) | 1) & ((1 << self.size) - 1)
                self.highest = counter
            else:
                self._seen |= 1 << (self.highest - counter)
            return True
