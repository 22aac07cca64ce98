"""The reporter's imperative shell: journal inputs, raise alerts, close windows, drain the outbox.

Inputs ``events`` and ``results`` are journaled in SQLite on arrival (:mod:`.store`); events that
are security signals become alerts in the outbox at once; every ``metricsIntervalSeconds`` the
journal becomes one metrics message. A single sender drains the outbox (alerts first) to the
outputs ``alerts`` and ``telemetry``, which the deployment routes to ``$upstream``. A message
leaves the outbox only after the SDK confirmed the send; while edgeHub is unreachable nothing is
lost, and after a restart the outbox is drained from where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from edb.schemas import (
    CONTENT_ENCODING_UTF8,
    CONTENT_TYPE_JSON,
    MessageError,
    MessageType,
    ModuleEvent,
    apply_desired_patch,
    decode_json,
    desired_from_twin,
    iso_utc,
)
from telemetry_reporter import endpoints
from telemetry_reporter.alerts import classify, legacy_install
from telemetry_reporter.store import OutboxItem, ReporterStore

log = logging.getLogger("telemetry_reporter")
DEFAULT_INTERVAL_S = 10.0
MIN_INTERVAL_S = 1.0


class ReporterService:
    def __init__(self, client: Any, store: ReporterStore, *, clock: Callable[[], float] = time.time,
                 retry_s: float = 2.0) -> None:
        self.client = client
        self.store = store
        self.clock = clock
        self.retry_s = retry_s
        self.interval_s = DEFAULT_INTERVAL_S
        self.desired_doc: dict[str, Any] = {}
        self.sent = 0
        self.last_sent_at: str | None = None
        self.bad_messages = 0
        self.duplicates = 0
        self._stopping = False
        self._outbox_ready = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._interval_changed = asyncio.Event()

    # -- desired -----------------------------------------------------------------------------------
    async def load_twin(self) -> None:
        self.desired_doc = desired_from_twin(await self.client.get_twin())
        self._apply_desired()

    async def on_desired_patch(self, patch: Mapping[str, Any]) -> None:
        self.desired_doc = apply_desired_patch(self.desired_doc, patch)
        self._apply_desired()

    def _apply_desired(self) -> None:
        value = self.desired_doc.get("metricsIntervalSeconds")
        valid = isinstance(value, int | float) and not isinstance(value, bool) and value >= MIN_INTERVAL_S
        if valid and float(value) != self.interval_s:  # type: ignore[arg-type]
            self.interval_s = float(value)  # type: ignore[arg-type]
            self._interval_changed.set()

    # -- inputs ------------------------------------------------------------------------------------
    async def on_message(self, message: Any) -> None:
        input_name = getattr(message, "input_name", None)
        kind = {endpoints.INPUT_EVENTS: "event", endpoints.INPUT_RESULTS: "result"}.get(input_name or "")
        if kind is None:
            log.warning("message on unknown input %r ignored", input_name)
            return
        try:
            body = decode_json(message.data)
        except MessageError:
            self.bad_messages += 1
            body = {"malformed": True}
        now = self.clock()
        message_id = getattr(message, "message_id", None)
        if not self.store.journal(kind, body, now, str(message_id) if message_id else None):
            self.duplicates += 1  # redelivered by edgeHub: counted once already
            return
        if kind == "event" and "malformed" not in body:
            try:
                event = ModuleEvent.from_json(body)
            except MessageError:
                return
            alert = classify(event)
            if alert is not None:
                self.store.record_alert(alert, now)
                log.warning("alert %s: %s for %s %s", alert.alert_type.value, alert.code, alert.package,
                            alert.version)
                self._outbox_ready.set()
            legacy = legacy_install(event)
            if legacy is not None and self.store.record_alert_once(legacy[0], legacy[1], now) is not None:
                log.warning("warning: %s %s installed with the legacy v1 key flow", event.package, event.version)
                self._outbox_ready.set()

    # -- windows and sending ---------------------------------------------------------------------------
    async def window_loop(self) -> None:
        while True:
            start = self.store.window_start(self.clock())
            wait = max(0.0, start + self.interval_s - self.clock())
            self._interval_changed.clear()
            done, _ = await asyncio.wait(
                [asyncio.create_task(self._flush_now.wait()), asyncio.create_task(self._interval_changed.wait())],
                timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.cancel()
            if self._interval_changed.is_set() and not self._flush_now.is_set():
                continue  # recompute the deadline with the new interval
            self._flush_now.clear()
            self.store.flush_window(self.clock())
            self._outbox_ready.set()

    async def send_loop(self) -> None:
        from azure.iot.device import Message

        store_id = self.store.store_id
        while not self._stopping:
            items = self.store.pending(limit=20)
            if not items:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            for item in items:
                if self._stopping:
                    break
                # The id is stable across restarts: a message re-sent after a crash between the
                # send and its acknowledgement is recognisable upstream (at-least-once delivery).
                message = Message(item.body, message_id=f"reporter-{store_id}-{item.id}",  # type: ignore[no-untyped-call]
                                  content_encoding=CONTENT_ENCODING_UTF8, content_type=CONTENT_TYPE_JSON)
                message.custom_properties = dict(item.properties)
                try:
                    await self.client.send_message_to_output(message, _output_for(item))
                except Exception as exc:
                    log.warning("upstream send failed (%s); kept in the outbox", type(exc).__name__)
                    await asyncio.sleep(self.retry_s)
                    break
                self.store.ack(item.id)
                self.sent += 1
                self.last_sent_at = iso_utc()

    async def report_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.client.patch_twin_reported_properties({"reporter": self.status()})
            await asyncio.sleep(max(5.0, self.interval_s))

    def status(self) -> dict[str, Any]:
        return {**self.store.counts(), "sent": self.sent, "lastSentAt": self.last_sent_at,
                "metricsIntervalSeconds": self.interval_s, "badMessages": self.bad_messages,
                "duplicates": self.duplicates}

    async def handle_method(self, name: str, payload: Any) -> tuple[int, dict[str, Any]]:
        if name == "status":
            return 200, self.status()
        if name == "flush":
            self._flush_now.set()
            return 200, {"flushRequested": True}
        return 404, {"error": {"code": "REPORTER_UNKNOWN_METHOD", "message": f"no method {str(name)[:40]!r}"}}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.load_twin()
                break
            except Exception as exc:
                log.warning("get_twin failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(2.0)
        self._outbox_ready.set()  # drain what a previous run left behind
        sender = asyncio.create_task(self.send_loop())
        tasks = [asyncio.create_task(self.window_loop()), asyncio.create_task(self.report_loop())]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            # Let a send in progress finish and be acknowledged in the outbox (cancelling it could
            # send the message twice after the restart); then stop.
            self._stopping = True
            self._outbox_ready.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sender), timeout=3.0)
            sender.cancel()
            await asyncio.gather(sender, *tasks, return_exceptions=True)


def _output_for(item: OutboxItem) -> str:
    return endpoints.OUTPUT_ALERTS if item.message_type == MessageType.ALERT.value else endpoints.OUTPUT_TELEMETRY
