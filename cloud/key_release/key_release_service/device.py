"""Checks 1 and 2: the device certificate chain and the evidence signature (pure, no I/O).

The chain must lead to a pinned manufacturer root, every certificate must be within its validity,
and the leaf must be a device attestation certificate (EKU ``DEVICE_ATTESTATION_EKU``, key usage
digitalSignature, P-256 key). The evidence JWS must verify with the leaf key, and its subject must
be the certificate's CN: the device id is the certificate's, never only the evidence's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edb.attestation.errors import EVIDENCE_SIGNATURE, AttestationError
from edb.attestation.evidence import EvidenceClaims, verify_evidence
from edb.pki import errors as pki_errors
from edb.pki.chain import verify_chain
from edb.pki.errors import CertificateError
from edb.pki.oids import DEVICE_ATTESTATION_EKU
from key_release_service import codes
from key_release_service.codes import Denied

_PKI_TO_KR = {
    pki_errors.EXPIRED: codes.CERT_EXPIRED,
    pki_errors.NOT_YET_VALID: codes.CERT_EXPIRED,
    pki_errors.WRONG_USAGE: codes.CERT_WRONG_PURPOSE,
    pki_errors.MALFORMED: codes.CHAIN_MALFORMED,
}


@dataclass(frozen=True)
class AttestedDevice:
    device_id: str
    device_class: str | None
    claims: EvidenceClaims


def _name_attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(oid)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


def load_chain(chain_der: Sequence[bytes]) -> list[x509.Certificate]:
    try:
        return [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as exc:
        raise Denied(codes.CHAIN_MALFORMED, "certChain holds something that is not a DER certificate") from exc


def verify_device_chain(chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
                        now: dt.datetime) -> x509.Certificate:
    """Check 1. Returns the leaf."""
    try:
        verify_chain(chain[0], list(chain[1:]), list(roots), now=now, required_eku=DEVICE_ATTESTATION_EKU)
    except CertificateError as exc:
        code = _PKI_TO_KR.get(exc.code, codes.CHAIN_UNTRUSTED)
        raise Denied(code, f"device certificate refused: {exc.message}", pki_code=exc.code) from exc
    return chain[0]


def verify_device_evidence(leaf: x509.Certificate, evidence: str) -> AttestedDevice:
    """Check 2. The evidence must verify with the (trusted) leaf key and name the leaf's device."""
    public_key = leaf.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise Denied(codes.CERT_WRONG_PURPOSE, "device attestation key must be EC P-256")
    try:
        claims = verify_evidence(evidence, public_key)
    except AttestationError as exc:
        code = codes.EVIDENCE_SIGNATURE if exc.code == EVIDENCE_SIGNATURE else codes.EVIDENCE_MALFORMED
        raise Denied(code, exc.message) from exc
    device_id = _name_attr(leaf, NameOID.COMMON_NAME)
    if device_id is None or claims.device_id != device_id:
        raise Denied(codes.DEVICE_MISMATCH, "evidence subject is not the device named by the certificate")
    return AttestedDevice(device_id, _name_attr(leaf, NameOID.ORGANIZATIONAL_UNIT_NAME), claims)


def authenticate_device(chain_der: Sequence[bytes], evidence: str, roots: Sequence[x509.Certificate],
                        now: dt.datetime) -> AttestedDevice:
    return verify_device_evidence(verify_device_chain(load_chain(chain_der), roots, now), evidence)
