"""Manifest v1 packages (interop with the original tools; legacy and weaker, see cpk-v1 facts).

- :func:`build_v1` writes a package exactly as the original cpk-tool lays it out (7 streams,
  manifest at index 6, GCM tag not appended, RSA PKCS#1 v1.5 signature over the plaintext,
  embedded PEM certificate). It is used for interop tests and migration.
- :func:`verify_v1` checks what v1 can check with the content key: the GCM tag, the SHA-256 digest
  and the RSA signature against the *embedded* certificate, reporting each result. The manifest
  and the certificate are unauthenticated in v1, so a valid result proves integrity under the
  key, not who published the package.
- :func:`decrypt_payload_v1` streams the plaintext to a sink; the tag is only known to be good
  at the end, so the caller must discard what it got if this raises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edb.cpk.errors import (
    DIGEST_MISMATCH,
    KEY_UNAVAILABLE,
    MANIFEST_INVALID,
    SIGNATURE_INVALID,
    TAG_MISMATCH,
    UNREADABLE,
    WRONG_KEY,
    package_error,
)
from edb.cpk.frame import encode_frame, packed_offsets
from edb.cpk.manifest_v1 import (
    Certification,
    Digest,
    Encryption,
    ManifestV1,
    PackageSectionV1,
    PayloadV1,
    Signing,
    VersionV1,
)
from edb.cpk.reader import PackageReader
from edb.errors import PackageError

MAX_KEY_FILE_BYTES = 1024 * 1024
V1_STREAMS = 7
OK, FAILED, SKIPPED = "ok", "failed", "skipped"


# -- key file -------------------------------------------------------------------------------------

def load_key_file(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """The original tools' key file: JSON ``{"<key_name>": "<base64 32-byte key>"}``."""
    try:
        with Path(path).open("rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise package_error(UNREADABLE, f"cannot read key file {path}: {exc.strerror}") from exc
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise package_error(KEY_UNAVAILABLE, "key file too large")
    return parse_key_file(raw)


def parse_key_file(raw: bytes) -> dict[str, bytes]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise package_error(KEY_UNAVAILABLE, "key file is not JSON") from exc
    if not isinstance(data, dict):
        raise package_error(KEY_UNAVAILABLE, 'key file must be {"<key_name>": "<base64 key>"}')
    keys: dict[str, bytes] = {}
    for name, value in data.items():
        if not isinstance(value, str):
            raise package_error(KEY_UNAVAILABLE, f"key {name!r} is not a base64 string")
        try:
            keys[name] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise package_error(KEY_UNAVAILABLE, f"key {name!r} is not base64") from exc
    return keys


def key_file_json(keys: dict[str, bytes]) -> str:
    return json.dumps({name: base64.b64encode(key).decode("ascii") for name, key in keys.items()})


# -- writer ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class V1Signing:
    """The publisher's RSA-2048 key and the PEM certificate the original tool embeds."""

    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate


def build_v1(
    plaintext: bytes,
    output: str | os.PathLike[str] | IO[bytes],
    *,
    cp_id: str,
    key: bytes,
    signing: V1Signing,
    cp_name: str = "Unknown",
    cp_vendor: str = "Unknown",
    version: tuple[int, int, int] = (1, 0, 0),
    date: str = "2021-10-05 12:52:37.489525 UTC",
    target: dict[str, str] | None = None,
) -> ManifestV1:
    """Write a v1 package as the original tool does (in memory, like it; v1 is for small legacy files)."""
    if len(key) != 32:
        raise package_error(WRONG_KEY, "a v1 content key is 32 bytes (AES-256)")
    nonce = os.urandom(12)
    encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    digest = hashlib.sha256(plaintext).digest()
    signature = signing.private_key.sign(plaintext, padding.PKCS1v15(), hashes.SHA256())
    cert_pem = signing.certificate.public_bytes(serialization.Encoding.PEM)
    manifest = ManifestV1(
        cp_id=cp_id, cp_name=cp_name, cp_vendor=cp_vendor,
        payload=PayloadV1(
            data=0, target=target or {"arch": "aarch64", "os": "OP-TEE"},
            ver=VersionV1(*version, date=date),
            enc=Encryption("aes-gcm", key_name=cp_id, key_strength=256, nonce=1, tag=2),
            dig=Digest("sha256", 3),
            sig=Signing("rsa-pkcs1v15", key_strength=signing.private_key.key_size, data=4),
            cert=Certification("embedded-x509-pem", data=5),
        ),
        package=PackageSectionV1(map=tuple(range(V1_STREAMS))),
    )
    streams = [ciphertext, nonce, encryptor.tag, digest, signature, cert_pem, manifest.to_bytes()]
    sizes = [len(s) for s in streams]
    data = encode_frame(1, 6, sizes, packed_offsets(sizes)) + b"".join(streams)
    if isinstance(output, str | os.PathLike):
        Path(output).write_bytes(data)
    else:
        output.write(data)
    return manifest


# -- verification ---------------------------------------------------------------------------------

@dataclass
class V1Check:
    name: str  # "tag" | "digest" | "signature"
    status: str  # ok | failed | skipped
    detail: str = ""
    code: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.name, "status": self.status, "detail": self.detail}
        if self.code:
            out["code"] = self.code
        return out


