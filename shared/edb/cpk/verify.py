"""Key-less verification of a v2 package: everything that can be checked without the DEK."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

from edb.cpk.digests import payload_ciphertext_digest
from edb.cpk.errors import DIGEST_MISMATCH, MANIFEST_INVALID, package_error
from edb.cpk.manifest_v2 import ManifestV2
from edb.cpk.policy import check_policy
from edb.cpk.reader import V2_PAYLOAD, PackageReader
from edb.cpk.signed import SignedManifest, VerifiedSigner, authenticate_manifest


@dataclass(frozen=True)
class VerifiedPackage:
    """A v2 package whose manifest is authenticated and whose policy checks passed.

    ``payload_digest_checked`` says whether the ciphertext SHA-256 was recomputed from the file;
    :func:`edb.cpk.decrypt_payload` re-authenticates every payload byte it reads either way.
    """

    reader: PackageReader
    manifest: ManifestV2
    signed: SignedManifest
    signer: VerifiedSigner
    payload_digest_checked: bool

    @property
    def package_id(self) -> str:
        return self.manifest.package_id

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def security_version(self) -> int:
        return self.manifest.security_version


def verify_package(
    reader: PackageReader,
    *,
    trust_roots: Sequence[x509.Certificate],
    now: dt.datetime,
    device_id: str | None = None,
    device_class: str | None = None,
    security_floor: int | None = None,
    check_payload_digest: bool = True,
    threads: int = 2,
    progress: Callable[[int], None] | None = None,
) -> VerifiedPackage:
    """Signature and chain, manifest/frame consistency, expiry, target, rollback floor, then (by
    default) the payload's ciphertext digest (chunk-list SHA-256, see :mod:`edb.cpk.digests`). No key
    is needed.

    ``check_payload_digest=False`` skips the one full read of the payload; it is safe when
    :func:`decrypt_payload` follows, because that checks every chunk's tag and the signed
    plaintext digest, which together pin the exact ciphertext (see docs/cpk-v2.md).
    """
    signed = reader.signed_manifest()
    manifest, signer = authenticate_manifest(signed, trust_roots, now, reader.limits)
    payload = reader.span(V2_PAYLOAD)
    if payload.size != manifest.ciphertext_size:
        raise package_error(
            MANIFEST_INVALID, f"payload stream is {payload.size} bytes, the manifest says {manifest.ciphertext_size}"
        )
    check_policy(manifest, now=now, device_id=device_id, device_class=device_class, security_floor=security_floor)
    if check_payload_digest and payload_ciphertext_digest(
        reader, manifest, threads=threads, progress=progress
    ) != manifest.ciphertext_sha256:
        raise package_error(DIGEST_MISMATCH, "payload ciphertext SHA-256 differs from the signed manifest")
    return VerifiedPackage(reader=reader, manifest=manifest, signed=signed, signer=signer,
                           payload_digest_checked=check_payload_digest)
