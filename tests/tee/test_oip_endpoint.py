"""The runner's Open Inference Protocol endpoint, end to end: a client nobody here wrote
(``tritonclient[http]``'s aiohttp client) against ``OipServer`` + ``RunnerService`` + the real TEE
service through ``TeeClient`` (shared-memory region for large tensors). Answers are compared with
ONNX Runtime in-process bit for bit; every lie in a request is a 4xx JSON error with a code and the
model keeps serving."""

from __future__ import annotations

import asyncio
import json
import random
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest
import tritonclient.http.aio as triton
from tee_helpers import Device, Publisher, install
from test_runner_real_models import vision_model
from test_string_tensors_runner import Recorder
from test_string_tensors_tee import string_model
from tritonclient.http import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from edb.ort import onnxruntime as ort
from edb.tee import TeeClient
from inference_runner.oip_server import OipServer
from inference_runner.service import RunnerService

pytestmark = pytest.mark.timeout(120)


@dataclass
class Endpoint:
    url: str  # host:port
    server: OipServer
    service: RunnerService
    recorder: Recorder


@pytest.fixture
async def endpoint(client: TeeClient, make_package, publisher: Publisher, device: Device) -> AsyncIterator[Endpoint]:
    install(client, make_package(vision_model(), package_id="vision"), publisher, device, name="vision")
    recorder = Recorder("vision")
    service = RunnerService(recorder, client)
    await service.load_twin()
    await service.select()
    loop = asyncio.create_task(service.batch_loop())
    server = OipServer(service, max_body_bytes=8 * 1024 * 1024, max_concurrency=2)
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    port = await server.start(host, 0)
    try:
        yield Endpoint(f"{host}:{port}", server, service, recorder)
    finally:
        await server.stop()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await service._unload(service.slot.swap(None))


def vision_inputs(n: int, h: int, w: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((n, 3, h, w), dtype=np.float32),
            "scale": rng.random((n, 1), dtype=np.float32), "ids": rng.integers(-9, 9, (n, 4))}


def triton_inputs(feeds: dict[str, np.ndarray], binary: bool) -> list[InferInput]:
    types = {np.float32: "FP32", np.int64: "INT64"}
    out = []
    for name, value in feeds.items():
        item = InferInput(name, list(value.shape), types[value.dtype.type])
        item.set_data_from_numpy(value, binary_data=binary)
        out.append(item)
    return out


async def test_tritonclient_health_metadata_and_bit_identical_inference(endpoint: Endpoint) -> None:
    reference = ort.InferenceSession(vision_model())
    client = triton.InferenceServerClient(endpoint.url)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("vision") and await client.is_model_ready("vision", "1.0.0")
        assert not await client.is_model_ready("other")
        meta = await client.get_model_metadata("vision")
        assert meta["versions"] == ["1.0.0"]
        assert meta["inputs"][0] == {"name": "image", "datatype": "FP32", "shape": [-1, 3, -1, -1]}
        assert meta["parameters"]["custom_metadata_map"] == {"character": "abc", "task": "detect"}
        # binary in and out (tritonclient's default), a 1.5 MiB image through the shared-memory region
        feeds = vision_inputs(2, 256, 256)
        result = await client.infer("vision", triton_inputs(feeds, binary=True), request_id="r-1")
        want = dict(zip(["pooled", "idsum", "map"], reference.run(None, feeds), strict=True))
        assert result.get_response()["id"] == "r-1" and result.get_response()["model_version"] == "1.0.0"
        for name, value in want.items():
            got = result.as_numpy(name)
            assert got.dtype == value.dtype and np.array_equal(got, value), name
        # JSON in and out, one output asked for, by version
        feeds = vision_inputs(1, 8, 12, seed=1)
        result = await client.infer("vision", triton_inputs(feeds, binary=False), model_version="1.0.0",
                                    outputs=[InferRequestedOutput("pooled", binary_data=False)])
        assert [o["name"] for o in result.get_response()["outputs"]] == ["pooled"]
        assert np.array_equal(result.as_numpy("pooled"), reference.run(["pooled"], feeds)[0])
        # a dtype the model does not take, an unknown model: typed errors the client understands
        wrong = [*triton_inputs({k: v for k, v in feeds.items() if k != "ids"}, True),
                 *triton_inputs({"ids": feeds["ids"].astype(np.float32)}, True)]
        wrong[-1] = InferInput("ids", [1, 4], "FP32")
        wrong[-1].set_data_from_numpy(feeds["ids"].astype(np.float32))
        with pytest.raises(InferenceServerException) as info:
            await client.infer("vision", wrong)
        assert info.value.status() == "400" and "input 'ids' is INT64" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            await client.infer("other", triton_inputs(feeds, True))
        assert info.value.status() == "404"
    finally:
        await client.close()
    # OIP requests are counted with the messages and answered in result messages (shapes, dtypes);
    # requests refused before they reach a batch (the dtype, the model) are the HTTP caller's answer
    results = endpoint.recorder.results()
    assert len(results) == 2 and all(r["error"] is None for r in results.values())
    ok = next(r for r in results.values() if r["error"] is None and r["tensors"]["map"]["shape"][0] == 2)
    assert ok["tensors"]["map"] == {"shape": [2, 3, 256, 256], "dtype": "float32"} and ok["outputs"] is None
    assert endpoint.service.stats.count == 2


