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
              u64 nbytes, zero padding up to a 64-byte boundary of the body, nbytes of data
    5 Fd      u8 index into the file descriptors passed with the frame (SCM_RIGHTS)

The first exchange on a connection is ``hello`` (op 0) with params ``Blob(b"EDBTEE")``,
``Value(min_version, max_version)``; the reply carries ``Value(version, max_frame)``. The hello
message layout is frozen across protocol versions.

Decoding checks every length against what remains of the body and against :class:`Limits` before
anything is allocated; trailing bytes are an error. Tensor data is returned as numpy views into the
received body (no copy); tensors are encoded as views of the caller's arrays (no copy) so a frame is
sent with ``sendmsg`` scatter/gather. There is no pickle and no generic object decoding: structured
results travel as JSON in a ``Blob`` and are parsed strictly by the typed client.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from edb.errors import TeeError
from edb.tee.errors import BAD_PARAMETERS, DTYPE_UNSUPPORTED, FRAME_TOO_LARGE, PROTOCOL

PROTOCOL_MAGIC = b"EDBTEE"
PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1

FRAME_LENGTH = struct.Struct("<I")
_HEADER = struct.Struct("<BBHIIII")
_VALUE = struct.Struct("<QQ")
_LEN32 = struct.Struct("<I")
_TENSOR_HEAD = struct.Struct("<BBH")
_U64 = struct.Struct("<Q")
_U8 = struct.Struct("<B")
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


DEFAULT_LIMITS = Limits()

# ONNX TensorProto data type codes <-> numpy dtypes (strings are not supported across the boundary)
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


def dtype_code(dtype: np.dtype[Any]) -> int:
    code = _CODES.get(dtype.str)  # "<f4", "|u1", ...: big-endian and object dtypes are not accepted
    if code is None:
        raise TeeError(f"tensor dtype {dtype} cannot cross the TEE boundary", code=DTYPE_UNSUPPORTED)
    return code


def dtype_from_code(code: int) -> np.dtype[Any]:
    dt = _DTYPES.get(code)
    if dt is None:
        raise TeeError(f"unknown tensor dtype code {code}", code=DTYPE_UNSUPPORTED)
    return dt


def dtype_name(code: int) -> str:
    """Short numpy name of an ONNX dtype code (``float32``); ``unknown`` for unsupported ones."""
    dt = _DTYPES.get(code)
    return dt.name if dt is not None else "unknown"


@dataclass(frozen=True)
class Value:
    a: int
    b: int = 0


@dataclass(frozen=True)
class Blob:
    data: bytes | bytearray | memoryview

    def __repr__(self) -> str:  # never print contents: they may be a key or a token
        return f"Blob({len(self.data)} bytes)"


@dataclass(frozen=True)
class Text:
    text: str

    def __repr__(self) -> str:
        return f"Text({len(self.text)} chars)"


@dataclass(frozen=True)
class Tensor:
    name: str
    array: npt.NDArray[Any]

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.array.dtype}, {self.array.shape})"


@dataclass(frozen=True)
class Fd:
    index: int


Param = Value | Blob | Text | Tensor | Fd


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


def encode(msg: Message, limits: Limits = DEFAULT_LIMITS) -> list[bytes | memoryview]:
    """The frame (length prefix included) as a list of buffers for ``sendmsg``; arrays are not copied."""
    if len(msg.params) > limits.max_params:
        raise TeeError(f"more than {limits.max_params} parameters", code=BAD_PARAMETERS)
    head = bytearray(_HEADER.pack(msg.type, msg.op, len(msg.params), msg.request_id, msg.session,
                                  msg.command, msg.status))
    parts: list[bytes | memoryview] = []
    size = 0  # bytes already moved from `head` into `parts`

    def flush() -> None:
        nonlocal head, size
        if head:
            parts.append(bytes(head))
            size += len(head)
            head = bytearray()

    for p in msg.params:
        if isinstance(p, Value):
            if not (0 <= p.a <= _U64_MAX and 0 <= p.b <= _U64_MAX):
                raise TeeError("value parameter out of range", code=BAD_PARAMETERS)
            head += _U8.pack(ParamKind.VALUE) + _VALUE.pack(p.a, p.b)
        elif isinstance(p, Blob):
            head += _U8.pack(ParamKind.BLOB) + _LEN32.pack(len(p.data))
            if len(p.data) > 4096:
                flush()
                parts.append(memoryview(p.data).cast("B"))
                size += len(p.data)
            else:
                head += bytes(p.data)
        elif isinstance(p, Text):
            raw = p.text.encode("utf-8")
            if len(raw) > limits.max_text:
                raise TeeError(f"text parameter longer than {limits.max_text} bytes", code=BAD_PARAMETERS)
            head += _U8.pack(ParamKind.TEXT) + _LEN32.pack(len(raw)) + raw
        elif isinstance(p, Tensor):
            arr = p.array
            if not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr)
            name = p.name.encode("utf-8")
            if len(name) > limits.max_name or arr.ndim > limits.max_ndim:
                raise TeeError("tensor name or rank out of bounds", code=BAD_PARAMETERS)
            head += _U8.pack(ParamKind.TENSOR) + _TENSOR_HEAD.pack(dtype_code(arr.dtype), arr.ndim, len(name))
            head += name
            for d in arr.shape:
                head += _U64.pack(d)
            head += _U64.pack(arr.nbytes)
            pos = size + len(head)  # offset of the data in the body
            head += b"\0" * (-pos % TENSOR_ALIGN)
            if arr.nbytes:
                flush()
                parts.append(arr.reshape(-1).data.cast("B"))
                size += arr.nbytes
        elif isinstance(p, Fd):
            head += _U8.pack(ParamKind.FD) + _U8.pack(p.index)
        else:  # pragma: no cover - the Param union is closed
            raise TeeError(f"unknown parameter type {type(p).__name__}", code=BAD_PARAMETERS)
    flush()
    body_len = size
    if body_len > limits.max_frame:
        raise TeeError(f"message of {body_len} bytes exceeds the frame limit {limits.max_frame}",
                       code=FRAME_TOO_LARGE)
    parts.insert(0, FRAME_LENGTH.pack(body_len))
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


