"""The runner serves models with several named N-D inputs of their own dtypes from the real TEE,
answers exactly as ONNX Runtime in-process does, and the model's metadata reaches the handle and
the runner's reported properties (``RunnerService`` against the real TEE service and ``TeeClient``;
only the IoT Edge module client is a recorder, as in test_string_tensors_runner)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from onnx import TensorProto, helper
from tee_helpers import Device, Publisher, install
from test_string_tensors_runner import Frame, Recorder

from edb.ort import onnxruntime as ort
from edb.tee import TeeClient
from edb.tee.types import MAX_METADATA_VALUE
from inference_runner.decode import encode_npz
from inference_runner.service import RunnerService

pytestmark = pytest.mark.timeout(120)


def vision_model(character: str = "abc") -> bytes:
    """``image`` float32 [N,3,H,W] (dynamic), ``scale`` float32 [N,1], ``ids`` int64 [N,4] ->
    ``pooled`` [N,3], ``idsum`` int64 [N], ``map`` float32 [N,3,H,W]; metadata_props like an OCR model."""
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["pooled"]),
        helper.make_node("ReduceSum", ["ids", "axis"], ["idsum"], keepdims=0),
        helper.make_node("Sigmoid", ["image"], ["map"]),
    ]
    graph = helper.make_graph(
        nodes, "vision",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["n", 1]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("idsum", TensorProto.INT64, ["n"]),
         helper.make_tensor_value_info("map", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        initializer=[helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edb-tests",
                              producer_version="1.2")
    model.ir_version = 8
    helper.set_model_props(model, {"character": character, "task": "detect"})
    return model.SerializeToString()


def npz_frame(mid: str, feeds: dict[str, np.ndarray], **props: str) -> Frame:
    return Frame(mid, encode_npz(feeds), "application/x-npz", custom_properties=dict(props))


async def test_named_n_d_inputs_of_several_dtypes_answer_as_ort(client: TeeClient, make_package,
                                                                publisher: Publisher, device: Device) -> None:
    model = vision_model()
    install(client, make_package(model, package_id="vision"), publisher, device, name="vision")
    rng = np.random.default_rng(5)

    def feeds(n: int, h: int, w: int) -> dict[str, np.ndarray]:
        return {"image": rng.standard_normal((n, 3, h, w), dtype=np.float32),
                "scale": rng.random((n, 1), dtype=np.float32), "ids": rng.integers(-9, 9, (n, 4))}

    inputs = {"a": feeds(1, 8, 8), "b": feeds(2, 8, 8), "c": feeds(1, 16, 4)}  # c: another H x W
    frames = [npz_frame("a", inputs["a"]), npz_frame("b", inputs["b"], accept="application/x-npz"),
              Frame("c", json.dumps({"inputs": {k: v.tolist() for k, v in inputs["c"].items()}}).encode())]
    recorder = Recorder("vision")
    service = RunnerService(recorder, client)
    await service.load_twin()
    await service.select()
    for frame in frames:
        await service.on_message(frame)
    await service.serve_guarded(service.batcher.take())
    reference = ort.InferenceSession(model)
    results = {}
    npz_answers = {}
    for output, data, content_type, _ in recorder.sent:
        if output == "results" and content_type == "application/json":
            body = json.loads(data)
            results[body["requestId"]] = body
        elif output == "results":
            assert content_type == "application/x-npz"
            npz_answers["b"] = dict(np.load(io.BytesIO(data), allow_pickle=False))
    for mid in ("a", "c"):
        want = dict(zip(["pooled", "idsum", "map"], reference.run(None, inputs[mid]), strict=True))
        body = results[mid]
        assert body["error"] is None
        assert np.array_equal(np.array(body["outputs"]["pooled"], np.float32), want["pooled"])
        assert body["outputs"]["idsum"] == want["idsum"].tolist()
        assert body["tensors"]["map"] == {"shape": list(want["map"].shape), "dtype": "float32"}
        assert np.array_equal(np.array(body["outputs"]["map"], np.float32), want["map"])
    want_b = dict(zip(["pooled", "idsum", "map"], reference.run(None, inputs["b"]), strict=True))
    assert set(npz_answers["b"]) == set(want_b)
    for name, value in want_b.items():  # bit for bit, through the .npz answer
        assert npz_answers["b"][name].dtype == value.dtype and np.array_equal(npz_answers["b"][name], value)
    # a wrong dtype, a wrong shape, a missing input: typed errors; the model still serves
    bad = [npz_frame("d", {**inputs["a"], "ids": inputs["a"]["ids"] + 0.5}),
           npz_frame("e", {**inputs["a"], "scale": np.ones((1, 2), np.float32)}),
           npz_frame("f", {"image": inputs["a"]["image"]}), npz_frame("g", inputs["a"])]
    for frame in bad:
        await service.on_message(frame)
    await service.serve_guarded(service.batcher.take())
    results = {b["requestId"]: b for b in (json.loads(d) for o, d, t, _ in recorder.sent
                                            if o == "results" and t == "application/json")}
    assert {m: results[m]["error"]["code"] for m in "def"} == {m: "RUNNER_INPUT_MISMATCH" for m in "def"}
    assert "input 'ids'" in results["d"]["error"]["message"] and "input 'scale'" in results["e"]["error"]["message"]
    assert results["g"]["error"] is None


async def test_metadata_is_on_the_handle_and_in_the_reported_properties(
        client: TeeClient, make_package, publisher: Publisher, device: Device) -> None:
    character = "".join(chr(0x4E00 + i) for i in range(6000))  # an OCR dictionary, 18 KB of UTF-8
    install(client, make_package(vision_model(character), package_id="vision"), publisher, device, name="vision")
    handle = client.load_model("vision")
    meta = client.model_metadata(handle)
    assert meta.custom == {"character": character, "task": "detect"} and meta.truncated == ()
    assert (meta.producer_name, meta.producer_version) == ("edb-tests", "1.2")
    assert meta.opsets == {"": 13} and meta.ir_version == 8
    assert meta.graph_name == "vision" and meta.name == "vision" and meta.version == "1.0.0"
    client.unload(handle)
    service = RunnerService(Recorder("vision"), client)
    await service.load_twin()
    await service.select()
    info = service.reported_patch()["modelInfo"]
    assert info["producer"] == "edb-tests 1.2" and info["opsets"] == [{"domain": "ai.onnx", "version": 13}]
    assert {m["key"]: m["chars"] for m in info["customMetadata"]} == {"character": 6000, "task": 6}
    assert [i["name"] for i in info["inputs"]] == ["image", "scale", "ids"]
    assert info["inputs"][0]["shape"] == [-1, 3, -1, -1]
    await service._unload(service.slot.swap(None))


async def test_oversized_metadata_is_bounded_and_listed(client: TeeClient, make_package, publisher: Publisher,
                                                        device: Device) -> None:
    install(client, make_package(vision_model("x" * (MAX_METADATA_VALUE + 1)), package_id="vision"),
            publisher, device, name="vision")
    handle = client.load_model("vision")
    meta = client.model_metadata(handle)
    assert meta.truncated == ("character",) and meta.custom == {"task": "detect"}
    client.unload(handle)
    with pytest.raises(Exception) as info:  # an unloaded handle has no metadata
        client.model_metadata(handle)
    assert getattr(info.value, "code", None) == "TEE_UNKNOWN_HANDLE"
