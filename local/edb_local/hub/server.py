"""HubServer: MQTT/TLS on address:8883, AMQP/TLS on address:5671 and HTTPS on address:443 (the
REST API, and MQTT and AMQP over WebSockets), one asyncio loop.

    server = HubServer(config)
    await server.start()
    ...
    await server.stop()

:class:`HubThread` runs one in a background thread for synchronous code (tests, tools)::

    with HubThread(config) as hub:
        hub.server.core.state ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from edb_local.hub import errors
from edb_local.hub.amqp.connection import AmqpConnection
from edb_local.hub.amqp.endpoint import AmqpEndpoint
from edb_local.hub.amqp.websocket import amqp_websocket
from edb_local.hub.config import HubConfig
from edb_local.hub.core import HubCore
from edb_local.hub.errors import HubError
from edb_local.hub.mqtt.connection import MqttConnection
from edb_local.hub.mqtt.websocket import mqtt_websocket
from edb_local.hub.service.app import ServiceApi
from edb_local.hub.store import Store
from edb_local.hub.websocket import WebSocketEndpoint

log = logging.getLogger("edb_local.hub")

_HOUSEKEEPING_SECS = 30.0
T = TypeVar("T")


def server_ssl_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context


class HubServer:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.store: Store | None = None
        self._core: HubCore | None = None
        self._mqtt: asyncio.Server | None = None
        self._amqp: asyncio.Server | None = None
        self.amqp: AmqpEndpoint | None = None
        self._https: web.AppRunner | None = None
        self._connections: set[MqttConnection] = set()
        self.service: ServiceApi | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    @property
    def core(self) -> HubCore:
        if self._core is None:
            raise HubError("hub is not running", code=errors.CONFIG_INVALID)
        return self._core

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.store = Store(Path(self.config.state_dir) / "hub.sqlite")
        self.store.bind_loop(loop)
        self._core = HubCore(self.config, self.store)
        context = server_ssl_context(self.config.cert_path, self.config.key_path)
        core = self._core
        try:
            self._mqtt = await loop.create_server(
                lambda: MqttConnection(core, self._connections), host=self.config.address,
                port=self.config.mqtt_port, ssl=context, reuse_address=True, backlog=256)
            endpoint = self.amqp = AmqpEndpoint(core)
            self._amqp = await loop.create_server(
                lambda: AmqpConnection(endpoint), host=self.config.address, port=self.config.amqp_port,
                ssl=context, reuse_address=True, backlog=256)
            websockets = WebSocketEndpoint(core)
            websockets.register(mqtt_websocket(core, self._connections))
            websockets.register(amqp_websocket(endpoint))
            self.service = ServiceApi(core)
            app = self.service.app(front=(websockets.middleware,))
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            self._https = runner
            site = web.TCPSite(runner, host=self.config.address, port=self.config.https_port, ssl_context=context,
                               reuse_address=True)
            await site.start()
        except OSError as exc:
            await self.stop()
            raise HubError(f"cannot listen on {self.config.address}: {exc}", code=errors.CONFIG_INVALID) from exc
        self._housekeeping = asyncio.create_task(self._housekeep())
        log.info("hub %s listening on %s (mqtts %d, https and wss %d, amqps %d)", self.config.hub_name,
                 self.config.address, self.config.mqtt_port, self.config.https_port, self.config.amqp_port)

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_SECS)
            core = self.core
            dropped = core.expire_pending()
            if dropped:
                log.info("dropped %d expired store-and-forward messages", dropped)
            core.store.trim_upstream(self.config.upstream_keep)

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        if self._mqtt is not None:
            self._mqtt.close()
        if self._amqp is not None:
            self._amqp.close()
            for amqp_connection in list(self.amqp.connections if self.amqp else ()):
                amqp_connection.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._amqp.wait_closed(), 2.0)
            self._amqp = None
        for connection in list(self._connections):
            connection.close()
        if self._core is not None:
            self._core.close_all()
        if self._mqtt is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._mqtt.wait_closed(), 2.0)
            self._mqtt = None
        if self._https is not None:
            await self._https.cleanup()
            self._https = None
        if self.store is not None:
            self.store.close()
            self.store = None
        self._core = None

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()


class HubThread:
    """A HubServer on its own event loop in a daemon thread."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.server = HubServer(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def start(self, timeout: float = 15.0) -> HubThread:
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name=f"hub-{self.config.address}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise HubError("hub did not start in time", code=errors.CONFIG_INVALID)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.server.stop()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the hub's loop and return its result (for tests and tools)."""
        assert self.loop is not None

        async def runner() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(runner(), self.loop).result(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.loop is not None and self._stop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        self.server = HubServer(self.config)

    def __enter__(self) -> HubThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
