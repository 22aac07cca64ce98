"""The request/response nodes of the AMQP endpoint, `$cbs` and `$management`, as pure functions:
a decoded request message in, a reply message out. Replies follow what the clients read
(docs/iothub-standin.md, "Event Hub-compatible endpoint"): correlation-id = the request's
message-id in its own AMQP type, `status-code` an AMQP int, `status-description` a string."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from azure.eventhub._pyamqp.message import Message, Properties
from azure.eventhub._pyamqp.types import AMQPTypes

from edb_local.hub.amqp.codec import text


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition_id: str
    begin_sequence_number: int
    last_sequence_number: int
    last_enqueued_ms: int
    empty: bool


def request_properties(message: Message) -> dict[str, Any]:
    """Application properties with text keys; string values as str."""
    props = message.application_properties or {}
    out: dict[str, Any] = {}
    for key, value in props.items():
        name = text(key) or ""
        out[name] = text(value) if isinstance(value, bytes | bytearray) else value
    return out


def _correlation(message: Message) -> Any:
    message_id = message.properties.message_id if message.properties else None
    if isinstance(message_id, bytes | bytearray):
        return bytes(message_id).decode("utf-8", errors="replace")
    if isinstance(message_id, int | uuid.UUID | str):
        return message_id
    return None


def reply(request: Message, status: int, description: str, body: dict[str, Any] | None = None) -> Message:
    return Message(properties=Properties(correlation_id=_correlation(request)),
                   application_properties={"status-code": status, "status-description": description},
                   value=body)


def _ts(ms: int) -> dict[str, Any]:
    return {"TYPE": AMQPTypes.timestamp, "VALUE": ms}


def _long(value: int) -> dict[str, Any]:
    return {"TYPE": AMQPTypes.long, "VALUE": value}


def eventhub_properties(entity: str, created_ms: int, partition_count: int) -> dict[str, Any]:
    ids = [str(i) for i in range(partition_count)]
    return {"name": entity, "type": "com.microsoft:eventhub", "created_at": _ts(created_ms),
            "partition_count": {"TYPE": AMQPTypes.int, "VALUE": partition_count},
            "partition_ids": {"TYPE": AMQPTypes.array,
                              "VALUE": [{"TYPE": AMQPTypes.string, "VALUE": i} for i in ids]}}


def partition_properties(entity: str, info: PartitionInfo) -> dict[str, Any]:
    return {"name": entity, "type": "com.microsoft:partition", "partition": info.partition_id,
            "begin_sequence_number": _long(info.begin_sequence_number),
            "last_enqueued_sequence_number": _long(info.last_sequence_number),
            "last_enqueued_offset": str(info.last_sequence_number),
            "last_enqueued_time_utc": _ts(info.last_enqueued_ms),
            "is_partition_empty": info.empty}
