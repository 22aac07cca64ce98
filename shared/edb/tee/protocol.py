"""The wire protocol between TEE clients and the TEE service, version 1. Pure: no I/O.

A connection carries frames: ``u32 length`` (little-endian, of the body) then the body. The body is
one message::

    u8  type        1 request, 2 response
    u8  op          0 hello, 1 open session, 2 invoke, 3 close session
    u16 nparams     <= limits.max_params
    u32 request_id  echoed in the response
    u32 session     session id (0 before a session exists)
    u32 command     trusted-app command id (invoke only)
    u32 status      responses: 0 ok, 1 error (then params are Text(code), Text(message))
    params...

Each parameter starts with a ``u8`` kind:

    1 Value   u64 a, u64 b                         (GlobalPlatform "value" parameter)
    2 Blob    u32 n, n bytes                       (GlobalPlatform "memref", copied in the frame)
    3 Text    u32 n, n bytes UTF-8                 (n <= limits.max_text)
    4 Tensor  u8 dtype (ONNX code), u8 ndim, u16 name length, name, ndim x u64 dims,
              u64 nbytes, zero padding up to a 64-byte boundary of the body, nbytes of data;
              for dtype 8 (string) the data is count x u32 element lengths, then the elements'
              UTF-8 bytes back to back (nbytes = 4 x count + their sum)
    5 Fd      u8 index into the file descriptors passed with the frame (SCM_RIGHTS)
    6 ShmTensor  u8 dtype (numeric ONNX codes only), u8 ndim, u16 name length, name, ndim x u64 dims,
              u64 offset, u64 nbytes: a tensor in the connection's shared-memory region (see
              :mod:`edb.tee.shm`); the decoder checks the header, the region range is checked
              by whoever maps it

The first exchange on a connection is ``hello`` (op 0) with params ``Blob(b"EDBTEE")``,
``Value(min_version, max_version)``; the reply carries ``Value(version, max_frame)``. The hello
message layout is frozen across protocol versions.

Decoding checks every length against what remains of the body and against :class:`Limits` before
anything is allocated; trailing bytes are an error. Tensor data is returned as numpy views into the
received body (no copy); tensors are encoded as views of the caller's arrays (no copy) so a frame is
sent with ``sendmsg`` scatter/gather. String tensors (numpy ``str`` arrays, or object arrays of
``str``) cannot be views: they are encoded into a length table and the concatenated UTF-8 bytes and
decoded into object arrays of ``str`` (what ONNX Runtime takes and returns), bounded by
:class:`Limits` (element count, bytes per element, bytes per tensor). There is no pickle and no
generic object decoding: structured results travel as JSON in a ``Blob`` and are parsed strictly
by the typed client.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from edb.errors import TeeError
from edb.tee.errors import (
    BAD_PARAMETERS,
    DTYPE_UNSUPPORTED,
    FRAME_TOO_LARGE,
    PROTOCOL,
    STRING_INVALID,
    STRING_TOO_LARGE,
    STRING_TOO_LONG,
    STRING_TOO_MANY,
)

PROTOCOL_MAGIC = b"EDBTEE"
PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1

FRAME_LENGTH = struct.Struct("<I")
_HEADER = struct.Struct("<BBHIIII")
_VALUE = struct.Struct("<QQ")
_LEN32 = struct.Struct("<I")
_TENSOR_HEAD = struct.Struct("<BBH")
_U64 = struct.Struct("<Q")
TENSOR_ALIGN = 64
_ZEROS = bytes(TENSOR_ALIGN)
_U64_MAX = (1 << 64) - 1


class MsgType(IntEnum):
    REQUEST = 1
    RESPONSE = 2


class Op(IntEnum):
    HELLO = 0
    OPEN_SESSION = 1
    INVOKE = 2
    CLOSE_SESSION = 3


class ParamKind(IntEnum):
    VALUE = 1
    BLOB = 2
    TEXT = 3
    TENSOR = 4
    FD = 5
    SHM_TENSOR = 6


_MSG_TYPES = {int(t): t for t in MsgType}
_OPS = {int(o): o for o in Op}


@dataclass(frozen=True)
class Limits:
    """Bounds every decoder enforces. The service advertises ``max_frame`` in the hello reply."""

    max_frame: int = 64 * 1024 * 1024
    max_params: int = 64
    max_text: int = 64 * 1024
    max_name: int = 256
    max_ndim: int = 8
    max_dim: int = 1 << 31
    max_fds: int = 4
    max_strings: int = 1 << 20  # elements in one string tensor
    max_string_bytes: int = 64 * 1024  # UTF-8 bytes of one element
    max_string_total: int = 16 * 1024 * 1024  # UTF-8 bytes of all elements of one string tensor


DEFAULT_LIMITS = Limits()

# ONNX TensorProto data type codes <-> numpy dtypes of the fixed-size types, which cross as views.
# Strings (ONNX code 8) have their own codec below (_encode_strings / _decode_strings).
_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    2: np.dtype("u1"),
    3: np.dtype("i1"),
    4: np.dtype("<u2"),
    5: np.dtype("<i2"),
    6: np.dtype("<i4"),
    7: np.dtype("<i8"),
    9: np.dtype("?"),
    10: np.dtype("<f2"),
    11: np.dtype("<f8"),
    12: np.dtype("<u4"),
    13: np.dtype("<u8"),
}
_CODES: dict[str, int] = {dt.str: code for code, dt in _DTYPES.items()}
STRING_CODE = 8  # ONNX TensorProto.STRING
_STRING_KINDS = "UO"  # numpy str arrays, and object arrays (of str: checked per element)


def dtype_code(dtype: np.dtype[Any]) -> int:
    code = _CODES.get(dtype.str)  # "<f4", "|u1", ...: big-endian and object dtypes are not accepted
    if code is None:
        raise TeeError(f"tensor dtype {dtype} cannot cross the TEE boundary", code=DTYPE_UNSUPPORTED)
    return code


def numeric_code(dtype: np.dtype[Any], *, strict: bool = True) -> int | None:
    """The ONNX code of a fixed-size (numeric or bool) dtype; else ``TEE_DTYPE_UNSUPPORTED`` (None
    if not ``strict``)."""
    code = _CODES.get(dtype.str)
    if code is None and strict:
        raise TeeError(f"tensor dtype {dtype} cannot cross the TEE boundary", code=DTYPE_UNSUPPORTED)
    return code


def dtype_from_code(code: int) -> np.dtype[Any]:
    dt = _DTYPES.get(code)
    if dt is None:
        raise TeeError(f"unknown tensor dtype code {code}", code=DTYPE_UNSUPPORTED)
    return dt


def dtype_name(code: int) -> str:
    """Short numpy name of an ONNX dtype code (``float32``), ``string`` for strings, ``unknown``
    for unsupported ones."""
    if code == STRING_CODE:
        return "string"
    dt = _DTYPES.get(code)
    return dt.name if dt is not None else "unknown"


# Parameters are immutable named tuples rather than frozen dataclasses: several are built per call
# on each side and a frozen dataclass costs about twice as much to construct. Immutability also
# lets a LayoutCache hand the same Value/Text objects to every message it rebuilds.


class Value(NamedTuple):
    a: int
    b: int = 0


class Blob(NamedTuple):
    data: bytes | bytearray | memoryview

    def __repr__(self) -> str:  # never print contents: they may be a key or a token
        return f"Blob({len(self.data)} bytes)"


class Text(NamedTuple):
    text: str

    def __repr__(self) -> str:
        return f"Text({len(self.text)} chars)"


class Tensor(NamedTuple):
    name: str
    array: npt.NDArray[Any]

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.array.dtype}, {self.array.shape})"


class ShmTensor(NamedTuple):
    """A numeric tensor in the connection's shared-memory region: its header only (the bytes are
    at ``offset`` in the region; ``nbytes`` = elements x item size, checked by the decoder)."""

    name: str
    code: int  # ONNX dtype code (numeric: never 8, string)
    dims: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Fd:  # rare (package files at begin_install); a dataclass, as `index` would shadow tuple.index
    index: int


Param = Value | Blob | Text | Tensor | Fd | ShmTensor


@dataclass
class Message:
    type: MsgType
    op: Op
    request_id: int = 0
    session: int = 0
    command: int = 0
    status: int = 0
    params: list[Param] = field(default_factory=list)


def protocol_error(why: str) -> TeeError:
    return TeeError(f"malformed TEE message: {why}", code=PROTOCOL)


def error_message(request: Message, code: str, message: str) -> Message:
    return Message(
        MsgType.RESPONSE, request.op, request.request_id, request.session, request.command, 1,
        [Text(code), Text(message)],
    )


def hello_request(min_version: int = MIN_PROTOCOL_VERSION, max_version: int = PROTOCOL_VERSION) -> Message:
    return Message(MsgType.REQUEST, Op.HELLO, params=[Blob(PROTOCOL_MAGIC), Value(min_version, max_version)])


def negotiate(hello: Message, supported: tuple[int, int] = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)) -> int:
    """Server side: the version to speak, or ``TEE_VERSION`` / ``TEE_PROTOCOL``."""
    from edb.tee.errors import VERSION

    p = hello.params
    if (
        hello.type != MsgType.REQUEST or hello.op != Op.HELLO or len(p) != 2
        or not isinstance(p[0], Blob) or bytes(p[0].data) != PROTOCOL_MAGIC or not isinstance(p[1], Value)
    ):
        raise protocol_error("first message is not a hello")
    lo, hi = p[1].a, p[1].b
    best = min(hi, supported[1])
    if best < max(lo, supported[0]):
        raise TeeError(f"no common protocol version (client {lo}..{hi}, service {supported[0]}..{supported[1]})",
                       code=VERSION)
    return best


# ---------------------------------------------------------------------------------------- encode
#
# Both codecs are on the path of every ``infer`` call, on both sides of the boundary, so they are
# written for few Python operations per field (one ``pack``/``unpack_from`` per parameter, cached
# ``Struct`` objects, offsets instead of slices) without giving up a single check.

_VALUE_PARAM = struct.Struct("<BQQ")
_LEN_PARAM = struct.Struct("<BI")
_FD_PARAM = struct.Struct("<BB")
_TENSOR_PARAMS: dict[tuple[int, int], struct.Struct] = {}  # (name length, rank) -> kind..nbytes
_DIMS: dict[int, struct.Struct] = {}  # rank -> dims
_SMALL_STRINGS = 256  # string tensors up to this many elements: length table through a cached Struct
_U32S: dict[int, struct.Struct] = {}  # element count (<= _SMALL_STRINGS) -> length table


def _u32s(count: int) -> struct.Struct:
    st = _U32S.get(count)
    if st is None:
        st = _U32S[count] = struct.Struct(f"<{count}I")
    return st


_PARAM_TYPES = (Tensor, Value, Text, Blob, Fd, ShmTensor)


def _tensor_param(name_len: int, ndim: int) -> struct.Struct:
    st = _TENSOR_PARAMS.get((name_len, ndim))
    if st is None:
        st = struct.Struct(f"<BBBH{name_len}s{ndim}QQ")
        if len(_TENSOR_PARAMS) < 4096:  # names are bounded, but do not grow without limit
            _TENSOR_PARAMS[(name_len, ndim)] = st
    return st


def _dims(ndim: int) -> struct.Struct:
    st = _DIMS.get(ndim)
    if st is None:
        st = _DIMS[ndim] = struct.Struct(f"<{ndim}Q")
    return st


_TensorMetaKey = tuple[int, str, np.dtype[Any], tuple[int, ...]]
_TENSOR_META: dict[_TensorMetaKey, tuple[bytes, int, int]] = {}


def _tensor_meta(phase: int, name: str, arr: npt.NDArray[Any], limits: Limits) -> bytes | None:
    """A tensor parameter's bytes up to its data (kind, dtype, rank, name, dims, length, padding to
    the 64-byte boundary), for a parameter starting ``phase`` bytes past a boundary; None for a
    string tensor (see :func:`_encode_strings`). Memoised: the same input name, dtype and shape recur
    on every call of a runner."""
    key = (phase, name, arr.dtype, arr.shape)
    hit = _TENSOR_META.get(key)
    if hit is None:
        if arr.dtype.kind in _STRING_KINDS:  # never memoised: their length depends on their data
            return None
        raw = name.encode("utf-8")
        ndim = arr.ndim
        meta = _tensor_param(len(raw), ndim).pack(ParamKind.TENSOR, dtype_code(arr.dtype), ndim, len(raw), raw,
                                                 *arr.shape, arr.nbytes)
        meta += _ZEROS[: -(phase + len(meta)) % TENSOR_ALIGN]
        hit = (meta, len(raw), ndim)
        if len(_TENSOR_META) >= 1024:  # bounded: clients with ever-changing shapes just miss
            _TENSOR_META.clear()
        _TENSOR_META[key] = hit
    if hit[1] > limits.max_name or hit[2] > limits.max_ndim:
        raise TeeError("tensor name or rank out of bounds", code=BAD_PARAMETERS)
    return hit[0]


def _encode_strings(phase: int, name: str, arr: npt.NDArray[Any], limits: Limits) -> tuple[bytes, bytes, bytes]:
    """A string tensor parameter as (metadata up to its data, length table, UTF-8 bytes), for a
    parameter starting ``phase`` bytes past a 64-byte boundary. Every bound is checked before the
    data is joined: element count, each element's and all elements' UTF-8 bytes."""
    raw_name = name.encode("utf-8")
    if len(raw_name) > limits.max_name or arr.ndim > limits.max_ndim:
        raise TeeError("tensor name or rank out of bounds", code=BAD_PARAMETERS)
    count = arr.size
    if count > limits.max_strings:
        raise TeeError(f"string tensor {name[:60]!r} has {count} elements, more than {limits.max_strings}",
                       code=STRING_TOO_MANY)
    items = arr.reshape(-1).tolist()
    try:
        text = "".join(items)  # any element that is not a str (bytes, numbers, None) is a TypeError
        data = text.encode("utf-8")
    except TypeError as exc:
        raise TeeError(f"tensor {name[:60]!r}: object arrays cross the TEE boundary only as strings",
                       code=DTYPE_UNSUPPORTED) from exc
    except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8 form
        raise TeeError(f"string tensor {name[:60]!r} holds text that is not valid Unicode",
                       code=STRING_INVALID) from exc
    # ASCII only (one byte per character): the elements' character counts are their byte lengths
    lengths = list(map(len, items)) if len(data) == len(text) else [len(s.encode("utf-8")) for s in items]
    if count and max(lengths) > limits.max_string_bytes:
        raise TeeError(f"string tensor {name[:60]!r} has an element longer than {limits.max_string_bytes} bytes",
                       code=STRING_TOO_LONG)
    total = sum(lengths)
    if total > limits.max_string_total:
        raise TeeError(f"string tensor {name[:60]!r} holds {total} bytes, more than {limits.max_string_total}",
                       code=STRING_TOO_LARGE)
    meta = _tensor_param(len(raw_name), arr.ndim).pack(ParamKind.TENSOR, STRING_CODE, arr.ndim, len(raw_name),
                                                       raw_name, *arr.shape, 4 * count + total)
    meta += _ZEROS[: -(phase + len(meta)) % TENSOR_ALIGN]
    table = _u32s(count).pack(*lengths) if count <= _SMALL_STRINGS else np.array(lengths, dtype="<u4").tobytes()
    return meta, table, data


def _encode_shm_tensor(p: ShmTensor, limits: Limits) -> bytes:
    raw = p.name.encode("utf-8")
    if len(raw) > limits.max_name or len(p.dims) > limits.max_ndim:
        raise TeeError("tensor name or rank out of bounds", code=BAD_PARAMETERS)
    if p.code not in _DTYPES:
        raise TeeError(f"dtype code {p.code} cannot cross in shared memory", code=DTYPE_UNSUPPORTED)
    if not (all(0 <= d <= limits.max_dim for d in p.dims) and 0 <= p.offset <= _U64_MAX
            and 0 <= p.nbytes <= _U64_MAX):
        raise TeeError("shared-memory tensor header out of range", code=BAD_PARAMETERS)
    return _tensor_param(len(raw), len(p.dims)).pack(ParamKind.SHM_TENSOR, p.code, len(p.dims), len(raw), raw,
                                                    *p.dims, p.offset) + _U64.pack(p.nbytes)


def encode(msg: Message, limits: Limits = DEFAULT_LIMITS) -> list[bytes | memoryview]:
    """The frame (length prefix included) as a list of buffers for ``sendmsg``; arrays are not copied."""
    return encode_fields(msg.type, msg.op, msg.request_id, msg.session, msg.command, msg.status, msg.params, limits)


def encode_fields(mtype: int, op: int, request_id: int, session: int, command: int, status: int,
                  params: Sequence[Param], limits: Limits = DEFAULT_LIMITS) -> list[bytes | memoryview]:
    """:func:`encode` without building a :class:`Message` first (the client's per-call path)."""
    if len(params) > limits.max_params:
        raise TeeError(f"more than {limits.max_params} parameters", code=BAD_PARAMETERS)
    head = _HEADER.pack(mtype, op, len(params), request_id, session, command, status)
    parts: list[bytes | memoryview] = [b""]  # the length prefix goes first
    size = 0  # body bytes in `parts` (after the prefix)
    for p in params:
        cls: type = type(p)
        if cls not in _PARAM_TYPES:  # a subclass: encode it as its base kind
            cls = next((k for k in _PARAM_TYPES if isinstance(p, k)), cls)
        if cls is Tensor:
            arr = p.array  # type: ignore[union-attr]
            if not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr)
            phase = (size + len(head)) % TENSOR_ALIGN
            meta = _tensor_meta(phase, p.name, arr, limits)  # type: ignore[union-attr]
            if meta is None:  # a string tensor
                meta, table, chars = _encode_strings(phase, p.name, arr, limits)  # type: ignore[union-attr]
                parts.append(head + meta)
                parts.append(table)
                parts.append(chars)
                size += len(head) + len(meta) + len(table) + len(chars)
                head = b""
                continue
            head += meta
            nbytes = arr.nbytes
            if nbytes:
                parts.append(head)
                parts.append(arr.data.cast("B"))
                size += len(head) + nbytes
                head = b""
        elif cls is Value:
            a, b = p.a, p.b  # type: ignore[union-attr]
            if not (0 <= a <= _U64_MAX and 0 <= b <= _U64_MAX):
                raise TeeError("value parameter out of range", code=BAD_PARAMETERS)
            head += _VALUE_PARAM.pack(ParamKind.VALUE, a, b)
        elif cls is Text:
            raw = p.text.encode("utf-8")  # type: ignore[union-attr]
            if len(raw) > limits.max_text:
                raise TeeError(f"text parameter longer than {limits.max_text} bytes", code=BAD_PARAMETERS)
            head += _LEN_PARAM.pack(ParamKind.TEXT, len(raw)) + raw
        elif cls is Blob:
            data = p.data  # type: ignore[union-attr]
            n = len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes
            head += _LEN_PARAM.pack(ParamKind.BLOB, n)
            if n > 4096:  # large blobs are sent from their own memory
                parts.append(head)
                parts.append(memoryview(data).cast("B"))
                size += len(head) + n
                head = b""
            else:
                head += bytes(data)
        elif cls is Fd:
            head += _FD_PARAM.pack(ParamKind.FD, p.index)
        elif cls is ShmTensor:
            head += _encode_shm_tensor(p, limits)  # type: ignore[arg-type]
        else:
            raise TeeError(f"unknown parameter type {cls.__name__}", code=BAD_PARAMETERS)
    if head:
        parts.append(head)
        size += len(head)
    if size > limits.max_frame:
        raise TeeError(f"message of {size} bytes exceeds the frame limit {limits.max_frame}",
                       code=FRAME_TOO_LARGE)
    parts[0] = FRAME_LENGTH.pack(size)
    return parts


