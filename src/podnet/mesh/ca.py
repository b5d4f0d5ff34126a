"""The mesh certificate authority: one self-signed CA issues short-lived workload certificates.

Decisions:
- **EC P-256 everywhere** (CA and leaves): a key takes ~0.1 ms to make, handshakes are
  cheap, and every TLS stack (HAProxy's OpenSSL, Python's ssl) speaks it.
- **The CA signs leaves directly** (CA:TRUE, pathlen 0): no intermediates, so the
  sidecar's `ca-file` holds one certificate and a chain is always two long.
- **A leaf names its identity twice**: URI SAN = the SPIFFE ID, CN = `<account>.<namespace>`
  (mesh/identity.py says why). EKU serverAuth + clientAuth: a sidecar presents the same
  certificate inbound (as server) and outbound (as client).
- **Clock skew**: a leaf is valid from 60 s before it was issued, so a node whose clock
  runs a little behind the issuer's still accepts it. Its lifetime counts from issue time,
  and it is due for renewal after 2/3 of it (`renew_at`), as Istio does.
- **Storage is the caller's**: `to_json()` gives `{"cert", "key"}` PEM texts for the
  cluster store; `from_json()` checks the record (a CA certificate, self-signed, whose
  key matches) and raises CorruptRecord naming the field, never a half-loaded CA.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podnet.errors import PodnetError
from podnet.mesh.identity import SpiffeId, parse_spiffe
from podnet.model.base import Fields

CA_LIFETIME_S = 365 * 86400
CLOCK_SKEW_S = 60
RENEW_FRACTION = 2 / 3
_CURVE = ec.SECP256R1()
_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8


class CertificateError(PodnetError):
    """A certificate this CA did not issue, or one unfit for the mesh (expired, no identity)."""


@dataclass(frozen=True)
class IssuedCert:
    """A workload certificate and its key; `pem_bundle()` is what HAProxy's `crt` file holds."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def from_bundle(cls, pem: str) -> IssuedCert:
        """Read back a bundle (a sidecar's `crt` file), e.g. for its expiry."""
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
            key = serialization.load_pem_private_key(pem.encode(), password=None)
        except ValueError as exc:
            raise CertificateError(f"not a PEM certificate and key bundle: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(cert, key):
            raise CertificateError("the bundle's key is not the certificate's")
        return cls(cert, key)

    @property
    def spiffe_id(self) -> str:
        return _spiffe_uri(self.cert)

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def not_before(self) -> dt.datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    @property
    def issued_at(self) -> dt.datetime:
        return self.not_before + dt.timedelta(seconds=CLOCK_SKEW_S)

    def renew_at(self) -> dt.datetime:
        """When to replace it: after 2/3 of its lifetime (counted from issue time)."""
        return self.issued_at + (self.not_after - self.issued_at) * RENEW_FRACTION

    def cert_pem(self) -> str:
        return self.cert.public_bytes(_PEM).decode()

    def key_pem(self) -> str:
        return _key_pem(self.key)

    def pem_bundle(self) -> str:
        """Certificate then key, no blank line (the runtime API's payload ends at one)."""
        return self.cert_pem() + self.key_pem()


class MeshCA:
    """A CA certificate and its key. `create()` a new one or `from_json()` a stored one."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, name: str = "podnet mesh CA", lifetime_s: float = CA_LIFETIME_S,
               now: dt.datetime | None = None) -> MeshCA:
        now = _utc(now)
        key = ec.generate_private_key(_CURVE)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "podnet"),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=CLOCK_SKEW_S))
            .not_valid_after(now + dt.timedelta(seconds=_positive(lifetime_s, "CA lifetime")))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    # -- storage -------------------------------------------------------------

    def to_json(self) -> dict[str, str]:
        return {"cert": self.cert_pem(), "key": _key_pem(self.key)}

    @classmethod
    def from_json(cls, raw: object, what: str = "mesh CA record") -> MeshCA:
        f = Fields(raw, what)
        try:
            cert = x509.load_pem_x509_certificate(f.text("cert").encode())
        except ValueError as exc:
            raise f.error("cert", f"is not a PEM certificate ({exc})") from None
        try:
            key = serialization.load_pem_private_key(f.text("key").encode(), password=None)
        except (ValueError, TypeError) as exc:  # TypeError: an encrypted key
            raise f.error("key", f"is not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise f.error("key", f"is not an EC key ({type(key).__name__})")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise f.error("cert", "is not a CA certificate (no basicConstraints CA:TRUE)")
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            raise f.error("cert", "is not self-signed") from None
        if not _same_key(cert, key):
            raise f.error("key", "does not match the certificate's public key")
        return cls(cert, key)

    def cert_pem(self) -> str:
        """What a sidecar's `ca-file` holds."""
        return self.cert.public_bytes(_PEM).decode()

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    # -- issuing and checking ------------------------------------------------

    def issue(self, spiffe: str | SpiffeId, lifetime_s: float,
              now: dt.datetime | None = None) -> IssuedCert:
        """A fresh key and certificate for `spiffe`, valid `lifetime_s` from `now`."""
        ident = spiffe if isinstance(spiffe, SpiffeId) else parse_spiffe(spiffe)
        now = _utc(now)
        not_after = now + dt.timedelta(seconds=_positive(lifetime_s, "certificate lifetime"))
        if not_after > self.not_after:
            raise CertificateError(
                f"a certificate for {ident.uri} until {not_after:%Y-%m-%d %H:%M:%S}Z would outlive "
                f"the mesh CA (valid until {self.not_after:%Y-%m-%d %H:%M:%S}Z)",
                "shorten the lifetime or replace the mesh CA")
        key = ec.generate_private_key(_CURVE)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ident.cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=CLOCK_SKEW_S))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(ident.uri)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return IssuedCert(cert, key)

    def verify(self, cert_pem: str, now: dt.datetime | None = None) -> str:
        """The SPIFFE ID of `cert_pem` if this CA issued it and it is valid at `now`;
        else CertificateError saying why."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
        except ValueError as exc:
            raise CertificateError(f"not a PEM certificate: {exc}") from None
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError(
                f"certificate {cert.subject.rfc4514_string()!r} (serial {cert.serial_number:x}) "
                f"was not issued by this mesh CA") from None
        now = _utc(now)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateError(
                f"certificate {cert.subject.rfc4514_string()!r} is valid only from "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z")
        uri = _spiffe_uri(cert)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [a.value for a in cn] != [parse_spiffe(uri).cn]:
            raise CertificateError(f"certificate of {uri}: its CN does not name the same identity")
        return uri


def _spiffe_uri(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("the certificate has no subjectAltName (no mesh identity)") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise CertificateError(f"the certificate names {len(uris)} SPIFFE IDs, not one")
    return parse_spiffe(uris[0]).uri


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(_PEM, _PKCS8, serialization.NoEncryption()).decode()


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now.astimezone(dt.UTC)


def _positive(seconds: float, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise CertificateError(f"{what}: {seconds!r} is not a positive number of seconds")
    return seconds
