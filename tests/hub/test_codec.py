"""The MQTT 3.1.1 codec: round trips, the specification's MUST-close cases, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edb_local.hub.mqtt.codec import (
    ConnAck,
    Connect,
    Disconnect,
    MqttCodecError,
    MqttDecoder,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
)

topic_level = st.text(alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=("Cs",)),
                      min_size=1, max_size=12)
topics = st.lists(topic_level, min_size=1, max_size=5).map("/".join)
packet_ids = st.integers(1, 0xFFFF)

packets = st.one_of(
    st.builds(Publish, topic=topics, payload=st.binary(max_size=300), qos=st.just(0)),
    st.builds(Publish, topic=topics, payload=st.binary(max_size=300), qos=st.sampled_from([1, 2]),
              packet_id=packet_ids, retain=st.booleans(), dup=st.booleans()),
    st.builds(Connect, client_id=topic_level, keep_alive=st.integers(0, 0xFFFF), clean_session=st.booleans(),
              username=st.none() | topic_level, password=st.none(),
              will=st.none() | st.builds(Will, topic=topics, message=st.binary(max_size=20),
                                         qos=st.integers(0, 2), retain=st.booleans())),
    st.builds(ConnAck, return_code=st.integers(0, 5), session_present=st.booleans()),
    st.builds(PubAck, packet_id=packet_ids),
    st.builds(PubRel, packet_id=packet_ids),
    st.builds(Subscribe, packet_id=packet_ids,
              topics=st.lists(st.tuples(topics, st.integers(0, 2)), min_size=1, max_size=4).map(tuple)),
    st.builds(SubAck, packet_id=packet_ids,
              return_codes=st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4).map(tuple)),
    st.builds(Unsubscribe, packet_id=packet_ids, topics=st.lists(topics, min_size=1, max_size=4).map(tuple)),
    st.builds(UnsubAck, packet_id=packet_ids),
    st.just(PingReq()), st.just(PingResp()), st.just(Disconnect()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets, min_size=1, max_size=6), st.integers(1, 64))
def test_round_trip_in_any_chunking(sequence: list[object], chunk: int) -> None:
    wire = b"".join(encode(p) for p in sequence)  # type: ignore[arg-type]
    decoder = MqttDecoder()
    out = []
    for start in range(0, len(wire), chunk):
        out += decoder.feed(wire[start:start + chunk])
    assert out == sequence
    assert decoder.buffered == 0


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_fail_with_a_code(data: bytes) -> None:
    decoder = MqttDecoder(max_packet_size=256)
    try:
        for packet in decoder.feed(data):
            # whatever decodes must re-encode to something that decodes the same
            assert MqttDecoder().feed(encode(packet)) == [packet]
    except MqttCodecError as exc:
        assert exc.code in ("HUB_MQTT_MALFORMED", "HUB_MQTT_OVERSIZED")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets, min_size=1, max_size=3), st.data())
def test_mutated_packets_never_escape_as_other_errors(sequence: list[object], data: st.DataObject) -> None:
    wire = bytearray(b"".join(encode(p) for p in sequence))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    try:
        MqttDecoder(max_packet_size=4096).feed(bytes(wire))
    except MqttCodecError as exc:
        assert exc.code in ("HUB_MQTT_MALFORMED", "HUB_MQTT_OVERSIZED")


def _connect_body(flags: int, client_id: bytes = b"\x00\x01c", name: bytes = b"\x00\x04MQTT") -> bytes:
    body = name + b"\x04" + bytes((flags,)) + b"\x00\x3c" + client_id
    return b"\x10" + bytes((len(body),)) + body


@pytest.mark.parametrize("wire, reason", [
    (b"\x00\x00", "reserved packet type 0"),
    (b"\xf0\x00", "reserved packet type 15"),
    (b"\xc1\x00", "PINGREQ with flags"),
    (b"\x80\x05\x00\x01\x00\x00\x00", "SUBSCRIBE flags 0"),
    (b"\x82\x02\x00\x01", "SUBSCRIBE without filters"),
    (b"\x82\x06\x00\x01\x00\x01#\x03", "requested QoS 3"),
    (b"\x82\x07\x00\x01\x00\x02a#\x00", "'#' inside a level"),
    (b"\x82\x06\x00\x00\x00\x01a\x00", "packet id 0"),
    (b"\x36\x05\x00\x01a\x00\x01", "PUBLISH QoS 3"),
    (b"\x38\x03\x00\x01a", "DUP on QoS 0"),
    (b"\x30\x03\x00\x01+", "wildcard in a topic name"),
    (b"\x30\x04\x00\x02\xc3\x28", "ill-formed UTF-8"),
    (b"\x30\x03\x00\x01\x00", "U+0000 in a topic"),
    (b"\x30\x05\x00\x09abc", "string runs past the packet"),
    (b"\x40\x03\x00\x01\x00", "trailing bytes in PUBACK"),
    (b"\x30\xff\xff\xff\xff\x01", "five length bytes"),
    (_connect_body(0x01), "CONNECT reserved flag"),
    (_connect_body(0x40), "password without username"),
    (_connect_body(0x18), "will QoS without a will"),
    (_connect_body(0x00, name=b"\x00\x06MQIsdp"), "MQTT 3.1 protocol name"),
])
def test_protocol_violations_are_malformed(wire: bytes, reason: str) -> None:
    with pytest.raises(MqttCodecError) as err:
        MqttDecoder().feed(wire)
    assert err.value.code == "HUB_MQTT_MALFORMED", reason


def test_oversized_packet_is_refused_before_its_body_arrives() -> None:
    decoder = MqttDecoder(max_packet_size=1024)
    with pytest.raises(MqttCodecError) as err:
        decoder.feed(b"\x30\x81\x08")  # declares 1025 bytes, sends none of them
    assert err.value.code == "HUB_MQTT_OVERSIZED"


def test_partial_header_waits_for_more() -> None:
    decoder = MqttDecoder()
    assert decoder.feed(b"\x30") == []
    assert decoder.feed(b"\x80") == []
    assert decoder.feed(b"\x01") == []
    assert decoder.buffered == 3
