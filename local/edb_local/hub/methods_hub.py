"""Direct methods through the hub: a cloud-to-module (or module-to-module) call published to the
target's MQTT session on `$iothub/methods/POST/<name>/?$rid=<rid>`, its response matched by rid.
The core owns the sessions; it tells this when an identity comes online and passes responses in."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from typing import Any

from edb_local.hub import errors
from edb_local.hub.errors import HubError
from edb_local.hub.session import ClientSession
from edb_local.hub.state import HubState
from edb_local.hub.topics import Identity, MethodResponse, method_request_topic

METHODS_FILTER = "$iothub/methods/POST/#"
#: IoT Hub's ceiling for both the connect and the response timeout of a direct method (seconds)
MAX_METHOD_TIMEOUT = 300


class DirectMethods:
    def __init__(self, state: HubState, sessions: Mapping[Identity, ClientSession]) -> None:
        self.state = state
        self.sessions = sessions
        self._pending: dict[tuple[Identity, str], asyncio.Future[tuple[int, Any]]] = {}
        self._online_waiters: dict[Identity, list[asyncio.Future[None]]] = {}
        self._rids = itertools.count(1)

    def _session(self, identity: Identity) -> ClientSession | None:
        session = self.sessions.get(identity)
        if session is not None and METHODS_FILTER in session.subscriptions:
            return session
        return None

    def wake_online(self, identity: Identity) -> None:
        for waiter in self._online_waiters.pop(identity, []):
            if not waiter.done():
                waiter.set_result(None)

    async def invoke(self, target: Identity, name: str, payload: Any, *, response_timeout: float,
                            connect_timeout: float) -> tuple[int, Any]:
        """Cloud-to-module (and module-to-module) direct method. HUB_DEVICE_NOT_ONLINE (404) when
        the target is not connected and subscribed within ``connect_timeout``; HUB_METHOD_TIMEOUT
        (504) when it does not answer within ``response_timeout``."""
        self.state.identity(target)
        loop = asyncio.get_running_loop()
        session = self._session(target)
        deadline = loop.time() + max(0.0, min(connect_timeout, MAX_METHOD_TIMEOUT))
        while session is None and loop.time() < deadline:
            waiter: asyncio.Future[None] = loop.create_future()
            self._online_waiters.setdefault(target, []).append(waiter)
            try:
                await asyncio.wait_for(waiter, deadline - loop.time())
            except TimeoutError:
                waiters = self._online_waiters.get(target, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._online_waiters.pop(target, None)
                break
            session = self._session(target)
        if session is None:
            raise HubError(f"{target} is not connected for direct methods", code=errors.DEVICE_NOT_ONLINE)
        rid = format(next(self._rids), "x")
        future: asyncio.Future[tuple[int, Any]] = loop.create_future()
        self._pending[(target, rid)] = future
        try:
            session.publish(method_request_topic(name, rid), json.dumps(payload).encode())
            return await asyncio.wait_for(future, max(1.0, min(response_timeout, MAX_METHOD_TIMEOUT)))
        except TimeoutError:
            raise HubError(f"{target} did not answer {name!r} in time", code=errors.METHOD_TIMEOUT) from None
        finally:
            self._pending.pop((target, rid), None)

    def response(self, identity: Identity, response: MethodResponse, payload: bytes) -> None:
        future = self._pending.get((identity, response.rid))
        if future is None or future.done():
            return  # late, duplicate, or for a request this identity never received
        try:
            body: Any = json.loads(payload.decode("utf-8")) if payload else None
        except (UnicodeDecodeError, ValueError):
            body = payload.decode("utf-8", errors="replace")
        future.set_result((response.status, body))

    def cancel_all(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.cancel()
