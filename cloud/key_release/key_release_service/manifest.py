"""The package side of a release: authenticate the signed manifest and bind it to the evidence.

The service never trusts the request's package id, version, wrapped DEK or kid: it takes them from
the manifest after :func:`edb.cpk.verify_signed_manifest` has checked the publisher chain (pinned
root) and signature. The evidence must then name exactly that manifest (its SHA-256), package id,
version and security version, so nobody can ask for one package's key under another's policy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from edb.attestation.evidence import EvidenceClaims
from edb.cpk import errors as cpk_errors
from edb.cpk.manifest_v2 import ManifestV2
from edb.cpk.signed import SignedManifest, verify_signed_manifest
from edb.errors import PackageError
from key_release_service import codes
from key_release_service.codes import Denied
from key_release_service.request import ManifestParts

_UNTRUSTED = {cpk_errors.UNTRUSTED_SIGNER, cpk_errors.SIGNATURE_INVALID, cpk_errors.DIGEST_MISMATCH}


def authenticate_manifest(parts: ManifestParts, publisher_roots: Sequence[x509.Certificate],
                          now: dt.datetime) -> tuple[ManifestV2, str]:
    """Returns the verified manifest and the hex SHA-256 of its bytes."""
    signed = SignedManifest(manifest_bytes=parts.json_bytes, signature=parts.signature,
                            chain=tuple(parts.chain_der))
    try:
        manifest = verify_signed_manifest(signed, publisher_roots, now)
    except PackageError as exc:
        code = codes.MANIFEST_UNTRUSTED if exc.code in _UNTRUSTED else codes.MANIFEST_INVALID
        raise Denied(code, f"package manifest refused: {exc.message}", cpk_code=exc.code) from exc
    return manifest, signed.manifest_sha256


def check_package_binding(claims: EvidenceClaims, requested_id: str, requested_version: str,
                          manifest: ManifestV2, manifest_sha256: str, now: dt.datetime) -> None:
    """The request, the evidence and the authenticated manifest must name the same package."""
    if (requested_id, requested_version) != (manifest.package_id, manifest.version):
        raise Denied(codes.PACKAGE_MISMATCH, "requested package/version differ from the signed manifest")
    binding = claims.package
    if binding is None:
        raise Denied(codes.PACKAGE_MISMATCH, "evidence is not bound to a package")
    if (binding.package_id, binding.version, binding.security_version, binding.manifest_sha256) != (
        manifest.package_id, manifest.version, manifest.security_version, manifest_sha256
    ):
        raise Denied(codes.PACKAGE_MISMATCH, "evidence was made for another package, version or manifest")
    if manifest.expires <= now:
        raise Denied(codes.PACKAGE_EXPIRED, "package has expired")


def check_target(manifest: ManifestV2, device_id: str, device_class: str | None) -> None:
    if not manifest.target.allows(device_id, device_class):
        raise Denied(codes.TARGET_MISMATCH, "package does not target this device or device class")
