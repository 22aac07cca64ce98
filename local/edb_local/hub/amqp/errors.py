"""Error codes of the AMQP endpoint (HUB_AMQP_*, HUB_C2D_*), and the AMQP error condition each
maps to. The codes appear in the hub's refusal log and in the description of the AMQP error the
client receives (the condition is what the client SDKs act on)."""

from __future__ import annotations

from edb_local.hub import errors

AMQP_MALFORMED = "HUB_AMQP_MALFORMED"            # bytes that are not AMQP 1.0 frames
AMQP_FRAME_TOO_LARGE = "HUB_AMQP_FRAME_TOO_LARGE"  # a frame above the max-frame-size we announced
AMQP_MESSAGE_TOO_LARGE = "HUB_AMQP_MESSAGE_TOO_LARGE"  # a multi-frame delivery above the link limit
AMQP_SASL_REFUSED = "HUB_AMQP_SASL_REFUSED"      # no SASL layer, an unknown mechanism, a bad PLAIN token
AMQP_UNAUTHORIZED = "HUB_AMQP_UNAUTHORIZED"      # a link to a node no CBS token on the connection covers
AMQP_CBS_REFUSED = "HUB_AMQP_CBS_REFUSED"        # a put-token refused (the HUB_AUTH_* code says why)
AMQP_NOT_FOUND = "HUB_AMQP_NOT_FOUND"            # an unknown node, event hub, consumer group or partition
AMQP_BAD_FILTER = "HUB_AMQP_BAD_FILTER"          # a selector filter this endpoint does not understand
AMQP_TOO_MANY_LINKS = "HUB_AMQP_TOO_MANY_LINKS"  # links per connection or sessions above the limit
AMQP_IDLE = "HUB_AMQP_IDLE"                      # no open (or no authenticated link) in time
AMQP_REDIRECT = "HUB_AMQP_REDIRECT"              # not a refusal: `messages/events` lives on the Event Hub endpoint
C2D_QUEUE_FULL = errors.C2D_QUEUE_FULL
C2D_UNKNOWN_DEVICE = errors.C2D_UNKNOWN_DEVICE
C2D_BAD_MESSAGE = errors.C2D_BAD_MESSAGE

CONDITIONS = {
    AMQP_MALFORMED: "amqp:decode-error",
    AMQP_FRAME_TOO_LARGE: "amqp:connection:framing-error",
    AMQP_MESSAGE_TOO_LARGE: "amqp:link:message-size-exceeded",
    AMQP_SASL_REFUSED: "amqp:unauthorized-access",
    AMQP_UNAUTHORIZED: "amqp:unauthorized-access",
    AMQP_CBS_REFUSED: "amqp:unauthorized-access",
    AMQP_NOT_FOUND: "amqp:not-found",
    AMQP_BAD_FILTER: "com.microsoft:argument-error",
    AMQP_TOO_MANY_LINKS: "amqp:resource-limit-exceeded",
    AMQP_IDLE: "amqp:connection:forced",
    AMQP_REDIRECT: "amqp:link:redirect",
    C2D_QUEUE_FULL: "amqp:resource-limit-exceeded",
    C2D_UNKNOWN_DEVICE: "amqp:not-found",
    C2D_BAD_MESSAGE: "amqp:invalid-field",
}


def condition_of(code: str) -> str:
    return CONDITIONS.get(code, "amqp:internal-error")


class LinkRedirect(errors.HubError):
    """IoT Hub answers a receiver on `<hub>/messages/events/...` with a detach `amqp:link:redirect`
    naming the Event Hub-compatible endpoint (the azure-iot CLI's uamqp probe relies on it)."""

    def __init__(self, info: dict[str, object]) -> None:
        super().__init__("messages/events is served by the Event Hub-compatible endpoint", code=AMQP_REDIRECT)
        self.info = info
