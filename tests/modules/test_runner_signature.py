"""Signature-driven decoding (pure): message bodies -> tensors -> the feeds the TEE gets.

Every hostile or wrong input is refused with a typed code that names the tensor; nothing unchecked
reaches the TEE.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from edb.schemas import ErrorInfo
from inference_runner.decode import decode_body, encode_npz
from inference_runner.model_info import model_info
from inference_runner.plan import chunks, groups, static_row_bytes
from inference_runner.settings import ResultSettings, parse_limits, parse_results
from inference_runner.signature import InputError, Limits, Signature, TensorSig, bind

IMAGE = Signature((TensorSig("x", "float32", (None, 3, None, None)),),
                  (TensorSig("map", "float32", (None, 1, None, None)),))
TWO = Signature((TensorSig("ids", "int64", (None, 8)), TensorSig("mask", "bool", (None, 8))),
                (TensorSig("logits", "float32", (None, 4)),))
ROWS = Signature((TensorSig("X", "float32", (None, 4)),), (TensorSig("label", "int64", (None,)),))
TEXT = Signature((TensorSig("text", "string", (None, 1)),), (TensorSig("y", "float32", (None, 2)),))


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_json_rows_shortcut_and_named_inputs() -> None:
    d = decode_body(json.dumps({"input": [[0, 1, 2, 3], [4, 5, 6, 7]], "label": 4}).encode(), "application/json")
    feeds = bind(d.tensors, ROWS, Limits())
    assert feeds["X"].shape == (2, 4) and feeds["X"].dtype == np.float32 and d.label == 4 and d.rows == 2
    d = decode_body(b'{"input": [1, 2, 3, 4]}', None)
    assert bind(d.tensors, ROWS, Limits())["X"].shape == (1, 4)
    body = {"inputs": {"ids": [[1] * 8, [2] * 8], "mask": [[True] * 8, [0, 1] * 4]}}
    feeds = bind(decode_body(json.dumps(body), "application/json").tensors, TWO, Limits())
    assert feeds["ids"].dtype == np.int64 and feeds["mask"].dtype == np.bool_ and feeds["mask"][1, 1]


def test_n_d_dynamic_shapes_npy_and_npz() -> None:
    image = np.random.default_rng(0).random((1, 3, 32, 48), dtype=np.float32)
    feeds = bind(decode_body(npy(image), "application/x-npy").tensors, IMAGE, Limits())
    assert np.array_equal(feeds["x"], image)
    # one row without its batch dimension gets one
    assert bind(decode_body(npy(image[0]), "application/x-npy").tensors, IMAGE, Limits())["x"].shape == (1, 3, 32, 48)
    # an .npy for a multi-input model names its input by property; .npz carries several
    with pytest.raises(InputError) as info:
        bind(decode_body(npy(np.ones((1, 8), np.int64)), "application/x-npy").tensors, TWO, Limits())
    assert info.value.code == "RUNNER_INPUT_MISMATCH" and "name each one" in info.value.message
    archive = encode_npz({"ids": np.ones((2, 8), np.int64), "mask": np.ones((2, 8), np.bool_)})
    feeds = bind(decode_body(archive, "application/x-npz").tensors, TWO, Limits())
    assert feeds["ids"].shape == (2, 8) and feeds["mask"].dtype == np.bool_
    d = decode_body(npy(np.ones((1, 1), dtype="<U5")), "application/x-npy", {"input": "text"})
    assert bind(d.tensors, TEXT, Limits())["text"].dtype.kind == "U"


@pytest.mark.parametrize(
    ("data", "content_type", "code"),
    [
        (b"not json", "application/json", "RUNNER_BAD_INPUT"),
        (b'{"input": []}', "application/json", "RUNNER_BAD_INPUT"),
        (b'{"input": [[1, 2], [3]]}', "application/json", "RUNNER_BAD_INPUT"),
        (b'{"inputs": {"x": [[1, "a"], [null, 2]]}}', "application/json", "RUNNER_BAD_INPUT"),
        (b'{"inputs": []}', "application/json", "RUNNER_BAD_INPUT"),
        (b'{"input": [1, 2]}', "text/plain", "RUNNER_UNSUPPORTED_CONTENT_TYPE"),
        (b"\x93NUMPY garbage", "application/x-npy", "RUNNER_BAD_INPUT"),
        (b"PK\x03\x04 garbage", "application/x-npz", "RUNNER_BAD_INPUT"),
        (npy(np.array([{"a": 1}], dtype=object)), "application/x-npy", "RUNNER_BAD_INPUT"),
    ],
)
def test_malformed_bodies_are_typed_errors(data: bytes, content_type: str, code: str) -> None:
    with pytest.raises(InputError) as info:
        decode_body(data, content_type)
    assert info.value.code == code


def test_npz_bombs_and_lies_are_refused_before_decompressing() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", npy(np.zeros((2048, 2048), np.float32)))  # 16 MiB compressing to ~16 KB
    with pytest.raises(InputError) as info:
        decode_body(buf.getvalue(), "application/x-npz", max_bytes=1024 * 1024)
    assert info.value.code == "RUNNER_TENSOR_TOO_LARGE"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(65):
            z.writestr(f"t{i}.npy", npy(np.zeros(1)))
    with pytest.raises(InputError):
        decode_body(buf.getvalue(), "application/x-npz")


@pytest.mark.parametrize(
    ("tensors", "sig", "code", "words"),
    [
        ({"x": np.ones((1, 4, 8, 8), np.float32)}, IMAGE, "RUNNER_INPUT_MISMATCH", "input 'x' has 4 at dimension 1"),
        ({"x": np.ones((4, 8, 8), np.float32)}, IMAGE, "RUNNER_INPUT_MISMATCH", "input 'x' has 4 at dimension 1"),
        ({"x": np.ones((8,), np.float32)}, IMAGE, "RUNNER_INPUT_MISMATCH", "rank 1"),
        ({"y": np.ones((1, 3, 8, 8), np.float32)}, IMAGE, "RUNNER_INPUT_MISMATCH", "no input 'y'"),
        ({"ids": np.ones((1, 8), np.int64)}, TWO, "RUNNER_INPUT_MISMATCH", "input 'mask' is missing"),
        ({"ids": np.full((1, 8), 1.5), "mask": np.ones((1, 8), bool)}, TWO, "RUNNER_INPUT_MISMATCH", "whole numbers"),
        ({"ids": np.full((1, 8), 2.0**70), "mask": np.ones((1, 8), bool)}, TWO, "RUNNER_INPUT_MISMATCH", "range"),
        ({"ids": np.ones((1, 8), np.int64), "mask": np.full((1, 8), 2)}, TWO, "RUNNER_INPUT_MISMATCH", "bool"),
        ({"ids": np.ones((2, 8), np.int64), "mask": np.ones((1, 8), bool)}, TWO, "RUNNER_INPUT_MISMATCH", "batch"),
        ({"x": np.full((1, 3, 2, 2), np.nan, np.float32)}, IMAGE, "RUNNER_INPUT_NOT_FINITE", "input 'x'"),
        ({"X": np.array([["a", "b", "c", "d"]])}, ROWS, "RUNNER_INPUT_MISMATCH", "takes float32, got <U1"),
        ({"text": np.ones((1, 1), np.float32)}, TEXT, "RUNNER_INPUT_MISMATCH", "takes strings"),
        ({"x": np.ones((1, 3, 1, 0), np.float32)}, IMAGE, "RUNNER_INPUT_MISMATCH", "empty"),
        ({"X": np.full((1, 4), 1e300)}, ROWS, "RUNNER_INPUT_MISMATCH", "overflow"),
    ],
)
def test_tensors_the_model_does_not_take_are_refused_naming_the_input(
        tensors: dict[str | None, np.ndarray], sig: Signature, code: str, words: str) -> None:
    with pytest.raises(InputError) as info:
        bind(tensors, sig, Limits())
    assert info.value.code == code and words in info.value.message


def test_limits_name_the_input_and_can_allow_non_finite() -> None:
    big = {"x": np.ones((1, 3, 64, 64), np.float32)}  # 48 KiB
    with pytest.raises(InputError) as info:
        bind(big, IMAGE, Limits(max_input_bytes=32 * 1024))
    assert info.value.code == "RUNNER_TENSOR_TOO_LARGE" and "input 'x'" in info.value.message
    with pytest.raises(InputError) as info:
        bind(big, IMAGE, Limits(max_elements=1000))
    assert info.value.code == "RUNNER_TENSOR_TOO_LARGE" and "maxElements" in info.value.message
    nan = {"x": np.full((1, 3, 2, 2), np.nan, np.float32)}
    assert np.isnan(bind(nan, IMAGE, Limits(allow_non_finite=True))["x"]).all()


def test_twin_settings_are_parsed_strictly() -> None:
    assert parse_limits(None) == Limits()
    assert parse_limits({"maxOutputBytes": 2**20, "allowNonFinite": True}) == Limits(
        max_output_bytes=2**20, allow_non_finite=True)
    for bad in ({"maxOutputBytes": 2**40}, {"maxInputBytes": "1"}, {"other": 1}, [], {"allowNonFinite": 1}):
        assert isinstance(parse_limits(bad), ErrorInfo)
    assert parse_results({"upstreamFraction": 0.25}) == ResultSettings(0.25)
    for bad in ({"upstreamFraction": 2}, {"upstreamFraction": True}, {"x": 1}, "all"):
        assert isinstance(parse_results(bad), ErrorInfo)
    sample = ResultSettings(0.25)
    chosen = [sample.upstream(f"id-{i}") for i in range(4000)]
    assert 800 < sum(chosen) < 1200 and chosen == [sample.upstream(f"id-{i}") for i in range(4000)]
    assert all(ResultSettings(1.0).upstream(f"{i}") for i in range(10))
    assert not any(ResultSettings(0.0).upstream(f"{i}") for i in range(10))


def test_batch_planning_groups_by_shape_and_splits_by_output_bytes() -> None:
    a, b = {"x": np.ones((1, 3, 8, 8))}, {"x": np.ones((1, 3, 16, 8))}
    assert groups([(1, a), (2, b), (3, a)], True) == [[(1, a), (3, a)], [(2, b)]]
    assert groups([(1, a), (2, a)], False) == [[(1, a)], [(2, a)]]
    assert chunks([2, 2, 2, 1], 100.0, 450) == [[0, 1], [2, 3]]
    assert chunks([5], 100.0, 10) == [[0]]  # alone: the caller refuses or tries it
    assert chunks([1, 1], None, 10) == [[0, 1]]
    assert static_row_bytes(ROWS) == (8, "label")
    assert static_row_bytes(IMAGE) == (None, None)


def test_model_info_is_bounded_for_the_twin() -> None:
    from edb.tee.types import ModelHandle, ModelMetadata, TensorSpec

    handle = ModelHandle(1, "ocr", "1.0.0", (TensorSpec("x", "float32", ("n", 3, None, 320)),),
                         (TensorSpec("y", "float32", ("n", 6625)),))
    meta = ModelMetadata("ocr", "1.0.0", 8, "PaddlePaddle", "2.6", "", 0, "", "g", {"": 14},
                         {"character": "x" * 20_000, **{f"k{i}": "v" for i in range(40)}}, ("huge",))
    info = model_info(handle, meta)
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 3, -1, 320]}]
    assert info["customMetadata"][0] == {"key": "character", "chars": 20_000, "preview": "x" * 48}
    assert info["customMetadataOmitted"] == 41 - 32 + 1 and info["opsets"] == [{"domain": "ai.onnx", "version": 14}]
    assert len(json.dumps(info)) < 8192

    def keys(value: object) -> list[str]:  # every object key in the document, at any depth
        if isinstance(value, dict):
            return [*value, *(k for v in value.values() for k in keys(v))]
        if isinstance(value, list):
            return [k for v in value for k in keys(v)]
        return []

    # nothing the model chose becomes a twin key: IoT Hub refuses '.', '$', spaces in keys
    hostile = ModelMetadata("m", "1", 8, "p", "", "", 0, "", "g", {"com.micro$oft x": 1}, {"a.b $c": "v"})
    assert all(k.isidentifier() for k in keys(model_info(handle, hostile)))


def test_metadata_records_from_the_tee_are_checked_and_read_from_the_proto() -> None:
    from onnx import TensorProto, helper

    from edb.errors import EdbError
    from edb.tee.types import MAX_METADATA_TOTAL, ModelMetadata
    from edb_tee.model_metadata import read

    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                              producer_name="p", producer_version="9")
    helper.set_model_props(model, {"k": "v", "big": "x" * (300 * 1024)})
    meta = read(model.SerializeToString(), "m", "1.0.0")
    assert meta.opsets == {"": 17, "ai.onnx.ml": 3} and meta.custom == {"k": "v"} and meta.truncated == ("big",)
    assert ModelMetadata.from_json(meta.to_json()) == meta
    with pytest.raises(EdbError):  # a truncated proto is refused, not half-read
        read(model.SerializeToString()[:-3], "m", "1.0.0")
    hostile = meta.to_json() | {"custom": {f"k{i}": "x" * 200_000 for i in range(6)}}
    assert sum(len(v) for v in hostile["custom"].values()) > MAX_METADATA_TOTAL
    for bad in (hostile, meta.to_json() | {"opsets": {"": True}}, meta.to_json() | {"extra": 1},
                meta.to_json() | {"truncated": "big"}):
        with pytest.raises(EdbError) as info:
            ModelMetadata.from_json(bad)
        assert info.value.code == "TEE_PROTOCOL"
