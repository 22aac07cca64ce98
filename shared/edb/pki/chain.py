"""Certificate path validation against pinned roots, for any purpose.

Used for publisher (package signing) chains and, by the key release service, for device
attestation chains. Path building, link signatures, validity at ``now``, basicConstraints of
issuers, keyUsage keyCertSign of issuers and path length are done by ``cryptography``'s own
``x509.verification`` (its RFC 5280 / CA-B profile). We replace only the end-entity extension
policy (so private EKUs such as :data:`edb.pki.oids.DEVICE_ATTESTATION_EKU` work and no
subjectAltName is demanded) and the issuers' EKU rule (an issuer that restricts EKUs must allow
the one we require). Before that, each presented certificate's validity is checked by hand only to
name the failure precisely (expired vs. untrusted); the verifier stays the authority.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID

from edb.pki.errors import EXPIRED, MALFORMED, NOT_YET_VALID, UNTRUSTED, WRONG_USAGE, CertificateError

DEFAULT_MAX_DEPTH = 4


def _aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.UTC)


def _check_validity(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"{what} certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
                               code=NOT_YET_VALID)
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"{what} certificate expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
                               code=EXPIRED)


class _UsageRefused(ValueError):
    """Raised inside extension validators; its message ends up in VerificationError's text."""


def _leaf_policy(required_eku: x509.ObjectIdentifier, require_digital_signature: bool) -> xv.ExtensionPolicy:
    def check_eku(_policy: xv.Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage) -> None:
        if required_eku not in eku:
            raise _UsageRefused(f"leaf lacks extended key usage {required_eku.dotted_string}")

    def check_ku(_policy: xv.Policy, _cert: x509.Certificate, ku: x509.KeyUsage) -> None:
        if require_digital_signature and not ku.digital_signature:
            raise _UsageRefused("leaf key usage lacks digitalSignature")
        if ku.key_cert_sign:
            raise _UsageRefused("leaf key usage must not include keyCertSign")

    def check_bc(_policy: xv.Policy, _cert: x509.Certificate, bc: x509.BasicConstraints | None) -> None:
        if bc is not None and bc.ca:
            raise _UsageRefused("leaf must not be a CA certificate")

    return (
        xv.ExtensionPolicy.permit_all()
        .require_present(x509.ExtendedKeyUsage, xv.Criticality.AGNOSTIC, check_eku)
        .require_present(x509.KeyUsage, xv.Criticality.AGNOSTIC, check_ku)
        .may_be_present(x509.BasicConstraints, xv.Criticality.AGNOSTIC, check_bc)
    )


def _ca_policy(required_eku: x509.ObjectIdentifier) -> xv.ExtensionPolicy:
    def check_eku(_policy: xv.Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
        if eku is not None and required_eku not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            raise _UsageRefused(f"issuer restricts extended key usage and excludes {required_eku.dotted_string}")

    return xv.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, xv.Criticality.AGNOSTIC, check_eku
    )


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust_roots: Sequence[x509.Certificate],
    *,
    now: dt.datetime,
    required_eku: x509.ObjectIdentifier,
    require_digital_signature: bool = True,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> list[x509.Certificate]:
    """Validate ``leaf`` up to one of ``trust_roots`` at time ``now``; return the path, leaf first.

    Raises :class:`CertificateError` with ``PKI_EXPIRED`` / ``PKI_NOT_YET_VALID`` (a presented
    certificate outside its validity), ``PKI_WRONG_USAGE`` (EKU, key usage, basic constraints) or
    ``PKI_UNTRUSTED`` (anything else: unknown issuer, bad signature, depth, a root out of validity).
    """
    now = _aware(now)
    if not trust_roots:
        raise CertificateError("no trust roots configured", code=UNTRUSTED)
    if len(intermediates) > max_depth:
        raise CertificateError("too many intermediate certificates", code=MALFORMED)
    _check_validity(leaf, now, "leaf")
    for cert in intermediates:
        _check_validity(cert, now, "intermediate")
    verifier = (
        xv.PolicyBuilder()
        .store(xv.Store(list(trust_roots)))
        .time(now)
        .max_chain_depth(max_depth)
        .extension_policies(
            ca_policy=_ca_policy(required_eku),
            ee_policy=_leaf_policy(required_eku, require_digital_signature),
        )
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, list(intermediates))
    except xv.VerificationError as exc:
        text = str(exc)
        code = WRONG_USAGE if ("_UsageRefused" in text or "basicConstraints.cA must not" in text) else UNTRUSTED
        raise CertificateError(f"certificate chain refused: {_short(text)}", code=code) from exc
    return list(verified.chain)


def _short(text: str) -> str:
    # cryptography appends "(encountered processing <Certificate(...)>)": keep the reason only
    return text.split(" (encountered processing", 1)[0][:300]
