"""The package file a caller hands to ``begin_install``: how large it may be, and its bounded hash.

The TEE reads a caller's file, so every pass over it must be bounded by the TEE's own limits before
it starts (an allowed caller could otherwise make the TEE hash a sparse file of terabytes):

1. before parsing, the file's size is compared with the largest package this TEE could accept
   (:func:`file_size_limit`): ``CPK_TOO_LARGE``;
2. once the frame is parsed (bounded reads of the header, table and manifest), the bytes that
   belong to no stream (padding, which the format allows, and trailing bytes) must be few
   (:func:`check_unaccounted`): ``CPK_TOO_LARGE``;
3. the whole-file hash then reads exactly the size that was checked, and a file whose size changed
   while it was read is refused (``TEE_PACKAGE_FILE``): appending to the file after the check does
   not extend the pass.

Pure except :class:`FileHash`, which reads the descriptor with ``pread`` on its own thread.
"""

from __future__ import annotations

import hashlib
import os
import threading

from edb.cpk import Limits
from edb.cpk.errors import TOO_LARGE
from edb.cpk.frame import ENTRY_SIZE, HEADER_SIZE, Frame
from edb.errors import PackageError, TeeError
from edb.tee.errors import PACKAGE_FILE

#: Bytes of a package file outside every stream (padding between streams, bytes after the last)
#: that the TEE tolerates. The reference writer leaves none.
MAX_UNACCOUNTED_BYTES = 1024 * 1024

READ_BLOCK = 1024 * 1024


def reader_limits(max_model_bytes: int) -> Limits:
    """The package library's limits inside this TEE: no payload above the model limit."""
    return Limits(max_payload_bytes=max_model_bytes)


def file_size_limit(max_model_bytes: int) -> int:
    """The largest package file this TEE reads at all: the largest payload stream the reader could
    accept (the model limit plus a tag per smallest chunk), the manifest, signature and chain
    limits, a full stream table and the tolerated unaccounted bytes. Loose (a real package is
    close to the model size), but it stops a file of any size before a single pass."""
    limits = reader_limits(max_model_bytes)
    return int(HEADER_SIZE + ENTRY_SIZE * limits.max_streams + limits.max_ciphertext_bytes
            + limits.max_manifest_bytes + limits.max_signature_bytes + limits.max_chain_bytes
            + limits.max_small_stream_bytes * limits.max_streams + MAX_UNACCOUNTED_BYTES)


def check_file_size(size: int, max_model_bytes: int) -> None:
    limit = file_size_limit(max_model_bytes)
    if size > limit:
        raise PackageError(f"package file of {size} bytes exceeds this TEE's limit of {limit} bytes", code=TOO_LARGE)


def check_unaccounted(frame: Frame) -> None:
    """Refuse a file whose bytes outside the streams exceed :data:`MAX_UNACCOUNTED_BYTES`.

    Streams never overlap (the frame decoder refuses it), so the rest is padding or trailing bytes."""
    in_streams = sum(s.size for s in frame.streams)
    unaccounted = frame.file_size - frame.header.origin - in_streams
    if unaccounted > MAX_UNACCOUNTED_BYTES:
        raise PackageError(f"package file has {unaccounted} bytes outside its streams (this TEE accepts at most "
                           f"{MAX_UNACCOUNTED_BYTES})", code=TOO_LARGE)


def file_sha256(fd: int, size: int) -> str:
    """SHA-256 of the first ``size`` bytes of ``fd`` (``pread``: no shared offset); the file must
    still be exactly ``size`` bytes long afterwards."""
    h = hashlib.sha256()
    position = 0
    while position < size:
        block = os.pread(fd, min(READ_BLOCK, size - position), position)
        if not block:
            raise TeeError("the package file shrank while the TEE read it", code=PACKAGE_FILE)
        h.update(block)
        position += len(block)
    if os.fstat(fd).st_size != size:
        raise TeeError("the package file changed size while the TEE read it", code=PACKAGE_FILE)
    return h.hexdigest()


class FileHash:
    """:func:`file_sha256` on its own thread (the other core checks the payload digest meanwhile)."""

    def __init__(self, fd: int, size: int) -> None:
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fd, size), name="edb-tee-file-hash", daemon=True)
        self._thread.start()

    def _run(self, fd: int, size: int) -> None:
        try:
            self._digest = file_sha256(fd, size)
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc

    def join(self) -> None:
        """Wait until the thread no longer reads the descriptor (before it is closed)."""
        self._thread.join()

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest
