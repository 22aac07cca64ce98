"""Both package digests in one pass over the bytes as they arrive: pure, no I/O.

The installer must check two things about a package before it asks for a key:

- the SHA-256 of the whole file against the twin's ``sha256`` (the bytes are the ones published);
- the v2 payload's ``ciphertext-sha256`` against the signed manifest (the bytes are the ones the
  publisher signed), so a tampered package is refused before any key release.

The second is a chunk-list digest (SHA-256 over the SHA-256 of every sealed chunk, see
``edb.cpk.digests``), so its pieces depend on the chunk size, which only the manifest states, and
the manifest is the *last* stream of a v2 file. Rather than wait for the end of the download and
read the payload again, :class:`PackageHasher` takes the payload's place from the stream table in
the first 80 bytes and assumes the package library's default chunk size (1 MiB, what ``edb cloud
build`` writes). Once the TEE has authenticated the manifest, :func:`digest_for_manifest` returns
the streamed digest only if that manifest really has this layout; for any other chunk size the
caller computes the digest again from the file (one extra pass, the cost every package paid before).
Nothing here is trusted until it is compared with the authenticated manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from edb.cpk import DEFAULT_CHUNK_SIZE, DEFAULT_LIMITS, ManifestV2, PackageError
from edb.cpk.frame import ENTRY_SIZE, HEADER_SIZE, decode_header, decode_table
from edb.cpk.reader import V2_CHAIN, V2_MANIFEST, V2_NUM_STREAMS, V2_PAYLOAD, V2_SIGNATURE
from edb.cpk.stream_aead import TAG_BYTES, chunk_list_digest

#: The v2 frame header and its four-entry stream table: everything needed to place the payload.
V2_HEAD_BYTES = HEADER_SIZE + ENTRY_SIZE * V2_NUM_STREAMS


@dataclass(frozen=True)
class PayloadLayout:
    """Where the v2 payload lies in the file and the chunk size its digest was computed with."""

    start: int  # absolute file offset of the payload stream
    size: int  # bytes of the payload stream (ciphertext and tags)
    chunk_size: int  # plaintext bytes per chunk; sealed chunks are chunk_size + 16


@dataclass(frozen=True)
class PayloadDigest:
    layout: PayloadLayout
    sha256: str  # chunk-list SHA-256 of the payload under ``layout``


@dataclass(frozen=True)
class PackageDigests:
    sha256: str  # of the whole file
    payload: PayloadDigest | None  # None: not a v2 frame, or its table does not fit the file


def payload_layout(head: bytes, file_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> PayloadLayout | None:
    """The payload's place from the first :data:`V2_HEAD_BYTES` of a v2 package, or None.

    The same frame checks the package reader runs (magic, version, stream bounds against the
    declared file size); anything else (a v1 package, garbage) simply gets no streamed payload
    digest: the TEE refuses such a file itself."""
    limits = DEFAULT_LIMITS
    try:
        header = decode_header(head[:HEADER_SIZE], limits)
        if header.manifest_version != 2 or header.num_streams != V2_NUM_STREAMS or len(head) < V2_HEAD_BYTES:
            return None
        max_sizes = [0] * V2_NUM_STREAMS
        max_sizes[V2_PAYLOAD] = limits.max_ciphertext_bytes
        max_sizes[V2_SIGNATURE] = limits.max_signature_bytes
        max_sizes[V2_CHAIN] = limits.max_chain_bytes
        max_sizes[V2_MANIFEST] = limits.max_manifest_bytes
        frame = decode_table(header, head[HEADER_SIZE:V2_HEAD_BYTES], file_size, max_sizes)
    except PackageError:
        return None
    payload = frame.streams[V2_PAYLOAD]
    return PayloadLayout(payload.start, payload.size, chunk_size)


class PackageHasher:
    """Feed the file's bytes in order (any piece sizes); get both digests at the end.

    Memory is bounded: at most the 80 head bytes are kept, the rest goes straight into hashes."""

    def __init__(self, file_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self._file_size = file_size
        self._chunk_size = chunk_size
        self._file = hashlib.sha256()
        self._position = 0
        self._head = bytearray()
        self._layout: PayloadLayout | None = None
        self._decided = False  # whether the head has been read (and the layout found or not)
        self._piece = hashlib.sha256()
        self._piece_have = 0
        self._pieces = bytearray()  # the 32-byte digests of the sealed chunks so far

    @property
    def position(self) -> int:
        return self._position

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._file.update(view)
        start = self._position
        self._position += len(view)
        if not self._decided:
            self._head += view[: max(0, V2_HEAD_BYTES - start)]
            if len(self._head) < V2_HEAD_BYTES and self._position < self._file_size:
                return
            self._decided = True
            self._layout = payload_layout(bytes(self._head), self._file_size, self._chunk_size)
            self._head = bytearray()
        if self._layout is not None:  # the table puts the payload after itself: never before ``start``
            self._payload_update(view, start)

    def _payload_update(self, view: memoryview, start: int) -> None:
        assert self._layout is not None
        begin = max(start, self._layout.start)
        end = min(start + len(view), self._layout.start + self._layout.size)
        if begin >= end:
            return
        part = view[begin - start : end - start]
        stride = self._layout.chunk_size + TAG_BYTES
        while part:
            take = min(len(part), stride - self._piece_have)
            self._piece.update(part[:take])
            self._piece_have += take
            part = part[take:]
            if self._piece_have == stride:
                self._close_piece()

    def _close_piece(self) -> None:
        self._pieces += self._piece.digest()
        self._piece = hashlib.sha256()
        self._piece_have = 0

    def result(self) -> PackageDigests:
        """Both digests; call once every byte has been fed."""
        if self._position != self._file_size:
            raise ValueError(f"fed {self._position} of {self._file_size} bytes")
        payload = None
        if self._layout is not None:
            if self._piece_have or not self._pieces:  # the last (shorter) chunk, or an empty payload
                self._close_piece()
            payload = PayloadDigest(self._layout, chunk_list_digest(bytes(self._pieces)))
        return PackageDigests(self._file.hexdigest(), payload)


def digest_for_manifest(computed: PayloadDigest | None, manifest: ManifestV2) -> str | None:
    """The streamed payload digest if it was computed with ``manifest``'s layout, else None.

    ``manifest`` must be the authenticated one (the TEE's ticket). The payload stream size was
    checked against ``ciphertext-size`` by the TEE; with the same chunk size and total, every
    chunk boundary is the same, so the streamed digest is exactly the one the manifest signs."""
    if computed is None:
        return None
    layout = computed.layout
    if layout.chunk_size != manifest.chunk_size or layout.size != manifest.ciphertext_size:
        return None
    return computed.sha256
