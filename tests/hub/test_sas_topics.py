"""SAS tokens and IoT Hub topics, checked against the SDKs' own encoders and decoders."""

from __future__ import annotations

import time

import pytest
from azure.iot.device.common.auth.sastoken import RenewableSasToken
from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism
from azure.iot.device.iothub.models import Message
from azure.iot.device.iothub.pipeline import mqtt_topic_iothub
from azure.iot.hub.sastoken import SasToken as ServiceSasToken
from hub_helpers import new_key
from hypothesis import given, settings
from hypothesis import strategies as st

from edb_local.hub.errors import HubError
from edb_local.hub.sas import make_token, parse_token, verify_token
from edb_local.hub.topics import (
    Identity,
    MethodResponse,
    TelemetryPublish,
    TwinGet,
    TwinReportedPatch,
    allowed_subscriptions,
    check_username,
    classify_publish,
    encode_input_topic,
    identity_from_client_id,
)

HUB = "hub.azure-devices.net"
MODULE = Identity("dev", "mod")


def test_device_sdk_token_verifies() -> None:
    key = new_key()
    token = RenewableSasToken(f"{HUB}/devices/dev/modules/mod", SymmetricKeySigningMechanism(key))
    verify_token(parse_token(str(token)), expected_resources=[MODULE.sas_resource(HUB)], keys=[new_key(), key])


def test_service_sdk_token_verifies_with_its_policy() -> None:
    key = new_key()
    parsed = parse_token(str(ServiceSasToken("127.0.0.5", key, "iothubowner")))
    assert parsed.key_name == "iothubowner"
    verify_token(parsed, expected_resources=["127.0.0.5"], keys=[key])


@pytest.mark.parametrize("mutate, code", [
    (lambda t, k: make_token(f"{HUB}/devices/dev/modules/mod", new_key(), expiry=int(time.time()) + 60),
     "HUB_AUTH_BAD_SIGNATURE"),
    (lambda t, k: make_token(f"{HUB}/devices/dev/modules/other", k, expiry=int(time.time()) + 60),
     "HUB_AUTH_WRONG_RESOURCE"),
    (lambda t, k: make_token(f"{HUB}/devices/DEV/modules/mod", k, expiry=int(time.time()) + 60),
     "HUB_AUTH_WRONG_RESOURCE"),
    (lambda t, k: make_token(f"{HUB}/devices/dev/modules/mod", k, expiry=int(time.time()) - 1),
     "HUB_AUTH_TOKEN_EXPIRED"),
    (lambda t, k: t.replace("se=", "se=1"), "HUB_AUTH_BAD_SIGNATURE"),    # expiry extended: signature breaks
    (lambda t, k: t.replace("SharedAccessSignature ", "Bearer "), "HUB_AUTH_BAD_TOKEN"),
    (lambda t, k: t + "&sr=x", "HUB_AUTH_BAD_TOKEN"),                       # duplicate field
    (lambda t, k: t.split("&sig=")[0] + "&se=1", "HUB_AUTH_BAD_TOKEN"),     # no signature
    (lambda t, k: t.replace("sig=", "sig=AAAA"), "HUB_AUTH_BAD_TOKEN"),     # not 32 bytes
])
def test_bad_tokens_are_refused_with_their_code(mutate: object, code: str) -> None:
    key = new_key()
    good = make_token(f"{HUB}/devices/dev/modules/mod", key, expiry=int(time.time()) + 600)
    with pytest.raises(HubError) as err:
        verify_token(parse_token(mutate(good, key)), expected_resources=[MODULE.sas_resource(HUB)],  # type: ignore[operator]
                     keys=[key])
    assert err.value.code == code


def test_host_name_case_is_ignored_but_ids_are_not() -> None:
    key = new_key()
    token = make_token("HUB.Azure-Devices.NET/devices/dev/modules/mod", key, expiry=int(time.time()) + 60)
    verify_token(parse_token(token), expected_resources=[MODULE.sas_resource(HUB)], keys=[key])