@dataclass
class V1Report:
    checks: list[V1Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAILED for c in self.checks)

    def first_failure(self) -> V1Check | None:
        return next((c for c in self.checks if c.status == FAILED), None)

    def raise_for_failure(self) -> None:
        failed = self.first_failure()
        if failed is not None:
            raise PackageError(f"v1 {failed.name} check failed: {failed.detail}", code=failed.code or "CPK_ERROR")

    def to_json(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.checks]


def _small(reader: PackageReader, index: int) -> bytes:
    return reader.read_stream(index, reader.limits.max_small_stream_bytes)


def _content_key(manifest: ManifestV1, keys: dict[str, bytes]) -> bytes:
    enc = manifest.payload.enc
    if enc.key_name not in keys:
        raise package_error(KEY_UNAVAILABLE, f"the key file has no key named {enc.key_name!r}")
    key = keys[enc.key_name]
    if len(key) * 8 != enc.key_strength or len(key) != 32:
        raise package_error(WRONG_KEY, f"key {enc.key_name!r} is {len(key) * 8} bits, AES-256 needs 256")
    return key


def _public_key(reader: PackageReader, cert: Certification) -> rsa.RSAPublicKey:
    data = _small(reader, cert.data)
    try:
        if cert.kind == "embedded-x509-pem":
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        elif cert.kind == "embedded-x509-der":
            key = x509.load_der_x509_certificate(data).public_key()
        elif cert.kind == "embedded-public-key-pem":
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except ValueError as exc:
        raise package_error(MANIFEST_INVALID, "embedded certificate/public key does not parse") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise package_error(MANIFEST_INVALID, "embedded key is not RSA")
    return key


def _stream_plaintext(
    reader: PackageReader, manifest: ManifestV1, key: bytes | None, sink: Callable[[bytes], Any] | None
) -> tuple[bytes, V1Check]:
    """One pass over the payload: decrypt (if encrypted), hash, deliver. Returns (digest, tag check)."""
    p = manifest.payload
    digest = hashlib.sha256()
    decryptor = None
    if p.enc.kind == "aes-gcm":
        assert key is not None
        nonce, tag = _small(reader, p.enc.nonce), _small(reader, p.enc.tag)
        if len(nonce) != 12 or len(tag) != 16:
            raise package_error(MANIFEST_INVALID, "v1 GCM nonce must be 12 bytes and tag 16 bytes")
        decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
    for block in reader.iter_stream(p.data):
        plain = decryptor.update(block) if decryptor is not None else block
        digest.update(plain)
        if sink is not None:
            sink(plain)
    if decryptor is None:
        return digest.digest(), V1Check("tag", SKIPPED, "payload is not encrypted")
    try:
        decryptor.finalize()
    except InvalidTag:
        return digest.digest(), V1Check("tag", FAILED, "AES-GCM tag does not verify", TAG_MISMATCH)
    return digest.digest(), V1Check("tag", OK, "AES-256-GCM tag verifies")


