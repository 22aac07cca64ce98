"""Issuing certificates for development PKIs (publisher root and signer; tests; the simulated
manufacturer CA may reuse these). Profiles follow RFC 5280: CAs carry basicConstraints cA and
keyUsage keyCertSign/cRLSign; leaves carry keyUsage digitalSignature and one purpose (EKU).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
SubjectKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)
_SIGNING_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
)


def make_name(common_name: str, organization: str | None = None, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _base(
    subject: x509.Name, issuer: x509.Name, public_key: SubjectKey, not_before: dt.datetime, not_after: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_root_ca(
    key: IssuerKey, subject: x509.Name, *, now: dt.datetime | None = None, days: int = 3650
) -> x509.Certificate:
    """A self-signed root CA certificate (basicConstraints cA, keyCertSign|cRLSign)."""
    now = now or dt.datetime.now(dt.UTC)
    return (
        _base(subject, subject, key.public_key(), now - dt.timedelta(minutes=5), now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )


def issue_intermediate_ca(
    issuer_key: IssuerKey, issuer_cert: x509.Certificate, public_key: SubjectKey, subject: x509.Name,
    *, now: dt.datetime | None = None, days: int = 1825, path_length: int | None = 0,
) -> x509.Certificate:
    now = now or dt.datetime.now(dt.UTC)
    return (
        _base(subject, issuer_cert.subject, public_key, now - dt.timedelta(minutes=5), now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def issue_leaf(
    issuer_key: IssuerKey,
    issuer_cert: x509.Certificate,
    public_key: SubjectKey,
    subject: x509.Name,
    *,
    ekus: Sequence[x509.ObjectIdentifier],
    now: dt.datetime | None = None,
    days: int = 825,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """An end-entity signing certificate: keyUsage digitalSignature (critical), the given EKUs."""
    now = now or dt.datetime.now(dt.UTC)
    start = not_before or now - dt.timedelta(minutes=5)
    end = not_after or now + dt.timedelta(days=days)
    return (
        _base(subject, issuer_cert.subject, public_key, start, end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_SIGNING_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