def frame_bytes(msg: Message, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The whole frame as one bytes object (tests, small messages)."""
    return b"".join(bytes(p) for p in encode(msg, limits))


# ---------------------------------------------------------------------------------------- decode


def check_frame_length(length: int, limits: Limits = DEFAULT_LIMITS) -> int:
    if length > limits.max_frame:
        raise TeeError(f"frame of {length} bytes exceeds the limit {limits.max_frame}", code=FRAME_TOO_LARGE)
    if length < _HEADER.size:
        raise protocol_error("frame shorter than a message header")
    return length


def _past_end() -> TeeError:
    return protocol_error("field runs past the end of the frame")


def decode(body: bytearray | bytes | memoryview, *, nfds: int = 0, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse one message body. Tensor arrays are views into ``body`` (keep it alive and unchanged).

    Every length is checked against what remains of the body before it is used, and against
    ``limits`` before anything is allocated."""
    view = memoryview(body).cast("B")
    check_frame_length(len(view), limits)
    return _decode(view, _HEADER.unpack_from(view), nfds, limits, None)


def _decode(view: memoryview, header: tuple[Any, ...], nfds: int, limits: Limits,
            layout: list[Any] | None) -> Message:
    """The parser. With ``layout`` (a list) it also records how to rebuild this message from a body
    with the same metadata bytes (see :class:`LayoutCache`); a message it cannot record that way
    (blobs, descriptors) leaves ``layout`` empty."""
    end = len(view)
    raw_type, raw_op, nparams, request_id, session, command, status = header
    mtype, op = _MSG_TYPES.get(raw_type), _OPS.get(raw_op)
    if mtype is None or op is None:
        raise protocol_error("unknown message type or operation")
    if nparams > limits.max_params:
        raise protocol_error(f"more than {limits.max_params} parameters")
    if status not in (0, 1):
        raise protocol_error("unknown status")
    params: list[Param] = []
    seen_fds = 0  # bit mask of descriptor indices already referenced
    pos = _HEADER.size
    for _ in range(nparams):
        if pos >= end:
            raise _past_end()
        kind = view[pos]
        pos += 1
        if kind == ParamKind.TENSOR:
            pos, tensor, spec = _decode_tensor(view, pos, end, limits)
            params.append(tensor)
            if spec is None:
                layout = None  # a string tensor's parse depends on its data: never rebuilt from a layout
            elif layout is not None:
                layout.append(spec)
            continue
        if kind == ParamKind.SHM_TENSOR:
            pos, shm = _decode_shm_tensor(view, pos, end, limits)
            params.append(shm)
        elif kind == ParamKind.VALUE:
            if pos + 16 > end:
                raise _past_end()
            a, b = _VALUE.unpack_from(view, pos)
            pos += 16
            params.append(Value(a, b))
        elif kind == ParamKind.TEXT or kind == ParamKind.BLOB:
            if pos + 4 > end:
                raise _past_end()
            (n,) = _LEN32.unpack_from(view, pos)
            pos += 4
            if pos + n > end:
                raise _past_end()
            if kind == ParamKind.BLOB:
                params.append(Blob(view[pos:pos + n]))
                layout = None  # a blob is a view of its body: not rebuilt from a layout
            else:
                if n > limits.max_text:
                    raise protocol_error(f"text longer than {limits.max_text} bytes")
                try:
                    text = str(view[pos:pos + n], "utf-8", "strict")
                except UnicodeDecodeError as exc:
                    raise protocol_error("text is not UTF-8") from exc
                if "\0" in text:
                    raise protocol_error("text contains NUL")
                params.append(Text(text))
            pos += n
        elif kind == ParamKind.FD:
            if pos >= end:
                raise _past_end()
            index = view[pos]
            pos += 1
            if index >= nfds or seen_fds >> index & 1:
                raise protocol_error("file descriptor parameter without a matching descriptor")
            seen_fds |= 1 << index
            params.append(Fd(index))
            layout = None
        else:
            raise protocol_error(f"unknown parameter kind {kind}")
        if layout is not None:
            layout.append(params[-1])  # immutable: reused as it is
    if pos != end:
        raise protocol_error("trailing bytes after the last parameter")
    return Message(mtype, op, request_id, session, command, status, params)


_TensorSpec = tuple[int, str, np.dtype[Any], tuple[int, ...]]  # data offset, name, dtype, dims


def _read_tensor_meta(view: memoryview, pos: int, end: int, limits: Limits,
                      tail: int) -> tuple[int, str, tuple[int, ...], int, int]:
    """A tensor parameter's metadata after its kind byte: (dtype code, name, dims, element count,
    where the metadata ends). ``tail`` is the size of the fixed fields after the dims (8: the byte
    length; 16: a region tensor's offset and length), which end at the returned position."""
    if pos + 4 > end:
        raise _past_end()
    code, ndim, name_len = _TENSOR_HEAD.unpack_from(view, pos)
    pos += 4
    if ndim > limits.max_ndim or name_len > limits.max_name:
        raise protocol_error("tensor rank or name length out of bounds")
    meta_end = pos + name_len + 8 * ndim + tail
    if meta_end > end:
        raise _past_end()
    try:
        name = str(view[pos:pos + name_len], "utf-8", "strict")
    except UnicodeDecodeError as exc:
        raise protocol_error("tensor name is not UTF-8") from exc
    dims = _dims(ndim).unpack_from(view, pos + name_len)
    max_dim = limits.max_dim
    count = 1
    for d in dims:
        if d > max_dim:
            raise protocol_error("tensor dimension out of bounds")
        count *= d
    return code, name, dims, count, meta_end


def _data_offset(view: memoryview, meta_end: int, nbytes: int, end: int) -> int:
    """Where a tensor's data starts (64-byte aligned after its metadata, zero padding between), once
    its ``nbytes`` are known to fit in the body."""
    offset = meta_end + (-meta_end % TENSOR_ALIGN)
    if offset + nbytes > end:
        raise _past_end()
    if offset != meta_end and view[meta_end:offset] != _ZEROS[: offset - meta_end]:
        raise protocol_error("non-zero tensor padding")
    return offset


def _decode_shm_tensor(view: memoryview, pos: int, end: int, limits: Limits) -> tuple[int, ShmTensor]:
    """A region tensor's header (after its kind byte): numeric dtype, bounded rank, name and dims,
    and a length that matches them. Whether the range lies in the region is the region's check."""
    code, name, dims, count, meta_end = _read_tensor_meta(view, pos, end, limits, 16)
    offset, nbytes = _VALUE.unpack_from(view, meta_end - 16)
    dt = _DTYPES.get(code)
    if dt is None:  # strings (8) and unknown codes: only fixed-size numbers live in a region
        raise TeeError(f"dtype code {code} cannot cross in shared memory", code=DTYPE_UNSUPPORTED)
    if count * dt.itemsize != nbytes:
        raise protocol_error("tensor byte length does not match dtype and shape")
    return meta_end, ShmTensor(name, code, dims, offset, nbytes)


def _decode_tensor(view: memoryview, pos: int, end: int, limits: Limits) -> tuple[int, Tensor, _TensorSpec | None]:
    code, name, dims, count, meta_end = _read_tensor_meta(view, pos, end, limits, 8)
    (nbytes,) = _U64.unpack_from(view, meta_end - 8)
    dt = _DTYPES.get(code)
    if dt is None:
        if code != STRING_CODE:
            raise TeeError(f"unknown tensor dtype code {code}", code=DTYPE_UNSUPPORTED)
        return _decode_strings(view, name, dims, count, nbytes, meta_end, end, limits)
    if count * dt.itemsize != nbytes:
        raise protocol_error("tensor byte length does not match dtype and shape")
    offset = _data_offset(view, meta_end, nbytes, end)
    return offset + nbytes, Tensor(name, _array(view, dims, dt, offset)), (offset, name, dt, dims)


def _decode_strings(view: memoryview, name: str, dims: tuple[int, ...], count: int, nbytes: int, meta_end: int,
                    end: int, limits: Limits) -> tuple[int, Tensor, None]:
    """A string tensor's data (after its metadata): ``count`` u32 lengths, then the UTF-8 bytes.
    Bounds (element count, bytes per tensor, bytes per element) are checked from the metadata and
    the length table, all of them before a single element is decoded."""
    if count > limits.max_strings:
        raise TeeError(f"string tensor with {count} elements, more than {limits.max_strings}", code=STRING_TOO_MANY)
    total = nbytes - 4 * count
    if total < 0:
        raise TeeError("string tensor shorter than its length table", code=STRING_INVALID)
    if total > limits.max_string_total:
        raise TeeError(f"string tensor of {total} bytes, more than {limits.max_string_total}", code=STRING_TOO_LARGE)
    offset = _data_offset(view, meta_end, nbytes, end)
    if not count:
        if nbytes:  # no elements: no table and no bytes either, or they are bytes nothing accounts for
            raise TeeError("string tensor with no elements carries data", code=STRING_INVALID)
        return offset, Tensor(name, np.empty(dims, dtype=object)), None
    if count <= _SMALL_STRINGS:  # a few labels (the common reply): struct and builtins, not numpy reductions
        lengths: Sequence[int] = _u32s(count).unpack_from(view, offset)
        longest, summed = max(lengths), sum(lengths)
    else:
        table = np.frombuffer(view, "<u4", count, offset)
        longest, summed = int(table.max()), int(table.sum(dtype=np.uint64))
        lengths = table.tolist()
    if longest > limits.max_string_bytes:
        raise TeeError(f"string element longer than {limits.max_string_bytes} bytes", code=STRING_TOO_LONG)
    if summed != total:
        raise TeeError("string lengths do not add up to the tensor's byte length", code=STRING_INVALID)
    pos = offset + 4 * count
    items: list[str] = []
    try:
        text = str(view[pos:pos + total], "utf-8", "strict")
        if len(text) == total:  # ASCII only: byte offsets are character offsets, every cut is valid
            at = 0
            for n in lengths:
                items.append(text[at:at + n])
                at += n
        else:  # each element on its own, so a character cut between two elements is refused
            for n in lengths:
                items.append(str(view[pos:pos + n], "utf-8", "strict"))
                pos += n
    except UnicodeDecodeError as exc:
        raise TeeError(f"string tensor {name[:60]!r} is not UTF-8", code=STRING_INVALID) from exc
    out = np.empty(count, dtype=object)
    out[:] = items  # element by element: a str is a scalar to numpy, never a sequence to unpack
    return offset + nbytes, Tensor(name, out.reshape(dims)), None


def _array(view: memoryview, dims: tuple[int, ...], dt: np.dtype[Any], offset: int) -> npt.NDArray[Any]:
    if 0 in dims:
        return np.empty(dims, dtype=dt)
    return np.ndarray(dims, dt, view, offset)  # positional: numpy parses keywords slowly


class Layout:
    """How to rebuild a message from a body whose metadata bytes equal those of a body that was
    parsed and accepted in full (see :class:`LayoutCache`)."""

    __slots__ = ("checks", "command", "length", "mtype", "only_tensors", "op", "params", "session", "status",
                 "tensors", "views")

    def __init__(self, view: memoryview, header: tuple[Any, ...], layout: list[Any]) -> None:
        self.length = len(view)
        self.mtype, self.op = _MSG_TYPES[header[0]], _OPS[header[1]]
        self.session, self.command, self.status = header[4], header[5], header[6]
        self.params = layout  # immutable parameters as they are; tensors as (offset, name, dtype, dims)
        self.tensors = [p for p in layout if type(p) is tuple]
        # every byte but the request id (4..8) and the tensor data must match
        checks: list[tuple[int, int, bytes]] = [(0, 4, view[0:4].tobytes())]
        pos = 8
        for offset, _name, dt, dims in self.tensors:
            checks.append((pos, offset, view[pos:offset].tobytes()))
            count = 1
            for d in dims:
                count *= d
            pos = offset + count * dt.itemsize
        if pos < self.length:
            checks.append((pos, self.length, view[pos:].tobytes()))
        self.checks = [c for c in checks if c[0] < c[1]]
        self.only_tensors = len(self.tensors) == len(self.params)
        # (name, dims, dtype, offset) of the tensors with data; empty ones are rebuilt with np.empty
        self.views = [(name, dims, dt, offset) for offset, name, dt, dims in self.tensors if 0 not in dims]

    def matches(self, view: memoryview) -> bool:
        if len(view) != self.length:
            return False
        for a, b, expected in self.checks:  # noqa: SIM110 - a plain loop: no generator on the per-call path
            if view[a:b].tobytes() != expected:
                return False
        return True

    def arrays(self, view: memoryview) -> dict[str, npt.NDArray[Any]]:
        """The tensors of a matching body by name (names are unique where this is used), as views
        of its data."""
        if len(self.views) != len(self.tensors):
            return {name: _array(view, dims, dt, offset) for offset, name, dt, dims in self.tensors}
        out = {}
        for name, dims, dt, offset in self.views:
            out[name] = np.ndarray(dims, dt, view, offset)
        return out

    def message(self, view: memoryview) -> Message:
        params: list[Param] = [
            Tensor(p[1], _array(view, p[3], p[2], p[0])) if type(p) is tuple else p for p in self.params
        ]
        (request_id,) = _LEN32.unpack_from(view, 4)
        return Message(self.mtype, self.op, request_id, self.session, self.command, self.status, params)


class LayoutCache:
    """Decodes bodies whose metadata repeats without parsing them again.

    A runner calls ``infer`` with the same input names, dtypes and shapes over and over, so
    consecutive request bodies differ only in the request id and the tensor data; the replies
    likewise. Parsing is a pure function of the body's bytes, so when every byte the parser
    examined (all but the request id and the tensor data) equals those of a body that was parsed
    and accepted before, the result is the same message with new tensor views: that is what a
    hit rebuilds, after comparing those bytes exactly. Anything else is parsed in full. One cache
    per connection (its ``limits`` are fixed); messages with blobs or descriptors are not cached.
    """

    __slots__ = ("_entries", "last", "limits")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        # by body length only: a hit is decided by Layout.matches, so a collision only costs a parse
        self._entries: dict[int, Layout] = {}
        self.last: Layout | None = None  # the layout of the last body decoded, if it has one

    def lookup(self, view: memoryview) -> Layout | None:
        """The layout ``view`` (a body of "B" format) matches, if any: then ``layout.arrays(view)``
        are its tensors and the request id is at bytes 4..8."""
        entry = self._entries.get(len(view))
        if entry is None:
            return None
        for a, b, expected in entry.checks:  # Layout.matches, inline (the length is the key)
            if view[a:b].tobytes() != expected:
                return None
        return entry

    def decode(self, body: bytearray | bytes | memoryview, *, nfds: int = 0) -> Message:
        view = memoryview(body).cast("B")
        end = len(view)
        check_frame_length(end, self.limits)
        if not nfds:
            entry = self._entries.get(end)
            if entry is not None and entry.matches(view):
                self.last = entry
                return entry.message(view)
        header = _HEADER.unpack_from(view)
        layout: list[Any] = []
        msg = _decode(view, header, nfds, self.limits, layout)
        self.last = None
        if len(layout) == len(msg.params) and not nfds:
            if len(self._entries) >= 16:  # a handful of live shapes per connection; forget the rest
                self._entries.clear()
            entry = self.last = Layout(view, header, layout)
            self._entries[end] = entry
        return msg


def encode_tensors(mtype: int, op: int, request_id: int, session: int, command: int, lead: bytes, nlead: int,
                   tensors: Sequence[tuple[str, npt.NDArray[Any]]],
                   limits: Limits = DEFAULT_LIMITS) -> list[bytes | memoryview]:
    """:func:`encode_fields` for ``nlead`` already encoded leading parameters (``lead``, for example
    a Value) followed by tensors: the per-call path of ``infer`` on both sides."""
    nparams = nlead + len(tensors)
    if nparams > limits.max_params:
        raise TeeError(f"more than {limits.max_params} parameters", code=BAD_PARAMETERS)
    head = _HEADER.pack(mtype, op, nparams, request_id, session, command, 0) + lead
    parts: list[bytes | memoryview] = [b""]
    size = 0
    for name, arr in tensors:
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        phase = (size + len(head)) % TENSOR_ALIGN
        hit = _TENSOR_META.get((phase, name, arr.dtype, arr.shape))  # _tensor_meta's hit path, inline
        if hit is None or hit[1] > limits.max_name or hit[2] > limits.max_ndim:
            meta = _tensor_meta(phase, name, arr, limits)
            if meta is None:  # a string tensor: never memoised, so only ever reached here
                meta, table, data = _encode_strings(phase, name, arr, limits)
                parts.append(head + meta)
                parts.append(table)
                parts.append(data)
                size += len(head) + len(meta) + len(table) + len(data)
                head = b""
                continue
            head += meta
        else:
            head += hit[0]
        nbytes = arr.nbytes
        if nbytes:
            parts.append(head)
            parts.append(arr.data.cast("B"))
            size += len(head) + nbytes
            head = b""
    if head:
        parts.append(head)
        size += len(head)
    if size > limits.max_frame:
        raise TeeError(f"message of {size} bytes exceeds the frame limit {limits.max_frame}", code=FRAME_TOO_LARGE)
    parts[0] = FRAME_LENGTH.pack(size)
    return parts


def value_param(a: int, b: int = 0) -> bytes:
    """A Value parameter's bytes (for :func:`encode_tensors`' ``lead``)."""
    if not (0 <= a <= _U64_MAX and 0 <= b <= _U64_MAX):
        raise TeeError("value parameter out of range", code=BAD_PARAMETERS)
    return _VALUE_PARAM.pack(ParamKind.VALUE, a, b)


# ---------------------------------------------------------------------------------------- helpers


def expect_params(msg: Message, *kinds: type) -> list[Any]:
    """Exactly these parameter types, in order, or ``TEE_BAD_PARAMETERS``."""
    if len(msg.params) != len(kinds) or not all(isinstance(p, k) for p, k in zip(msg.params, kinds, strict=True)):
        got = ", ".join(type(p).__name__ for p in msg.params)
        want = ", ".join(k.__name__ for k in kinds)
        raise TeeError(f"expected parameters ({want}), got ({got})", code=BAD_PARAMETERS)
    return list(msg.params)