def binary_request(inputs: list[tuple[str, str, list[int], bytes]], *, header_extra: dict | None = None,
                   sizes: list[int] | None = None, outputs_binary: bool = True) -> tuple[bytes, dict[str, str]]:
    header = {"inputs": [{"name": n, "datatype": t, "shape": s,
                          "parameters": {"binary_data_size": len(d) if sizes is None else sizes[i]}}
                         for i, (n, t, s, d) in enumerate(inputs)],
              "parameters": {"binary_data_output": outputs_binary}, **(header_extra or {})}
    head = json.dumps(header).encode()
    body = head + b"".join(d for *_, d in inputs)
    return body, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def good_parts(n: int = 1, h: int = 4, w: int = 4) -> list[tuple[str, str, list[int], bytes]]:
    feeds = vision_inputs(n, h, w)
    return [("image", "FP32", [n, 3, h, w], feeds["image"].tobytes()),
            ("scale", "FP32", [n, 1], feeds["scale"].tobytes()), ("ids", "INT64", [n, 4], feeds["ids"].tobytes())]


async def test_every_lie_in_a_request_is_a_4xx_with_a_code_and_the_model_keeps_serving(endpoint: Endpoint) -> None:
    base = f"http://{endpoint.url}/v2/models/vision/infer"
    parts = good_parts()
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = []
    body, headers = binary_request(parts, sizes=[len(parts[0][3]) - 4, len(parts[1][3]), len(parts[2][3]) + 4])
    cases.append(("size lies, total right", body, headers, 400, "RUNNER_OIP_BAD_REQUEST"))
    body, headers = binary_request([(parts[0][0], "FP32", [1, 3, 4, 5], parts[0][3]), *parts[1:]])
    cases.append(("shape lie", body, headers, 400, "RUNNER_OIP_BAD_REQUEST"))
    body, headers = binary_request([(parts[0][0], "FP64", [1, 3, 4, 2], parts[0][3]), *parts[1:]])
    cases.append(("dtype lie", body, headers, 400, "RUNNER_INPUT_MISMATCH"))
    body, headers = binary_request(parts)
    cases.append(("trailing bytes", body + b"\0" * 8, headers, 400, "RUNNER_OIP_BAD_REQUEST"))
    cases.append(("truncated data", body[:-8], headers, 400, "RUNNER_OIP_BAD_REQUEST"))
    past = {**headers, "Inference-Header-Content-Length": str(len(body) + 1)}
    cases.append(("header length past the body", body, past, 400, "RUNNER_OIP_BAD_REQUEST"))
    cases.append(("header length not a number", body, {**headers, "Inference-Header-Content-Length": "-1"},
                  400, "RUNNER_OIP_BAD_REQUEST"))
    cases.append(("header not JSON", b"{nope" + body, {**headers, "Inference-Header-Content-Length": "5"}, 400,
                  "RUNNER_OIP_BAD_REQUEST"))
    body, headers = binary_request([*parts, ("ids", "INT64", [1, 4], parts[2][3])])
    cases.append(("an input twice", body, headers, 400, "RUNNER_OIP_BAD_REQUEST"))
    body, headers = binary_request(parts[:2])
    cases.append(("a missing input", body, headers, 400, "RUNNER_INPUT_MISMATCH"))
    body, headers = binary_request([(parts[0][0], "FP32", [1, 3, 2**20, 2**20], parts[0][3]), *parts[1:]])
    cases.append(("element count above the limit", body, headers, 413, "RUNNER_TENSOR_TOO_LARGE"))
    nan = np.full((1, 3, 4, 4), np.nan, np.float32).tobytes()
    body, headers = binary_request([(parts[0][0], "FP32", [1, 3, 4, 4], nan), *parts[1:]])
    cases.append(("NaN", body, headers, 400, "RUNNER_INPUT_NOT_FINITE"))
    bools = json.dumps({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, "x"]}]})
    cases.append(("a string in INT64 JSON data", bools.encode(), {}, 400, "RUNNER_INPUT_MISMATCH"))
    flat = json.dumps({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3]}]})
    cases.append(("JSON element count lie", flat.encode(), {}, 400, "RUNNER_OIP_BAD_REQUEST"))
    cases.append(("oversized body", b"x" * (8 * 1024 * 1024 + 1), {}, 413, "RUNNER_OIP_TOO_LARGE"))
    async with aiohttp.ClientSession() as http:
        for what, body, headers, status, code in cases:
            async with http.post(base, data=body, headers=headers) as response:
                answer = await response.json()
                assert (response.status, answer.get("code")) == (status, code), (what, answer)
                assert isinstance(answer["error"], str) and answer["error"]
        for url, status in ((f"http://{endpoint.url}/v2/models/other/infer", 404),
                            (f"http://{endpoint.url}/v2/models/vision/versions/9.9.9/infer", 404)):
            body, headers = binary_request(parts)
            async with http.post(url, data=body, headers=headers) as response:
                assert response.status == status and (await response.json())["code"] == "RUNNER_OIP_UNKNOWN_MODEL"
        async with http.get(f"http://{endpoint.url}/v2/models/vision/versions/2/ready") as response:
            assert response.status == 404

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
            for _ in range(9):
                yield b"x" * (1024 * 1024)

        async with http.post(base, data=chunked()) as response:
            assert response.status == 413 and (await response.json())["code"] == "RUNNER_OIP_TOO_LARGE"
        # the twin's model while nothing serves: 503, not 404
        serving, endpoint.service.slot.active = endpoint.service.slot.active, None
        try:
            async with http.post(base, data=body, headers=headers) as response:
                assert response.status == 503 and (await response.json())["code"] == "RUNNER_OIP_NOT_READY"
            async with http.get(f"http://{endpoint.url}/v2/health/ready") as response:
                assert response.status == 503
        finally:
            endpoint.service.slot.active = serving
        refused = endpoint.service.reported_patch()["oip"]["refused"]
        assert refused["RUNNER_OIP_BAD_REQUEST"] >= 8 and refused["RUNNER_OIP_TOO_LARGE"] == 2
        # the model is untouched: a good request answers
        body, headers = binary_request(parts)
        async with http.post(base, data=body, headers=headers) as response:
            assert response.status == 200
            raw = await response.read()
            n = int(response.headers["Inference-Header-Content-Length"])
            header = json.loads(raw[:n])
            sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
            assert sum(sizes) == len(raw) - n


