"""Manifest version 2 (the secure profile): schema, strict parser and canonical writer.

JSON object, UTF-8, kebab-case member names; every member is required and unknown members are
refused (the manifest is signed: nothing in it may be silently ignored). See docs/cpk-v2.md.

    {"manifest-version": 2,
     "cp-id": "...", "cp-name": "...", "cp-vendor": "...",
     "version": "1.2.0", "security-version": 3,
     "created": "2025-01-31T12:00:00Z", "expires": "2026-01-31T12:00:00Z",
     "target": {"device-ids": [...], "device-classes": [...]},
     "payload": {"media-type": "application/octet-stream",
                 "plaintext-size": N, "plaintext-sha256": "<hex: chunk-list digest>",
                 "ciphertext-size": M, "ciphertext-sha256": "<hex: chunk-list digest>",
                 "enc": {"alg": "A256GCM-STREAM", "chunk-size": 1048576, "nonce-prefix": "<b64url 7 bytes>"}},
     "dek": {"kid": "...", "alg": "RSA-OAEP-256", "value": "<b64url>"},
     "signer": {"alg": "ES256", "chain-sha256": "<hex: SHA-256 of stream 2>"}}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from edb.cpk import jsonstrict as js
from edb.cpk.errors import MANIFEST_INVALID, TOO_LARGE, package_error
from edb.cpk.limits import DEFAULT_LIMITS, Limits
from edb.cpk.stream_aead import AEAD_ALG, MAX_CHUNKS, NONCE_PREFIX_BYTES, chunk_count, ciphertext_size, stream_aad
from edb.errors import KeyProviderError
from edb.keys.base import SIGN_ALG, WrappedKey, b64url, b64url_decode

MANIFEST_VERSION = 2
DEFAULT_MEDIA_TYPE = "application/octet-stream"
MAX_TARGETS = 1000

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
DEVICE_PATTERN = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
MEDIA_TYPE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}")
HEX_SHA256 = re.compile(r"[0-9a-f]{64}")

_TOP = {
    "manifest-version", "cp-id", "cp-name", "cp-vendor", "version", "security-version", "created", "expires",
    "target", "payload", "dek", "signer",
}
_PAYLOAD = {"media-type", "plaintext-size", "plaintext-sha256", "ciphertext-size", "ciphertext-sha256", "enc"}


@dataclass(frozen=True)
class Target:
    """Who may install: a device matches if its id is listed or its class is listed."""

    device_ids: tuple[str, ...] = ()
    device_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.device_ids and not self.device_classes:
            raise package_error(MANIFEST_INVALID, "target must name at least one device id or device class")
        for path, values in (("target.device-ids", self.device_ids), ("target.device-classes", self.device_classes)):
            if len(values) > MAX_TARGETS:
                raise package_error(MANIFEST_INVALID, f"{path}: more than {MAX_TARGETS} entries")
            if len(set(values)) != len(values):
                raise package_error(MANIFEST_INVALID, f"{path}: duplicate entries")
            for value in values:
                if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
                    raise package_error(MANIFEST_INVALID, f"{path}: {value!r} is not a valid device id/class")

    def allows(self, device_id: str | None, device_class: str | None) -> bool:
        return (device_id is not None and device_id in self.device_ids) or (
            device_class is not None and device_class in self.device_classes
        )

    def to_json(self) -> dict[str, list[str]]:
        return {"device-ids": list(self.device_ids), "device-classes": list(self.device_classes)}


@dataclass(frozen=True)
class ManifestV2:
    """A parsed v2 manifest. Digests are lowercase hex. ``plaintext_sha256`` and
    ``ciphertext_sha256`` are chunk-list digests, SHA-256(SHA-256(chunk_0) || ... ||
    SHA-256(chunk_n-1)) over plaintext chunks and sealed chunks respectively (:mod:`edb.cpk.digests`)."""

    package_id: str
    version: str
    security_version: int
    created: dt.datetime
    expires: dt.datetime
    target: Target
    media_type: str
    plaintext_size: int
    plaintext_sha256: str
    ciphertext_size: int
    ciphertext_sha256: str
    chunk_size: int
    nonce_prefix: bytes
    wrapped_dek: WrappedKey
    signer_chain_sha256: str
    name: str = "Unknown"
    vendor: str = "Unknown"

    @property
    def chunk_count(self) -> int:
        return chunk_count(self.plaintext_size, self.chunk_size)

    @property
    def kid(self) -> str:
        return self.wrapped_dek.kid

    def aad(self) -> bytes:
        return stream_aad(self.package_id, self.version, self.security_version, self.chunk_size)

    def with_wrapped_dek(self, wrapped: WrappedKey, signer_chain_sha256: str) -> ManifestV2:
        return replace(self, wrapped_dek=wrapped, signer_chain_sha256=signer_chain_sha256)

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest-version": MANIFEST_VERSION,
            "cp-id": self.package_id,
            "cp-name": self.name,
            "cp-vendor": self.vendor,
            "version": self.version,
            "security-version": self.security_version,
            "created": js.format_timestamp(self.created),
            "expires": js.format_timestamp(self.expires),
            "target": self.target.to_json(),
            "payload": {
                "media-type": self.media_type,
                "plaintext-size": self.plaintext_size,
                "plaintext-sha256": self.plaintext_sha256,
                "ciphertext-size": self.ciphertext_size,
                "ciphertext-sha256": self.ciphertext_sha256,
                "enc": {"alg": AEAD_ALG, "chunk-size": self.chunk_size, "nonce-prefix": b64url(self.nonce_prefix)},
            },
            "dek": self.wrapped_dek.to_json(),
            "signer": {"alg": SIGN_ALG, "chain-sha256": self.signer_chain_sha256},
        }

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON, members in the documented order. These exact bytes are signed."""
        data = json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        parse_manifest_v2(data)  # never write what we would refuse to read
        return data

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def parse_manifest_v2(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ManifestV2:
    """Strictly parse manifest bytes; CPK_MANIFEST_INVALID / CPK_TOO_LARGE on anything unexpected."""
    if len(data) > limits.max_manifest_bytes:
        raise package_error(TOO_LARGE, f"manifest of {len(data)} bytes exceeds {limits.max_manifest_bytes}")
    root = js.loads_object(data)
    js.exact_keys(root, _TOP, "manifest")
    if js.integer(root, "manifest-version", "manifest") != MANIFEST_VERSION:
        raise js.invalid("manifest.manifest-version", "must be 2")

    target_obj = js.obj(root, "target", "manifest")
    js.exact_keys(target_obj, {"device-ids", "device-classes"}, "manifest.target")
    lists = []
    for key in ("device-ids", "device-classes"):
        values = target_obj[key]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise js.invalid(f"manifest.target.{key}", "must be a list of strings")
        lists.append(tuple(values))
    target = Target(device_ids=lists[0], device_classes=lists[1])

    payload = js.obj(root, "payload", "manifest")
    js.exact_keys(payload, _PAYLOAD, "manifest.payload")
    enc = js.obj(payload, "enc", "manifest.payload")
    js.exact_keys(enc, {"alg", "chunk-size", "nonce-prefix"}, "manifest.payload.enc")
    if enc["alg"] != AEAD_ALG:
        raise js.invalid("manifest.payload.enc.alg", f"must be {AEAD_ALG}")
    chunk_size = js.integer(enc, "chunk-size", "manifest.payload.enc", minimum=1, maximum=2**32 - 1)
    if not limits.min_chunk_size <= chunk_size <= limits.max_chunk_size:
        code = TOO_LARGE if chunk_size > limits.max_chunk_size else MANIFEST_INVALID
        raise package_error(code, f"chunk size {chunk_size} outside [{limits.min_chunk_size}, {limits.max_chunk_size}]")
    prefix_text = js.string(enc, "nonce-prefix", "manifest.payload.enc", max_len=16)
    try:
        nonce_prefix = b64url_decode(prefix_text, max_bytes=NONCE_PREFIX_BYTES)
    except ValueError as exc:
        raise js.invalid("manifest.payload.enc.nonce-prefix", str(exc)) from None
    if len(nonce_prefix) != NONCE_PREFIX_BYTES:
        raise js.invalid("manifest.payload.enc.nonce-prefix", "must decode to 7 bytes")

    plaintext_size = js.integer(payload, "plaintext-size", "manifest.payload")
    if plaintext_size > limits.max_payload_bytes:
        raise package_error(TOO_LARGE, f"payload of {plaintext_size} bytes exceeds {limits.max_payload_bytes}")
    if chunk_count(plaintext_size, chunk_size) > MAX_CHUNKS:
        raise package_error(TOO_LARGE, "payload needs more than 2^32 chunks")
    ct_size = js.integer(payload, "ciphertext-size", "manifest.payload")
    if ct_size != ciphertext_size(plaintext_size, chunk_size):
        raise js.invalid("manifest.payload.ciphertext-size", "does not match plaintext size and chunk size")

    try:
        wrapped = WrappedKey.from_json(js.obj(root, "dek", "manifest"))
    except (ValueError, KeyProviderError) as exc:
        raise js.invalid("manifest.dek", getattr(exc, "message", str(exc))) from None

    signer = js.obj(root, "signer", "manifest")
    js.exact_keys(signer, {"alg", "chain-sha256"}, "manifest.signer")
    if signer["alg"] != SIGN_ALG:
        raise js.invalid("manifest.signer.alg", f"must be {SIGN_ALG}")

    created = js.timestamp(root, "created", "manifest")
    expires = js.timestamp(root, "expires", "manifest")
    if expires <= created:
        raise js.invalid("manifest.expires", "must be after created")

    return ManifestV2(
        package_id=js.string(root, "cp-id", "manifest", max_len=128, pattern=ID_PATTERN),
        name=js.string(root, "cp-name", "manifest", max_len=256),
        vendor=js.string(root, "cp-vendor", "manifest", max_len=256),
        version=js.string(root, "version", "manifest", max_len=64, pattern=VERSION_PATTERN),
        security_version=js.integer(root, "security-version", "manifest"),
        created=created,
        expires=expires,
        target=target,
        media_type=js.string(payload, "media-type", "manifest.payload", max_len=127, pattern=MEDIA_TYPE_PATTERN),
        plaintext_size=plaintext_size,
        plaintext_sha256=js.string(payload, "plaintext-sha256", "manifest.payload", max_len=64, pattern=HEX_SHA256),
        ciphertext_size=ct_size,
        ciphertext_sha256=js.string(payload, "ciphertext-sha256", "manifest.payload", max_len=64, pattern=HEX_SHA256),
        chunk_size=chunk_size,
        nonce_prefix=nonce_prefix,
        wrapped_dek=wrapped,
        signer_chain_sha256=js.string(signer, "chain-sha256", "manifest.signer", max_len=64, pattern=HEX_SHA256),
    )
