"""String tensors in the wire codec (pure): round trips of random Unicode in random shapes, and
every bound refused with its code on both the encoding and the decoding side."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edb.errors import TeeError
from edb.tee.protocol import (
    DEFAULT_LIMITS,
    STRING_CODE,
    LayoutCache,
    Limits,
    Message,
    MsgType,
    Op,
    Tensor,
    Value,
    decode,
    dtype_name,
    encode_tensors,
    frame_bytes,
)

# every code point but lone surrogates (they have no UTF-8 form; refused separately below)
UNICODE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
PERMISSIVE = Limits(max_strings=1 << 30, max_string_bytes=1 << 30, max_string_total=1 << 30)


def string_array(shape: tuple[int, ...], values: list[str]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr.reshape(shape)


@st.composite
def string_tensors(draw: Any) -> np.ndarray:
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    values = draw(st.lists(UNICODE, min_size=math.prod(shape), max_size=math.prod(shape)))
    return string_array(shape, values)


def body_of(parts: list[bytes | memoryview]) -> bytearray:
    frame = b"".join(bytes(p) for p in parts)
    (length,) = struct.unpack_from("<I", frame)
    assert length == len(frame) - 4
    return bytearray(frame[4:])


def assert_same_strings(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == object and got.shape == want.shape
    assert all(type(v) is str for v in got.reshape(-1))
    assert got.reshape(-1).tolist() == [str(v) for v in want.reshape(-1)]


@settings(max_examples=200, deadline=None)
@given(string_tensors(), string_tensors(), st.integers(0, 3))
def test_random_unicode_round_trips_through_both_encoders(a: np.ndarray, b: np.ndarray, floats: int) -> None:
    numeric = np.arange(floats * 2, dtype=np.float32).reshape(floats, 2)
    # the general encoder (requests and replies of every command)
    msg = Message(MsgType.RESPONSE, Op.INVOKE, 5, 1, 2, 0,
                  [Value(9), Tensor("a", a), Tensor("n", numeric), Tensor("b", b)])
    out = decode(body_of([frame_bytes(msg)]))
    assert out.params[0] == Value(9)
    assert_same_strings(out.params[1].array, a)  # type: ignore[union-attr]
    np.testing.assert_array_equal(out.params[2].array, numeric)  # type: ignore[union-attr]
    assert_same_strings(out.params[3].array, b)  # type: ignore[union-attr]
    # the infer path's encoder, through a connection's layout cache (as the client reads replies)
    cache = LayoutCache()
    for request_id in (1, 2):  # the second time too: a string tensor is never rebuilt from a layout
        body = body_of(encode_tensors(MsgType.RESPONSE, Op.INVOKE, request_id, 1, 2, b"", 0,
                                      [("a", a), ("n", numeric), ("b", b)]))
        again = cache.decode(body)
        assert cache.last is None and again.request_id == request_id
        assert_same_strings(again.params[0].array, a)  # type: ignore[union-attr]
        assert_same_strings(again.params[2].array, b)  # type: ignore[union-attr]
        np.testing.assert_array_equal(again.params[1].array, numeric)  # type: ignore[union-attr]
        if numeric.size:  # numeric data keeps its 64-byte alignment after string data
            assert (again.params[1].array.ctypes.data - np.frombuffer(body, np.uint8).ctypes.data) % 64 == 0  # type: ignore[union-attr]


def test_numpy_str_arrays_empty_strings_nul_and_odd_shapes() -> None:
    cases = [
        np.array(["a", "héllo", "日本語", "🙂"]),  # numpy <U arrays
        np.array([["", ""], ["", "x"]], dtype=object),  # empty strings
        string_array((3,), ["a\0b", "\0", "tab\tnew\nline"]),  # NUL is data inside a string tensor
        np.array("scalar", dtype=object),  # rank 0
        np.empty((0, 3), dtype=object),  # no elements
        np.array([["a", "b", "c"], ["d", "e", "f"]], dtype=object)[:, ::2],  # not contiguous
        string_array((2,), ["x" * DEFAULT_LIMITS.max_string_bytes, ""]),  # exactly at the element bound
    ]
    for arr in cases:
        out = decode(body_of([frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[Tensor("s", arr)]))]))
        assert_same_strings(out.params[0].array, arr)  # type: ignore[union-attr]
    assert dtype_name(STRING_CODE) == "string"


SMALL = Limits(max_strings=4, max_string_bytes=8, max_string_total=12)


@pytest.mark.parametrize(("arr", "code"), [
    (np.array(["a"] * 5, dtype=object), "TEE_STRING_TOO_MANY"),
    (np.array(["123456789"], dtype=object), "TEE_STRING_TOO_LONG"),
    (np.array(["é" * 5], dtype=object), "TEE_STRING_TOO_LONG"),  # 10 UTF-8 bytes for 5 characters
    (np.array(["1234567", "1234567"], dtype=object), "TEE_STRING_TOO_LARGE"),
    (np.array(["ok", "\ud800"], dtype=object), "TEE_STRING_INVALID"),  # a lone surrogate has no UTF-8 form
    (np.array(["ok", b"bytes"], dtype=object), "TEE_DTYPE_UNSUPPORTED"),
    (np.array([1, 2], dtype=object), "TEE_DTYPE_UNSUPPORTED"),
    (np.array(["ok", None], dtype=object), "TEE_DTYPE_UNSUPPORTED"),
])
def test_encoder_refuses_out_of_bounds_strings(arr: np.ndarray, code: str) -> None:
    for encode in (lambda: frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[Tensor("s", arr)]), SMALL),
                   lambda: encode_tensors(MsgType.REQUEST, Op.INVOKE, 1, 1, 2, b"", 0, [("s", arr)], SMALL)):
        with pytest.raises(TeeError) as err:
            encode()
        assert err.value.code == code


def test_encoder_bounds_name_rank_and_frame() -> None:
    for arr, name in ((np.array(["a"], dtype=object), "n" * 300), (np.array("a", dtype=object).reshape((1,) * 9), "s")):
        with pytest.raises(TeeError) as err:
            frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[Tensor(name, arr)]))
        assert err.value.code == "TEE_BAD_PARAMETERS"
    with pytest.raises(TeeError) as err:
        frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[Tensor("s", np.array(["x" * 600] * 2))]),
                    Limits(max_frame=1024))
    assert err.value.code == "TEE_FRAME_TOO_LARGE"


def string_body(values: list[bytes], *, lengths: list[int] | None = None, nbytes: int | None = None,
                count: int | None = None, dirty_padding: bool = False) -> bytearray:
    """A request carrying one rank-1 string tensor named ``s``, written by hand (so it can lie)."""
    lengths = [len(v) for v in values] if lengths is None else lengths
    count = len(lengths) if count is None else count
    data = struct.pack(f"<{len(lengths)}I", *lengths) + b"".join(values)
    nbytes = len(data) if nbytes is None else nbytes
    head = struct.pack("<BBHIIII", 1, 2, 1, 0, 0, 0, 0)
    meta = head + struct.pack("<BBBH", 4, STRING_CODE, 1, 1) + b"s" + struct.pack("<QQ", count, nbytes)
    padding = bytearray(-len(meta) % 64)
    if dirty_padding:
        padding[0] = 1
    return bytearray(meta + padding + data)


def test_hand_written_body_matches_the_encoder() -> None:
    ours = string_body([b"ab", "é".encode()])
    theirs = body_of([frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[Tensor("s", np.array(["ab", "é"]))]))])
    assert ours == theirs


@pytest.mark.parametrize(("body", "code"), [
    (string_body([b"a"] * 5), "TEE_STRING_TOO_MANY"),
    (string_body([b"123456789"]), "TEE_STRING_TOO_LONG"),
    (string_body([b"1234567", b"1234567"]), "TEE_STRING_TOO_LARGE"),
    (string_body([b"\xff\xfe"]), "TEE_STRING_INVALID"),  # not UTF-8
    (string_body([b"a\xc3"]), "TEE_STRING_INVALID"),  # a sequence cut in the middle
    (string_body([b"\xed\xa0\x80"]), "TEE_STRING_INVALID"),  # an encoded surrogate
    (string_body([b"ab", b"cd"], lengths=[1, 2]), "TEE_STRING_INVALID"),  # lengths that do not add up
    (string_body([b"ab", b"cd"], lengths=[3, 0]), "TEE_STRING_INVALID"),  # ... or more than the bytes
    (string_body(["é".encode(), b"a"], lengths=[1, 2]), "TEE_STRING_INVALID"),  # a character cut in two elements
    (string_body([b"ab"], nbytes=3), "TEE_STRING_INVALID"),  # shorter than its length table
    (string_body([b"ab"], count=3), "TEE_STRING_INVALID"),  # dims say 3 elements, the table 1
    (string_body([b"ab"], count=0), "TEE_STRING_INVALID"),  # no elements, yet a table and bytes
    (string_body([b"ab"], nbytes=1 << 40), "TEE_STRING_TOO_LARGE"),  # refused before any read
    (string_body([b"ab"], count=1 << 31), "TEE_STRING_TOO_MANY"),
    (string_body([b"ab"], nbytes=12), "TEE_PROTOCOL"),  # runs past the frame
    (string_body([b"ab"])[:-1], "TEE_PROTOCOL"),  # truncated
    (string_body([b"ab"]) + b"\0", "TEE_PROTOCOL"),  # trailing byte
    (string_body([b"ab"], dirty_padding=True), "TEE_PROTOCOL"),  # non-zero padding
])
def test_decoder_refuses_out_of_bounds_and_lying_string_tensors(body: bytearray, code: str) -> None:
    with pytest.raises(TeeError) as err:
        decode(body, limits=SMALL)
    assert err.value.code == code
    with pytest.raises(TeeError) as err:
        LayoutCache(SMALL).decode(body)
    assert err.value.code == code


def test_lengths_decide_the_elements() -> None:
    # the same bytes cut elsewhere are other (valid) elements: the table, not a separator, decides
    assert decode(string_body([b"ab", b"cd"], lengths=[1, 3])).params[0].array.tolist() == ["a", "bcd"]  # type: ignore[union-attr]
    assert decode(string_body(["é".encode(), b"a"], lengths=[2, 1])).params[0].array.tolist() == ["é", "a"]  # type: ignore[union-attr]


def test_decoder_bounds_are_exact() -> None:
    at_bound = string_body([b"12345678", b"1234"])  # an 8-byte element, 12 bytes in all
    assert decode(at_bound, limits=SMALL).params[0].array.tolist() == ["12345678", "1234"]  # type: ignore[union-attr]
    # the same body from an encoder with wider limits is refused by a decoder with the defaults
    big = np.array(["x" * (DEFAULT_LIMITS.max_string_bytes + 1)], dtype=object)
    body = body_of([frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[Tensor("s", big)]), PERMISSIVE)])
    with pytest.raises(TeeError) as err:
        decode(body)
    assert err.value.code == "TEE_STRING_TOO_LONG"


STRING_CODES = {"TEE_STRING_TOO_MANY", "TEE_STRING_TOO_LONG", "TEE_STRING_TOO_LARGE", "TEE_STRING_INVALID"}


@settings(max_examples=300, deadline=None)
@given(string_tensors(), st.integers(0, 10_000), st.integers(0, 255))
def test_any_changed_byte_of_a_string_frame_decodes_or_is_refused_typed(arr: np.ndarray, where: int,
                                                                        value: int) -> None:
    body = body_of([frame_bytes(Message(MsgType.REQUEST, Op.INVOKE, params=[Value(1), Tensor("s", arr)]))])
    body[where % len(body)] = value
    try:
        out = decode(body)
    except TeeError as exc:
        assert exc.code in STRING_CODES | {"TEE_PROTOCOL", "TEE_DTYPE_UNSUPPORTED"}
    else:  # a change the decoder accepts (a string's characters, a value): still only str elements
        for p in out.params:
            if isinstance(p, Tensor) and p.array.dtype == object:
                assert all(type(v) is str for v in p.array.reshape(-1))
