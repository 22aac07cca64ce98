"""Stable error codes of the package library (all raised as :class:`edb.errors.PackageError`).

A code never changes meaning once released; messages are for humans and never carry key material.
"""

from __future__ import annotations

from edb.errors import PackageError

__all__ = [
    "BAD_MAGIC",
    "CHECK_UNSUPPORTED",
    "DIGEST_MISMATCH",
    "EXPIRED",
    "KEY_UNAVAILABLE",
    "MANIFEST_INVALID",
    "MODEL_UNSUPPORTED",
    "ROLLBACK",
    "SIGNATURE_INVALID",
    "STREAM_OUT_OF_BOUNDS",
    "TAG_MISMATCH",
    "TOO_LARGE",
    "TRUNCATED",
    "UNREADABLE",
    "UNSUPPORTED_VERSION",
    "UNTRUSTED_SIGNER",
    "WRONG_KEY",
    "WRONG_TARGET",
    "PackageError",
]

#: The first four bytes are not the CPK magic 0x0ECCF00D.
BAD_MAGIC = "CPK_BAD_MAGIC"
#: Frame version, manifest type or manifest version this reader does not implement.
UNSUPPORTED_VERSION = "CPK_UNSUPPORTED_VERSION"
#: The file ends before the header, the table or a stream does; or a chunk is missing.
TRUNCATED = "CPK_TRUNCATED"
#: The stream table points outside the file or before the origin, or streams overlap.
STREAM_OUT_OF_BOUNDS = "CPK_STREAM_OUT_OF_BOUNDS"
#: The header's fixed fields, the frame layout or the manifest JSON are not what the format requires.
MANIFEST_INVALID = "CPK_MANIFEST_INVALID"
#: An AES-GCM tag does not verify (tampered, reordered, spliced or truncated ciphertext).
TAG_MISMATCH = "CPK_TAG_MISMATCH"
#: A stream's SHA-256 differs from the one the (signed) manifest records.
DIGEST_MISMATCH = "CPK_DIGEST_MISMATCH"
#: The publisher signature over the manifest does not verify.
SIGNATURE_INVALID = "CPK_SIGNATURE_INVALID"
#: The signer's certificate chain does not lead to a pinned root, is expired, or has the wrong usage.
UNTRUSTED_SIGNER = "CPK_UNTRUSTED_SIGNER"
#: The package's ``expires`` is in the past.
EXPIRED = "CPK_EXPIRED"
#: The package does not name this device id or device class.
WRONG_TARGET = "CPK_WRONG_TARGET"
#: The package's security version is below the device's floor.
ROLLBACK = "CPK_ROLLBACK"
#: A declared size exceeds a configured limit (checked before anything is allocated).
TOO_LARGE = "CPK_TOO_LARGE"
#: The DEK (or v1 content key) is not the package's key: wrong length or it does not open chunk 0.
WRONG_KEY = "CPK_WRONG_KEY"
#: The package file could not be opened or read (missing, permissions, I/O error).
UNREADABLE = "CPK_UNREADABLE"
#: A v1 key file does not hold the package's key name.
KEY_UNAVAILABLE = "CPK_KEY_UNAVAILABLE"
#: A check was asked for that this package's format cannot perform (for example a target, a
#: rollback floor or a pinned publisher root on a v1 package): refused, never silently skipped.
CHECK_UNSUPPORTED = "CPK_CHECK_UNSUPPORTED"
#: Build-time preflight: the model does not load the way the TEE loads it (``edb package build``,
#: ``edb cloud build``; the message carries ONNX Runtime's cause). Not an integrity failure.
MODEL_UNSUPPORTED = "CPK_MODEL_UNSUPPORTED"


def package_error(code: str, message: str) -> PackageError:
    return PackageError(message, code=code)
