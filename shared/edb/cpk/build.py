"""Building a v2 package from any binary stream, in bounded memory.

Layout written: header + table, then stream 0 (payload: chunks ``ciphertext || tag``), stream 1
(DER signature), stream 2 (signer chain), stream 3 (manifest), packed without padding. The
payload is written first because the manifest records its digests; the header is written last
(seek back), so the output must be seekable. A path output is written to a temporary file in the
same directory and renamed into place only when complete, so no partial package is ever visible.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edb.cpk import jsonstrict as js
from edb.cpk.errors import MANIFEST_INVALID, TOO_LARGE, UNREADABLE, package_error
from edb.cpk.frame import encode_frame, packed_offsets
from edb.cpk.limits import DEFAULT_LIMITS, MIB, Limits
from edb.cpk.manifest_v2 import (
    DEFAULT_MEDIA_TYPE,
    ID_PATTERN,
    MEDIA_TYPE_PATTERN,
    VERSION_PATTERN,
    ManifestV2,
    Target,
)
from edb.cpk.reader import V2_MANIFEST
from edb.cpk.signed import SignedManifest, encode_chain
from edb.cpk.stream_aead import (
    MAX_CHUNKS,
    NONCE_PREFIX_BYTES,
    TAG_BYTES,
    chunk_list_digest,
    chunk_nonce,
    stream_aad,
)
from edb.errors import KeyProviderError
from edb.keys.base import KekProvider, Signer
from edb.keys.errors import INVALID_KEY, SIGNER_MISMATCH
from edb.keys.low_s import normalize_low_s
from edb.pki.certs import to_der

DEFAULT_CHUNK_SIZE = 1 * MIB


@dataclass(frozen=True)
class BuildResult:
    manifest: ManifestV2
    signed: SignedManifest
    file_size: int
    path: Path | None


@dataclass(frozen=True)
class PackageIdentity:
    """What a package claims to be, checked before any work is done."""

    package_id: str
    version: str
    security_version: int
    target: Target
    expires: dt.datetime
    created: dt.datetime
    media_type: str = DEFAULT_MEDIA_TYPE
    name: str = "Unknown"
    vendor: str = "Unknown"

    def __post_init__(self) -> None:
        js.check_text(self.package_id, "cp-id", max_len=128, pattern=ID_PATTERN)
        js.check_text(self.version, "version", max_len=64, pattern=VERSION_PATTERN)
        js.check_text(self.media_type, "media-type", max_len=127, pattern=MEDIA_TYPE_PATTERN)
        js.check_text(self.name, "cp-name", max_len=256)
        js.check_text(self.vendor, "cp-vendor", max_len=256)
        if isinstance(self.security_version, bool) or not 0 <= self.security_version <= js.MAX_INT:
            raise package_error(MANIFEST_INVALID, "security version must be a non-negative 63-bit integer")
        if self.created.tzinfo is None or self.expires.tzinfo is None:
            raise package_error(MANIFEST_INVALID, "created and expires must be timezone-aware")
        if self.expires.replace(microsecond=0) <= self.created.replace(microsecond=0):
            raise package_error(MANIFEST_INVALID, "expires must be after created")


def _read_full(source: Any, view: memoryview) -> int:
    """Fill ``view`` from ``source`` until full or end of stream; return the bytes read."""
    filled = 0
    readinto = getattr(source, "readinto", None)
    while filled < len(view):
        if readinto is not None:
            n = readinto(view[filled:])
            if n is None:  # a non-blocking stream with no data yet is not the end of the payload
                raise ValueError("build needs a blocking payload stream")
        else:
            block = source.read(len(view) - filled)
            n = len(block)
            view[filled : filled + n] = block
        if not n:
            break
        filled += n
    return filled


def _seal_chunk(aead: AESGCM, nonce: bytes, plaintext: memoryview, aad: bytes, out: memoryview) -> tuple[bytes, bytes]:
    plain_digest = hashlib.sha256(plaintext).digest()
    aead.encrypt_into(nonce, plaintext, aad, out)
    return plain_digest, hashlib.sha256(out).digest()


def _check_signer(signer: Signer) -> tuple[list[bytes], ec.EllipticCurvePublicKey]:
    chain = signer.certificate_chain()
    if not chain:
        raise KeyProviderError("signer has no certificate chain", code=INVALID_KEY)
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyProviderError("publisher certificate must hold an EC P-256 key", code=INVALID_KEY)
    return [to_der(c) for c in chain], key


def sign_manifest(manifest: ManifestV2, signer: Signer, chain_ders: list[bytes],
                  leaf_key: ec.EllipticCurvePublicKey) -> SignedManifest:
    """Sign the manifest bytes and check the signature against the leaf before using it."""
    manifest_bytes = manifest.to_bytes()
    # Every signer should already return low-s; normalising again costs nothing and keeps a
    # third-party Signer from producing a package the verifiers refuse.
    signature = normalize_low_s(signer.sign_digest(hashlib.sha256(manifest_bytes).digest()))
    try:
        leaf_key.verify(signature, manifest_bytes, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise KeyProviderError("signature does not verify with the signer's certificate", code=SIGNER_MISMATCH) from exc
    return SignedManifest(manifest_bytes=manifest_bytes, signature=signature, chain=tuple(chain_ders))


def write_tail(out: IO[bytes], base: int, payload_size: int, signed: SignedManifest) -> int:
    """Write streams 1..3 after the payload and the header/table at ``base``; return the file size."""
    sizes = [payload_size, len(signed.signature), len(signed.chain_bytes), len(signed.manifest_bytes)]
    offsets = packed_offsets(sizes)
    header = encode_frame(2, V2_MANIFEST, sizes, offsets)
    out.write(signed.signature)
    out.write(signed.chain_bytes)
    out.write(signed.manifest_bytes)
    end = out.tell()
    out.seek(base)
    out.write(header)
    out.seek(end)
    return end - base


def header_size() -> int:
    return len(encode_frame(2, V2_MANIFEST, [0, 0, 0, 0], [0, 0, 0, 0]))


class _AtomicOutput:
    """A temporary file next to ``path``, renamed over it on success, removed on failure."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        self.file: IO[bytes] = self.tmp.open("xb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def build(
    payload: str | os.PathLike[str] | IO[bytes],
    output: str | os.PathLike[str] | IO[bytes],
    *,
    identity: PackageIdentity,
    kek: KekProvider,
    signer: Signer,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    threads: int = 2,
    limits: Limits = DEFAULT_LIMITS,
    progress: Callable[[int], None] | None = None,
) -> BuildResult:
    """Encrypt ``payload`` (a path or any readable binary stream) into a signed v2 package.

    A fresh random DEK and nonce prefix per package; the DEK is wrapped by ``kek`` before any
    encryption (so an unavailable KEK fails fast) and never written anywhere in clear.
    """
    if not limits.min_chunk_size <= chunk_size <= limits.max_chunk_size:
        raise package_error(TOO_LARGE, f"chunk size must be in [{limits.min_chunk_size}, {limits.max_chunk_size}]")
    chain_ders, leaf_key = _check_signer(signer)
    chain_sha256 = hashlib.sha256(encode_chain(chain_ders)).hexdigest()

    source: IO[bytes]
    if isinstance(payload, str | os.PathLike):
        try:
            source = Path(payload).open("rb")  # noqa: SIM115 - closed in build's finally
        except OSError as exc:
            raise package_error(UNREADABLE, f"cannot open payload {payload}: {exc.strerror}") from exc
        owns_source = True
    else:
        source, owns_source = payload, False

    atomic = _AtomicOutput(Path(output)) if isinstance(output, str | os.PathLike) else None
    out: IO[bytes] = atomic.file if atomic is not None else output  # type: ignore[assignment]
    dek = bytearray(secrets.token_bytes(32))
    try:
        wrapped = kek.wrap(bytes(dek))
        nonce_prefix = secrets.token_bytes(NONCE_PREFIX_BYTES)
        aad = stream_aad(identity.package_id, identity.version, identity.security_version, chunk_size)
        base = out.tell()
        out.write(bytes(header_size()))  # placeholder, rewritten at the end
        plain_size, root_hex, ct_hex = _encrypt_stream(
            source, out, AESGCM(bytes(dek)), nonce_prefix, aad, chunk_size, threads, limits, progress
        )
        manifest = ManifestV2(
            package_id=identity.package_id, name=identity.name, vendor=identity.vendor, version=identity.version,
            security_version=identity.security_version, created=identity.created.replace(microsecond=0),
            expires=identity.expires.replace(microsecond=0), target=identity.target, media_type=identity.media_type,
            plaintext_size=plain_size, plaintext_sha256=root_hex,
            ciphertext_size=plain_size + TAG_BYTES * max(1, -(-plain_size // chunk_size)), ciphertext_sha256=ct_hex,
            chunk_size=chunk_size, nonce_prefix=nonce_prefix, wrapped_dek=wrapped, signer_chain_sha256=chain_sha256,
        )
        signed = sign_manifest(manifest, signer, chain_ders, leaf_key)
        size = write_tail(out, base, manifest.ciphertext_size, signed)
        if atomic is not None:
            atomic.commit()
        return BuildResult(manifest=manifest, signed=signed, file_size=size,
                           path=atomic.path if atomic is not None else None)
    except BaseException:
        if atomic is not None:
            atomic.abort()
        raise
    finally:
        dek[:] = bytes(len(dek))
        if owns_source:
            source.close()


def _encrypt_stream(
    source: IO[bytes], out: IO[bytes], aead: AESGCM, prefix: bytes, aad: bytes, chunk: int, threads: int,
    limits: Limits, progress: Callable[[int], None] | None,
) -> tuple[int, str, str]:
    """Chunks sealed and hashed in parallel, written in order; returns (plaintext size, plaintext
    chunk-list digest, ciphertext chunk-list digest)."""
    workers = max(1, threads)
    ring = 2 * workers + 2
    free_in = [bytearray(chunk) for _ in range(ring)]
    free_out = [bytearray(chunk + TAG_BYTES) for _ in range(ring)]
    plaintext_buffers = list(free_in)
    plain_digests, sealed_digests = bytearray(), bytearray()
    pending: deque[tuple[Future[tuple[bytes, bytes]], bytearray, bytearray, memoryview]] = deque()
    total = 0
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cpk-build")

    def drain_one() -> None:
        future, in_buf, out_buf, out_view = pending.popleft()
        plain_digest, sealed_digest = future.result()
        plain_digests.extend(plain_digest)
        sealed_digests.extend(sealed_digest)
        out.write(out_view)
        if progress is not None:
            progress(len(out_view) - TAG_BYTES)
        free_in.append(in_buf)
        free_out.append(out_buf)

    def take() -> tuple[bytearray, bytearray]:
        while len(free_in) < 1 or len(free_out) < 1:
            drain_one()
        return free_in.pop(), free_out.pop()

    try:
        cur_in, cur_out = take()
        cur_len = _read_full(source, memoryview(cur_in))
        index = 0
        while True:
            total += cur_len
            if total > limits.max_payload_bytes:
                raise package_error(TOO_LARGE, f"payload exceeds {limits.max_payload_bytes} bytes")
            if index >= MAX_CHUNKS:
                raise package_error(TOO_LARGE, "payload needs more than 2^32 chunks")
            nxt: tuple[bytearray, bytearray] | None = None
            nxt_len = 0
            if cur_len == chunk:
                nxt = take()
                nxt_len = _read_full(source, memoryview(nxt[0]))
            last = nxt_len == 0
            out_view = memoryview(cur_out)[: cur_len + TAG_BYTES]
            future = executor.submit(_seal_chunk, aead, chunk_nonce(prefix, index, last),
                                     memoryview(cur_in)[:cur_len], aad, out_view)
            pending.append((future, cur_in, cur_out, out_view))
            if last:
                if nxt is not None:
                    free_in.append(nxt[0])
                    free_out.append(nxt[1])
                break
            assert nxt is not None
            (cur_in, cur_out), cur_len = nxt, nxt_len
            index += 1
        while pending:
            drain_one()
        return total, chunk_list_digest(bytes(plain_digests)), chunk_list_digest(bytes(sealed_digests))
    finally:
        executor.shutdown(wait=True)
        for buf in plaintext_buffers:
            buf[:] = bytes(len(buf))
