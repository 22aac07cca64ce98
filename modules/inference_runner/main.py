"""Process entry point: ``python -m inference_runner.main``.

Environment: ``EDB_TEE_SOCKET`` (the TEE service's socket). Everything else comes from the module
twin (``model``, ``batching``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from inference_runner.service import RunnerFailed, RunnerService

log = logging.getLogger("inference_runner")


async def run(tee_socket: str) -> None:
    from azure.iot.device import MethodResponse
    from azure.iot.device.aio import IoTHubModuleClient

    from edb.tee.client import TeeClient

    tee = TeeClient(tee_socket)
    client = IoTHubModuleClient.create_from_edge_environment()
    service = RunnerService(client, tee)
    background: set[asyncio.Task[None]] = set()

    async def on_method(request: Any) -> None:
        status, payload = await service.handle_method(request.name, request.payload)
        await client.send_method_response(MethodResponse.create_from_method_request(request, status, payload))

    async def on_state_change() -> None:
        if client.connected:  # patches sent while we were away are lost: read the twin again
            task = asyncio.create_task(service.load_twin())
            background.add(task)
            task.add_done_callback(background.discard)

    loop = asyncio.get_running_loop()
    client.on_message_received = _on_loop(loop, service.on_message)
    client.on_twin_desired_properties_patch_received = _on_loop(loop, service.on_desired_patch)
    client.on_method_request_received = _on_loop(loop, on_method)
    client.on_connection_state_change = _on_loop(loop, on_state_change)  # handler without argument

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await client.connect()
    log.info("connected; TEE at %s", tee_socket)
    try:
        await service.run(stop)
    finally:
        await client.shutdown()
        tee.close()


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
