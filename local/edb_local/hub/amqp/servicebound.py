"""The service-bound sources IoT Hub offers on its AMQP endpoint: `/messages/serviceBound/feedback`
(C2D feedback, one message per feedback batch). The service attaches a receiver there (uamqp's
ReceiveClient in azure-iot CLI's monitor-feedback, the .NET/Java FeedbackReceiver), authorised
with a CBS token of a policy with ServiceConnect. Deliveries are sent unsettled, each under the
lock of the queued message it carries; the receiver's disposition settles it (:func:`settle_as`).
Pure functions: the queue itself is :class:`edb_local.hub.c2d.FeedbackQueue`."""

from __future__ import annotations

import json
import uuid
from typing import Any

from azure.eventhub._pyamqp.message import Header, Message, Properties

from edb_local.hub.amqp import codec

FEEDBACK = "messages/servicebound/feedback"           # normalised (lower-case) node paths
NODES = {FEEDBACK: "feedback"}


def lock_tag(lock_token: str) -> bytes:
    """The delivery tag: the lock token's 16 bytes (the .NET SDK reads the lock token back as a
    Guid made from the delivery tag)."""
    try:
        return uuid.UUID(lock_token).bytes
    except ValueError:
        return lock_token.encode()[:32]


def message_payload(message_id: str, body: Any, content_type: str, user_id: str, delivery_count: int) -> bytes:
    """One data section holding ``body`` as JSON, with message-id, user-id (the hub name) and
    content-type, and the header's delivery-count (explicit abandons so far)."""
    message = Message(header=Header(delivery_count=delivery_count),
                      properties=Properties(message_id=message_id, user_id=user_id.encode(),
                                            content_type=content_type),
                      data=[json.dumps(body).encode()])
    return codec.message_bytes(message)


def settle_as(state: Any) -> bool:
    """True: complete the queued message (accepted; rejected, i.e. dead-lettered: it is not sent
    again); False: abandon it (released, modified, no outcome), to be received again."""
    if isinstance(state, dict) and state:
        outcome = codec.text(next(iter(state)))
        return outcome in ("accepted", "rejected")
    return False
