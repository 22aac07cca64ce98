"""Process entry point: ``python -m inference_runner.main``.

Environment: ``EDB_TEE_SOCKET`` (the TEE service's socket). Everything else comes from the module
twin (``model``, ``batching``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from edb.module_runtime import ModuleRuntime, configure_logging
from inference_runner.service import RunnerFailed, RunnerService

log = logging.getLogger("inference_runner")


async def run(tee_socket: str) -> None:
    from edb.tee.client import TeeClient

    with TeeClient(tee_socket) as tee:
        module = ModuleRuntime.from_edge_environment()
        service = RunnerService(module.client, tee)
        background: set[asyncio.Task[None]] = set()

        async def on_state_change() -> None:
            if module.client.connected:  # patches sent while we were away are lost: read the twin again
                task = asyncio.create_task(service.load_twin())
                background.add(task)
                task.add_done_callback(background.discard)

        module.on_message(service.on_message)
        module.on_desired_patch(service.on_desired_patch)
        module.on_method(service.handle_method)
        module.on_connection_state_change(on_state_change)
        async with module.connected() as stop:
            log.info("connected; TEE at %s", tee_socket)
            await service.run(stop)


def main() -> int:
    configure_logging()
    tee_socket = os.environ.get("EDB_TEE_SOCKET")
    if not tee_socket:
        log.error("configuration: EDB_TEE_SOCKET is not set")
        return 2
    try:
        asyncio.run(run(tee_socket))
    except RunnerFailed as exc:  # already logged and reported; non-zero so restartPolicy applies
        log.critical("exiting: %s", exc.message)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
