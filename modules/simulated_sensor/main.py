"""Process entry point: ``python -m simulated_sensor.main``. Sends a frame every ``intervalMs``
(module twin desired properties: ``intervalMs``, ``enabled``, ``format``, ``rowsPerMessage``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from edb.schemas import CONTENT_ENCODING_UTF8, MessageType, application_properties, merge_twin_patch
from simulated_sensor import endpoints
from simulated_sensor.frames import FrameSource, SensorSettings

log = logging.getLogger("simulated_sensor")
REPORT_INTERVAL_S = 2.0


async def run() -> None:
    from azure.iot.device import Message
    from azure.iot.device.aio import IoTHubModuleClient

    client = IoTHubModuleClient.create_from_edge_environment()
    source = FrameSource()
    state: dict[str, Any] = {"desired": {}, "settings": SensorSettings()}
    boot = uuid.uuid4().hex[:8]

    async def on_patch(patch: dict[str, Any]) -> None:
        state["desired"] = merge_twin_patch(state["desired"], {k: v for k, v in patch.items() if k != "$version"})
        state["settings"] = SensorSettings.from_desired(state["desired"], state["settings"])

    loop = asyncio.get_running_loop()
    client.on_twin_desired_properties_patch_received = _on_loop(loop, on_patch)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await client.connect()
    twin = await client.get_twin()
    await on_patch(twin.get("desired") or {})
    log.info("connected; sending digits frames")
    sent = 0
    reported_sent = -1
    last_report = 0.0
    try:
        while not stop.is_set():
            settings: SensorSettings = state["settings"]
            if settings.enabled:
                frame = source.next(settings)
                message = Message(frame.data, message_id=f"frame-{boot}-{frame.sequence}",  # type: ignore[no-untyped-call]
                                  content_encoding=CONTENT_ENCODING_UTF8, content_type=frame.content_type)
                message.custom_properties = application_properties(MessageType.FRAME, label=str(frame.label))
                await client.send_message_to_output(message, endpoints.OUTPUT_FRAMES)
                sent += 1
            now = loop.time()
            if sent != reported_sent and now - last_report >= REPORT_INTERVAL_S:
                # how many frames this run sent, so an operator (or the demo) can match it against answers
                await client.patch_twin_reported_properties(
                    {"sensor": {"sent": sent, "bootId": boot, "enabled": settings.enabled}})
                reported_sent, last_report = sent, now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.interval_ms / 1000)
    finally:
        await client.shutdown()


Handler = Callable[..., Coroutine[Any, Any, None]]


def _on_loop(loop: asyncio.AbstractEventLoop, handler: Handler) -> Handler:
    """The SDK runs coroutine handlers on its own event loop in another thread; the module's state
    lives on ``loop``, so each call is handed over to it (asyncio objects are not thread-safe)."""

    async def run(*args: Any) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(handler(*args), loop))

    return run


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
