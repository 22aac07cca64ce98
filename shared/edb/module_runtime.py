"""The Azure IoT Edge module shape that every module's ``main.py`` shares.

A module connects with ``IoTHubModuleClient.create_from_edge_environment()`` exactly as on a device
(the local agent gives it the environment IoT Edge gives), hands the SDK's callbacks over to its own
event loop, stops on SIGTERM/SIGINT (what ``docker stop`` and the local agent send) and shuts the
client down on the way out. Only that plumbing lives here; what a message, a patch or a method
means is the module's service's business.

The SDK is imported when a client is made, so importing this file needs no ``azure.iot.device``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

#: A coroutine callback as the SDK calls it: with a message, a patch, a method request, or nothing.
Handler = Callable[..., Coroutine[Any, Any, None]]
#: A module's method dispatcher: (method name, payload) -> (status, response payload).
MethodDispatcher = Callable[[str, Any], Awaitable[tuple[int, Any]]]


class CallTracker(Protocol):
    """Told on the SDK's thread when a handed-over call starts and when it has finished."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


def configure_logging() -> None:
    """One line per record on stderr (the module's log); the SDK's own chatter only from WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)


def on_loop(loop: asyncio.AbstractEventLoop, handler: Handler, tracker: CallTracker | None = None) -> Handler:
    """The SDK runs coroutine handlers on its own event loop in another thread; the module's state
    lives on ``loop``, so each call is handed over to it (asyncio objects are not thread-safe).
    The SDK call returns when the module's handler has finished."""

    async def run(*args: Any) -> None:
        if tracker is not None:
            tracker.begin()
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(handler(*args), loop))
        finally:
            if tracker is not None:
                tracker.end()

    return run


class ModuleRuntime:
    """A module client whose callbacks run on the module's event loop ``loop``."""

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop

    @classmethod
    def from_edge_environment(cls, **client_options: Any) -> ModuleRuntime:
        """``IoTHubModuleClient.create_from_edge_environment(**client_options)`` on the running loop."""
        from azure.iot.device.aio import IoTHubModuleClient

        return cls(IoTHubModuleClient.create_from_edge_environment(**client_options), asyncio.get_running_loop())

    def on_message(self, handler: Handler, *, tracker: CallTracker | None = None) -> None:
        self.client.on_message_received = on_loop(self.loop, handler, tracker)

    def on_desired_patch(self, handler: Handler) -> None:
        self.client.on_twin_desired_properties_patch_received = on_loop(self.loop, handler)

    def on_method(self, dispatch: MethodDispatcher) -> None:
        """Answer every direct method request with what ``dispatch(name, payload)`` returns."""
        from azure.iot.device import MethodResponse

        client = self.client

        async def respond(request: Any) -> None:
            status, payload = await dispatch(request.name, request.payload)
            await client.send_method_response(MethodResponse.create_from_method_request(request, status, payload))

        client.on_method_request_received = on_loop(self.loop, respond)

    def on_connection_state_change(self, handler: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.client.on_connection_state_change = on_loop(self.loop, handler)  # the SDK calls it without argument

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[asyncio.Event]:
        """Connect and yield the event SIGTERM/SIGINT set; shut the client down on the way out, however
        the body ends. Wire the handlers first: the SDK may deliver as soon as it is connected."""
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        await self.client.connect()
        try:
            yield stop
        finally:
            await self.client.shutdown()
