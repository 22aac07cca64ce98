"""The per-call codec paths (pure): the layout cache must decide exactly as the full parser does,
and the tensors-only encoder must produce the general encoder's bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edb.errors import TeeError
from edb.tee.protocol import (
    Blob,
    LayoutCache,
    Limits,
    Message,
    MsgType,
    Op,
    Tensor,
    Text,
    Value,
    decode,
    encode_fields,
    encode_tensors,
    frame_bytes,
    value_param,
)


def body_of(msg: Message) -> bytearray:
    return bytearray(frame_bytes(msg)[4:])


def infer_request(x: np.ndarray, request_id: int = 1, handle: int = 7, name: str = "input") -> Message:
    return Message(MsgType.REQUEST, Op.INVOKE, request_id, 3, 2, 0, [Value(handle), Tensor(name, x)])


def outcome(fn, body: bytearray) -> object:  # type: ignore[no-untyped-def]
    """A comparable summary of decoding: the message's fields and tensor contents, or the error code."""
    try:
        m = fn(body)
    except TeeError as exc:
        return ("error", exc.code)
    params = [(type(p).__name__, p.name, p.array.dtype.str, p.array.shape, p.array.tobytes())
              if isinstance(p, Tensor) else p for p in m.params]
    return (m.type, m.op, m.request_id, m.session, m.command, m.status, params)


def test_a_repeated_body_is_rebuilt_as_the_full_parse_would_decode_it() -> None:
    cache = LayoutCache()
    rng = np.random.default_rng(0)
    first = body_of(infer_request(rng.standard_normal((2, 8), dtype=np.float32), request_id=1))
    cache.decode(first)
    assert cache.last is not None  # cacheable: a value and a tensor
    for rid in range(2, 6):
        body = body_of(infer_request(rng.standard_normal((2, 8), dtype=np.float32), request_id=rid))
        msg = cache.decode(body)
        assert cache.lookup(memoryview(body)) is cache.last
        assert outcome(lambda b, m=msg: m, body) == outcome(decode, body)
        t = msg.params[1]
        assert isinstance(t, Tensor)
        body[-4:] = struct.pack("<f", 42.0)  # the rebuilt tensor is a view of this body, not of the first
        assert t.array[-1, -1] == 42.0


def test_every_single_byte_change_is_decided_as_by_the_full_parser() -> None:
    """A cached layout must never accept what the parser refuses, nor mis-read what it accepts:
    change each byte of a cached body in turn (to two values) and compare both decoders."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    template = body_of(infer_request(x))
    cache = LayoutCache()
    cache.decode(bytearray(template))
    for i in range(len(template)):
        for value in (0x00, 0xFF, template[i] ^ 0x01):
            body = bytearray(template)
            body[i] = value
            assert outcome(cache.decode, bytearray(body)) == outcome(decode, bytearray(body)), (i, value)
            cache.decode(bytearray(template))  # the cached entry stays the original layout


def test_other_lengths_kinds_and_descriptors_take_the_full_parser() -> None:
    cache = LayoutCache()
    body = body_of(infer_request(np.ones((1, 4), np.float32)))
    cache.decode(body)
    longer = body_of(infer_request(np.ones((2, 4), np.float32)))
    assert cache.lookup(memoryview(longer)) is None
    assert cache.decode(longer).params[1].array.shape == (2, 4)  # type: ignore[union-attr]
    blob = body_of(Message(MsgType.REQUEST, Op.INVOKE, 1, 1, 1, 0, [Blob(b"k" * 10)]))
    cache.decode(blob)
    assert cache.last is None  # blobs are views of their own body: never rebuilt from a layout
    with pytest.raises(TeeError) as err:  # a descriptor parameter without descriptors: the parser's answer
        cache.decode(body_of(Message(MsgType.REQUEST, Op.INVOKE, params=[Value(1)])) + b"\x05\x00")
    assert err.value.code == "TEE_PROTOCOL"


def test_tensors_only_encoder_matches_the_general_encoder() -> None:
    arrays = [("input", np.arange(12, dtype=np.float32).reshape(3, 4)), ("mask", np.array([True, False])),
              ("empty", np.zeros((0, 2), np.int64)), ("t", np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2])]
    for lead, nlead, params in ((value_param(9, 1), 1, [Value(9, 1)]), (b"", 0, [])):
        fast = encode_tensors(MsgType.REQUEST, Op.INVOKE, 77, 3, 2, lead, nlead, arrays)
        general = encode_fields(MsgType.REQUEST, Op.INVOKE, 77, 3, 2, 0,
                                params + [Tensor(n, a) for n, a in arrays])
        assert b"".join(bytes(p) for p in fast) == b"".join(bytes(p) for p in general)


def test_encoders_keep_their_bounds() -> None:
    with pytest.raises(TeeError) as err:
        value_param(-1)
    assert err.value.code == "TEE_BAD_PARAMETERS"
    x = np.ones(3, np.float32)
    encode_tensors(MsgType.REQUEST, Op.INVOKE, 1, 1, 1, b"", 0, [("a-long-name", x)])  # memoised under default limits
    with pytest.raises(TeeError) as err:  # ... and still checked against stricter ones
        encode_tensors(MsgType.REQUEST, Op.INVOKE, 1, 1, 1, b"", 0, [("a-long-name", x)], Limits(max_name=4))
    assert err.value.code == "TEE_BAD_PARAMETERS"
    with pytest.raises(TeeError) as err:
        encode_tensors(MsgType.REQUEST, Op.INVOKE, 1, 1, 1, b"", 0, [("a", np.ones(300, np.float32))],
                       Limits(max_frame=1024))
    assert err.value.code == "TEE_FRAME_TOO_LARGE"
    with pytest.raises(TeeError) as err:
        encode_tensors(MsgType.REQUEST, Op.INVOKE, 1, 1, 1, b"", 0, [("s", np.array([b"x"]))])  # bytes (str crosses)
    assert err.value.code == "TEE_DTYPE_UNSUPPORTED"


def test_parameters_are_immutable() -> None:
    v, t = Value(1, 2), Text("x")
    with pytest.raises(AttributeError):
        v.a = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        t.text = "y"  # type: ignore[misc]
    assert repr(Blob(b"secret")) == "Blob(6 bytes)" and "secret" not in repr(Blob(b"secret"))
