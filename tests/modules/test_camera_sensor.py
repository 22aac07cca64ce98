"""The camera module's images and OIP messages (pure parts; the module end to end: make demo-vision)."""

from __future__ import annotations

import json

import numpy as np
from camera_sensor.images import CameraSettings, FrameSource, to_tensor
from camera_sensor.oip_client import infer_request, read_outputs


def test_frames_are_text_images_upright_or_upside_down_and_preprocessed_for_the_classifier() -> None:
    source = FrameSource(seed=3)
    frames = [source.next() for _ in range(40)]
    assert {f.label for f in frames} == {0, 1}
    for f in frames[:5]:
        assert f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3
        assert f.image.min() < 100 < f.image.max()  # ink on a light background
    upright = next(f for f in frames if f.label == 0)
    x = to_tensor([f.image for f in frames])
    assert x.shape == (40, 3, 48, 192) and x.dtype == np.float32 and x.min() >= -1.0 and x.max() <= 1.0
    flipped = FrameSource(seed=3)  # the same draws, so the same text: flipping shows in the pixels
    assert not np.array_equal(upright.image, np.rot90(upright.image, 2))
    assert [g.text for g in (flipped.next() for _ in range(40))] == [f.text for f in frames]


def test_binary_request_and_answer_round_trip() -> None:
    x = np.arange(2 * 3 * 48 * 192, dtype=np.float32).reshape(2, 3, 48, 192)
    body, headers = infer_request(x, expected=1, request_id="r")
    n = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:n])
    assert header["inputs"][0]["parameters"]["binary_data_size"] == x.nbytes == len(body) - n
    assert header["parameters"] == {"binary_data_output": True, "expected": 1} and header["id"] == "r"
    scores = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    head = json.dumps({"outputs": [{"name": "s", "datatype": "FP32", "shape": [2, 2],
                                    "parameters": {"binary_data_size": 16}}]}).encode()
    out = read_outputs(head + scores.tobytes(), str(len(head)))
    assert np.array_equal(out["s"], scores)
    assert CameraSettings.from_desired({"camera": {"intervalMs": 5, "model": "m", "imagesPerRequest": 4}}) == \
        CameraSettings("m", 200, True, 4)
