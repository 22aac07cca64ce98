"""Coalescing reported-property writer and a queued output sender, over the module client.

Both keep the reconcile loop free of SDK waits: the SDK blocks while disconnected, so writes go
through a queue that a background task drains, merging reported patches that are still pending
(only the newest value of each key is sent) and retrying with a pause on errors.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from edb.schemas import CONTENT_ENCODING_UTF8, CONTENT_TYPE_JSON, encode_json, merge_twin_patch

log = logging.getLogger(__name__)


class ModuleClientLike(Protocol):
    async def patch_twin_reported_properties(self, reported_properties_patch: dict[str, Any]) -> None: ...
    async def send_message_to_output(self, message: Any, output_name: str) -> None: ...


class ReportedWriter:
    def __init__(self, client: ModuleClientLike, retry_s: float = 1.0) -> None:
        self._client = client
        self._pending: dict[str, Any] = {}
        self._event = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._retry_s = retry_s

    def update(self, patch: Mapping[str, Any]) -> None:
        """Queue a reported patch; ``None`` values delete (twin semantics)."""
        self._pending = _merge_keep_nulls(self._pending, patch)
        self._idle.clear()
        self._event.set()

    async def flushed(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._event.wait()
            self._event.clear()
            patch, self._pending = self._pending, {}
            if not patch:
                self._idle.set()
                continue
            try:
                await self._client.patch_twin_reported_properties(patch)
            except Exception as exc:  # disconnected, throttled: keep it, newer values win
                log.warning("reported patch failed (%s); retrying", type(exc).__name__)
                self._pending = _merge_keep_nulls(patch, self._pending)
                self._event.set()
                await asyncio.sleep(self._retry_s)
                continue
            if not self._pending:
                self._idle.set()


def _merge_keep_nulls(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Like merge_twin_patch but keeps ``None`` (a pending delete must still be sent)."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge_keep_nulls(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


class OutputSender:
    """Sends JSON messages to module outputs in order; waits and retries while edgeHub is away.

    Each message gets its id once, when it is queued: a send retried after an ambiguous failure
    (edgeHub may have taken it before the connection dropped) carries the same id, so receivers
    that deduplicate by message id (the reporter) count it once."""

    def __init__(self, client: ModuleClientLike, retry_s: float = 1.0) -> None:
        self._client = client
        self._queue: asyncio.Queue[tuple[str, dict[str, Any], dict[str, str], str]] = asyncio.Queue(maxsize=10_000)
        self._retry_s = retry_s

    def send(self, output: str, body: dict[str, Any], properties: dict[str, str],
             message_id: str | None = None) -> str:
        """Queue a message; returns its id (``message_id``, or a new one)."""
        message_id = message_id or str(uuid.uuid4())
        try:
            self._queue.put_nowait((output, body, properties, message_id))
        except asyncio.QueueFull:
            log.error("output queue full; dropping a %s message", properties.get("messageType"))
        return message_id

    async def drained(self) -> None:
        await self._queue.join()

    async def run(self) -> None:
        from azure.iot.device import Message

        while True:
            output, body, properties, message_id = await self._queue.get()
            while True:
                message = Message(encode_json(body), message_id=message_id,  # type: ignore[no-untyped-call]
                                  content_encoding=CONTENT_ENCODING_UTF8, content_type=CONTENT_TYPE_JSON)
                message.custom_properties = dict(properties)
                try:
                    await self._client.send_message_to_output(message, output)
                    break
                except Exception as exc:
                    log.warning("send to %s failed (%s); retrying", output, type(exc).__name__)
                    await asyncio.sleep(self._retry_s)
            self._queue.task_done()


__all__ = ["ModuleClientLike", "OutputSender", "ReportedWriter", "merge_twin_patch"]
