"""Frames from the 8x8 digits data set that ships inside scikit-learn (nothing is downloaded).

Pure apart from loading the bundled data: :class:`FrameSource` cycles through the images in a
seeded shuffled order and encodes them as JSON (``{"input": [[64 values]], "label": n}``) or as a
NumPy ``.npy`` tensor (content type ``application/x-npy``; the label then travels as an
application property).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edb.schemas import CONTENT_TYPE_JSON, CONTENT_TYPE_NPY, Frame, encode_json


@dataclass(frozen=True)
class SensorSettings:
    interval_ms: int = 200
    enabled: bool = True
    format: str = "json"  # or "npy"
    rows_per_message: int = 1

    @classmethod
    def from_desired(cls, desired: Mapping[str, Any], current: SensorSettings | None = None) -> SensorSettings:
        base = current or cls()
        interval = desired.get("intervalMs", base.interval_ms)
        enabled = desired.get("enabled", base.enabled)
        fmt = desired.get("format", base.format)
        rows = desired.get("rowsPerMessage", base.rows_per_message)
        return cls(
            interval_ms=interval if isinstance(interval, int) and not isinstance(interval, bool)
            and 10 <= interval <= 3_600_000 else base.interval_ms,
            enabled=enabled if isinstance(enabled, bool) else base.enabled,
            format=fmt if fmt in ("json", "npy") else base.format,
            rows_per_message=rows if isinstance(rows, int) and not isinstance(rows, bool)
            and 1 <= rows <= 64 else base.rows_per_message,
        )


@dataclass(frozen=True)
class EncodedFrame:
    data: bytes
    content_type: str
    label: int
    sequence: int


class FrameSource:
    def __init__(self, seed: int = 7) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.default_rng(seed).permutation(len(digits.target))
        self.images = digits.data[order].astype(np.float32)
        self.labels = digits.target[order].astype(int)
        self.sequence = 0

    def next(self, settings: SensorSettings) -> EncodedFrame:
        start = self.sequence % len(self.labels)
        index = [(start + i) % len(self.labels) for i in range(settings.rows_per_message)]
        rows, label = self.images[index], int(self.labels[index[0]])
        sequence = self.sequence
        self.sequence += settings.rows_per_message
        if settings.format == "npy":
            buffer = io.BytesIO()
            np.save(buffer, rows, allow_pickle=False)
            return EncodedFrame(buffer.getvalue(), CONTENT_TYPE_NPY, label, sequence)
        frame = Frame(rows.tolist(), label if settings.rows_per_message == 1 else None, sequence)
        return EncodedFrame(encode_json(frame.to_json()), CONTENT_TYPE_JSON, label, sequence)