async def test_too_many_concurrent_requests_are_429(endpoint: Endpoint) -> None:
    endpoint.service.batcher.configure(64, 30.0)  # the first requests wait in the batcher: in flight
    body, headers = binary_request(good_parts())
    async with aiohttp.ClientSession() as http:
        async def post() -> int:
            async with http.post(f"http://{endpoint.url}/v2/models/vision/infer", data=body, headers=headers) as r:
                return r.status

        first = [asyncio.create_task(post()) for _ in range(2)]
        while endpoint.server.in_flight < 2:
            await asyncio.sleep(0.01)
        async with http.post(f"http://{endpoint.url}/v2/models/vision/infer", data=body, headers=headers) as r:
            assert r.status == 429 and (await r.json())["code"] == "RUNNER_OIP_BUSY"
        endpoint.service.batcher.configure(1, 0.0)
        endpoint.service._arrived.set()
        assert await asyncio.gather(*first) == [200, 200]


async def test_bytes_tensors_cross_in_binary_and_json(client: TeeClient, make_package, publisher: Publisher,
                                                      device: Device) -> None:
    install(client, make_package(string_model(), package_id="words"), publisher, device, name="words")
    service = RunnerService(Recorder("words"), client)
    await service.load_twin()
    await service.select()
    loop = asyncio.create_task(service.batch_loop())
    server = OipServer(service)
    port = await server.start("127.0.0.1", 0)
    triton_client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        text = np.array(["cat", "dög", "🐍", "x"], dtype=object)
        item = InferInput("text", [4], "BYTES")
        item.set_data_from_numpy(text, binary_data=True)
        result = await triton_client.infer("words", [item])
        assert result.as_numpy("code").tolist() == [1, 2, 3, -1]
        assert [v.decode() for v in result.as_numpy("echo")] == ["cat", "dög", "🐍", "x"]
        item.set_data_from_numpy(text, binary_data=False)
        result = await triton_client.infer("words", [item], outputs=[InferRequestedOutput("echo", binary_data=False)])
        assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("echo")] == list(text)
        # a BYTES element whose length runs past the data
        head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": 6}}]}).encode()
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{port}/v2/models/words/infer", data=head + struct.pack("<I", 99) + b"ab",
                headers={"Inference-Header-Content-Length": str(len(head))}) as response:
            assert response.status == 400 and "runs past" in (await response.json())["error"]
    finally:
        await triton_client.close()
        await server.stop()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await service._unload(service.slot.swap(None))