def _signature_check(reader: PackageReader, manifest: ManifestV1, report: V1Report) -> V1Check:
    """The original tools' check: the RSA signature over the *recorded* SHA-256 digest, attempted
    only once that digest matched the plaintext, with ``key_strength`` equal to the key's size."""
    p = manifest.payload
    if p.cert.kind in ("none", "target", "url"):
        return V1Check("signature", SKIPPED, f"certificate is not embedded ({p.cert.kind})")
    if p.dig.kind != "sha256":
        return V1Check("signature", FAILED, "the original tools sign the recorded SHA-256 digest; this manifest "
                       "declares none", MANIFEST_INVALID)
    if any(c.name == "digest" and c.status != OK for c in report.checks):
        return V1Check("signature", FAILED, "not attempted: the recorded digest does not match the plaintext",
                       SIGNATURE_INVALID)
    public_key = _public_key(reader, p.cert)
    if p.sig.key_strength != public_key.key_size:
        return V1Check("signature", FAILED, f"key_strength {p.sig.key_strength} is not the embedded key's "
                       f"{public_key.key_size} bits", MANIFEST_INVALID)
    try:
        public_key.verify(_small(reader, p.sig.data), _small(reader, p.dig.data), padding.PKCS1v15(),
                          Prehashed(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return V1Check("signature", FAILED, "RSA signature does not verify", SIGNATURE_INVALID)
    return V1Check("signature", OK, "RSA PKCS#1 v1.5 signature over the recorded digest verifies against the "
                   "embedded (unauthenticated) certificate")


# The only schemes the original installer accepts (anything else: Unsupported*Scheme).
INSTALLABLE = {"enc": "aes-gcm", "dig": "sha256", "sig": "rsa-pkcs1v15", "cert": "embedded-x509-pem"}


def require_installable(manifest: ManifestV1) -> None:
    """Refuse what the original installer refuses, before any plaintext exists."""
    p = manifest.payload
    for name, kind in (("enc", p.enc.kind), ("dig", p.dig.kind), ("sig", p.sig.kind), ("cert", p.cert.kind)):
        if kind != INSTALLABLE[name]:
            raise package_error(MANIFEST_INVALID, f"v1 payload.{name} {kind!r} cannot be installed: the original "
                                f"tools install only {INSTALLABLE[name]!r}")


def verify_v1(
    reader: PackageReader, keys: dict[str, bytes], *, sink: Callable[[bytes], Any] | None = None
) -> V1Report:
    """Check tag, digest and signature; report each. Needs the content key if the payload is encrypted."""
    manifest = reader.manifest_v1
    p = manifest.payload
    key = _content_key(manifest, keys) if p.enc.kind == "aes-gcm" else None
    plain_digest, tag_check = _stream_plaintext(reader, manifest, key, sink)
    report = V1Report([tag_check])
    if p.dig.kind == "sha256":
        recorded = _small(reader, p.dig.data)
        if recorded == plain_digest:
            report.checks.append(V1Check("digest", OK, "SHA-256 of the plaintext matches"))
        else:
            report.checks.append(V1Check("digest", FAILED, "SHA-256 of the plaintext differs", DIGEST_MISMATCH))
    else:
        report.checks.append(V1Check("digest", SKIPPED, "manifest declares no digest"))
    if p.sig.kind == "rsa-pkcs1v15":
        report.checks.append(_signature_check(reader, manifest, report))
    else:
        report.checks.append(V1Check("signature", SKIPPED, "manifest declares no signature"))
    return report


def decrypt_payload_v1(reader: PackageReader, key: bytes, sink: Callable[[bytes], Any]) -> int:
    """Legacy install path: stream the plaintext to ``sink``, then raise if the tag, digest or
    signature fails (the caller discards what it received). Returns the plaintext size. Only the
    schemes the original installer takes (:data:`INSTALLABLE`) are installed."""
    manifest = reader.manifest_v1
    require_installable(manifest)
    total = 0

    def count(block: bytes) -> None:
        nonlocal total
        total += len(block)
        sink(block)

    verify_v1(reader, {manifest.payload.enc.key_name: bytes(key)}, sink=count).raise_for_failure()
    return total
