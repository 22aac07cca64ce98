"""Process entry point: ``python -m camera_sensor.main``. Renders a text image every ``intervalMs``
and sends it to the inference runner's Open Inference Protocol endpoint (``EDB_OIP_URL``, e.g.
``http://inference_runner:8000`` on the module network), binary tensor data both ways.

Module twin desired ``camera = {model, intervalMs, enabled, imagesPerRequest}``; reported
``camera = {sent, answered, errors, correct, lastError, bootId, enabled}`` every 2 s (``correct``:
answers whose orientation matches the image's). Nothing is sent through edgeHub: the runner's
results and the reporter's metrics carry the answers upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import uuid
from typing import Any

from camera_sensor.images import CameraSettings, FrameSource, to_tensor
from camera_sensor.oip_client import HEADER_LENGTH, infer_request, read_outputs
from edb.module_runtime import ModuleRuntime, configure_logging
from edb.schemas import apply_desired_patch

log = logging.getLogger("camera_sensor")
REPORT_INTERVAL_S = 2.0
REQUEST_TIMEOUT_S = 30.0


async def run(url: str) -> None:
    import aiohttp

    module = ModuleRuntime.from_edge_environment()
    client = module.client
    source = FrameSource()
    state: dict[str, Any] = {"desired": {}, "settings": CameraSettings()}
    boot = uuid.uuid4().hex[:8]
    counts = {"sent": 0, "answered": 0, "errors": 0, "correct": 0}
    last_error: dict[str, Any] | None = None

    async def on_patch(patch: dict[str, Any]) -> None:
        state["desired"] = apply_desired_patch(state["desired"], patch)
        state["settings"] = CameraSettings.from_desired(state["desired"], state["settings"])

    module.on_desired_patch(on_patch)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with module.connected() as stop, aiohttp.ClientSession(timeout=timeout) as http:
        twin = await client.get_twin()
        await on_patch(twin.get("desired") or {})
        log.info("connected; sending text images to %s", url)
        reported: dict[str, Any] = {}
        last_report = 0.0
        sequence = 0
        while not stop.is_set():
            settings: CameraSettings = state["settings"]
            if settings.enabled:
                frames = [source.next() for _ in range(settings.images_per_request)]
                sequence += 1
                body, headers = infer_request(to_tensor([f.image for f in frames]),
                                              expected=frames[0].label if len(frames) == 1 else None,
                                              request_id=f"camera-{boot}-{sequence}")
                counts["sent"] += len(frames)
                try:
                    async with http.post(f"{url}/v2/models/{settings.model}/infer", data=body,
                                         headers=headers) as response:
                        raw = await response.read()
                        if response.status != 200:
                            counts["errors"] += len(frames)
                            last_error = {"status": response.status, "body": raw[:300].decode("utf-8", "replace")}
                        else:
                            scores = next(iter(read_outputs(raw, response.headers.get(HEADER_LENGTH)).values()))
                            counts["answered"] += len(frames)
                            counts["correct"] += sum(int(s.argmax()) == f.label
                                                     for s, f in zip(scores, frames, strict=True))
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    counts["errors"] += len(frames)
                    last_error = {"status": None, "body": type(exc).__name__}
            now = module.loop.time()
            current = {**counts, "lastError": last_error, "bootId": boot, "enabled": settings.enabled}
            if current != reported and now - last_report >= REPORT_INTERVAL_S:
                with contextlib.suppress(Exception):
                    await client.patch_twin_reported_properties({"camera": current})
                    reported, last_report = current, now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.interval_ms / 1000)


def main() -> int:
    configure_logging()
    url = os.environ.get("EDB_OIP_URL", "").rstrip("/")
    if not url.startswith(("http://", "https://")):
        log.error("configuration: EDB_OIP_URL must be the runner's endpoint, e.g. http://inference_runner:8000")
        return 2
    asyncio.run(run(url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
