"""Loading and encoding certificates, with size bounds (no unbounded parsing of hostile input)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edb.pki.errors import MALFORMED, CertificateError

MAX_PEM_BYTES = 256 * 1024
MAX_CERTS = 16


def load_pem_certificates(data: bytes, *, max_certs: int = MAX_CERTS) -> list[x509.Certificate]:
    """All certificates in a PEM bundle, in file order. Refuses an empty or oversized bundle."""
    if len(data) > MAX_PEM_BYTES:
        raise CertificateError("PEM bundle too large", code=MALFORMED)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError("not a PEM certificate bundle", code=MALFORMED) from exc
    if not certs or len(certs) > max_certs:
        raise CertificateError(f"expected 1..{max_certs} certificates, found {len(certs)}", code=MALFORMED)
    return certs


def load_pem_certificates_file(path: str | Path, *, max_certs: int = MAX_CERTS) -> list[x509.Certificate]:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror}", code=MALFORMED) from exc
    return load_pem_certificates(data, max_certs=max_certs)


def load_der_certificate(data: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError("not a DER certificate", code=MALFORMED) from exc


def to_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def to_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def subject_text(cert: x509.Certificate) -> str:
    """RFC 4514 subject, for display."""
    return cert.subject.rfc4514_string()
