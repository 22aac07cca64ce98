"""IoT Hub MQTT topics: who may publish and subscribe to what, and the property bags.

Pure code. The device/module ids in topics are never url-encoded (the SDK does not encode them);
every key and value of a property bag is, with ``quote(safe='')`` (the SDK splits bags on ``/``,
``&`` and ``=``).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

from edb_local.hub import errors
from edb_local.hub.errors import HubError

# property-bag key -> system property name (the routing query's `$<name>`)
BAG_TO_SYSTEM = {
    "$.mid": "messageId",
    "$.cid": "correlationId",
    "$.uid": "userId",
    "$.ct": "contentType",
    "$.ce": "contentEncoding",
    "$.exp": "expiryTimeUtc",
    "$.ifid": "interfaceId",
    "$.on": "outputName",
}
# What a module receives on an input: the sender's system properties, plus the connection ids
# edgeHub adds ($.cdid / $.cmid go to the SDK's custom_properties, as on a real edge device).
_SYSTEM_TO_INPUT_BAG = (
    ("messageId", "$.mid"),
    ("correlationId", "$.cid"),
    ("userId", "$.uid"),
    ("contentType", "$.ct"),
    ("contentEncoding", "$.ce"),
    ("expiryTimeUtc", "$.exp"),
    ("connectionDeviceId", "$.cdid"),
    ("connectionModuleId", "$.cmid"),
)


@dataclass(frozen=True, slots=True)
class Identity:
    device_id: str
    module_id: str | None = None

    @property
    def client_id(self) -> str:
        return f"{self.device_id}/{self.module_id}" if self.module_id else self.device_id

    @property
    def topic_base(self) -> str:
        base = f"devices/{self.device_id}"
        return f"{base}/modules/{self.module_id}" if self.module_id else base

    def sas_resource(self, host: str) -> str:
        return f"{host}/{self.topic_base}"

    def __str__(self) -> str:
        return self.client_id


def identity_from_client_id(client_id: str) -> Identity:
    parts = client_id.split("/")
    if len(parts) == 1 and parts[0]:
        return Identity(parts[0])
    if len(parts) == 2 and all(parts):
        return Identity(parts[0], parts[1])
    raise HubError("client id is not `device` or `device/module`", code=errors.AUTH_BAD_CLIENT_ID)


def check_username(username: str | None, identity: Identity, host_names: frozenset[str]) -> None:
    """`{hubHostName}/{clientId}/?api-version=...`; any api-version is accepted."""
    if username is None:
        raise HubError("no username", code=errors.AUTH_BAD_USERNAME)
    prefix, sep, _query = username.partition("/?")
    expected = {f"{h.lower()}/{identity.client_id}" for h in host_names}
    host, _, rest = prefix.partition("/")
    if not sep or f"{host.lower()}/{rest}" not in expected:
        raise HubError("username does not name this hub and client", code=errors.AUTH_BAD_USERNAME)


#: A Digital Twins Model Identifier (DTDL v2): ``dtmi:<segment>(:<segment>)*;<version>``.
_DTMI_SEGMENT = r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?"
_DTMI = re.compile(rf"dtmi:{_DTMI_SEGMENT}(?::{_DTMI_SEGMENT})*;[1-9][0-9]{{0,8}}")
MAX_MODEL_ID = 2048


def model_id_from_username(username: str | None) -> str:
    """The IoT Plug and Play model id a client announces in its username's ``model-id`` query
    parameter (the SDK's ``product_info="dtmi:..."``); "" if none. A malformed one is refused."""
    _prefix, _sep, query = (username or "").partition("/?")
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("model-id")
    if not values:
        return ""
    model_id = values[-1]
    if len(values) > 1 or len(model_id) > MAX_MODEL_ID or not _DTMI.fullmatch(model_id):
        raise HubError("model-id is not a single valid DTMI", code=errors.AUTH_BAD_USERNAME)
    return model_id


# ---------------------------------------------------------------------------------------------
# property bags


@dataclass(slots=True)
class PropertyBag:
    system: dict[str, str] = field(default_factory=dict)
    application: dict[str, str | None] = field(default_factory=dict)


def decode_bag(bag: str) -> PropertyBag:
    """Parse `k=v&k2&k3=` as the SDK writes it. Unknown `$.` keys are dropped: a sender must not
    set what the hub sets (`$.cdid`, `$.cmid`)."""
    result = PropertyBag()
    if not bag:
        return result
    for entry in bag.split("&"):
        if not entry:
            continue
        raw_key, sep, raw_value = entry.partition("=")
        key = urllib.parse.unquote(raw_key)
        value = urllib.parse.unquote(raw_value) if sep else None
        if key in BAG_TO_SYSTEM:
            if value is not None:
                result.system[BAG_TO_SYSTEM[key]] = value
        elif key.startswith("$"):
            continue
        elif key:
            result.application[key] = value
    return result


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def encode_input_topic(identity: Identity, input_name: str, system: dict[str, str],
                       application: dict[str, str | None]) -> str:
    pairs: list[str] = []
    for name, key in _SYSTEM_TO_INPUT_BAG:
        value = system.get(name)
        if value is not None:
            pairs.append(f"{_q(key)}={_q(value)}")
    for key, app_value in application.items():
        pairs.append(_q(key) if app_value is None else f"{_q(key)}={_q(app_value)}")
    return f"{identity.topic_base}/inputs/{_q(input_name)}/{'&'.join(pairs)}"


_SYSTEM_TO_C2D_BAG = (
    ("messageId", "$.mid"),
    ("to", "$.to"),
    ("correlationId", "$.cid"),
    ("userId", "$.uid"),
    ("contentType", "$.ct"),
    ("contentEncoding", "$.ce"),
)


def encode_c2d_topic(identity: Identity, system: dict[str, str], application: dict[str, str | None]) -> str:
    """`devices/<id>/messages/devicebound/<property bag>`, as IoT Hub publishes a C2D message."""
    pairs = [f"{_q(key)}={_q(system[name])}" for name, key in _SYSTEM_TO_C2D_BAG if system.get(name) is not None]
    for key, app_value in application.items():
        pairs.append(_q(key) if app_value is None else f"{_q(key)}={_q(app_value)}")
    return f"{identity.topic_base}/messages/devicebound/{'&'.join(pairs)}"


# ---------------------------------------------------------------------------------------------
# what a client publishes


@dataclass(frozen=True, slots=True)
class TelemetryPublish:
    bag: PropertyBag


@dataclass(frozen=True, slots=True)
class TwinGet:
    rid: str


@dataclass(frozen=True, slots=True)
class TwinReportedPatch:
    rid: str


@dataclass(frozen=True, slots=True)
class MethodResponse:
    rid: str
    status: int


ClientPublish = TelemetryPublish | TwinGet | TwinReportedPatch | MethodResponse


def _query(topic: str) -> dict[str, str]:
    _, _, query = topic.partition("?")
    out: dict[str, str] = {}
    for entry in query.split("&"):
        key, sep, value = entry.partition("=")
        if sep:
            out[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    return out


def classify_publish(topic: str, identity: Identity) -> ClientPublish:
    """What a publish from ``identity`` means; HUB_TOPIC_FORBIDDEN for anything else, including
    any topic of another identity."""
    events = f"{identity.topic_base}/messages/events/"
    if topic.startswith(events):
        return TelemetryPublish(decode_bag(topic[len(events):]))
    if topic == f"{identity.topic_base}/messages/events":
        return TelemetryPublish(PropertyBag())
    if topic.startswith("$iothub/"):
        path = topic.partition("?")[0]
        rid = _query(topic).get("$rid")
        if rid is not None:
            if path == "$iothub/twin/GET/":
                return TwinGet(rid)
            if path == "$iothub/twin/PATCH/properties/reported/":
                return TwinReportedPatch(rid)
            parts = path.split("/")
            if len(parts) == 5 and parts[:3] == ["$iothub", "methods", "res"] and parts[4] == "":
                try:
                    status = int(urllib.parse.unquote(parts[3]))
                except ValueError:
                    pass
                else:
                    return MethodResponse(rid, status)
    raise HubError("topic not allowed for this identity", code=errors.TOPIC_FORBIDDEN, topic=topic)


def allowed_subscriptions(identity: Identity) -> frozenset[str]:
    allowed = {"$iothub/methods/POST/#", "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#"}
    if identity.module_id:
        allowed.add(f"{identity.topic_base}/inputs/#")
    else:
        allowed.add(f"{identity.topic_base}/messages/devicebound/#")
    return frozenset(allowed)


# topics the hub publishes to a client (prefixes matched by the subscriptions above)
def twin_response_topic(status: int, rid: str, version: int | None = None) -> str:
    topic = f"$iothub/twin/res/{status}/?$rid={_q(rid)}"
    return topic if version is None else f"{topic}&$version={version}"


def desired_patch_topic(version: int) -> str:
    return f"$iothub/twin/PATCH/properties/desired/?$version={version}"


def method_request_topic(name: str, rid: str) -> str:
    return f"$iothub/methods/POST/{_q(name)}/?$rid={_q(rid)}"


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching, for the hub's own fixed filters (`+` and trailing `#`)."""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)
