"""The mesh CA: what a workload certificate holds, who accepts it, and which records load."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from podnet.mesh.ca import CLOCK_SKEW_S, CertificateError, IssuedCert, MeshCA
from podnet.mesh.identity import IdentityError, spiffe_id
from podnet.model.base import CorruptRecord

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
WEB = spiffe_id("shop", "web")


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA.create(now=NOW)


@pytest.fixture(scope="module")
def leaf(ca) -> IssuedCert:
    return ca.issue(WEB, 3600, now=NOW)


def test_ca_certificate(ca) -> None:
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert ca.not_after == NOW + dt.timedelta(days=365)


def test_leaf_names_its_identity_in_san_and_cn(leaf) -> None:
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert leaf.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web.shop"
    assert leaf.spiffe_id == WEB
    assert isinstance(leaf.key.curve, ec.SECP256R1)


def test_leaf_is_for_server_and_client_and_no_ca(leaf) -> None:
    eku = leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_longest_identity_fits_a_cn(ca) -> None:
    longest = spiffe_id("n" * 32, "a" * 31)
    assert ca.verify(ca.issue(longest, 60, now=NOW).cert_pem(), now=NOW) == longest


def test_lifetime_skew_and_renewal(leaf) -> None:
    assert leaf.not_before == NOW - dt.timedelta(seconds=CLOCK_SKEW_S)
    assert leaf.not_after == NOW + dt.timedelta(seconds=3600)
    assert leaf.issued_at == NOW
    assert leaf.renew_at() == NOW + dt.timedelta(seconds=2400)


def test_serials_differ(ca, leaf) -> None:
    assert ca.issue(WEB, 3600, now=NOW).serial != leaf.serial


def test_verify_accepts_its_own_within_the_lifetime(ca, leaf) -> None:
    assert ca.verify(leaf.cert_pem(), now=NOW) == WEB
    assert ca.verify(leaf.cert_pem(), now=NOW - dt.timedelta(seconds=30)) == WEB  # skew
    with pytest.raises(CertificateError, match="valid only from"):
        ca.verify(leaf.cert_pem(), now=NOW + dt.timedelta(seconds=3601))


def test_chain_passes_an_rfc5280_verifier(ca, leaf) -> None:
    verifier = PolicyBuilder().store(Store([ca.cert])).time(NOW).build_client_verifier()
    verified = verifier.verify(leaf.cert, [])
    assert verified.chain == [leaf.cert, ca.cert]
    assert [s.value for s in verified.subjects] == [WEB]


def test_a_foreign_certificate_is_refused(ca) -> None:
    other = MeshCA.create(now=NOW)  # the same subject name, another key
    foreign = other.issue(WEB, 3600, now=NOW)
    with pytest.raises(CertificateError, match="not issued by this mesh CA"):
        ca.verify(foreign.cert_pem(), now=NOW)
    verifier = PolicyBuilder().store(Store([ca.cert])).time(NOW).build_client_verifier()
    with pytest.raises(VerificationError):
        verifier.verify(foreign.cert, [])


def test_verify_refuses_what_is_no_certificate(ca) -> None:
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        ca.verify("hello")


def test_issue_refuses_bad_input(ca) -> None:
    with pytest.raises(IdentityError):
        ca.issue("spiffe://cluster.local/ns/shop/web", 3600, now=NOW)
    for lifetime in (0, -5, True, "3600"):
        with pytest.raises(CertificateError, match="not a positive number"):
            ca.issue(WEB, lifetime, now=NOW)
    with pytest.raises(CertificateError, match="would outlive the mesh CA"):
        ca.issue(WEB, 400 * 86400, now=NOW)


def test_record_round_trip_issues_for_the_same_ca(ca) -> None:
    record = ca.to_json()
    assert set(record) == {"cert", "key"}
    assert record["cert"].startswith("-----BEGIN CERTIFICATE-----")
    loaded = MeshCA.from_json(record)
    assert loaded.cert == ca.cert
    assert ca.verify(loaded.issue(WEB, 60, now=NOW).cert_pem(), now=NOW) == WEB


def test_bundle_round_trip(leaf) -> None:
    bundle = leaf.pem_bundle()
    assert "\n\n" not in bundle  # the runtime API's payload ends at a blank line
    back = IssuedCert.from_bundle(bundle)
    assert (back.serial, back.spiffe_id, back.renew_at()) == (leaf.serial, WEB, leaf.renew_at())


def test_a_bundle_whose_key_is_not_its_certificates(ca, leaf) -> None:
    other = ca.issue(WEB, 60, now=NOW)
    with pytest.raises(CertificateError, match="key is not the certificate's"):
        IssuedCert.from_bundle(leaf.cert_pem() + other.key_pem())
    with pytest.raises(CertificateError, match="not a PEM"):
        IssuedCert.from_bundle("nonsense")


def _signed_ca(subject_key, signer_key) -> x509.Certificate:
    """A CA certificate for `subject_key`, signed by `signer_key`."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podnet mesh CA")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(subject_key.public_key()).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(signer_key, hashes.SHA256()))


def _pem(thing) -> str:
    if isinstance(thing, x509.Certificate):
        return thing.public_bytes(serialization.Encoding.PEM).decode()
    return thing.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()


def test_bad_records_are_refused_naming_the_field(ca, leaf) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    encrypted = ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"pw")).decode()
    cases = [
        ("nope", "expected a JSON object"),
        ({"key": _pem(ca.key)}, "field 'cert' must be a string"),
        ({"cert": "garbage", "key": _pem(ca.key)}, "field 'cert' is not a PEM certificate"),
        ({"cert": ca.cert_pem(), "key": "garbage"}, "field 'key' is not an unencrypted PEM"),
        ({"cert": ca.cert_pem(), "key": encrypted}, "field 'key' is not an unencrypted PEM"),
        ({"cert": leaf.cert_pem(), "key": leaf.key_pem()}, "field 'cert' is not a CA certificate"),
        ({"cert": ca.cert_pem(), "key": _pem(other_key)}, "field 'key' does not match"),
        ({"cert": _pem(_signed_ca(ca.key, other_key)), "key": _pem(ca.key)}, "is not self-signed"),
    ]
    for record, problem in cases:
        with pytest.raises(CorruptRecord, match=f"mesh CA record: .*{problem}"):
            MeshCA.from_json(record)
