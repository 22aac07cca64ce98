"""The runner's serving rules with a scripted TEE: stacking by signature, batch splits where the
outputs would not fit, limit errors that name the tensor, sampled results upstream, OIP requests
joining the batches. (The real TEE: tests/tee/test_runner_real_models.py, test_oip_endpoint.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from test_runner_service import FakeClient, FakeMessage

from edb.errors import TeeError
from edb.tee.types import ModelHandle, TensorSpec
from inference_runner.decode import DecodedInput, encode_npz
from inference_runner.model_slot import Loaded
from inference_runner.service import RunnerService

Feeds = Mapping[str, np.ndarray]


class ScriptedTee:
    """Records each call's feeds; answers with ``fn``; refuses calls whose outputs pass ``frame``
    bytes the way the TEE does (TEE_FRAME_TOO_LARGE)."""

    def __init__(self, fn: Callable[[Feeds], dict[str, np.ndarray]], frame: int | None = None) -> None:
        self.fn = fn
        self.frame = frame
        self.calls: list[dict[str, tuple[int, ...]]] = []

    def infer(self, handle: Any, feeds: Feeds) -> dict[str, np.ndarray]:
        self.calls.append({k: v.shape for k, v in feeds.items()})
        out = self.fn(feeds)
        if self.frame is not None and sum(a.nbytes for a in out.values()) > self.frame:
            raise TeeError("message of many bytes exceeds the frame limit", code="TEE_FRAME_TOO_LARGE")
        return out

    def unload(self, handle: Any) -> None:
        pass

    def list_installed(self) -> list[Any]:
        return [SimpleNamespace(name="m", version="1.0.0")]


def image_handle(out_shape: tuple[Any, ...] = (None, 1, None, None)) -> ModelHandle:
    return ModelHandle(7, "m", "1.0.0", (TensorSpec("x", "float32", ("n", 3, "h", "w")),
                                          TensorSpec("k", "int64", ("n", 1))),
                       (TensorSpec("map", "float32", out_shape),))


def setup(tee: ScriptedTee, handle: ModelHandle) -> tuple[RunnerService, FakeClient]:
    client = FakeClient()
    service = RunnerService(client, tee)
    service.slot.swap(Loaded(handle, "m", "1.0.0"))
    return service, client


def npz(mid: str, n: int, h: int, w: int) -> FakeMessage:
    feeds = {"x": np.ones((n, 3, h, w), np.float32), "k": np.arange(n, dtype=np.int64).reshape(n, 1)}
    return FakeMessage(mid, encode_npz(feeds), "application/x-npz")


def sigmoid_map(feeds: Feeds) -> dict[str, np.ndarray]:
    return {"map": feeds["x"][:, :1] * 0.5}


async def serve(service: RunnerService, messages: list[FakeMessage]) -> None:
    for m in messages:
        await service.on_message(m)
    while len(service.batcher):
        await service.serve_guarded(service.batcher.take())


async def test_requests_stack_by_shape_and_a_batch_is_split_where_outputs_would_not_fit() -> None:
    tee = ScriptedTee(sigmoid_map, frame=3 * 16 * 16 * 4)  # room for three 16x16 maps per call
    service, client = setup(tee, image_handle())
    service.batcher.configure(64, 0.0)
    await serve(service, [npz("a", 2, 16, 16), npz("b", 1, 8, 8), npz("c", 2, 16, 16), npz("d", 1, 16, 16)])
    results = client.results()
    assert all(results[m]["error"] is None for m in "abcd")
    assert results["c"]["tensors"]["map"]["shape"] == [2, 1, 16, 16]
    # a, c, d stack (same H x W); the first try is too large for the frame and is split in halves,
    # then the learned bytes per row keep later batches under the limit without a refusal
    assert tee.calls[0]["x"][0] == 5 and {c["x"][0] for c in tee.calls[1:]} <= {1, 2, 3}
    assert service.split_batches >= 1
    calls_before = len(tee.calls)
    await serve(service, [npz("e", 2, 16, 16), npz("f", 2, 16, 16)])
    assert [c["x"][0] for c in tee.calls[calls_before:]] == [2, 2]  # split before the call, no refusal
    assert client.results()["f"]["error"] is None


async def test_an_input_whose_outputs_cannot_fit_is_refused_naming_the_output() -> None:
    tee = ScriptedTee(sigmoid_map, frame=1000)
    service, client = setup(tee, image_handle())
    await serve(service, [npz("a", 1, 32, 32)])
    error = client.results()["a"]["error"]
    assert error["code"] == "RUNNER_TENSOR_TOO_LARGE" and "output(s) 'map'" in error["message"]
    # with fixed output dimensions the runner refuses before inference, naming the output
    tee = ScriptedTee(lambda f: {"map": np.zeros((len(f["x"]), 1, 1024, 1024), np.float32)})
    service, client = setup(tee, image_handle((None, 1, 1024, 1024)))
    service.limits = type(service.limits)(max_output_bytes=5 * 1024 * 1024)  # one 4 MiB map
    await serve(service, [npz("b", 1, 4, 4), npz("c", 3, 4, 4)])
    results = client.results()
    assert results["b"]["error"] is None and len(tee.calls) == 1
    assert results["c"]["error"]["code"] == "RUNNER_TENSOR_TOO_LARGE"
    assert "output 'map'" in results["c"]["error"]["message"] and "maxOutputBytes" in results["c"]["error"]["message"]


async def test_results_upstream_follow_the_sampled_fraction() -> None:
    service, client = setup(ScriptedTee(sigmoid_map), image_handle())
    await service.on_desired_patch({"results": {"upstreamFraction": 0.5}, "model": {"name": "m"}})
    assert service.desired_error is None
    ids = [f"m{i}" for i in range(40)]
    await serve(service, [npz(i, 1, 2, 2) for i in ids])
    upstream = [s for s in client.sent if s.output == "resultsUpstream"]
    chosen = {i for i in ids if service.result_settings.upstream(i)}
    assert {s.body["requestId"] for s in upstream} == chosen and 0 < len(chosen) < 40
    assert all(s.properties["messageType"] == "result" for s in upstream)
    assert len([s for s in client.sent if s.output == "results"]) == 40
    await service.on_desired_patch({"results": {"upstreamFraction": "all"}})
    assert service.desired_error is not None and service.desired_error.code == "RUNNER_INVALID_DESIRED"
    assert service.result_settings.upstream_fraction == 0.5  # a bad patch keeps the last good setting
    assert service.reported_patch()["results"] == {"upstreamFraction": 0.5}


async def test_oip_requests_join_the_message_batches_and_get_arrays() -> None:
    tee = ScriptedTee(sigmoid_map)
    service, client = setup(tee, image_handle())
    service.batcher.configure(64, 0.0)
    await service.on_message(npz("msg", 1, 4, 4))
    future = service.submit("oip-1", DecodedInput({"x": np.ones((2, 3, 4, 4), np.float32),
                                                   "k": np.zeros((2, 1), np.int64)}))
    bad = service.submit("oip-2", DecodedInput({"x": np.ones((1, 3, 4, 4), np.float32)}))
    await service.serve_guarded(service.batcher.take())
    assert tee.calls == [{"x": (3, 3, 4, 4), "k": (3, 1)}]  # one TEE call for the message and the OIP request
    reply = future.result()
    assert reply.error is None and reply.answer is not None and reply.answer.arrays["map"].shape == (2, 1, 4, 4)
    assert bad.result().error is not None and bad.result().error.code == "RUNNER_INPUT_MISMATCH"
    results = client.results()
    assert results["oip-1"]["tensors"]["map"]["shape"] == [2, 1, 4, 4] and results["oip-1"]["outputs"] is None
    assert results["msg"]["outputs"]["map"] == [[[[0.5] * 4] * 4]]
    assert service.stats.count == 3 and service.stats.errors == 1
    assert not [s for s in client.sent if s.output == "resultsUpstream"]  # upstreamFraction 0 by default
    # sampled upstream, an OIP answer's values travel (listed, or summarised when large)
    await service.on_desired_patch({"results": {"upstreamFraction": 1.0}})
    future = service.submit("oip-3", DecodedInput({"x": np.ones((1, 3, 4, 4), np.float32),
                                                   "k": np.zeros((1, 1), np.int64)}))
    await service.serve_guarded(service.batcher.take())
    assert future.result().error is None
    upstream = [s.body for s in client.sent if s.output == "resultsUpstream"]
    assert len(upstream) == 1 and upstream[0]["outputs"]["map"] == [[[[0.5] * 4] * 4]]
    assert client.results()["oip-3"]["outputs"] is None  # the reporter's copy: shapes and dtypes only
    assert json.dumps(service.reported_patch())  # the reported properties stay JSON


async def test_a_request_too_large_for_the_tee_is_refused_naming_the_input() -> None:
    def refuse(feeds: Feeds) -> dict[str, np.ndarray]:
        raise TeeError("message of 40000000 bytes exceeds the frame limit", code="TEE_FRAME_TOO_LARGE")

    tee = ScriptedTee(refuse)
    service, client = setup(tee, image_handle())
    service.limits = type(service.limits)(max_input_bytes=64 * 1024 * 1024, max_elements=64 * 1024 * 1024)
    big = {"x": np.ones((1, 3, 2048, 1400), np.float32), "k": np.zeros((1, 1), np.int64)}  # 34 MB
    future = service.submit("big", DecodedInput(big))
    await service.serve_guarded(service.batcher.take())
    error = future.result().error
    assert error is not None and error.code == "RUNNER_TENSOR_TOO_LARGE" and error.message.startswith("input 'x'")
    assert client.results()["big"]["error"]["code"] == "RUNNER_TENSOR_TOO_LARGE"  # and its result message


def test_oip_listen_settings_are_parsed_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    from inference_runner.main import oip_settings
    from inference_runner.oip_server import parse_listen

    assert parse_listen("127.1.2.3:8000") == ("127.1.2.3", 8000)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8000", "host:", ":80", "host:http", "host:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    monkeypatch.delenv("EDB_OIP_LISTEN", raising=False)
    assert oip_settings()[0] is None  # unset: no endpoint
    monkeypatch.setenv("EDB_OIP_LISTEN", "0.0.0.0:8000")
    monkeypatch.setenv("EDB_OIP_MAX_CONCURRENCY", "0")
    with pytest.raises(ValueError):
        oip_settings()
    monkeypatch.setenv("EDB_OIP_MAX_CONCURRENCY", "4")
    assert oip_settings() == (("0.0.0.0", 8000), 64 * 1024 * 1024, 4)
