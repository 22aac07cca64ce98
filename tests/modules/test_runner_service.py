"""RunnerService logic with a fake module client and a fake TEE (pure logic: no sockets).

Every input gets exactly one answer whatever the model returns (a classifier, a regressor, several
outputs, strings, NaN, outputs that cannot be split), the batch loop survives any per-batch
failure, and a loop that ends anyway is reported and makes ``run`` raise (the process exits
non-zero).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edb.errors import TeeError
from edb.tee.types import ModelHandle, TensorSpec
from inference_runner.model_slot import Loaded
from inference_runner.outputs import OutputError, split_answers
from inference_runner.service import RunnerFailed, RunnerService

pytestmark = pytest.mark.timeout(30)

Outputs = Callable[[np.ndarray], Mapping[str, Any]]


@dataclass
class FakeMessage:
    message_id: str
    data: bytes
    content_type: str = "application/json"
    input_name: str = "frames"
    custom_properties: dict[str, str] = field(default_factory=dict)


@dataclass
class Sent:
    output: str
    body: dict[str, Any]
    properties: dict[str, str]
    correlation_id: str | None


class FakeClient:
    """Records what the runner sends; refuses oversized messages with ValueError as the SDK does
    (``Message.get_size()`` counts the body and the properties)."""

    def __init__(self, sdk_limit: int = 262_144) -> None:
        self.sdk_limit = sdk_limit
        self.sent: list[Sent] = []
        self.reported: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def get_twin(self) -> dict[str, Any]:
        return {"desired": {"$version": 1, "model": {"name": "m"}}, "reported": {}}

    async def patch_twin_reported_properties(self, patch: dict[str, Any]) -> None:
        self.reported.append(patch)

    async def send_message_to_output(self, message: Any, output: str) -> None:
        if message.get_size() > self.sdk_limit:
            raise ValueError("Size of message can not exceed 256 KB.")
        self.sent.append(Sent(output, json.loads(message.data), dict(message.custom_properties),
                              message.correlation_id))
        self.arrived.set()

    def results(self) -> dict[str, dict[str, Any]]:
        return {s.body["requestId"]: s.body for s in self.sent if s.output == "results"}


class FakeTee:
    def __init__(self, outputs: Outputs) -> None:
        self.outputs = outputs
        self.calls: list[tuple[int, ...]] = []

    def infer(self, handle: Any, feeds: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        (tensor,) = feeds.values()
        self.calls.append(tensor.shape)
        return self.outputs(tensor)

    def unload(self, handle: Any) -> None:
        pass

    def list_installed(self) -> list[Any]:
        return [SimpleNamespace(name="m", version="1.0.0")]


def handle(width: int | str | None = 4, outputs: tuple[str, ...] = ("label", "probabilities"),
           dtype: str = "float32") -> ModelHandle:
    return ModelHandle(7, "m", "1.0.0", (TensorSpec("X", dtype, (None, width)),),
                       tuple(TensorSpec(o, "float32", (None,)) for o in outputs))


def make(outputs: Outputs, model: ModelHandle | None = None) -> tuple[RunnerService, FakeClient, FakeTee]:
    client, tee = FakeClient(), FakeTee(outputs)
    service = RunnerService(client, tee)
    service.slot.swap(Loaded(model or handle(), "m", "1.0.0"))
    return service, client, tee


def frame(mid: str, rows: list[list[float]], label: int | None = None) -> FakeMessage:
    return FakeMessage(mid, json.dumps({"input": rows, "label": label}).encode())


async def serve_all(service: RunnerService, messages: list[FakeMessage]) -> None:
    for message in messages:
        await service.on_message(message)
    await service.serve_guarded(service.batcher.take())


def classifier(x: np.ndarray) -> dict[str, Any]:
    labels = x[:, 0].astype(np.int64)
    probabilities = np.full((len(x), 3), 0.1, dtype=np.float32)
    probabilities[:, 0] = 0.8
    return {"label": labels, "probabilities": probabilities}


async def test_classifier_labels_and_scores_per_input() -> None:
    service, client, tee = make(classifier)
    await serve_all(service, [frame("a", [[1, 0, 0, 0]], label=1), frame("b", [[2, 0, 0, 0], [5, 0, 0, 0]])])
    results = client.results()
    assert tee.calls == [(3, 4)]  # one TEE call for the batch
    assert results["a"]["predictions"] == [1] and results["a"]["scores"] == [0.8] and results["a"]["expected"] == 1
    assert results["b"]["predictions"] == [2, 5] and results["b"]["outputs"] is None
    assert all(s.correlation_id == s.body["requestId"] and s.properties["ok"] == "true" for s in client.sent)


async def test_string_labels_are_answered_as_strings() -> None:
    names = np.array(["cat", "dog", "eel"], dtype=object)
    service, client, _ = make(lambda x: {"label": names[x[:, 0].astype(int)],
                                         "probabilities": np.eye(3, dtype=np.float32)[x[:, 0].astype(int)]})
    await serve_all(service, [frame("a", [[2, 0, 0, 0]]), frame("b", [[0, 0, 0, 0], [1, 0, 0, 0]])])
    results = client.results()
    assert results["a"]["predictions"] == ["eel"] and results["b"]["predictions"] == ["cat", "dog"]
    assert results["b"]["scores"] == [1.0, 1.0] and results["a"]["error"] is None


async def test_regressor_answers_plain_tensors() -> None:
    service, client, _ = make(lambda x: {"variable": x.sum(axis=1, keepdims=True) / 2},
                              handle(outputs=("variable",)))
    await serve_all(service, [frame("a", [[1, 2, 3, 4]]), frame("b", [[0, 0, 0, 1], [1, 1, 1, 1]])])
    results = client.results()
    assert results["a"]["predictions"] is None and results["a"]["outputs"] == {"variable": [[5.0]]}
    assert results["b"]["outputs"] == {"variable": [[0.5], [2.0]]}


async def test_multi_output_model_is_split_per_input_and_output() -> None:
    def outputs(x: np.ndarray) -> dict[str, Any]:
        return {"embedding": x[:, :2], "norm": np.linalg.norm(x, axis=1).astype(np.float32),
                "bucket": (x[:, 0] > 1).astype(np.int64), "tag": np.array([f"r{int(v)}" for v in x[:, 0]])}

    service, client, _ = make(outputs, handle(outputs=("embedding", "norm", "bucket", "tag")))
    await serve_all(service, [frame("a", [[3, 4, 0, 0]]), frame("b", [[0, 1, 0, 0], [2, 0, 0, 0]])])
    results = client.results()
    assert results["a"]["outputs"] == {"embedding": [[3.0, 4.0]], "norm": [5.0], "bucket": [1], "tag": ["r3"]}
    assert results["b"]["outputs"] == {"embedding": [[0.0, 1.0], [2.0, 0.0]], "norm": [1.0, 2.0],
                                       "bucket": [0, 1], "tag": ["r0", "r2"]}


async def test_nan_fails_only_the_input_it_belongs_to() -> None:
    def outputs(x: np.ndarray) -> dict[str, Any]:
        y = x[:, :1].copy()
        y[x[:, 0] == 9] = np.nan
        return {"variable": y}

    service, client, _ = make(outputs, handle(outputs=("variable",)))
    await serve_all(service, [frame("a", [[1, 0, 0, 0]]), frame("b", [[2, 0, 0, 0], [9, 0, 0, 0]]),
                              frame("c", [[3, 0, 0, 0]])])
    results = client.results()
    assert results["b"]["error"]["code"] == "RUNNER_OUTPUT_NOT_FINITE" and results["b"]["outputs"] is None
    assert results["b"]["model"] == {"name": "m", "version": "1.0.0"}
    assert results["a"]["outputs"] == {"variable": [[1.0]]} and results["c"]["outputs"] == {"variable": [[3.0]]}
    assert [s.properties["ok"] for s in client.sent] == ["true", "false", "true"]
    # the same for a classifier's probabilities
    service, client, _ = make(lambda x: {"label": np.zeros(len(x), np.int64),
                                         "probabilities": np.full((len(x), 2), np.inf, np.float32)})
    await serve_all(service, [frame("d", [[1, 0, 0, 0]])])
    assert client.results()["d"]["error"]["code"] == "RUNNER_OUTPUT_NOT_FINITE"


async def test_mixed_input_widths_for_a_dynamic_model_are_served_separately() -> None:
    service, client, tee = make(lambda x: {"variable": x.sum(axis=1)}, handle(width="features", outputs=("variable",)))
    await serve_all(service, [frame("a", [[1, 1, 1]]), frame("b", [[1, 1, 1, 1, 1]]), frame("c", [[2, 2, 2]])])
    results = client.results()
    assert sorted(tee.calls) == [(1, 5), (2, 3)]
    assert {k: v["outputs"]["variable"] for k, v in results.items()} == {"a": [3.0], "b": [5.0], "c": [6.0]}
    assert [s.body["requestId"] for s in client.sent] == ["a", "b", "c"]  # answers keep arrival order


async def test_outputs_that_cannot_be_split_are_served_one_input_at_a_time() -> None:
    service, client, tee = make(lambda x: {"total": np.float32(x.sum())}, handle(outputs=("total",)))
    await serve_all(service, [frame("a", [[1, 0, 0, 0]]), frame("b", [[2, 0, 0, 0]])])
    assert tee.calls == [(2, 4), (1, 4), (1, 4)]
    assert {k: v["outputs"] for k, v in client.results().items()} == {"a": {"total": [1.0]}, "b": {"total": [2.0]}}


async def test_tee_errors_and_unexpected_exceptions_answer_every_input() -> None:
    def broken(x: np.ndarray) -> dict[str, Any]:
        raise RuntimeError("reply rebuilt wrong")

    service, client, _ = make(broken)
    await serve_all(service, [frame("a", [[1, 0, 0, 0]]), frame("b", [[1, 0, 0, 0]])])
    assert {k: v["error"]["code"] for k, v in client.results().items()} == {"a": "RUNNER_INFER_FAILED",
                                                                            "b": "RUNNER_INFER_FAILED"}

    def refused(x: np.ndarray) -> dict[str, Any]:
        raise TeeError("wrong input", code="TEE_INPUT_INVALID")

    service, client, _ = make(refused)
    await serve_all(service, [frame("c", [[1, 0, 0, 0]])])
    assert client.results()["c"]["error"]["code"] == "TEE_INPUT_INVALID"


async def test_outputs_without_a_json_form_are_error_answers_and_large_outputs_are_summarised() -> None:
    service, client, _ = make(lambda x: {"z": np.ones(len(x), dtype=np.complex64)}, handle(outputs=("z",)))
    await serve_all(service, [frame("a", [[1, 0, 0, 0]])])
    assert client.results()["a"]["error"]["code"] == "RUNNER_OUTPUT_INVALID"
    # an output too large to list is summarised, never dropped: shape, dtype, min/max/mean, top values
    big = np.zeros((1, 70_000), dtype=np.float32)
    big[0, 12_345] = 7.5
    service, client, _ = make(lambda x: {"big": big, "small": x[:, :2]}, handle(outputs=("big", "small")))
    await serve_all(service, [frame("b", [[1, 0, 0, 0]])])
    result = client.results()["b"]
    assert result["error"] is None and client.sent[0].properties["ok"] == "true"
    assert result["outputs"] == {"small": [[1.0, 0.0]]}
    summary = result["summaries"]["big"]
    assert summary["shape"] == [1, 70_000] and summary["dtype"] == "float32" and summary["max"] == 7.5
    assert summary["top"][0] == [12_345, 7.5] and summary["min"] == 0.0
    assert result["tensors"] == {"big": {"shape": [1, 70_000], "dtype": "float32"},
                                 "small": {"shape": [1, 2], "dtype": "float32"}}


async def test_answers_over_the_message_limit_are_summarised_to_fit_and_sdk_refusals_are_answered() -> None:
    # three listable outputs that together pass 256 KB: the largest are summarised until the answer fits
    rng = np.random.default_rng(1)
    values = {f"v{i}": rng.random((1, 8000 + i), dtype=np.float64) for i in range(3)}
    service, client, _ = make(lambda x: values, handle(outputs=tuple(values)))
    await asyncio.wait_for(serve_all(service, [frame("a", [[1, 0, 0, 0]])]), 5)
    result = client.results()["a"]
    assert result["error"] is None
    assert set(result["summaries"]) >= {"v2"} and set(result["outputs"]) | set(result["summaries"]) == set(values)
    assert len(json.dumps(result)) < 256 * 1024 - 4096
    # whatever the SDK refuses as a ValueError is answered with an error instead of being retried forever
    service, client, _ = make(lambda x: {"v": np.ones((len(x), 400), dtype=np.float32)}, handle(outputs=("v",)))
    client.sdk_limit = 1500
    await asyncio.wait_for(serve_all(service, [frame("b", [[1, 0, 0, 0]]), frame("c", [[1, 0, 0, 0]])]), 5)
    assert [(k, v["error"]["code"]) for k, v in client.results().items()] == [("b", "RUNNER_RESULT_TOO_LARGE"),
                                                                           ("c", "RUNNER_RESULT_TOO_LARGE")]
    assert service.stats.errors == 2


async def test_model_input_dtype_is_honoured() -> None:
    seen: list[np.dtype[Any]] = []

    def outputs(x: np.ndarray) -> dict[str, Any]:
        seen.append(x.dtype)
        return {"variable": x[:, :1]}

    service, client, _ = make(outputs, handle(outputs=("variable",), dtype="float64"))
    await serve_all(service, [frame("a", [[1.5, 0, 0, 0]])])
    service, client2, _ = make(outputs, handle(outputs=("variable",), dtype="int64"))
    await serve_all(service, [frame("b", [[2, 0, 0, 0]]), frame("c", [[2.5, 0, 0, 0]])])
    assert seen == [np.dtype("float64"), np.dtype("int64")]
    assert client.results()["a"]["outputs"] == {"variable": [[1.5]]}
    assert client2.results()["b"]["outputs"] == {"variable": [[2]]}
    assert client2.results()["c"]["error"]["code"] == "RUNNER_INPUT_MISMATCH"


async def test_binary_input_label_property_and_undecodable_inputs_are_answered() -> None:
    service, client, _ = make(classifier)
    buf = io.BytesIO()
    np.save(buf, np.array([[4, 0, 0, 0]], dtype=np.float32))
    await service.on_message(FakeMessage("npy", buf.getvalue(), "application/x-npy", custom_properties={"label": "4"}))
    await service.on_message(FakeMessage("none", None, "application/json"))  # type: ignore[arg-type]
    await service.serve_guarded(service.batcher.take())
    results = client.results()
    assert results["npy"]["predictions"] == [4] and results["npy"]["expected"] == 4
    assert results["none"]["error"]["code"] == "RUNNER_BAD_INPUT"


async def test_a_failing_batch_is_answered_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    service, client, _ = make(classifier)
    original = service._infer
    calls = 0

    async def infer_once_broken(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug in the runner")
        return await original(*args, **kwargs)

    service._infer = infer_once_broken  # type: ignore[method-assign]
    loop = asyncio.create_task(service.batch_loop())
    try:
        await service.on_message(frame("a", [[1, 0, 0, 0]]))
        await _until(lambda: "a" in client.results())
        await service.on_message(frame("b", [[2, 0, 0, 0]]))
        await _until(lambda: "b" in client.results())
    finally:
        loop.cancel()
    results = client.results()
    assert results["a"]["error"]["code"] == "RUNNER_INTERNAL" and results["b"]["predictions"] == [2]
    assert not loop.done() or loop.cancelled()
    assert service.reported_patch()["stats"]["failedBatches"] == 1
    assert "serving a batch" in caplog.text


async def test_a_loop_that_ends_is_reported_answers_what_is_queued_and_fails_run(
        caplog: pytest.LogCaptureFixture) -> None:
    service, client, _ = make(classifier)

    async def crashing_loop() -> None:
        await service.on_message(frame("queued", [[1, 0, 0, 0]]))
        raise RuntimeError("batcher corrupted")

    service.batch_loop = crashing_loop  # type: ignore[method-assign]
    caplog.set_level(logging.CRITICAL, logger="inference_runner")
    with pytest.raises(RunnerFailed) as failed:
        await asyncio.wait_for(service.run(asyncio.Event()), 10)
    assert failed.value.code == "RUNNER_LOOP_FAILED"
    model = client.reported[-1]["model"]
    assert model["state"] == "failed" and model["error"]["code"] == "RUNNER_LOOP_FAILED"
    assert client.results()["queued"]["error"]["code"] == "RUNNER_LOOP_FAILED"
    assert "batch_loop stopped (RuntimeError)" in caplog.text


async def test_a_graceful_stop_answers_everything_and_does_not_fail() -> None:
    service, client, _ = make(classifier)
    service.batcher.configure(100, 10.0)  # would wait 10 s for more rows
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    await asyncio.sleep(0.05)
    await service.on_message(frame("a", [[1, 0, 0, 0]]))
    stop.set()
    await asyncio.wait_for(running, 10)
    assert client.results()["a"]["predictions"] == [1]


def test_split_answers_rules() -> None:
    # a 0-d output belongs to the single input whole; a ragged object output has no JSON form
    assert split_answers({"t": np.float32(2.0)}, [3])[0].outputs == {"t": [2.0]}  # type: ignore[union-attr]
    with pytest.raises(OutputError):
        split_answers({"t": np.array([object()], dtype=object)}, [1])
    with pytest.raises(OutputError):
        split_answers({}, [1])
    # a label that is not one value per row is a plain output, not a classifier
    answer = split_answers({"label": np.ones((2, 3), np.float32)}, [2])[0]
    assert answer.predictions is None and answer.outputs == {"label": [[1.0] * 3] * 2}  # type: ignore[union-attr]
    answer = split_answers({"label": np.array([b"x", b"y"])}, [2])[0]
    assert answer.predictions == ["x", "y"]  # type: ignore[union-attr]


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
