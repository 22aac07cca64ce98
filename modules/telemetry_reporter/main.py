"""Process entry point: ``python -m telemetry_reporter.main``.

Environment: ``EDB_REPORTER_DB`` (SQLite file on a persistent volume). The module announces its
IoT Plug and Play model (``dtdl/telemetry_reporter.json``) when it connects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
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

    client.on_message_received = service.on_message
    client.on_twin_desired_properties_patch_received = service.on_desired_patch
    client.on_method_request_received = on_method

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await client.connect()
    log.info("connected; store %s holds %s", db_path, store.counts())
    try:
        await service.run(stop)
    finally:
        await client.shutdown()
        store.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    db_path = Path(os.environ.get("EDB_REPORTER_DB") or "/var/lib/edb/reporter/reporter.db")
    asyncio.run(run(db_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
