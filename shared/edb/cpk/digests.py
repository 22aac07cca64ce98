"""The v2 payload digests. Both are chunk-list digests, so they are computed in parallel:

    plaintext-sha256  = SHA-256( SHA-256(p_0) || SHA-256(p_1) || ... )      p_i: plaintext chunk i
    ciphertext-sha256 = SHA-256( SHA-256(c_0) || SHA-256(c_1) || ... )      c_i: sealed chunk i (ct || tag)

Chunk boundaries are fixed by the signed chunk size and plaintext size, so each list has exactly
one reading; a collision in the list digest needs a SHA-256 collision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from edb.cpk.manifest_v2 import ManifestV2
from edb.cpk.pipeline import ring_size, run_ordered
from edb.cpk.reader import V2_PAYLOAD, PackageReader
from edb.cpk.stream_aead import TAG_BYTES, chunk_list_digest, chunk_plaintext_len


def sealed_len(manifest: ManifestV2, index: int) -> int:
    return chunk_plaintext_len(index, manifest.plaintext_size, manifest.chunk_size) + TAG_BYTES


def payload_ciphertext_digest(
    reader: PackageReader, manifest: ManifestV2, *, threads: int = 2, progress: Callable[[int], None] | None = None
) -> str:
    """Recompute ``ciphertext-sha256`` from the file (key-less), reading chunks in parallel."""
    span = reader.span(V2_PAYLOAD)
    stride = manifest.chunk_size + TAG_BYTES
    count = manifest.chunk_count
    workers = max(1, min(threads, count))
    digests = bytearray()

    def work(index: int, buf: bytearray) -> bytes:
        view = memoryview(buf)[: sealed_len(manifest, index)]
        reader.pread_into(span.start + index * stride, view)
        return hashlib.sha256(view).digest()

    def deliver(index: int, buf: bytearray, digest: bytes) -> None:
        digests.extend(digest)
        if progress is not None:
            progress(sealed_len(manifest, index))

    largest = min(manifest.chunk_size, manifest.plaintext_size) + TAG_BYTES
    run_ordered(count, [bytearray(largest) for _ in range(ring_size(workers))], work, deliver, workers)
    return chunk_list_digest(bytes(digests))
