"""Who may do what on the AMQP endpoint. Pure functions: the clock is a parameter.

Two kinds of audience arrive in CBS `put-token` (and in SASL PLAIN passwords):

- Event Hub-compatible (`sb://<address>/<entity>[/...]`): azure-eventhub and the azure-iot CLI.
  Event Hubs signs with the UTF-8 bytes of the key *string* (not its base64 decoding).
- IoT Hub service (`<hub host>` or `https://<hub host>`): azure-iot-hub's `send_c2d_message`.
  IoT Hub signs with the base64-decoded key.

Only shared access policies with ServiceConnect are accepted (`iothubowner`, `service`); device
and module keys (tokens without `skn`) and unknown policies are refused. A grant covers every
node whose address starts with the token's resource (scope rule of Event Hubs SAS: a token for
`sb://host/entity` covers `sb://host/entity/consumergroups/$default/...`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from edb_local.hub import errors
from edb_local.hub.config import OWNER_POLICY
from edb_local.hub.errors import HubError
from edb_local.hub.sas import parse_token

SERVICE_POLICY = "service"
SERVICE_CONNECT_POLICIES = (OWNER_POLICY, SERVICE_POLICY)


def service_policy_key(owner_key: str) -> str:
    """The `service` policy's key, derived from the `iothubowner` key so the stack needs no second
    secret file (rotating the owner key rotates it). Base64 of 32 bytes, like a real policy key."""
    digest = hmac.new(base64.b64decode(owner_key), b"edb-hub-policy:service", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def policy_keys(owner_key: str) -> dict[str, str]:
    return {OWNER_POLICY: owner_key, SERVICE_POLICY: service_policy_key(owner_key)}


@dataclass(frozen=True, slots=True)
class Grant:
    """A verified token: what it covers (normalised resource, see :func:`normalise`) and until when."""

    scope: str
    policy: str
    expiry: int
    event_hub: bool     # an `sb://` token (Event Hub-compatible endpoint) or an IoT Hub service one

    def covers(self, resource: str, *, event_hub: bool, now: float) -> bool:
        target = normalise(resource)
        inside = target == self.scope or target.startswith(self.scope.rstrip("/") + "/")
        return event_hub == self.event_hub and now < self.expiry and inside


def normalise(resource: str) -> str:
    """Lower-case, scheme and port stripped, no trailing slash: `sb://H/e/ConsumerGroups/x` and
    `amqps://h:5671/e/consumergroups/x` compare equal (Event Hubs names are case-insensitive)."""
    value = resource.strip().lower()
    for scheme in ("sb://", "amqps://", "amqp://", "https://", "wss://"):
        if value.startswith(scheme):
            value = value[len(scheme):]
            break
    host, sep, path = value.partition("/")
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return (host + sep + path).rstrip("/")


def verify_service_token(token_text: str, *, address: str, hub_names: frozenset[str], entity: str,
                         owner_key: str, now: float) -> Grant:
    """Check a CBS token (or SASL PLAIN password); returns what it grants. Raises HubError with a
    HUB_AUTH_* code: unparseable, device/module key, unknown policy, another hub or entity, bad
    signature, expired."""
    token = parse_token(token_text)
    if token.key_name is None:
        raise HubError("device and module keys cannot open service endpoints", code=errors.AUTH_BAD_TOKEN)
    keys = policy_keys(owner_key)
    key = keys.get(token.key_name)
    if key is None:
        raise HubError("unknown shared access policy", code=errors.AUTH_UNKNOWN_POLICY)
    scope = normalise(token.resource)
    host, _, path = scope.partition("/")
    event_hub = token.resource.strip().lower().startswith("sb://")
    if event_hub:
        if host != address or (path and path.split("/")[0] != entity.lower()):
            raise HubError("token is for another event hub", code=errors.AUTH_WRONG_RESOURCE)
        secret = key.encode("utf-8")
    else:
        if host not in {address, *(h.lower() for h in hub_names)} or path:
            raise HubError("token is for another hub", code=errors.AUTH_WRONG_RESOURCE)
        secret = base64.b64decode(key)
    expected = hmac.new(secret, f"{token.resource_raw}\n{token.expiry}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, token.signature):
        raise HubError("signature does not match", code=errors.AUTH_BAD_SIGNATURE)
    if token.expiry <= now:
        raise HubError("token expired", code=errors.AUTH_TOKEN_EXPIRED)
    if not event_hub:
        scope = address  # one hub: the host name and the address are the same service endpoint
    return Grant(scope=scope, policy=token.key_name, expiry=token.expiry, event_hub=event_hub)
