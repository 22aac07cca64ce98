"""Process entry point: ``python -m simulated_sensor.main``. Sends a frame every ``intervalMs``
(module twin desired properties: ``intervalMs``, ``enabled``, ``format``, ``rowsPerMessage``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import uuid
from typing import Any

from edb.module_runtime import ModuleRuntime, configure_logging
from edb.schemas import CONTENT_ENCODING_UTF8, MessageType, application_properties, apply_desired_patch
from simulated_sensor import endpoints
from simulated_sensor.frames import FrameSource, SensorSettings

log = logging.getLogger("simulated_sensor")
REPORT_INTERVAL_S = 2.0


async def run() -> None:
    from azure.iot.device import Message

    module = ModuleRuntime.from_edge_environment()
    client = module.client
    source = FrameSource()
    state: dict[str, Any] = {"desired": {}, "settings": SensorSettings()}
    boot = uuid.uuid4().hex[:8]

    async def on_patch(patch: dict[str, Any]) -> None:
        state["desired"] = apply_desired_patch(state["desired"], patch)
        state["settings"] = SensorSettings.from_desired(state["desired"], state["settings"])

    module.on_desired_patch(on_patch)
    async with module.connected() as stop:
        twin = await client.get_twin()
        await on_patch(twin.get("desired") or {})
        log.info("connected; sending digits frames")
        sent = 0
        reported_sent = -1
        last_report = 0.0
        while not stop.is_set():
            settings: SensorSettings = state["settings"]
            if settings.enabled:
                frame = source.next(settings)
                message = Message(frame.data, message_id=f"frame-{boot}-{frame.sequence}",  # type: ignore[no-untyped-call]
                                  content_encoding=CONTENT_ENCODING_UTF8, content_type=frame.content_type)
                message.custom_properties = application_properties(MessageType.FRAME, label=str(frame.label))
                await client.send_message_to_output(message, endpoints.OUTPUT_FRAMES)
                sent += 1
            now = module.loop.time()
            if sent != reported_sent and now - last_report >= REPORT_INTERVAL_S:
                # how many frames this run sent, so an operator (or the demo) can match it against answers
                await client.patch_twin_reported_properties(
                    {"sensor": {"sent": sent, "bootId": boot, "enabled": settings.enabled}})
                reported_sent, last_report = sent, now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.interval_ms / 1000)


def main() -> int:
    configure_logging()
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
