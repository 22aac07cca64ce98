"""The Open Inference Protocol over gRPC, with tritonclient's gRPC client (nobody here wrote it)
against the real TEE: the same answers bit for bit, the same refusals with the same codes."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_grpc
from test_oip_endpoint import Endpoint, endpoint, vision_inputs  # noqa: F401 (the fixture)
from test_runner_real_models import vision_model
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from edb.ort import onnxruntime as ort
from inference_runner.oip_grpc import GrpcEndpoint

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def grpc_url(endpoint: Endpoint) -> AsyncIterator[str]:  # noqa: F811
    grpc_endpoint = GrpcEndpoint(endpoint.server)
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    port = await grpc_endpoint.start(host, 0)
    try:
        yield f"{host}:{port}"
    finally:
        await grpc_endpoint.stop()


def grpc_inputs(feeds: dict[str, np.ndarray]) -> list[InferInput]:
    types = {np.float32: "FP32", np.int64: "INT64"}
    out = []
    for name, value in feeds.items():
        item = InferInput(name, list(value.shape), types[value.dtype.type])
        item.set_data_from_numpy(value)
        out.append(item)
    return out


async def test_grpc_health_metadata_inference_and_refusals(grpc_url: str, endpoint: Endpoint) -> None:  # noqa: F811
    client = triton_grpc.InferenceServerClient(grpc_url)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("vision") and not await client.is_model_ready("other")
        meta = await client.get_model_metadata("vision", as_json=True)
        assert meta["versions"] == ["1.0.0"] and meta["inputs"][0]["datatype"] == "FP32"
        feeds = vision_inputs(2, 64, 48)
        result = await client.infer("vision", grpc_inputs(feeds), request_id="g-1",
                                    outputs=[InferRequestedOutput("map"), InferRequestedOutput("idsum")])
        reference = ort.InferenceSession(vision_model())
        want = dict(zip(["pooled", "idsum", "map"], reference.run(None, feeds), strict=True))
        assert result.get_response().id == "g-1"
        for name in ("map", "idsum"):
            got = result.as_numpy(name)
            assert got.dtype == want[name].dtype and np.array_equal(got, want[name])
        assert result.as_numpy("pooled") is None  # not asked for
        # the same lies, the same codes as REST
        wrong = grpc_inputs({**feeds, "ids": feeds["ids"].astype(np.float32)})
        with pytest.raises(InferenceServerException) as info:
            await client.infer("vision", wrong)
        assert "RUNNER_INPUT_MISMATCH" in info.value.message() and "input 'ids' is INT64" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            await client.infer("other", grpc_inputs(feeds))
        assert "RUNNER_OIP_UNKNOWN_MODEL" in info.value.message()
        nan = {**feeds, "image": np.full_like(feeds["image"], np.nan)}
        with pytest.raises(InferenceServerException) as info:
            await client.infer("vision", grpc_inputs(nan))
        assert "RUNNER_INPUT_NOT_FINITE" in info.value.message()
        # still serving
        result = await client.infer("vision", grpc_inputs(feeds), outputs=[InferRequestedOutput("pooled")])
        assert np.array_equal(result.as_numpy("pooled"), want["pooled"])
    finally:
        await client.close()
