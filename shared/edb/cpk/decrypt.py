"""Streaming decryption of a verified v2 payload, in bounded memory, on up to ``threads`` cores.

Each chunk is independent (its own nonce), so worker threads read (``os.preadv``), open
(``AESGCM.decrypt_into``) and hash (``hashlib.sha256``) whole chunks in parallel; all three release
the GIL. Plaintext is delivered to the sink strictly in chunk order on the calling thread. Memory:
``2 * threads + 1`` ciphertext buffers, plus as many plaintext buffers unless the sink is a buffer
(then each chunk is decrypted straight into its place), whatever the package size.

Checks, all before returning: the table size, every chunk's GCM tag under its own nonce (counter
and last flag, so reordering, dropping, duplicating, truncating and splicing fail), and the
signed plaintext digest (SHA-256 over the per-chunk SHA-256s). Given the DEK, nonces and AAD,
AES-GCM is a bijection between plaintext and (ciphertext, tag), so valid tags plus the signed
plaintext digest pin the exact signed ciphertext: the ciphertext digest need not be recomputed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edb.cpk.errors import DIGEST_MISMATCH, MANIFEST_INVALID, TAG_MISMATCH, WRONG_KEY, package_error
from edb.cpk.pipeline import ring_size, run_ordered
from edb.cpk.reader import V2_PAYLOAD
from edb.cpk.stream_aead import TAG_BYTES, chunk_list_digest, chunk_nonce, chunk_plaintext_len
from edb.cpk.verify import VerifiedPackage

Deliver = Callable[[memoryview], Any]


def _resolve_sink(sink: Any, size: int) -> tuple[Deliver | None, memoryview | None]:
    if callable(sink):
        return sink, None
    try:
        view = memoryview(sink)
    except TypeError:
        view = None
    if view is not None:
        if view.readonly:
            raise TypeError("sink buffer is read-only")
        view = view.cast("B") if (view.format != "B" or view.ndim != 1) else view
        if view.nbytes < size:
            raise ValueError(f"sink buffer holds {view.nbytes} bytes, the plaintext is {size}")
        return None, view
    write = getattr(sink, "write", None)
    if callable(write):
        return write, None
    raise TypeError("sink must be a callable, a writable buffer or an object with write()")


def _zero(view: memoryview) -> None:
    zeros = bytes(min(len(view), 1 << 20))
    for offset in range(0, len(view), len(zeros) or 1):
        n = min(len(zeros), len(view) - offset)
        view[offset : offset + n] = zeros[:n]


def decrypt_payload(
    verified: VerifiedPackage,
    dek: bytes | bytearray,
    sink: Any,
    *,
    threads: int = 2,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Decrypt the payload to ``sink``; return the plaintext size.

    ``sink`` is a callable taking a ``memoryview`` of each plaintext chunk in order (valid only
    during the call: copy what you keep), a writable buffer of at least ``plaintext_size`` bytes
    (decrypted into in place; zeroed again if verification fails), or an object with ``write``.
    On any error a :class:`PackageError` is raised before returning (CPK_TAG_MISMATCH,
    CPK_DIGEST_MISMATCH, CPK_TRUNCATED, CPK_WRONG_KEY, ...) and the caller must discard whatever
    the sink received.
    """
    manifest, reader = verified.manifest, verified.reader
    if not isinstance(dek, bytes | bytearray) or len(dek) != 32:
        raise package_error(WRONG_KEY, "a v2 DEK is exactly 32 bytes")
    span = reader.span(V2_PAYLOAD)
    if span.size != manifest.ciphertext_size:
        raise package_error(MANIFEST_INVALID, "payload stream size differs from the signed manifest")
    deliver, target = _resolve_sink(sink, manifest.plaintext_size)

    aead = AESGCM(bytes(dek))
    aad = manifest.aad()
    count, chunk, size = manifest.chunk_count, manifest.chunk_size, manifest.plaintext_size
    stride = chunk + TAG_BYTES
    workers = max(1, min(threads, count))
    largest = min(chunk, size)  # a payload smaller than one chunk needs no full-size buffers
    slots = [(bytearray(largest + TAG_BYTES), None if target is not None else bytearray(largest))
             for _ in range(ring_size(workers))]
    digests = bytearray()
    done = 0

    def work(index: int, slot: tuple[bytearray, bytearray | None]) -> tuple[bytes, memoryview]:
        in_buf, out_buf = slot
        plain_len = chunk_plaintext_len(index, size, chunk)
        sealed = memoryview(in_buf)[: plain_len + TAG_BYTES]
        reader.pread_into(span.start + index * stride, sealed)
        if target is not None:
            out = target[index * chunk : index * chunk + plain_len]
        else:
            assert out_buf is not None
            out = memoryview(out_buf)[:plain_len]
        try:
            aead.decrypt_into(chunk_nonce(manifest.nonce_prefix, index, index == count - 1), sealed, aad, out)
        except InvalidTag:
            raise package_error(TAG_MISMATCH, f"chunk {index} of {count} fails authentication") from None
        return hashlib.sha256(out).digest(), out

    def deliver_chunk(index: int, slot: object, result: tuple[bytes, memoryview]) -> None:
        nonlocal done
        digest, out = result
        digests.extend(digest)
        if deliver is not None:
            deliver(out)
        done += len(out)
        if progress is not None:
            progress(len(out))

    try:
        run_ordered(count, slots, work, deliver_chunk, workers)
        if chunk_list_digest(bytes(digests)) != manifest.plaintext_sha256:
            raise package_error(DIGEST_MISMATCH, "plaintext digest differs from the signed manifest")
        return done
    except BaseException:
        if target is not None:
            _zero(target[:size])
        raise
    finally:
        for _, out_buf in slots:
            if out_buf is not None:
                _zero(memoryview(out_buf))
