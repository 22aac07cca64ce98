"""Camera frames: real text images rendered with Pillow, upright or upside down (pure).

Each frame is a line of text drawn with Pillow's bundled font on a light background with a little
noise, rotated by 180 degrees for about half of them; ``label`` is the orientation (0 upright,
1 upside down), which a text orientation classifier (PaddleOCR's ``ch_ppocr_mobile_v2.0_cls``)
should find. :func:`to_tensor` is that model's preprocessing: height 48, width up to 192 keeping the
aspect ratio, (x / 255 - 0.5) / 0.5, zero padding to 192, float32 NCHW.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

WORDS = ("ENCLAVE", "DEVICE", "Blueprint", "confidential", "model 2026", "IoT Edge", "tensor", "camera 7",
         "TEE sealed", "ONNX", "inference", "package v1.0", "hello world", "edge AI")
HEIGHT, WIDTH = 48, 192


@dataclass(frozen=True)
class CameraSettings:
    model: str = "textorient"
    interval_ms: int = 200
    enabled: bool = True
    images_per_request: int = 1

    @classmethod
    def from_desired(cls, desired: Mapping[str, Any], current: CameraSettings | None = None) -> CameraSettings:
        base = current or cls()
        doc = desired.get("camera") if isinstance(desired.get("camera"), Mapping) else {}
        model = doc.get("model", base.model)
        interval = doc.get("intervalMs", base.interval_ms)
        enabled = doc.get("enabled", base.enabled)
        per = doc.get("imagesPerRequest", base.images_per_request)
        return cls(
            model=model if isinstance(model, str) and 0 < len(model) <= 64 else base.model,
            interval_ms=interval if isinstance(interval, int) and not isinstance(interval, bool)
            and 10 <= interval <= 3_600_000 else base.interval_ms,
            enabled=enabled if isinstance(enabled, bool) else base.enabled,
            images_per_request=per if isinstance(per, int) and not isinstance(per, bool) and 1 <= per <= 64
            else base.images_per_request)


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # uint8 H x W x 3
    label: int  # 0 upright, 1 upside down
    text: str


def render(text: str, upside_down: bool, rng: random.Random) -> Frame:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=rng.randint(26, 34))
    left, top, right, bottom = font.getbbox(text)
    w, h = right - left + 16, bottom - top + 12
    shade = rng.randint(200, 255)
    image = Image.new("RGB", (w, h), (shade, shade, shade - rng.randint(0, 30)))
    ink = rng.randint(0, 60)
    ImageDraw.Draw(image).text((8 - left, 6 - top), text, fill=(ink, ink, ink), font=font)
    if upside_down:
        image = image.rotate(180)
    pixels = np.asarray(image, dtype=np.int16)
    noise = np.random.default_rng(rng.randint(0, 2**31)).integers(-12, 13, pixels.shape)
    return Frame(np.clip(pixels + noise, 0, 255).astype(np.uint8), int(upside_down), text)


def to_tensor(images: list[np.ndarray]) -> np.ndarray:
    from PIL import Image

    batch = np.zeros((len(images), 3, HEIGHT, WIDTH), np.float32)
    for i, pixels in enumerate(images):
        h, w = pixels.shape[:2]
        width = min(WIDTH, max(1, round(w * HEIGHT / h)))
        resized = np.asarray(Image.fromarray(pixels).resize((width, HEIGHT), Image.Resampling.BILINEAR),
                             dtype=np.float32)
        batch[i, :, :, :width] = ((resized / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return batch


class FrameSource:
    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - test images, not secrets

    def next(self) -> Frame:
        return render(self.rng.choice(WORDS), self.rng.random() < 0.5, self.rng)
