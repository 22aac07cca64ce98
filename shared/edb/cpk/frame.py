"""The CPK frame: 16-byte header, stream table, streams (Confidential Package Specification).

All integers little-endian. Header: magic u32 0x0ECCF00D, frame_version u16 (= 1), flag u16 (= 0),
num_streams u16 (> 0), manifest_stream u16 (< num_streams), manifest_type u16 (1 = JSON),
manifest_version u16 (1 or 2). Then ``num_streams`` entries ``{offset: u64, size: u64}``; offsets
are relative to the origin, the first byte after the table. Padding between streams is allowed.

This module is pure: it decodes header and table bytes against a known file size and limits, and
encodes them. Reading the bytes is the reader's job.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from edb.cpk.errors import (
    BAD_MAGIC,
    MANIFEST_INVALID,
    STREAM_OUT_OF_BOUNDS,
    TOO_LARGE,
    TRUNCATED,
    UNSUPPORTED_VERSION,
    package_error,
)
from edb.cpk.limits import Limits

MAGIC = 0x0ECCF00D
FRAME_VERSION = 1
MANIFEST_TYPE_JSON = 1
SUPPORTED_MANIFEST_VERSIONS = (1, 2)

HEADER = struct.Struct("<IHHHHHH")
ENTRY = struct.Struct("<QQ")
HEADER_SIZE = HEADER.size  # 16
ENTRY_SIZE = ENTRY.size  # 16


@dataclass(frozen=True)
class FrameHeader:
    frame_version: int
    flag: int
    num_streams: int
    manifest_stream: int
    manifest_type: int
    manifest_version: int

    @property
    def origin(self) -> int:
        """Absolute file position of the first byte after the stream table."""
        return HEADER_SIZE + ENTRY_SIZE * self.num_streams


@dataclass(frozen=True)
class StreamSpan:
    """A stream's place in the file: ``offset`` is origin-relative, ``start`` absolute."""

    index: int
    offset: int
    size: int
    start: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Frame:
    header: FrameHeader
    streams: tuple[StreamSpan, ...]
    file_size: int

    @property
    def manifest_span(self) -> StreamSpan:
        return self.streams[self.header.manifest_stream]


def decode_header(data: bytes, limits: Limits) -> FrameHeader:
    """Check the 16 fixed bytes. ``data`` may be shorter when the file is (-> CPK_TRUNCATED)."""
    if len(data) >= 4 and struct.unpack_from("<I", data)[0] != MAGIC:
        raise package_error(BAD_MAGIC, "not a confidential package (magic is not 0x0ECCF00D)")
    if len(data) < HEADER_SIZE:
        raise package_error(TRUNCATED, f"file ends inside the {HEADER_SIZE}-byte header")
    _, frame_version, flag, num, manifest_stream, mtype, mversion = HEADER.unpack_from(data)
    if frame_version == 0:
        raise package_error(UNSUPPORTED_VERSION, "frame version is 0 (missing)")
    if frame_version != FRAME_VERSION:
        raise package_error(UNSUPPORTED_VERSION, f"frame version {frame_version} is not supported")
    if flag != 0:
        raise package_error(MANIFEST_INVALID, f"header flag must be 0, is {flag:#06x}")
    if num == 0:
        raise package_error(MANIFEST_INVALID, "a frame needs at least one stream")
    if num > limits.max_streams:
        raise package_error(TOO_LARGE, f"{num} streams exceed the limit of {limits.max_streams}")
    if manifest_stream >= num:
        raise package_error(MANIFEST_INVALID, f"manifest stream {manifest_stream} is not among {num} streams")
    if mtype != MANIFEST_TYPE_JSON:
        raise package_error(UNSUPPORTED_VERSION, f"manifest type {mtype} is not supported (1 = JSON)")
    if mversion not in SUPPORTED_MANIFEST_VERSIONS:
        raise package_error(UNSUPPORTED_VERSION, f"manifest version {mversion} is not supported")
    return FrameHeader(frame_version, flag, num, manifest_stream, mtype, mversion)


def decode_table(header: FrameHeader, table: bytes, file_size: int, max_sizes: Sequence[int]) -> Frame:
    """Place every stream inside the file; refuse overlaps and streams past the end.

    Declared sizes are first compared with ``max_sizes`` (per stream, from the configured limits:
    CPK_TOO_LARGE), then with the real file size, so a hostile size never drives an allocation.

    A stream that starts inside the file but ends past it means the file was cut short
    (CPK_TRUNCATED); one that starts past the end, or overlaps another, is a hostile or corrupt
    table (CPK_STREAM_OUT_OF_BOUNDS). Streams are examined in file order so that a package cut
    inside stream k reports truncation, not the streams after it.
    """
    need = ENTRY_SIZE * header.num_streams
    if len(table) < need or file_size < header.origin:
        raise package_error(TRUNCATED, "file ends inside the stream table")
    spans = []
    for i in range(header.num_streams):
        offset, size = ENTRY.unpack_from(table, i * ENTRY_SIZE)
        if size > max_sizes[i]:
            raise package_error(TOO_LARGE, f"stream {i} declares {size} bytes, the limit is {max_sizes[i]}")
        spans.append(StreamSpan(index=i, offset=offset, size=size, start=header.origin + offset))
    ordered = sorted(spans, key=lambda s: (s.start, s.size))
    previous_end = header.origin
    for span in ordered:
        if span.end > file_size:
            if span.start <= file_size and span.start >= previous_end:
                raise package_error(TRUNCATED, f"file ends inside stream {span.index} ({file_size} < {span.end})")
            raise package_error(STREAM_OUT_OF_BOUNDS, f"stream {span.index} lies outside the file")
        if span.size and span.start < previous_end:
            raise package_error(STREAM_OUT_OF_BOUNDS, f"stream {span.index} overlaps another stream")
        if span.size:
            previous_end = span.end
    return Frame(header=header, streams=tuple(spans), file_size=file_size)


def encode_frame(manifest_version: int, manifest_stream: int, sizes: list[int], offsets: list[int]) -> bytes:
    """Header and table for streams with the given origin-relative offsets and sizes."""
    if len(sizes) != len(offsets) or not 0 <= manifest_stream < len(sizes):
        raise ValueError("inconsistent stream layout")
    out = bytearray(
        HEADER.pack(MAGIC, FRAME_VERSION, 0, len(sizes), manifest_stream, MANIFEST_TYPE_JSON, manifest_version)
    )
    for offset, size in zip(offsets, sizes, strict=True):
        out += ENTRY.pack(offset, size)
    return bytes(out)


def packed_offsets(sizes: list[int]) -> list[int]:
    """Origin-relative offsets of streams laid end to end without padding."""
    offsets, position = [], 0
    for size in sizes:
        offsets.append(position)
        position += size
    return offsets
