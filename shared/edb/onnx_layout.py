"""The EDB aligned ONNX layout: a model's graph followed by its weights, each 64-byte aligned.

Why: ONNX Runtime 1.32 copies every initializer it parses from a model in memory
(``InferenceSession(bytes)`` peaks near 3x the model size) but uses caller-owned buffers in place
when they are registered with ``SessionOptions.add_initializer`` (and prepacking is off). With this
layout the TEE decrypts the payload once into one buffer and hands ONNX Runtime the graph bytes plus
numpy views of each weight: no second copy of any weight, so peak memory stays near one model size.

Media type ``application/vnd.edb.onnx-aligned.v1``. All integers little-endian::

    0   8  magic b"EDBONNXL"
    8   4  u32 layout version (1)
    12  4  u32 alignment of every tensor in the data section (64)
    16  8  u64 graph offset (64)
    24  8  u64 graph size
    32  8  u64 data offset (a multiple of 4096, >= graph offset + graph size)
    40  8  u64 data size
    48  8  u64 number of external tensors
    56  8  reserved, zero
    64     graph: an ONNX ModelProto in which every initializer of the main graph with at least
           ``min_external_bytes`` of raw data and a fixed-size numeric type has
           ``data_location = EXTERNAL`` and ``external_data = {location: ".", offset, length}``
           (offset relative to the data section); smaller ones stay inline
    ...    zero padding
    data   the tensors' raw little-endian bytes at their offsets, zero padding between them

The file ends exactly at data offset + data size. ``location`` is ``"."`` on purpose: ONNX Runtime
validates that an external location exists before it learns that the initializer was supplied by the
caller, and a directory exists but can never be read as data, so any tensor the loader failed to
supply makes session creation fail instead of reading something else.

This module is pure (bytes in, bytes out); :func:`convert_file` is the build pipeline's entry point:
``edb package build --onnx-layout aligned`` should call ``convert_file(model.onnx, tmp)`` (or
``convert(model_bytes)``) and package the result with media type :data:`MEDIA_TYPE`.
"""

from __future__ import annotations

import itertools
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edb.errors import PackageError

MEDIA_TYPE = "application/vnd.edb.onnx-aligned.v1"
PLAIN_ONNX_MEDIA_TYPES = ("application/onnx", "application/octet-stream")
MAGIC = b"EDBONNXL"
VERSION = 1
ALIGN = 64
DATA_ALIGN = 4096
MIN_EXTERNAL_BYTES = 1024
LOCATION = "."
HEADER = struct.Struct("<8sIIQQQQQQ")
HEADER_SIZE = HEADER.size  # 64
MAX_TENSORS = 1 << 20

LAYOUT_INVALID = "LAYOUT_INVALID"  # malformed layout header, graph or tensor table
LAYOUT_UNSUPPORTED = "LAYOUT_UNSUPPORTED"  # a construct the layout cannot carry (existing external data)

#: ONNX TensorProto data types with a fixed element size that numpy can view (code -> bytes).
ELEMENT_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8}

# protobuf field numbers (onnx.proto)
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_T_DIMS, _T_DATA_TYPE, _T_NAME, _T_RAW, _T_EXTERNAL, _T_LOCATION = 1, 2, 8, 9, 13, 14
_EXTERNAL = 1


def _error(code: str, why: str) -> PackageError:
    return PackageError(f"ONNX layout: {why}", code=code)


