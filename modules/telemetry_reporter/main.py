"""Process entry point: ``python -m telemetry_reporter.main``.

Environment: ``EDB_REPORTER_DB`` (SQLite file on a persistent volume). The module announces its
IoT Plug and Play model (``dtdl/telemetry_reporter.json``) when it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

from edb.module_runtime import ModuleRuntime, configure_logging
from telemetry_reporter.arrivals import Arrivals
from telemetry_reporter.service import ReporterService
from telemetry_reporter.store import ReporterStore

log = logging.getLogger("telemetry_reporter")
MODEL_ID = "dtmi:edb:telemetryReporter;1"


async def run(db_path: Path) -> None:
    with contextlib.closing(ReporterStore(db_path)) as store:
        module = ModuleRuntime.from_edge_environment(product_info=MODEL_ID)
        service = ReporterService(module.client, store)
        arrivals = Arrivals()
        module.on_message(service.on_message, tracker=arrivals)
        module.on_desired_patch(service.on_desired_patch)
        module.on_method(service.handle_method)
        async with module.connected() as stop:
            log.info("connected; store %s holds %s", db_path, store.counts())
            try:
                await service.run(stop)
            finally:
                # The SDK acknowledges an input before our handler has journaled it. Stop the deliveries
                # first, let everything already acknowledged reach the journal, then shut down: a graceful
                # stop or restart loses nothing (edgeHub keeps what it has not delivered yet).
                with contextlib.suppress(Exception):
                    await module.client.disconnect()
                await arrivals.quiet(0.5, timeout_s=5.0)


def main() -> int:
    configure_logging()
    db_path = Path(os.environ.get("EDB_REPORTER_DB") or "/var/lib/edb/reporter/reporter.db")
    asyncio.run(run(db_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
