"""edb.module_runtime (the module shape every main.py shares) and the desired-twin helpers the
services share. The SDK's side is played by a thread with its own event loop, as the SDK runs
handlers; the client is a recorder (the real SDK against the hub stand-in: tests/hub, tests/e2e)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from azure.iot.device import MethodRequest, MethodResponse

from edb.module_runtime import ModuleRuntime, on_loop
from edb.schemas import apply_desired_patch, desired_from_twin
from telemetry_reporter.arrivals import Arrivals


class SdkLoop:
    """An event loop in another thread, where the SDK awaits the handlers it was given."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def call(self, coro: Coroutine[Any, Any, None]) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def sdk() -> Iterator[SdkLoop]:
    loop = SdkLoop()
    yield loop
    loop.close()


class RecordingTracker:
    def __init__(self) -> None:
        self.begun = 0
        self.ended = 0

    def begin(self) -> None:
        self.begun += 1

    def end(self) -> None:
        self.ended += 1


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.responses: list[MethodResponse] = []

    async def connect(self) -> None:
        self.calls.append("connect")

    async def shutdown(self) -> None:
        self.calls.append("shutdown")

    async def send_method_response(self, response: MethodResponse) -> None:
        self.calls.append("send_method_response")
        self.responses.append(response)


async def test_sdk_calls_run_on_the_module_loop_and_wait_for_the_handler(sdk: SdkLoop) -> None:
    module_loop = asyncio.get_running_loop()
    seen: list[tuple[str, bool]] = []
    tracker = RecordingTracker()

    async def handler(message: str) -> None:
        await asyncio.sleep(0)
        seen.append((message, asyncio.get_running_loop() is module_loop))

    wrapped = on_loop(module_loop, handler, tracker)
    await sdk.call(wrapped("m1"))
    await sdk.call(wrapped("m2"))
    assert seen == [("m1", True), ("m2", True)]  # done by the time the SDK's call returned
    assert (tracker.begun, tracker.ended) == (2, 2)


async def test_a_failing_handler_fails_the_sdk_call_and_still_ends_the_tracked_call(sdk: SdkLoop) -> None:
    tracker = RecordingTracker()

    async def handler() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await sdk.call(on_loop(asyncio.get_running_loop(), handler, tracker)())
    assert (tracker.begun, tracker.ended) == (1, 1)


async def test_method_requests_are_answered_with_the_dispatchers_status_and_payload(sdk: SdkLoop) -> None:
    client = RecordingClient()
    module = ModuleRuntime(client, asyncio.get_running_loop())
    asked: list[tuple[str, Any]] = []

    async def dispatch(name: str, payload: Any) -> tuple[int, Any]:
        asked.append((name, payload))
        return (200, {"flushRequested": True}) if name == "flush" else (404, {"error": {"code": "X_UNKNOWN"}})

    module.on_method(dispatch)
    await sdk.call(client.on_method_request_received(MethodRequest("r1", "flush", {"now": 1})))  # type: ignore[attr-defined]
    await sdk.call(client.on_method_request_received(MethodRequest("r2", "nope", None)))  # type: ignore[attr-defined]
    assert asked == [("flush", {"now": 1}), ("nope", None)]
    assert [(r.request_id, r.status, r.payload) for r in client.responses] == [
        ("r1", 200, {"flushRequested": True}), ("r2", 404, {"error": {"code": "X_UNKNOWN"}})]


async def test_connected_shuts_the_client_down_however_the_body_ends() -> None:
    client = RecordingClient()
    module = ModuleRuntime(client, asyncio.get_running_loop())
    try:
        with pytest.raises(RuntimeError, match="service failed"):
            async with module.connected():
                client.calls.append("body")
                raise RuntimeError("service failed")
        assert client.calls == ["connect", "body", "shutdown"]
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            module.loop.remove_signal_handler(sig)


async def test_sigterm_sets_the_stop_event() -> None:
    client = RecordingClient()
    module = ModuleRuntime(client, asyncio.get_running_loop())
    try:
        async with module.connected() as stop:
            assert not stop.is_set()
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), timeout=30)
        assert client.calls == ["connect", "shutdown"]
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            module.loop.remove_signal_handler(sig)


async def test_arrivals_stay_unquiet_while_a_message_is_in_flight() -> None:
    arrivals = Arrivals()
    arrivals.begin()
    waiting = asyncio.create_task(arrivals.quiet(0.0, timeout_s=60.0))
    await asyncio.sleep(0.2)
    assert not waiting.done() and arrivals.pending == 1
    arrivals.end()
    await asyncio.wait_for(waiting, timeout=30)
    assert arrivals.pending == 0


def test_desired_from_twin_drops_version_and_reported() -> None:
    twin = {"desired": {"$version": 7, "model": {"name": "digits"}}, "reported": {"$version": 3, "x": 1}}
    assert desired_from_twin(twin) == {"model": {"name": "digits"}}
    assert twin["desired"]["$version"] == 7  # input untouched
    assert desired_from_twin({}) == {} == desired_from_twin({"desired": None})


def test_apply_desired_patch_merges_without_the_patch_version() -> None:
    doc = {"model": {"name": "digits"}, "batching": {"maxBatch": 8}}
    out = apply_desired_patch(doc, {"$version": 9, "model": {"minVersion": "2"}, "batching": None})
    assert out == {"model": {"name": "digits", "minVersion": "2"}}
    assert doc == {"model": {"name": "digits"}, "batching": {"maxBatch": 8}}  # input untouched
