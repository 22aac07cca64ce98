"""Helpers shared by the hub tests (imported as a plain module: tests/ has no packages)."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Callable
from typing import Any

#: the hub name of every hub the tests start (imported from here: `conftest` is not a unique module name)
HUB_NAME = "edb-test-hub.azure-devices.net"


def threadsafe_queue() -> tuple[asyncio.Queue[Any], Callable[[Any], None]]:
    """A queue for the running loop and a callback that feeds it from any thread (the aio SDK
    client runs its handlers on its own handler thread and loop)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    return queue, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


async def eventually(probe: Callable[[], Any], expected: Any, timeout: float = 10.0) -> Any:
    """Poll ``probe`` until it returns ``expected`` (the hub acts on acknowledgements and routes
    asynchronously, so a count read right after a client call may lag by one event-loop turn).
    Returns the last value so the caller's assert shows it when it never arrives."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = probe()
    while value != expected and loop.time() < deadline:
        await asyncio.sleep(0.02)
        value = probe()
    return value

