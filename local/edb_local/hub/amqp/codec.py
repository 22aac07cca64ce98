"""AMQP 1.0 framing: split a byte stream into frames, encode performatives and messages.

The type system (performative and message encoding/decoding) is azure-eventhub's own pure-Python
AMQP implementation (`azure.eventhub._pyamqp`, Microsoft-maintained, pinned in pyproject.toml):
the same code the Event Hubs client uses, so what we send is what it reads. What is ours is only
the frame splitter below and the server-side state machine in connection.py (see
docs/iothub-standin.md for why: python-qpid-proton has no wheel for this platform and its built-in
SASL lacks MSSBCBS, which azure-iot-hub's uamqp client requires).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from azure.eventhub._pyamqp._decode import decode_frame, decode_payload
from azure.eventhub._pyamqp._encode import encode_frame, encode_payload
from azure.eventhub._pyamqp.message import Message

from edb_local.hub.amqp import errors as amqp_errors
from edb_local.hub.errors import HubError

SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
AMQP_FRAME = b"\x00"
SASL_FRAME = b"\x01"
MIN_FRAME = 512

# performative descriptor codes
OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
SASL_MECHANISMS, SASL_INIT, SASL_CHALLENGE, SASL_RESPONSE, SASL_OUTCOME = range(0x40, 0x45)


@dataclass(frozen=True, slots=True)
class Frame:
    kind: bytes          # AMQP_FRAME or SASL_FRAME
    channel: int
    code: int | None     # None: an empty (heartbeat) frame
    fields: list[Any]


def split_frame(buffer: bytearray | bytes, max_size: int) -> tuple[Frame, int] | None:
    """The first complete frame in ``buffer`` and its length; None when more bytes are needed.
    Raises HubError for a frame above ``max_size`` (before reading it: memory stays bounded)
    or one that does not decode."""
    if len(buffer) < 8:
        return None
    size, doff, kind, channel = struct.unpack_from(">IBcH", buffer, 0)
    if size > max_size:
        raise HubError(f"{size}-byte frame above the {max_size}-byte limit", code=amqp_errors.AMQP_FRAME_TOO_LARGE)
    if size < 8 or doff < 2 or doff * 4 > size or kind not in (AMQP_FRAME, SASL_FRAME):
        raise HubError("not an AMQP frame header", code=amqp_errors.AMQP_MALFORMED)
    if len(buffer) < size:
        return None
    body = memoryview(bytes(buffer[doff * 4:size]))
    if not body:
        return Frame(kind, channel, None, []), size
    try:
        if body[0] != 0 or body[1] != 0x53:
            raise ValueError("performative is not a described smallulong")
        if body[3] == 0x45:     # list0: a performative with no fields (uamqp-c's bare close/end)
            return Frame(kind, channel, body[2], []), size
        code, fields = decode_frame(body)
    except (ValueError, IndexError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise HubError(f"undecodable frame: {type(exc).__name__}", code=amqp_errors.AMQP_MALFORMED) from None
    return Frame(kind, channel, code, list(fields)), size


def frame_bytes(channel: int, performative: Any, kind: bytes = AMQP_FRAME) -> bytes:
    header, body = encode_frame(performative, kind)
    return header + struct.pack(">H", channel) + (body or b"")


def message_bytes(message: Message) -> bytes:
    return bytes(encode_payload(bytearray(), message))


def decode_message(payload: bytes) -> Message:
    try:
        return decode_payload(memoryview(payload))
    except (ValueError, IndexError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise HubError(f"undecodable message: {type(exc).__name__}", code=amqp_errors.AMQP_MALFORMED) from None


def text(value: Any) -> str | None:
    """pyamqp decodes AMQP strings and symbols to bytes."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)
