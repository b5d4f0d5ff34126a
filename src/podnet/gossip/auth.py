"""The gossip handshake: who the peer is, whether it knows the password, the session secret.

Design notes:
- Both sides send a hello at once (protocol, name, 32 random bytes of nonce, listen
  port, whether a password is set), so the handshake takes one round trip, two with a
  password. A password on one side only is refused by both (Weave's rule): a peer must
  never gossip in clear with a mesh that expects authentication.
- With a password each side proves it knows it: HMAC-SHA256 keyed by the password over
  the sender's and receiver's names and both nonces (the initiator's first). The names
  make a proof useless in the other direction (no reflection), the fresh nonces make an
  old proof useless (no replay).
- The session secret is HKDF-SHA256 (`cryptography`) of the password, salted with both
  nonces and bound to both names: 32 bytes only the two peers know, new every
  connection. The sleeve derives its directional keys from it; this connection's own
  frames are sealed after the handshake with keys derived from it too (`Channel`,
  ChaCha20-Poly1305 with a counter nonce per direction, so a frame replayed, reordered
  or injected into the TCP stream fails), else an attacker on the path could let the
  handshake pass and then speak in the peers' names.
- Without a password nothing is refused for credentials and there is no secret (None).
- The password's bytes are the key. A guessable password can be tested offline against
  one observed proof: use a key file of random bytes (`load_credential(key_file=...)`).

Sans-io: the caller moves the messages; this module only computes and decides.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from podnet.gossip.wire import NONCE_BYTES, PROTOCOL, Hello

SECRET_BYTES = 32
MAX_KEY_FILE = 64 * 1024
_PROOF = b"podnet-gossip proof v1"
_SESSION = b"podnet-gossip session v1"
_CONTROL = b"podnet-gossip control v1"


class AuthRefused(Exception):
    """The peer may not join; the message is the logged reason."""


def load_credential(password: str | bytes | None = None, key_file: str | os.PathLike | None = None) -> bytes | None:
    """The shared key: the password's bytes, or the key file's (both: refused)."""
    if password is not None and key_file is not None:
        raise ValueError("password and key file: give one of them")
    if key_file is not None:
        path = Path(key_file)
        if path.stat().st_size > MAX_KEY_FILE:
            raise ValueError(f"key file {path}: more than {MAX_KEY_FILE} bytes")
        password = path.read_bytes()
    if password is None:
        return None
    key = password.encode() if isinstance(password, str) else bytes(password)
    if not key:
        raise ValueError("password: empty")
    return key


def _join(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">H", len(part)) + part for part in parts)


class Handshake:
    """One side of one connection's handshake: `hello()`, then `on_hello(peer)` (a proof
    to send, or None when no password is set: done), then `on_proof(mac)`."""

    def __init__(self, name: str, port: int, credential: bytes | None, initiator: bool,
                 nonce: bytes | None = None) -> None:
        self.name, self.port, self.credential, self.initiator = name, port, credential, initiator
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self.peer: Hello | None = None
        self.secret: bytes | None = None
        self.done = False

    def hello(self) -> Hello:
        return Hello(self.name, self.nonce, self.port, self.credential is not None)

    def _nonces(self) -> bytes:
        assert self.peer is not None
        return self.nonce + self.peer.nonce if self.initiator else self.peer.nonce + self.nonce

    def _mac(self, sender: str, receiver: str) -> bytes:
        assert self.credential is not None
        return hmac.new(self.credential, _join(_PROOF, sender.encode(), receiver.encode(), self._nonces()),
                        hashlib.sha256).digest()

    def on_hello(self, peer: Hello) -> bytes | None:
        """Check the peer's hello; returns our proof, or None when there is no password."""
        if peer.protocol != PROTOCOL:
            raise AuthRefused(f"peer {peer.name}: protocol {peer.protocol}, this peer speaks {PROTOCOL}")
        if peer.name == self.name:
            raise AuthRefused(f"peer at the other end uses this peer's own name {peer.name!r}")
        if peer.password and self.credential is None:
            raise AuthRefused(f"peer {peer.name}: it has a password, this peer has none")
        if not peer.password and self.credential is not None:
            raise AuthRefused(f"peer {peer.name}: it has no password, this peer requires one")
        self.peer = peer
        if self.credential is None:
            self.done = True
            return None
        return self._mac(self.name, peer.name)

    def on_proof(self, mac: bytes) -> bytes:
        """Check the peer's proof; returns the session secret."""
        assert self.peer is not None and self.credential is not None
        if not hmac.compare_digest(mac, self._mac(self.peer.name, self.name)):
            raise AuthRefused(f"peer {self.peer.name}: wrong password (its proof does not match)")
        first, second = (self.name, self.peer.name) if self.initiator else (self.peer.name, self.name)
        hkdf = HKDF(algorithm=hashes.SHA256(), length=SECRET_BYTES, salt=self._nonces(),
                    info=_join(_SESSION, first.encode(), second.encode()))
        self.secret = hkdf.derive(self.credential)
        self.done = True
        return self.secret


def _control_key(secret: bytes, sender: str, receiver: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_join(_CONTROL, sender.encode(), receiver.encode()))
    return hkdf.derive(secret)


class Channel:
    """Seals this connection's frames after a password handshake: one key per
    direction, the frame counter as nonce (never sent: TCP keeps the order, so a
    dropped, replayed or injected frame fails to open)."""

    def __init__(self, secret: bytes, local: str, remote: str) -> None:
        self._tx = ChaCha20Poly1305(_control_key(secret, local, remote))
        self._rx = ChaCha20Poly1305(_control_key(secret, remote, local))
        self._sent = 0
        self._received = 0

    @staticmethod
    def _nonce(counter: int) -> bytes:
        return struct.pack(">4xQ", counter)

    def seal(self, payload: bytes) -> bytes:
        sealed = self._tx.encrypt(self._nonce(self._sent), payload, None)
        self._sent += 1
        return sealed

    def open(self, sealed: bytes) -> bytes:
        try:
            payload = self._rx.decrypt(self._nonce(self._received), sealed, None)
        except InvalidTag:
            raise AuthRefused("a frame failed authentication (changed, replayed or injected)") from None
        self._received += 1
        return payload