class _Cursor:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise protocol_error("field runs past the end of the frame")
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        return st.unpack(self.take(st.size))


def decode(body: bytearray | bytes | memoryview, *, nfds: int = 0, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse one message body. Tensor arrays are views into ``body`` (keep it alive and unchanged)."""
    view = memoryview(body).cast("B")
    check_frame_length(len(view), limits)
    cur = _Cursor(view)
    raw_type, raw_op, nparams, request_id, session, command, status = cur.unpack(_HEADER)
    mtype, op = _MSG_TYPES.get(raw_type), _OPS.get(raw_op)
    if mtype is None or op is None:
        raise protocol_error("unknown message type or operation")
    if nparams > limits.max_params:
        raise protocol_error(f"more than {limits.max_params} parameters")
    if status not in (0, 1):
        raise protocol_error("unknown status")
    params: list[Param] = []
    seen_fds: set[int] = set()
    for _ in range(nparams):
        (kind,) = cur.unpack(_U8)
        if kind == ParamKind.VALUE:
            a, b = cur.unpack(_VALUE)
            params.append(Value(a, b))
        elif kind == ParamKind.BLOB:
            (n,) = cur.unpack(_LEN32)
            params.append(Blob(cur.take(n)))
        elif kind == ParamKind.TEXT:
            (n,) = cur.unpack(_LEN32)
            if n > limits.max_text:
                raise protocol_error(f"text longer than {limits.max_text} bytes")
            try:
                params.append(Text(str(cur.take(n), "utf-8", "strict")))
            except UnicodeDecodeError as exc:
                raise protocol_error("text is not UTF-8") from exc
            if "\0" in params[-1].text:  # type: ignore[union-attr]
                raise protocol_error("text contains NUL")
        elif kind == ParamKind.TENSOR:
            params.append(_decode_tensor(cur, body, limits))
        elif kind == ParamKind.FD:
            (index,) = cur.unpack(_U8)
            if index >= nfds or index in seen_fds:
                raise protocol_error("file descriptor parameter without a matching descriptor")
            seen_fds.add(index)
            params.append(Fd(index))
        else:
            raise protocol_error(f"unknown parameter kind {kind}")
    if cur.pos != len(view):
        raise protocol_error("trailing bytes after the last parameter")
    return Message(mtype, op, request_id, session, command, status, params)


def _decode_tensor(cur: _Cursor, body: bytearray | bytes | memoryview, limits: Limits) -> Tensor:
    code, ndim, name_len = cur.unpack(_TENSOR_HEAD)
    if ndim > limits.max_ndim or name_len > limits.max_name:
        raise protocol_error("tensor rank or name length out of bounds")
    try:
        name = str(cur.take(name_len), "utf-8", "strict")
    except UnicodeDecodeError as exc:
        raise protocol_error("tensor name is not UTF-8") from exc
    dims = list(struct.unpack(f"<{ndim}Q", cur.take(8 * ndim)))
    if any(d > limits.max_dim for d in dims):
        raise protocol_error("tensor dimension out of bounds")
    (nbytes,) = cur.unpack(_U64)
    dt = dtype_from_code(code)
    count = 1
    for d in dims:
        count *= d
    if count * dt.itemsize != nbytes:
        raise protocol_error("tensor byte length does not match dtype and shape")
    pad = cur.take(-cur.pos % TENSOR_ALIGN)
    if pad.tobytes() != _ZEROS[: len(pad)]:
        raise protocol_error("non-zero tensor padding")
    offset = cur.pos
    cur.take(nbytes)
    if count == 0:
        arr: npt.NDArray[Any] = np.empty(dims, dtype=dt)
    else:
        arr = np.frombuffer(body, dtype=dt, count=count, offset=offset).reshape(dims)
    return Tensor(name, arr)


# ---------------------------------------------------------------------------------------- helpers


def expect_params(msg: Message, *kinds: type) -> list[Any]:
    """Exactly these parameter types, in order, or ``TEE_BAD_PARAMETERS``."""
    if len(msg.params) != len(kinds) or not all(isinstance(p, k) for p, k in zip(msg.params, kinds, strict=True)):
        got = ", ".join(type(p).__name__ for p in msg.params)
        want = ", ".join(k.__name__ for k in kinds)
        raise TeeError(f"expected parameters ({want}), got ({got})", code=BAD_PARAMETERS)
    return list(msg.params)