# ------------------------------------------------------------------------- protobuf wire format


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _error(LAYOUT_INVALID, "truncated or oversized varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


@dataclass(frozen=True)
class _Field:
    number: int
    wire: int
    start: int  # first byte of the tag
    value_start: int
    value_end: int  # for wire 0 the varint bytes; for wire 2 the payload
    value: int  # varint value (wire 0) or 0


def _fields(buf: memoryview, start: int, end: int) -> Iterator[_Field]:
    pos = start
    while pos < end:
        tag_start = pos
        tag, pos = _read_varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _error(LAYOUT_INVALID, "protobuf field number 0")
        if wire == 0:
            value, nxt = _read_varint(buf, pos, end)
            yield _Field(number, wire, tag_start, pos, nxt, value)
            pos = nxt
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise _error(LAYOUT_INVALID, "truncated fixed-size field")
            yield _Field(number, wire, tag_start, pos, pos + size, 0)
            pos += size
        elif wire == 2:
            length, pos = _read_varint(buf, pos, end)
            if length > end - pos:
                raise _error(LAYOUT_INVALID, "length-delimited field runs past its message")
            yield _Field(number, wire, tag_start, pos, pos + length, 0)
            pos += length
        else:
            raise _error(LAYOUT_INVALID, f"unsupported protobuf wire type {wire}")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _ld(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


# ------------------------------------------------------------------------------- tensor records


@dataclass(frozen=True)
class TensorInfo:
    """An initializer of the main graph as found on the wire."""

    name: str
    data_type: int
    dims: tuple[int, ...]
    raw: tuple[int, int] | None  # (start, end) of raw_data in the source buffer
    external: dict[str, str]
    location_external: bool

    @property
    def nbytes(self) -> int | None:
        size = ELEMENT_SIZE.get(self.data_type)
        if size is None:
            return None
        n = size
        for d in self.dims:
            n *= d
        return n


def _parse_tensor(buf: memoryview, start: int, end: int) -> TensorInfo:
    name, data_type, dims = "", 0, []
    raw: tuple[int, int] | None = None
    external: dict[str, str] = {}
    location_external = False
    for f in _fields(buf, start, end):
        if f.number == _T_DIMS:
            if f.wire == 0:
                dims.append(f.value)
            elif f.wire == 2:  # packed
                pos = f.value_start
                while pos < f.value_end:
                    d, pos = _read_varint(buf, pos, f.value_end)
                    dims.append(d)
        elif f.number == _T_DATA_TYPE and f.wire == 0:
            data_type = f.value
        elif f.number == _T_NAME and f.wire == 2:
            try:
                name = str(buf[f.value_start:f.value_end], "utf-8")
            except UnicodeDecodeError as exc:
                raise _error(LAYOUT_INVALID, "initializer name is not UTF-8") from exc
        elif f.number == _T_RAW and f.wire == 2:
            raw = (f.value_start, f.value_end)
        elif f.number == _T_EXTERNAL and f.wire == 2:
            key = value = ""
            for e in _fields(buf, f.value_start, f.value_end):
                try:
                    text = str(buf[e.value_start:e.value_end], "utf-8")
                except UnicodeDecodeError as exc:
                    raise _error(LAYOUT_INVALID, "external data entry is not UTF-8") from exc
                if e.number == 1:
                    key = text
                elif e.number == 2:
                    value = text
            external[key] = value
        elif f.number == _T_LOCATION and f.wire == 0:
            location_external = f.value == _EXTERNAL
    if any(d >= 1 << 62 for d in dims):
        raise _error(LAYOUT_INVALID, f"initializer {name!r} has an absurd dimension")
    return TensorInfo(name, data_type, tuple(dims), raw, external, location_external)


def _graph_span(buf: memoryview) -> _Field:
    graph = None
    for f in _fields(buf, 0, len(buf)):
        if f.number == _MODEL_GRAPH and f.wire == 2:
            if graph is not None:
                raise _error(LAYOUT_INVALID, "model has more than one graph field")
            graph = f
    if graph is None:
        raise _error(LAYOUT_INVALID, "not an ONNX model (no graph)")
    return graph


def initializers(model: bytes | bytearray | memoryview) -> list[TensorInfo]:
    """The main graph's initializers, read from the protobuf wire format without copying data."""
    buf = memoryview(model).cast("B")
    graph = _graph_span(buf)
    return [
        _parse_tensor(buf, f.value_start, f.value_end)
        for f in _fields(buf, graph.value_start, graph.value_end)
        if f.number == _GRAPH_INITIALIZER and f.wire == 2
    ]


# ------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Placement:
    name: str
    src: tuple[int, int]  # raw_data span in the source model
    offset: int  # in the data section
    length: int


@dataclass(frozen=True)
class LayoutPlan:
    graph: bytes
    placements: tuple[Placement, ...]
    data_offset: int
    data_size: int

    @property
    def total_size(self) -> int:
        return self.data_offset + self.data_size

    def header(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, ALIGN, HEADER_SIZE, len(self.graph), self.data_offset, self.data_size,
                           len(self.placements), 0)


def _align(n: int, a: int) -> int:
    return n + (-n % a)


def plan(model: bytes | bytearray | memoryview, *, min_external_bytes: int = MIN_EXTERNAL_BYTES) -> LayoutPlan:
    """Decide where every large initializer goes and rewrite the graph (small) accordingly."""
    buf = memoryview(model).cast("B")
    if bytes(buf[:8]) == MAGIC:
        raise _error(LAYOUT_INVALID, "model is already in the aligned layout")
    graph = _graph_span(buf)
    new_graph = bytearray()
    placements: list[Placement] = []
    names: set[str] = set()
    offset = 0
    for f in _fields(buf, graph.value_start, graph.value_end):
        if not (f.number == _GRAPH_INITIALIZER and f.wire == 2):
            new_graph += buf[f.start:f.value_end]
            continue
        t = _parse_tensor(buf, f.value_start, f.value_end)
        if t.location_external or t.external:
            raise _error(LAYOUT_UNSUPPORTED, f"initializer {t.name!r} already uses external data; "
                                             "load the model with its data first")
        raw_len = (t.raw[1] - t.raw[0]) if t.raw else 0
        if t.raw is None or raw_len < min_external_bytes or t.nbytes is None:
            new_graph += buf[f.start:f.value_end]
            continue
        if raw_len != t.nbytes:
            raise _error(LAYOUT_INVALID, f"initializer {t.name!r} raw data does not match its shape")
        if not t.name or t.name in names:
            raise _error(LAYOUT_INVALID, f"initializer name {t.name!r} is empty or repeated")
        names.add(t.name)
        offset = _align(offset, ALIGN)
        placements.append(Placement(t.name, t.raw, offset, raw_len))
        tensor = bytearray()
        for tf in _fields(buf, f.value_start, f.value_end):
            if tf.number != _T_RAW:
                tensor += buf[tf.start:tf.value_end]
        for key, value in (("location", LOCATION), ("offset", str(offset)), ("length", str(raw_len))):
            tensor += _ld(_T_EXTERNAL, _ld(1, key.encode()) + _ld(2, value.encode()))
        tensor += _key(_T_LOCATION, 0) + _varint(_EXTERNAL)
        new_graph += _ld(_GRAPH_INITIALIZER, bytes(tensor))
        offset += raw_len
    if len(placements) > MAX_TENSORS:
        raise _error(LAYOUT_UNSUPPORTED, "too many initializers")
    model_out = bytearray()
    for f in _fields(buf, 0, len(buf)):
        if f.number == _MODEL_GRAPH and f.wire == 2:
            model_out += _ld(_MODEL_GRAPH, bytes(new_graph))
        else:
            model_out += buf[f.start:f.value_end]
    data_offset = _align(HEADER_SIZE + len(model_out), DATA_ALIGN)
    return LayoutPlan(bytes(model_out), tuple(placements), data_offset, _align(offset, ALIGN) if offset else 0)


def write_into(layout_plan: LayoutPlan, model: bytes | bytearray | memoryview, out: memoryview) -> None:
    """Assemble the layout into ``out`` (exactly ``total_size`` bytes, zero-filled by the caller)."""
    src = memoryview(model).cast("B")
    if len(out) != layout_plan.total_size:
        raise ValueError("output buffer has the wrong size")
    out[:HEADER_SIZE] = layout_plan.header()
    out[HEADER_SIZE:HEADER_SIZE + len(layout_plan.graph)] = layout_plan.graph
    base = layout_plan.data_offset
    for p in layout_plan.placements:
        out[base + p.offset:base + p.offset + p.length] = src[p.src[0]:p.src[1]]


def convert(model: bytes | bytearray | memoryview, *, min_external_bytes: int = MIN_EXTERNAL_BYTES) -> bytes:
    """A serialized ONNX model -> the aligned layout (in memory)."""
    p = plan(model, min_external_bytes=min_external_bytes)
    out = bytearray(p.total_size)
    write_into(p, model, memoryview(out))
    return bytes(out)


def convert_file(src: Path | str, dst: Path | str | BinaryIO, *,
                 min_external_bytes: int = MIN_EXTERNAL_BYTES) -> LayoutPlan:
    """Build-pipeline entry point: stream ``src`` (.onnx with inline weights) into ``dst``; the source
    is memory-mapped read-only, so converting a large model needs no second copy in memory."""
    with open(src, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        refused: PackageError | None = None
        try:
            p = plan(view, min_external_bytes=min_external_bytes)
            if isinstance(dst, (str, Path)):
                with open(dst, "wb") as out:
                    _stream(p, view, out)
            else:
                _stream(p, view, dst)
        except PackageError as exc:
            # the traceback's frames hold slices of the mapping, and closing it then raises BufferError
            # in place of this error: re-raise a copy once they are gone
            refused = PackageError(exc.message, code=exc.code)
        finally:
            view.release()
        if refused is not None:
            raise refused
    return p


def _stream(p: LayoutPlan, src: memoryview, out: BinaryIO) -> None:
    out.write(p.header())
    out.write(p.graph)
    position = HEADER_SIZE + len(p.graph)
    for q in p.placements:
        target = p.data_offset + q.offset
        out.write(b"\0" * (target - position))
        out.write(src[q.src[0]:q.src[1]])
        position = target + q.length
    out.write(b"\0" * (p.total_size - position))


# ------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ExternalTensor:
    name: str
    data_type: int
    dims: tuple[int, ...]
    offset: int  # absolute, in the layout buffer
    length: int


@dataclass(frozen=True)
class ParsedLayout:
    graph: memoryview
    tensors: tuple[ExternalTensor, ...]


def is_layout(data: bytes | bytearray | memoryview) -> bool:
    return bytes(memoryview(data)[:8]) == MAGIC


def parse(data: bytes | bytearray | memoryview) -> ParsedLayout:
    """Check a layout buffer completely (header, bounds, alignment, every external tensor) before
    anything is handed to ONNX Runtime. Views only; nothing is copied."""
    buf = memoryview(data).cast("B")
    if len(buf) < HEADER_SIZE:
        raise _error(LAYOUT_INVALID, "shorter than the layout header")
    magic, version, align, g_off, g_size, d_off, d_size, count, reserved = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise _error(LAYOUT_INVALID, "bad magic")
    if version != VERSION or align != ALIGN or reserved != 0:
        raise _error(LAYOUT_INVALID, f"unsupported layout version {version} / alignment {align}")
    if g_off != HEADER_SIZE or g_size == 0 or d_off % DATA_ALIGN or d_off < g_off + g_size:
        raise _error(LAYOUT_INVALID, "graph or data section misplaced")
    if d_off + d_size != len(buf):
        raise _error(LAYOUT_INVALID, "size does not match the header")
    if count > MAX_TENSORS:
        raise _error(LAYOUT_INVALID, "too many tensors")
    graph = buf[g_off:g_off + g_size]
    tensors: list[ExternalTensor] = []
    names: set[str] = set()
    for t in initializers(graph):
        if not (t.location_external or t.external):
            continue
        if not t.location_external or set(t.external) != {"location", "offset", "length"}:
            raise _error(LAYOUT_INVALID, f"initializer {t.name!r}: incomplete external data entry")
        if t.external["location"] != LOCATION:
            raise _error(LAYOUT_INVALID, f"initializer {t.name!r} points outside the layout")
        try:
            offset, length = int(t.external["offset"]), int(t.external["length"])
        except ValueError as exc:
            raise _error(LAYOUT_INVALID, f"initializer {t.name!r}: offset/length not integers") from exc
        if t.nbytes is None or length != t.nbytes:
            raise _error(LAYOUT_INVALID, f"initializer {t.name!r}: length does not match type and shape")
        if offset < 0 or offset % ALIGN or offset + length > d_size:
            raise _error(LAYOUT_INVALID, f"initializer {t.name!r}: data outside the data section or unaligned")
        if not t.name or t.name in names:
            raise _error(LAYOUT_INVALID, f"initializer name {t.name!r} is empty or repeated")
        names.add(t.name)
        tensors.append(ExternalTensor(t.name, t.data_type, t.dims, d_off + offset, length))
    if len(tensors) != count:
        raise _error(LAYOUT_INVALID, "tensor count does not match the header")
    ordered = sorted(tensors, key=lambda x: x.offset)
    for a, b in itertools.pairwise(ordered):
        if a.offset + a.length > b.offset:
            raise _error(LAYOUT_INVALID, f"tensors {a.name!r} and {b.name!r} overlap")
    return ParsedLayout(graph, tuple(tensors))
