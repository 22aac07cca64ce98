"""The wire codec (pure): round trips, and every bound the decoder enforces."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edb.errors import TeeError
from edb.tee.protocol import (
    DEFAULT_LIMITS,
    Blob,
    Fd,
    Limits,
    Message,
    MsgType,
    Op,
    Tensor,
    Text,
    Value,
    decode,
    frame_bytes,
    hello_request,
    negotiate,
)


def roundtrip(msg: Message, nfds: int = 0, limits: Limits = DEFAULT_LIMITS) -> Message:
    frame = frame_bytes(msg, limits)
    (length,) = struct.unpack_from("<I", frame)
    assert length == len(frame) - 4
    return decode(bytearray(frame[4:]), nfds=nfds, limits=limits)


def test_roundtrip_all_kinds_and_zero_copy_tensors() -> None:
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array(2.5), np.array([True, False]),
              np.zeros((0, 5), np.int64), np.arange(6, dtype=np.float16), np.arange(3, dtype=np.uint8)]
    msg = Message(MsgType.REQUEST, Op.INVOKE, 7, 3, 2, 0,
                  [Value(1, 2**64 - 1), Blob(b"x" * 5000), Text("héllo"), Fd(0)]
                  + [Tensor(f"t{i}", a) for i, a in enumerate(arrays)])
    body = bytearray(frame_bytes(msg)[4:])
    base = np.frombuffer(body, np.uint8).ctypes.data
    out = decode(body, nfds=1)
    assert (out.request_id, out.session, out.command) == (7, 3, 2)
    assert out.params[0] == Value(1, 2**64 - 1) and bytes(out.params[1].data) == b"x" * 5000
    assert out.params[2] == Text("héllo") and out.params[3] == Fd(0)
    for i, a in enumerate(arrays):
        t = out.params[4 + i]
        assert isinstance(t, Tensor) and t.name == f"t{i}" and t.array.dtype == a.dtype
        np.testing.assert_array_equal(t.array, a)
        if a.size:
            assert (t.array.ctypes.data - base) % 64 == 0  # tensor data 64-byte aligned in the frame


def test_tensor_data_is_a_view_of_the_frame() -> None:
    body = bytearray(frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[Tensor("x", np.ones(4, np.float32))]))[4:])
    t = decode(body).params[0]
    assert isinstance(t, Tensor)
    body[-4:] = struct.pack("<f", 7.0)
    assert t.array[-1] == 7.0  # shares memory with the received buffer: no copy


def test_non_contiguous_and_unsupported_arrays() -> None:
    a = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    out = roundtrip(Message(MsgType.REQUEST, Op.INVOKE, params=[Tensor("a", a)]))
    np.testing.assert_array_equal(out.params[0].array, a)  # type: ignore[union-attr]
    for bad in (np.array([b"s"]), np.array([1, 2], dtype=object), np.array([1 + 2j]), np.arange(3, dtype=">f4")):
        with pytest.raises(TeeError) as err:
            frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[Tensor("a", bad)]))
        assert err.value.code == "TEE_DTYPE_UNSUPPORTED"


def _body(msg: Message) -> bytearray:
    return bytearray(frame_bytes(msg)[4:])


@pytest.mark.parametrize("mutate, code", [
    (lambda b: b + b"\0", "TEE_PROTOCOL"),  # trailing byte
    (lambda b: b[:-1], "TEE_PROTOCOL"),  # truncated
    (lambda b: bytearray([9]) + b[1:], "TEE_PROTOCOL"),  # unknown message type
    (lambda b: b[:1] + bytearray([77]) + b[2:], "TEE_PROTOCOL"),  # unknown op
    (lambda b: b[:2] + struct.pack("<H", 1000) + b[4:], "TEE_PROTOCOL"),  # too many params
    (lambda b: b[:16] + struct.pack("<I", 5) + b[20:], "TEE_PROTOCOL"),  # bad status
])
def test_malformed_bodies(mutate, code) -> None:
    body = _body(Message(MsgType.REQUEST, Op.INVOKE, params=[Value(1), Text("ok")]))
    with pytest.raises(TeeError) as err:
        decode(mutate(body))
    assert err.value.code == code


def test_field_bounds() -> None:
    header = struct.pack("<BBHIIII", 1, 2, 1, 0, 0, 0, 0)
    cases = [
        header + b"\x02" + struct.pack("<I", 1 << 30),  # blob longer than the frame
        header + b"\x03" + struct.pack("<I", 70_000) + b"a" * 70_000,  # text above max_text
        header + b"\x03" + struct.pack("<I", 2) + b"\xff\xfe",  # text not UTF-8
        header + b"\x03" + struct.pack("<I", 1) + b"\0",  # NUL in text
        header + b"\x05\x00",  # fd parameter without a descriptor
        header + b"\x09",  # unknown parameter kind
        header + b"\x04" + struct.pack("<BBH", 1, 9, 1) + b"x",  # rank above 8
        header + b"\x04" + struct.pack("<BBH", 1, 1, 1) + b"x" + struct.pack("<QQ", 4, 999),  # nbytes mismatch
        header + b"\x04" + struct.pack("<BBH", 1, 1, 1) + b"x" + struct.pack("<QQ", 1 << 40, 1 << 42),  # huge dim
        header + b"\x04" + struct.pack("<BBH", 99, 1, 1) + b"x" + struct.pack("<QQ", 1, 1),  # unknown dtype
    ]
    for body in cases:
        with pytest.raises(TeeError) as err:
            decode(bytearray(body))
        assert err.value.code in ("TEE_PROTOCOL", "TEE_DTYPE_UNSUPPORTED"), body[:40]


def test_frame_limit_on_both_sides() -> None:
    small = Limits(max_frame=1024)
    with pytest.raises(TeeError) as err:
        frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[Blob(b"x" * 2000)]), small)
    assert err.value.code == "TEE_FRAME_TOO_LARGE"
    with pytest.raises(TeeError) as err:
        decode(bytearray(2000), limits=small)
    assert err.value.code == "TEE_FRAME_TOO_LARGE"


def test_handshake_negotiation() -> None:
    assert negotiate(hello_request()) == 1
    with pytest.raises(TeeError) as err:
        negotiate(hello_request(2, 3))
    assert err.value.code == "TEE_VERSION"
    with pytest.raises(TeeError) as err:
        negotiate(Message(MsgType.REQUEST, Op.HELLO, params=[Blob(b"NOTEDB"), Value(1, 1)]))
    assert err.value.code == "TEE_PROTOCOL"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_decoder_only_ever_raises_tee_errors(data: bytes) -> None:
    try:
        decode(bytearray(data), nfds=2)
    except TeeError as exc:
        assert exc.code in ("TEE_PROTOCOL", "TEE_DTYPE_UNSUPPORTED", "TEE_FRAME_TOO_LARGE", "TEE_STRING_TOO_MANY",
                            "TEE_STRING_TOO_LONG", "TEE_STRING_TOO_LARGE", "TEE_STRING_INVALID")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(
    st.builds(Value, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    st.builds(Text, st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                            max_size=50)),
    st.builds(lambda b: Blob(b), st.binary(max_size=100)),
), max_size=10))
def test_roundtrip_property(params) -> None:
    out = roundtrip(Message(MsgType.RESPONSE, Op.INVOKE, 1, 2, 3, 0, params))
    assert [bytes(p.data) if isinstance(p, Blob) else p for p in out.params] == \
        [bytes(p.data) if isinstance(p, Blob) else p for p in params]
