"""Fuzzing the TEE wire protocol decoder (shared/edb/tee/protocol.py): valid frames of every
parameter kind, then structure-aware damage (byte flips, 32-bit fields overwritten with boundary
values, truncation, insertion). The decoder must return a message or raise a TeeError with a
protocol code: never another exception, never an allocation the limits do not allow."""

from __future__ import annotations

import struct

import numpy as np
from fuzz_settings import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from edb.errors import TeeError
from edb.tee.protocol import (
    Blob,
    Fd,
    LayoutCache,
    Limits,
    Message,
    MsgType,
    Op,
    ShmTensor,
    Tensor,
    Text,
    Value,
    decode,
    frame_bytes,
)

PROTOCOL_CODES = {"TEE_PROTOCOL", "TEE_DTYPE_UNSUPPORTED", "TEE_FRAME_TOO_LARGE", "TEE_STRING_TOO_MANY",
                  "TEE_STRING_TOO_LONG", "TEE_STRING_TOO_LARGE", "TEE_STRING_INVALID", "TEE_SHM_INVALID",
                  "TEE_SHM_BOUNDS"}
LIMITS = Limits(max_frame=1 << 20)
DTYPES = [np.float32, np.float64, np.int64, np.int32, np.uint8, np.int8, np.bool_, np.float16]
BOUNDARY_U32 = [0, 1, 7, 8, 63, 64, 255, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]

names = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1,
                max_size=12)
arrays = st.builds(
    lambda dtype, shape, seed: np.random.default_rng(seed).integers(0, 100, size=shape).astype(dtype),
    st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3).map(tuple), st.integers(0, 2**32 - 1))
strings = st.lists(st.text(max_size=8), max_size=5).map(lambda xs: np.array(xs, dtype=object))
params = st.one_of(
    st.builds(Value, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    st.builds(Text, names),
    st.builds(lambda b: Blob(b), st.binary(max_size=64)),
    st.builds(Tensor, names, arrays),
    st.builds(Tensor, names, strings),
    st.just(Fd(0)),
)
messages = st.builds(Message, st.sampled_from(list(MsgType)), st.sampled_from(list(Op)), st.integers(0, 2**32 - 1),
                     st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.just(0),
                     st.lists(params, max_size=6)).filter(
    lambda m: sum(isinstance(p, Fd) for p in m.params) <= 1)  # one descriptor is passed with each frame


def _body(msg: Message) -> bytes:
    return frame_bytes(msg, LIMITS)[4:]


def _decode_or_protocol_error(body: bytes) -> Message | None:
    try:
        return decode(bytearray(body), nfds=1, limits=LIMITS)
    except TeeError as exc:
        assert exc.code in PROTOCOL_CODES, exc.code
        return None


damage = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("u32"), st.integers(0, 10**6), st.sampled_from(BOUNDARY_U32)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
), min_size=1, max_size=4)


def _apply(body: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(body)
    for kind, where, value in ops:
        if not out:
            break
        at = where % len(out)
        if kind == "flip":
            out[at] ^= value
        elif kind == "u32" and at + 4 <= len(out):
            struct.pack_into("<I", out, at, value)
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out.insert(at, value)
    return bytes(out)


@FUZZ
@given(messages)
def test_valid_frames_round_trip_and_the_layout_cache_agrees(msg: Message) -> None:
    body = _body(msg)
    out = decode(bytearray(body), nfds=1, limits=LIMITS)
    assert (out.type, out.op, out.request_id, out.session, out.command) == \
        (msg.type, msg.op, msg.request_id, msg.session, msg.command)
    assert len(out.params) == len(msg.params)
    for got, sent in zip(out.params, msg.params, strict=True):
        assert type(got) is type(sent)
        if isinstance(sent, Tensor):
            assert got.name == sent.name and got.array.shape == sent.array.shape
            assert got.array.tolist() == sent.array.tolist()
        elif isinstance(sent, Blob):
            assert bytes(got.data) == sent.data
        else:
            assert got == sent
    cache = LayoutCache(LIMITS)
    for _ in range(2):  # the second decode may take the cached fast path: same answer
        again = cache.decode(bytearray(body), nfds=1)
        assert len(again.params) == len(out.params) and again.request_id == out.request_id


@FUZZ
@given(messages, damage)
def test_damaged_frames_are_refused_with_protocol_codes(msg: Message, ops: list[tuple[str, int, int]]) -> None:
    body = _apply(_body(msg), ops)
    _decode_or_protocol_error(body)
    cache = LayoutCache(LIMITS)
    try:
        cache.decode(bytearray(_body(msg)), nfds=1)  # prime the cache with the valid layout...
        cache.decode(bytearray(body), nfds=1)  # ...then the damaged frame must not slip through it
    except TeeError as exc:
        assert exc.code in PROTOCOL_CODES, exc.code


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode_or_protocol_error(data)


@FUZZ
@given(st.builds(ShmTensor, names, st.integers(0, 12), st.lists(st.integers(0, 2**31), max_size=3).map(tuple),
                 st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), damage)
def test_shared_memory_descriptors(tensor: ShmTensor, ops: list[tuple[str, int, int]]) -> None:
    try:
        body = _body(Message(MsgType.REQUEST, Op.INVOKE, 1, 1, 1, 0, [tensor]))
    except TeeError as exc:  # the encoder refuses what it cannot describe
        assert exc.code in PROTOCOL_CODES
        return
    _decode_or_protocol_error(body)
    _decode_or_protocol_error(_apply(body, ops))
