"""Process entry point: ``python -m telemetry_reporter.main``.

Environment: ``EDB_REPORTER_DB`` (SQLite file on a persistent volume). The module announces its
IoT Plug and Play model (``dtdl/telemetry_reporter.json``) when it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from telemetry_reporter.service import ReporterService
from telemetry_reporter.store import ReporterStore

log = logging.getLogger("telemetry_reporter")
MODEL_ID = "dtmi:edb:telemetryReporter;1"


async def run(db_path: Path) -> None:
    from azure.iot.device import MethodResponse
    from azure.iot.device.aio import IoTHubModuleClient

    store = ReporterStore(db_path)
    client = IoTHubModuleClient.create_from_edge_environment(product_info=MODEL_ID)
    service = ReporterService(client, store)

    async def on_method(request: Any) -> None:
        status, payload = await service.handle_method(request.name, request.payload)
        await client.send_method_response(MethodResponse.create_from_method_request(request, status, payload))

    loop = asyncio.get_running_loop()
    arrivals = _Arrivals(loop)
    client.on_message_received = _on_loop(loop, service.on_message, arrivals)
    client.on_twin_desired_properties_patch_received = _on_loop(loop, service.on_desired_patch)
    client.on_method_request_received = _on_loop(loop, on_method)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await client.connect()
    log.info("connected; store %s holds %s", db_path, store.counts())
    try:
        await service.run(stop)
    finally:
        # The SDK acknowledges an input before our handler has journaled it. Stop the deliveries
        # first, let everything already acknowledged reach the journal, then shut down: a graceful
        # stop or restart loses nothing (edgeHub keeps what it has not delivered yet).
        with contextlib.suppress(Exception):
            await client.disconnect()
        await arrivals.quiet(0.5, timeout_s=5.0)
        await client.shutdown()
        store.close()


Handler = Callable[..., Coroutine[Any, Any, None]]


class _Arrivals:
    """Counts input messages between the SDK's handler thread and the journal."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self.pending = 0
        self.last = time.monotonic()

    def begin(self) -> None:
        with self._lock:
            self.pending += 1
            self.last = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self.pending -= 1
            self.last = time.monotonic()

    async def quiet(self, quiet_s: float, *, timeout_s: float) -> None:
        """Until nothing is in flight and nothing arrived for ``quiet_s`` (or ``timeout_s`` passed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.pending == 0 and time.monotonic() - self.last >= quiet_s:
                    return
            await asyncio.sleep(0.05)


def _on_loop(loop: asyncio.AbstractEventLoop, handler: Handler, arrivals: _Arrivals | None = None) -> Handler:
    """The SDK runs coroutine handlers on its own event loop in another thread; the module's state
    lives on ``loop``, so each call is handed over to it (asyncio objects are not thread-safe)."""

    async def run(*args: Any) -> None:
        if arrivals is not None:
            arrivals.begin()
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(handler(*args), loop))
        finally:
            if arrivals is not None:
                arrivals.end()

    return run


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    db_path = Path(os.environ.get("EDB_REPORTER_DB") or "/var/lib/edb/reporter/reporter.db")
    asyncio.run(run(db_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