def test_client_ids_and_usernames() -> None:
    assert identity_from_client_id("d/m") == Identity("d", "m")
    assert identity_from_client_id("d") == Identity("d")
    for bad in ("", "/m", "d/", "a/b/c"):
        with pytest.raises(HubError) as err:
            identity_from_client_id(bad)
        assert err.value.code == "HUB_AUTH_BAD_CLIENT_ID"
    hosts = frozenset({HUB, "127.0.0.5"})
    check_username(f"{HUB}/dev/mod/?api-version=2021-04-12&DeviceClientType=x", MODULE, hosts)
    check_username("127.0.0.5/dev/mod/?api-version=1", MODULE, hosts)
    for bad in (None, f"{HUB}/dev/other/?api-version=1", "evil.net/dev/mod/?a=1", f"{HUB}/dev/mod"):
        with pytest.raises(HubError) as err:
            check_username(bad, MODULE, hosts)
        assert err.value.code == "HUB_AUTH_BAD_USERNAME"


bag_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20)


@settings(deadline=None)  # no timing assertions: a loaded CI machine must not fail this
@given(st.dictionaries(bag_text.filter(lambda k: not k.startswith("$")), bag_text, max_size=6),
       st.booleans())
def test_sdk_output_bags_decode_exactly(custom: dict[str, str], with_system: bool) -> None:
    message = Message("x", output_name="out/1" if with_system else None)
    if with_system:
        message.message_id, message.correlation_id = "m&1=2", "c/3"
        message.content_type, message.content_encoding = "application/json", "utf-8"
    message.custom_properties.update(custom)
    topic = mqtt_topic_iothub.encode_message_properties_in_topic(
        message, mqtt_topic_iothub.get_telemetry_topic_for_publish("dev", "mod"))
    parsed = classify_publish(topic, MODULE)
    assert isinstance(parsed, TelemetryPublish)
    assert parsed.bag.application == custom
    if with_system:
        assert parsed.bag.system == {"outputName": "out/1", "messageId": "m&1=2", "correlationId": "c/3",
                                     "contentType": "application/json", "contentEncoding": "utf-8"}


@settings(deadline=None)  # no timing assertions: a loaded CI machine must not fail this
@given(bag_text.filter(lambda s: "/" not in s), st.dictionaries(bag_text, bag_text | st.none(), max_size=6))
def test_input_topics_decode_exactly_in_the_sdk(input_name: str, application: dict[str, str | None]) -> None:
    application = {k: v for k, v in application.items() if not k.startswith("$")}
    system = {"messageId": "id/1", "contentType": "application/json", "connectionDeviceId": "dev",
              "connectionModuleId": "sensor"}
    topic = encode_input_topic(MODULE, input_name, system, application)
    assert mqtt_topic_iothub.is_input_topic(topic, "dev", "mod")
    message = Message(b"")
    mqtt_topic_iothub.extract_message_properties_from_topic(topic, message)
    assert mqtt_topic_iothub.get_input_name_from_topic(topic) == input_name
    assert message.message_id == "id/1" and message.content_type == "application/json"
    expected = {**application, "$.cdid": "dev", "$.cmid": "sensor"}
    assert message.custom_properties == expected


def test_senders_cannot_set_hub_properties() -> None:
    parsed = classify_publish("devices/dev/modules/mod/messages/events/%24.cdid=other&%24.cmid=x&%24.zz=1&a=1", MODULE)
    assert isinstance(parsed, TelemetryPublish)
    assert parsed.bag.system == {} and parsed.bag.application == {"a": "1"}


def test_publish_topics_and_acl() -> None:
    assert classify_publish("$iothub/twin/GET/?$rid=5", MODULE) == TwinGet("5")
    assert classify_publish("$iothub/twin/PATCH/properties/reported/?$rid=a%20b", MODULE) == TwinReportedPatch("a b")
    assert classify_publish("$iothub/methods/res/200/?$rid=9", MODULE) == MethodResponse("9", 200)
    for forbidden in ("devices/dev/modules/other/messages/events/", "devices/other/modules/mod/messages/events/",
                      "devices/dev/messages/events/", "$iothub/twin/GET/", "$iothub/methods/res/x/?$rid=1",
                      "devices/dev/modules/mod/inputs/in/", "anything"):
        with pytest.raises(HubError) as err:
            classify_publish(forbidden, MODULE)
        assert err.value.code == "HUB_TOPIC_FORBIDDEN"
    assert "devices/dev/modules/mod/inputs/#" in allowed_subscriptions(MODULE)
    assert "devices/dev/modules/other/inputs/#" not in allowed_subscriptions(MODULE)
    assert "#" not in allowed_subscriptions(MODULE)
