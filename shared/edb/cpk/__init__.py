"""Confidential packages (.cpk): the CPK frame, manifest v1 (interop) and v2 (secure profile).

Contract 1 (docs/architecture.md)::

    with open_package(path_or_file) as reader:          # bounded reads, payload never loaded
        reader.format                                    # "cpk-v1" | "cpk-v2"
        reader.info()                                    # PackageInfo: no secrets, unverified
        signed = reader.signed_manifest()                # v2: manifest bytes + signature + chain
        manifest = verify_signed_manifest(signed, roots, now)      # what the key release service uses
        verified = verify_package(reader, trust_roots=roots, now=now, device_id=..., device_class=...,
                                  security_floor=...)   # no key needed
        decrypt_payload(verified, dek, sink)             # chunked AES-256-GCM, every tag and digest

Every failure is an :class:`edb.errors.PackageError` with a stable ``CPK_*`` code (:mod:`edb.cpk.errors`).
"""

from edb.cpk.build import DEFAULT_CHUNK_SIZE, BuildResult, PackageIdentity, build
from edb.cpk.decrypt import decrypt_payload
from edb.cpk.limits import DEFAULT_LIMITS, Limits
from edb.cpk.manifest_v1 import ManifestV1
from edb.cpk.manifest_v2 import ManifestV2, Target, parse_manifest_v2
from edb.cpk.policy import check_policy
from edb.cpk.reader import FORMAT_V1, FORMAT_V2, PackageInfo, PackageReader, open_package
from edb.cpk.rewrap import rewrap
from edb.cpk.signed import SignedManifest, verify_signed_manifest
from edb.cpk.verify import VerifiedPackage, verify_package
from edb.errors import PackageError
from edb.keys.base import WrappedKey

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_LIMITS",
    "FORMAT_V1",
    "FORMAT_V2",
    "BuildResult",
    "Limits",
    "ManifestV1",
    "ManifestV2",
    "PackageError",
    "PackageIdentity",
    "PackageInfo",
    "PackageReader",
    "SignedManifest",
    "Target",
    "VerifiedPackage",
    "WrappedKey",
    "build",
    "check_policy",
    "decrypt_payload",
    "open_package",
    "parse_manifest_v2",
    "rewrap",
    "verify_package",
    "verify_signed_manifest",
]
