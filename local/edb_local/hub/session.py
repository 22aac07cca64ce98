"""A connected MQTT client, as the hub's core (and its cloud-to-device side) sees it."""

from __future__ import annotations

from typing import Protocol

from edb_local.hub.delivery import QueuedMessage
from edb_local.hub.topics import Identity


class ClientSession(Protocol):
    """A connected MQTT client, as the core sees it."""

    identity: Identity
    subscriptions: dict[str, int]
    clean_session: bool

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> int | None: ...

    def send_input(self, message: QueuedMessage, qos: int) -> int | None: ...

    def send_puback(self, packet_id: int) -> None: ...

    def close(self) -> None: ...
