"""Streaming decryption of a verified v2 payload, in bounded memory, on up to ``threads`` cores.

Each chunk is independent (its own nonce), so chunks are opened in parallel by worker threads:
``AESGCM.decrypt_into`` and ``hashlib.sha256`` both release the GIL on large buffers. The calling
thread reads ciphertext into a small ring of buffers and delivers plaintext to the sink strictly
in chunk order. Memory: ``2 * threads + 1`` chunk buffers (x2 unless the sink is a buffer, which
is decrypted into directly), whatever the package size.

Checks, all before returning: the table size, every chunk's GCM tag under its own nonce (counter
and last flag, so reordering, dropping, duplicating, truncating and splicing fail), and the
signed plaintext digest (SHA-256 over the per-chunk SHA-256s). Given the DEK, nonces and AAD,
AES-GCM encryption is deterministic, so a plaintext equal to the signed one behind valid tags
can only come from the signed ciphertext: the ciphertext digest need not be recomputed here.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edb.cpk.errors import DIGEST_MISMATCH, MANIFEST_INVALID, TAG_MISMATCH, WRONG_KEY, package_error
from edb.cpk.reader import V2_PAYLOAD
from edb.cpk.stream_aead import TAG_BYTES, chunk_nonce, chunk_plaintext_len
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


class _Done:
    """A finished 'future' for the single-threaded path."""

    def __init__(self, fn: Callable[[], bytes]) -> None:
        try:
            self._value: bytes | None = fn()
            self._error: BaseException | None = None
        except BaseException as exc:  # re-raised by result(), like a Future
            self._value, self._error = None, exc

    def result(self) -> bytes:
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def cancel(self) -> bool:
        return False


def _open_chunk(aead: AESGCM, nonce: bytes, ciphertext: memoryview, aad: bytes, out: memoryview) -> bytes:
    aead.decrypt_into(nonce, ciphertext, aad, out)
    return hashlib.sha256(out).digest()


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
    workers = max(1, min(threads, count))
    ring = 2 * workers + 1 if workers > 1 else 1
    free_in = [bytearray(chunk + TAG_BYTES) for _ in range(ring)]
    free_out = [] if target is not None else [bytearray(chunk) for _ in range(ring)]
    plaintext_buffers = list(free_out)  # wiped in `finally`, wherever they are when we stop
    pending: deque[tuple[int, Future[bytes] | _Done, bytearray, bytearray | None, memoryview]] = deque()
    root = hashlib.sha256()
    done = 0
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cpk-decrypt") if workers > 1 else None

    def drain_one() -> None:
        nonlocal done
        index, future, in_buf, out_buf, out_view = pending.popleft()
        try:
            root.update(future.result())
        except InvalidTag:
            raise package_error(TAG_MISMATCH, f"chunk {index} of {count} fails authentication") from None
        if deliver is not None:
            deliver(out_view)
        done += len(out_view)
        if progress is not None:
            progress(len(out_view))
        free_in.append(in_buf)
        if out_buf is not None:
            free_out.append(out_buf)

    try:
        position = span.start
        for index in range(count):
            if not free_in:
                drain_one()
            plain_len = chunk_plaintext_len(index, size, chunk)
            in_buf = free_in.pop()
            in_view = memoryview(in_buf)[: plain_len + TAG_BYTES]
            reader.readinto_at(position, in_view)
            position += plain_len + TAG_BYTES
            out_buf: bytearray | None = None
            if target is not None:
                out_view = target[index * chunk : index * chunk + plain_len]
            else:
                out_buf = free_out.pop()
                out_view = memoryview(out_buf)[:plain_len]
            nonce = chunk_nonce(manifest.nonce_prefix, index, index == count - 1)
            future: Future[bytes] | _Done
            if executor is not None:
                future = executor.submit(_open_chunk, aead, nonce, in_view, aad, out_view)
            else:
                future = _Done(partial(_open_chunk, aead, nonce, in_view, aad, out_view))
            pending.append((index, future, in_buf, out_buf, out_view))
        while pending:
            drain_one()
        if root.hexdigest() != manifest.plaintext_sha256:
            raise package_error(DIGEST_MISMATCH, "plaintext digest differs from the signed manifest")
        return done
    except BaseException:
        for _, future, *_ in pending:
            future.cancel()
        if executor is not None:
            executor.shutdown(wait=True)
            executor = None
        if target is not None:
            _zero(target[:size])
        raise
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
        for buf in plaintext_buffers:
            _zero(memoryview(buf))
