"""The simulated sensor's frames: real digits, both encodings, settings from the twin."""

from __future__ import annotations

from edb.schemas import decode_json
from inference_runner.decode import decode_body
from inference_runner.signature import Limits, Signature, TensorSig, bind
from simulated_sensor.frames import FrameSource, SensorSettings


def test_frames_decode_in_the_runner_in_both_formats() -> None:
    source = FrameSource(seed=1)
    json_frame = source.next(SensorSettings())
    body = decode_json(json_frame.data)
    assert body["messageType"] == "frame" and body["label"] == json_frame.label and 0 <= json_frame.label <= 9
    digits = Signature((TensorSig("X", "float32", (None, 64)),), ())
    decoded = decode_body(json_frame.data, json_frame.content_type)
    assert bind(decoded.tensors, digits, Limits())["X"].shape == (1, 64) and decoded.label == json_frame.label
    npy = source.next(SensorSettings(format="npy", rows_per_message=4))
    decoded = decode_body(npy.data, npy.content_type)
    assert bind(decoded.tensors, digits, Limits())["X"].shape == (4, 64) and npy.sequence == 1
    assert source.sequence == 5


def test_settings_from_desired_ignore_bad_values() -> None:
    s = SensorSettings.from_desired({"intervalMs": 50, "enabled": False, "format": "npy", "rowsPerMessage": 2})
    assert s == SensorSettings(50, False, "npy", 2)
    bad = SensorSettings.from_desired({"intervalMs": "fast", "enabled": "yes", "format": "xml", "rowsPerMessage": 0},
                                      s)
    assert bad == s
