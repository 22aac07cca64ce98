"""String labels from the real TEE reach the inference runner's results message as JSON strings.

The runner module's logic (``RunnerService``) runs against the real TEE service through the real
``TeeClient``; only the IoT Edge module client is a recorder (the message bytes it records are
exactly what the SDK would send)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from tee_helpers import Device, Publisher, install
from test_string_tensors_tee import classifier

from edb.tee import TeeClient
from inference_runner.service import RunnerService

pytestmark = pytest.mark.timeout(120)


@dataclass
class Frame:
    message_id: str
    data: bytes
    content_type: str = "application/json"
    input_name: str = "frames"
    custom_properties: dict[str, str] = field(default_factory=dict)


class Recorder:
    """The module client's side the runner uses: twin in, messages out (raw bytes kept)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.sent: list[tuple[str, bytes, str | None, str | None]] = []

    async def get_twin(self) -> dict[str, Any]:
        return {"desired": {"$version": 1, "model": {"name": self.model}}, "reported": {}}

    async def patch_twin_reported_properties(self, patch: dict[str, Any]) -> None:
        pass

    async def send_message_to_output(self, message: Any, output: str) -> None:
        self.sent.append((output, bytes(message.data), message.content_type, message.content_encoding))

    def results(self) -> dict[str, dict[str, Any]]:
        out = {}
        for output, data, content_type, encoding in self.sent:
            if output == "results":
                assert content_type == "application/json" and encoding == "utf-8"
                body = json.loads(data.decode("utf-8"))
                out[body["requestId"]] = body
        return out


async def serve(client: TeeClient, name: str, frames: list[Frame]) -> Recorder:
    recorder = Recorder(name)
    service = RunnerService(recorder, client)
    await service.load_twin()
    await service.select()
    assert service.slot.active is not None, service.report
    for frame in frames:
        await service.on_message(frame)
    while len(service.batcher):  # batches of up to maxBatch rows, each one TEE call
        await service.serve_guarded(service.batcher.take())
    await service.select()  # nothing changed: keeps serving
    return recorder


@pytest.mark.parametrize("zipmap", [False, True])
async def test_string_labels_reach_the_results_message(client: TeeClient, make_package, publisher: Publisher,
                                                       device: Device, zipmap: bool) -> None:
    model, clf, x = classifier(zipmap=zipmap)
    install(client, make_package(model, package_id="animals"), publisher, device, name="animals")
    rows = {"a": x[:1], "b": x[1:4], "c": x[4:12]}
    frames = [Frame(mid, json.dumps({"input": r.tolist()}).encode()) for mid, r in rows.items()]
    results = (await serve(client, "animals", frames)).results()
    assert set(results) == set(rows)
    for mid, r in rows.items():
        body = results[mid]
        assert body["error"] is None
        assert body["predictions"] == clf.predict(r).tolist()  # type: ignore[attr-defined]
        assert all(isinstance(p, str) for p in body["predictions"])
        if zipmap:  # the ZipMap output never crosses the boundary: labels only
            assert body["scores"] is None and body["outputs"] is None
        else:
            want = np.round(clf.predict_proba(r).max(axis=1), 4).tolist()  # type: ignore[attr-defined]
            np.testing.assert_allclose(body["scores"], want, atol=2e-4)
    labels = {p for body in results.values() for p in body["predictions"]}
    assert labels - {"cat", ""}, "the sample should include a non-ASCII label"
