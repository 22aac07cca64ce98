"""Lazy package reader: header, table and manifest with bounded reads; streams on demand.

``open_package`` accepts a path, a seekable binary file object (for example one made with
``os.fdopen(fd, "rb")`` from a descriptor passed over a Unix socket) or a raw descriptor (int,
not closed by the reader). It never loads the payload.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cryptography import x509

from edb.cpk.errors import MANIFEST_INVALID, STREAM_OUT_OF_BOUNDS, TOO_LARGE, TRUNCATED, UNREADABLE, package_error
from edb.cpk.frame import ENTRY_SIZE, HEADER_SIZE, Frame, StreamSpan, decode_header, decode_table
from edb.cpk.limits import DEFAULT_LIMITS, Limits
from edb.cpk.manifest_v1 import ManifestV1, parse_manifest_v1
from edb.cpk.manifest_v2 import ManifestV2, parse_manifest_v2
from edb.cpk.signed import SignedManifest, decode_chain

FORMAT_V1 = "cpk-v1"
FORMAT_V2 = "cpk-v2"

#: Fixed v2 layout: stream index of each role.
V2_PAYLOAD, V2_SIGNATURE, V2_CHAIN, V2_MANIFEST = 0, 1, 2, 3
V2_NUM_STREAMS = 4

READ_BLOCK = 1024 * 1024

PackageSource = str | os.PathLike[str] | IO[bytes] | int


@dataclass(frozen=True)
class PackageInfo:
    """What ``edb package inspect`` prints. Unverified; never a secret."""

    format: str
    package_id: str
    name: str
    vendor: str
    version: str
    security_version: int | None
    target: dict[str, Any]
    media_type: str | None
    plaintext_size: int | None
    ciphertext_size: int
    chunk_size: int | None
    created: str | None
    expires: str | None
    signer_subject: str | None
    kid: str | None
    file_size: int
    streams: int
    manifest_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "id": self.package_id,
            "name": self.name,
            "vendor": self.vendor,
            "version": self.version,
            "securityVersion": self.security_version,
            "target": self.target,
            "mediaType": self.media_type,
            "plaintextSize": self.plaintext_size,
            "ciphertextSize": self.ciphertext_size,
            "chunkSize": self.chunk_size,
            "created": self.created,
            "expires": self.expires,
            "signerSubject": self.signer_subject,
            "kid": self.kid,
            "fileSize": self.file_size,
            "streams": self.streams,
            "manifestSha256": self.manifest_sha256,
        }


class PackageReader:
    """An opened package. Use as a context manager, or call :meth:`close`."""

    def __init__(self, file: IO[bytes], *, owns_file: bool, limits: Limits = DEFAULT_LIMITS) -> None:
        self._file = file
        self._owns_file = owns_file
        self.limits = limits
        self._lock = threading.Lock()
        self._fd = _descriptor(file)
        try:
            self.frame = self._read_frame()
            self.manifest_bytes = self.read_stream(self.frame.header.manifest_stream, limits.max_manifest_bytes)
            self.manifest: ManifestV1 | ManifestV2
            if self.frame.header.manifest_version == 2:
                self._check_v2_layout()
                self.manifest = parse_manifest_v2(self.manifest_bytes, limits)
            else:
                self.manifest = parse_manifest_v1(self.manifest_bytes, limits)
                self._check_v1_layout(self.manifest)
        except BaseException:
            self.close()
            raise

    # -- frame -------------------------------------------------------------------------------

    def _file_size(self) -> int:
        try:
            return os.fstat(self._file.fileno()).st_size
        except (AttributeError, OSError, io.UnsupportedOperation):
            position = self._file.seek(0, os.SEEK_END)
            return int(position)

    def _read_frame(self) -> Frame:
        size = self._file_size()
        header = decode_header(self._read_at(0, min(size, HEADER_SIZE), allow_short=True), self.limits)
        table_len = ENTRY_SIZE * header.num_streams
        table = self._read_at(HEADER_SIZE, min(table_len, max(0, size - HEADER_SIZE)), allow_short=True)
        limits = self.limits
        max_sizes = [limits.max_payload_bytes] * header.num_streams
        if header.manifest_version == 2 and header.num_streams == V2_NUM_STREAMS:
            max_sizes = [limits.max_ciphertext_bytes, limits.max_signature_bytes, limits.max_chain_bytes,
                         limits.max_manifest_bytes]
        max_sizes[header.manifest_stream] = limits.max_manifest_bytes
        return decode_table(header, table, size, max_sizes)

    def _check_v2_layout(self) -> None:
        h = self.frame.header
        if h.num_streams != V2_NUM_STREAMS or h.manifest_stream != V2_MANIFEST:
            raise package_error(MANIFEST_INVALID, "a v2 package has 4 streams with the manifest at index 3")
        sig, chain = self.frame.streams[V2_SIGNATURE], self.frame.streams[V2_CHAIN]
        if sig.size > self.limits.max_signature_bytes:
            raise package_error(TOO_LARGE, "signature stream exceeds the configured limit")
        if chain.size > self.limits.max_chain_bytes:
            raise package_error(TOO_LARGE, "signer chain stream exceeds the configured limit")

    def _check_v1_layout(self, manifest: ManifestV1) -> None:
        n = self.frame.header.num_streams
        for index in (*manifest.stream_indices(), *manifest.package.map):
            if index >= n:
                raise package_error(STREAM_OUT_OF_BOUNDS, f"manifest names stream {index}, the frame has {n}")
        if manifest.payload.data == self.frame.header.manifest_stream:
            raise package_error(MANIFEST_INVALID, "payload and manifest cannot be the same stream")
        if self.frame.streams[manifest.payload.data].size > self.limits.max_payload_bytes:
            raise package_error(TOO_LARGE, "payload stream exceeds the configured limit")

    # -- bounded reads -----------------------------------------------------------------------

    def _read_at(self, position: int, size: int, *, allow_short: bool = False) -> bytes:
        self._file.seek(position)
        chunks, remaining = [], size
        while remaining:
            block = self._file.read(min(remaining, READ_BLOCK))
            if not block:
                break
            chunks.append(block)
            remaining -= len(block)
        data = b"".join(chunks)
        if remaining and not allow_short:
            raise package_error(TRUNCATED, "file ended while reading a stream (did it shrink?)")
        return data

    def span(self, index: int) -> StreamSpan:
        return self.frame.streams[index]

    def read_stream(self, index: int, max_bytes: int) -> bytes:
        """A whole stream, refusing (before reading) one larger than ``max_bytes``."""
        span = self.frame.streams[index]
        if span.size > max_bytes:
            raise package_error(TOO_LARGE, f"stream {index} of {span.size} bytes exceeds the limit of {max_bytes}")
        return self._read_at(span.start, span.size)

    def iter_stream(self, index: int, block_size: int = READ_BLOCK) -> Iterator[bytes]:
        """A stream in blocks of at most ``block_size`` bytes (constant memory)."""
        span = self.frame.streams[index]
        position, remaining = span.start, span.size
        while remaining:
            n = min(block_size, remaining)
            block = self._read_at(position, n)
            position += n
            remaining -= n
            yield block

    def pread_into(self, position: int, buffer: memoryview) -> None:
        """Thread-safe :meth:`readinto_at`: ``os.preadv`` on the descriptor when there is one (no
        shared file position, GIL released), otherwise the seek+read under a lock."""
        fd = self._fd
        if fd is None:
            with self._lock:
                self.readinto_at(position, buffer)
            return
        filled = 0
        while filled < len(buffer):
            n = os.preadv(fd, [buffer[filled:]], position + filled)
            if not n:
                raise package_error(TRUNCATED, "file ended inside the payload (did it shrink?)")
            filled += n

    def readinto_at(self, position: int, buffer: memoryview) -> None:
        """Fill ``buffer`` from absolute ``position``; CPK_TRUNCATED if the file ends first."""
        self._file.seek(position)
        filled = 0
        readinto: Callable[[memoryview], int | None] | None = getattr(self._file, "readinto", None)
        while filled < len(buffer):
            if readinto is not None:
                n = readinto(buffer[filled:])
            else:
                block = self._file.read(len(buffer) - filled)
                n = len(block)
                buffer[filled : filled + n] = block
            if not n:
                raise package_error(TRUNCATED, "file ended inside the payload (did it shrink?)")
            filled += n

    def stream_sha256(self, index: int, progress: Callable[[int], None] | None = None) -> str:
        digest = hashlib.sha256()
        for block in self.iter_stream(index):
            digest.update(block)
            if progress is not None:
                progress(len(block))
        return digest.hexdigest()

    # -- views ---------------------------------------------------------------------------------

    @property
    def format(self) -> str:
        return FORMAT_V2 if self.frame.header.manifest_version == 2 else FORMAT_V1

    @property
    def manifest_v2(self) -> ManifestV2:
        """The (unverified) v2 manifest; use :func:`edb.cpk.verify_package` before trusting it."""
        if not isinstance(self.manifest, ManifestV2):
            raise package_error(MANIFEST_INVALID, "not a v2 package")
        return self.manifest

    @property
    def manifest_v1(self) -> ManifestV1:
        if not isinstance(self.manifest, ManifestV1):
            raise package_error(MANIFEST_INVALID, "not a v1 package")
        return self.manifest

    def signed_manifest(self) -> SignedManifest:
        """v2: manifest bytes, signature and signer chain, read with bounded reads."""
        self.manifest_v2  # noqa: B018 - raises for v1
        signature = self.read_stream(V2_SIGNATURE, self.limits.max_signature_bytes)
        chain = decode_chain(self.read_stream(V2_CHAIN, self.limits.max_chain_bytes), self.limits)
        return SignedManifest(manifest_bytes=self.manifest_bytes, signature=signature, chain=chain)

    def info(self) -> PackageInfo:
        manifest_sha256 = hashlib.sha256(self.manifest_bytes).hexdigest()
        if isinstance(self.manifest, ManifestV2):
            m = self.manifest
            subject = _leaf_subject_der(self.signed_manifest().chain[0])
            return PackageInfo(
                format=FORMAT_V2, package_id=m.package_id, name=m.name, vendor=m.vendor, version=m.version,
                security_version=m.security_version, target=m.target.to_json(), media_type=m.media_type,
                plaintext_size=m.plaintext_size, ciphertext_size=self.frame.streams[V2_PAYLOAD].size,
                chunk_size=m.chunk_size, created=_ts(m.created), expires=_ts(m.expires), signer_subject=subject,
                kid=m.kid, file_size=self.frame.file_size, streams=self.frame.header.num_streams,
                manifest_sha256=manifest_sha256,
            )
        v1 = self.manifest
        payload_size = self.frame.streams[v1.payload.data].size
        return PackageInfo(
            format=FORMAT_V1, package_id=v1.cp_id, name=v1.cp_name, vendor=v1.cp_vendor,
            version=str(v1.payload.ver), security_version=None, target=dict(v1.payload.target), media_type=None,
            plaintext_size=payload_size, ciphertext_size=payload_size, chunk_size=None, created=v1.payload.ver.date,
            expires=None, signer_subject=self._v1_cert_subject(v1),
            kid=v1.payload.enc.key_name if v1.payload.enc.kind == "aes-gcm" else None,
            file_size=self.frame.file_size, streams=self.frame.header.num_streams, manifest_sha256=manifest_sha256,
        )

    def _v1_cert_subject(self, v1: ManifestV1) -> str | None:
        cert = v1.payload.cert
        if cert.kind not in ("embedded-x509-pem", "embedded-x509-der"):
            return None
        data = self.read_stream(cert.data, self.limits.max_small_stream_bytes)
        try:
            parsed = (x509.load_pem_x509_certificate(data) if cert.kind == "embedded-x509-pem"
                      else x509.load_der_x509_certificate(data))
        except ValueError:
            return "(unparseable certificate)"
        return parsed.subject.rfc4514_string()

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> PackageReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _descriptor(file: IO[bytes]) -> int | None:
    """The OS descriptor behind ``file`` if positional reads on it are safe (a regular file)."""
    try:
        fd = file.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def _ts(value: Any) -> str:
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _leaf_subject_der(der: bytes) -> str:
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return "(unparseable certificate)"


def open_package(source: PackageSource, *, limits: Limits = DEFAULT_LIMITS) -> PackageReader:
    """Open a package for reading (see module docs). Raises :class:`edb.errors.PackageError`."""
    if isinstance(source, int) and not isinstance(source, bool):
        return PackageReader(os.fdopen(os.dup(source), "rb"), owns_file=True, limits=limits)
    if isinstance(source, str | os.PathLike):
        try:
            file = Path(source).open("rb")  # noqa: SIM115 - the reader owns and closes it
        except OSError as exc:
            raise package_error(UNREADABLE, f"cannot open {source}: {exc.strerror}") from exc
        return PackageReader(file, owns_file=True, limits=limits)
    if isinstance(source, bool) or not (hasattr(source, "read") and hasattr(source, "seek")):
        raise TypeError("open_package needs a path, a seekable binary file or a file descriptor")
    return PackageReader(source, owns_file=False, limits=limits)
