"""A small, strict MQTT 3.1.1 codec (OASIS MQTT 3.1.1, sections 2-3).

Pure code: bytes in, packets out, no I/O. :class:`MqttDecoder` is incremental (feed it what the
socket gives) and refuses, with :class:`MqttCodecError`, anything the specification calls a
protocol violation: wrong fixed-header flags, a remaining length longer than four bytes or above
the configured limit (checked before the body is buffered), trailing bytes, ill-formed UTF-8 or
U+0000 in strings, wildcards in a topic name, a zero packet identifier, QoS 3, DUP on QoS 0.

Why not amqtt's packet classes: they decode from an asyncio stream adapter (one await per field),
are not strict about several of the rules above, and would pull a broker framework into the
project for ~400 lines of codec. This one is fuzzed with hypothesis in tests/hub.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from edb_local.hub import errors
from edb_local.hub.errors import HubError

PROTOCOL_NAME = "MQTT"
PROTOCOL_LEVEL_311 = 4
_MAX_REMAINING_LENGTH = 268_435_455  # what four length bytes can express


class MqttCodecError(HubError):
    """A byte sequence that is not a valid MQTT 3.1.1 packet."""

    code = errors.MQTT_MALFORMED


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class ConnectReturnCode(IntEnum):
    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


SUBACK_FAILURE = 0x80


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    message: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    keep_alive: int = 60
    clean_session: bool = True
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    protocol_name: str = PROTOCOL_NAME
    protocol_level: int = PROTOCOL_LEVEL_311


@dataclass(frozen=True, slots=True)
class ConnAck:
    return_code: int
    session_present: bool = False


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int | None = None
    retain: bool = False
    dup: bool = False


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubRec:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubRel:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubComp:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnsubAck:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PingReq:
    pass


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


Packet = (
    Connect | ConnAck | Publish | PubAck | PubRec | PubRel | PubComp | Subscribe | SubAck
    | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect
)

# Fixed-header flag nibble every packet type must carry (PUBLISH is checked separately).
_REQUIRED_FLAGS = {
    PacketType.CONNECT: 0, PacketType.CONNACK: 0, PacketType.PUBACK: 0, PacketType.PUBREC: 0,
    PacketType.PUBREL: 2, PacketType.PUBCOMP: 0, PacketType.SUBSCRIBE: 2, PacketType.SUBACK: 0,
    PacketType.UNSUBSCRIBE: 2, PacketType.UNSUBACK: 0, PacketType.PINGREQ: 0, PacketType.PINGRESP: 0,
    PacketType.DISCONNECT: 0,
}


def _malformed(message: str) -> MqttCodecError:
    return MqttCodecError(message, code=errors.MQTT_MALFORMED)


# ---------------------------------------------------------------------------------------------
# topic rules (section 4.7)


def validate_topic_name(topic: str) -> None:
    if not topic:
        raise _malformed("empty topic name")
    if "+" in topic or "#" in topic:
        raise _malformed("wildcard in a topic name")


def validate_topic_filter(topic_filter: str) -> None:
    if not topic_filter:
        raise _malformed("empty topic filter")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise _malformed("'#' must be a whole, last level")
        if "+" in level and level != "+":
            raise _malformed("'+' must be a whole level")


# ---------------------------------------------------------------------------------------------
# decoding


class _Reader:
    """Cursor over one packet body; every read is bounds-checked."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def u8(self) -> int:
        if self._pos + 1 > len(self._data):
            raise _malformed("packet truncated")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def u16(self) -> int:
        if self._pos + 2 > len(self._data):
            raise _malformed("packet truncated")
        (value,) = struct.unpack_from("!H", self._data, self._pos)
        self._pos += 2
        return int(value)

    def binary(self) -> bytes:
        length = self.u16()
        if self._pos + length > len(self._data):
            raise _malformed("length-prefixed field runs past the packet")
        value = self._data[self._pos:self._pos + length]
        self._pos += length
        return bytes(value)

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("ill-formed UTF-8 string") from None
        if "\x00" in text:
            raise _malformed("U+0000 in a string")
        return text

    def rest(self) -> bytes:
        value = self._data[self._pos:]
        self._pos = len(self._data)
        return bytes(value)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise _malformed("trailing bytes after the packet's fields")


def _packet_id(reader: _Reader) -> int:
    packet_id = reader.u16()
    if packet_id == 0:
        raise _malformed("packet identifier 0")
    return packet_id


def _decode_connect(r: _Reader) -> Connect:
    protocol_name = r.string()
    if protocol_name != PROTOCOL_NAME:
        raise _malformed(f"protocol name {protocol_name!r} is not MQTT 3.1.1")
    level = r.u8()
    flags = r.u8()
    if flags & 0x01:
        raise _malformed("CONNECT reserved flag set")
    keep_alive = r.u16()
    client_id = r.string()
    will: Will | None = None
    will_flag = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    if will_flag:
        if will_qos > 2:
            raise _malformed("will QoS 3")
        will = Will(topic=r.string(), message=r.binary(), qos=will_qos, retain=will_retain)
        validate_topic_name(will.topic)
    elif will_qos or will_retain:
        raise _malformed("will QoS/retain without a will")
    username = r.string() if flags & 0x80 else None
    if flags & 0x40:
        if username is None:
            raise _malformed("password flag without username flag")
        password: bytes | None = r.binary()
    else:
        password = None
    r.end()
    return Connect(client_id=client_id, keep_alive=keep_alive, clean_session=bool(flags & 0x02),
                   username=username, password=password, will=will, protocol_name=protocol_name,
                   protocol_level=level)


def _decode_publish(flags: int, r: _Reader) -> Publish:
    qos = (flags >> 1) & 0x03
    dup = bool(flags & 0x08)
    if qos == 3:
        raise _malformed("PUBLISH with QoS 3")
    if qos == 0 and dup:
        raise _malformed("DUP set on a QoS 0 PUBLISH")
    topic = r.string()
    validate_topic_name(topic)
    packet_id = _packet_id(r) if qos else None
    return Publish(topic=topic, payload=r.rest(), qos=qos, packet_id=packet_id, retain=bool(flags & 0x01),
                   dup=dup)


def _decode_subscribe(r: _Reader) -> Subscribe:
    packet_id = _packet_id(r)
    topics: list[tuple[str, int]] = []
    while r.remaining():
        topic_filter = r.string()
        validate_topic_filter(topic_filter)
        options = r.u8()
        if options & 0xFC or (options & 0x03) == 3:
            raise _malformed("invalid requested QoS byte")
        topics.append((topic_filter, options))
    if not topics:
        raise _malformed("SUBSCRIBE without topic filters")
    return Subscribe(packet_id=packet_id, topics=tuple(topics))


def _decode_unsubscribe(r: _Reader) -> Unsubscribe:
    packet_id = _packet_id(r)
    topics: list[str] = []
    while r.remaining():
        topic_filter = r.string()
        validate_topic_filter(topic_filter)
        topics.append(topic_filter)
    if not topics:
        raise _malformed("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id=packet_id, topics=tuple(topics))


def _decode_suback(r: _Reader) -> SubAck:
    packet_id = _packet_id(r)
    codes = tuple(r.rest())
    if not codes or any(c not in (0, 1, 2, SUBACK_FAILURE) for c in codes):
        raise _malformed("invalid SUBACK return codes")
    return SubAck(packet_id=packet_id, return_codes=codes)


def _decode_connack(r: _Reader) -> ConnAck:
    ack_flags = r.u8()
    if ack_flags & 0xFE:
        raise _malformed("CONNACK reserved flags set")
    code = r.u8()
    if code > 5:
        raise _malformed("unknown CONNACK return code")
    r.end()
    return ConnAck(return_code=code, session_present=bool(ack_flags & 1))


def decode_packet(first_byte: int, body: bytes) -> Packet:
    """Decode one packet from its first fixed-header byte and its body (after the length)."""
    type_value, flags = first_byte >> 4, first_byte & 0x0F
    try:
        packet_type = PacketType(type_value)
    except ValueError:
        raise _malformed(f"reserved packet type {type_value}") from None
    if packet_type != PacketType.PUBLISH and flags != _REQUIRED_FLAGS[packet_type]:
        raise _malformed(f"invalid fixed-header flags for {packet_type.name}")
    r = _Reader(body)
    if packet_type == PacketType.PUBLISH:
        return _decode_publish(flags, r)
    if packet_type == PacketType.CONNECT:
        return _decode_connect(r)
    if packet_type == PacketType.CONNACK:
        return _decode_connack(r)
    if packet_type == PacketType.SUBSCRIBE:
        return _decode_subscribe(r)
    if packet_type == PacketType.SUBACK:
        return _decode_suback(r)
    if packet_type == PacketType.UNSUBSCRIBE:
        return _decode_unsubscribe(r)
    if packet_type in (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP,
                       PacketType.UNSUBACK):
        packet_id = _packet_id(r)
        r.end()
        if packet_type == PacketType.PUBACK:
            return PubAck(packet_id)
        if packet_type == PacketType.PUBREC:
            return PubRec(packet_id)
        if packet_type == PacketType.PUBREL:
            return PubRel(packet_id)
        if packet_type == PacketType.PUBCOMP:
            return PubComp(packet_id)
        return UnsubAck(packet_id)
    r.end()
    if packet_type == PacketType.PINGREQ:
        return PingReq()
    if packet_type == PacketType.PINGRESP:
        return PingResp()
    return Disconnect()


@dataclass
class MqttDecoder:
    """Incremental decoder: ``feed()`` bytes as they arrive, get whole packets back.

    The declared remaining length is checked against ``max_packet_size`` as soon as its bytes
    are in, so an oversized packet is refused before its body is buffered.
    """

    max_packet_size: int = 512 * 1024
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Packet]:
        self._buffer += data
        packets: list[Packet] = []
        buf = self._buffer
        pos = 0
        while True:
            header = _parse_fixed_header(buf, pos, self.max_packet_size)
            if header is None:
                break
            first_byte, body_start, length = header
            if len(buf) < body_start + length:
                break
            packets.append(decode_packet(first_byte, bytes(buf[body_start:body_start + length])))
            pos = body_start + length
        if pos:
            del buf[:pos]
        return packets

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def _parse_fixed_header(buf: bytearray, pos: int, max_packet_size: int) -> tuple[int, int, int] | None:
    if len(buf) - pos < 2:
        return None
    first_byte = buf[pos]
    multiplier, length, index = 1, 0, pos + 1
    while True:
        if index >= len(buf):
            return None
        byte = buf[index]
        length += (byte & 0x7F) * multiplier
        index += 1
        if not byte & 0x80:
            break
        multiplier *= 128
        if index - pos - 1 >= 4:
            raise _malformed("remaining length longer than four bytes")
    if length > max_packet_size:
        raise MqttCodecError(f"packet of {length} bytes exceeds the {max_packet_size}-byte limit",
                             code=errors.MQTT_OVERSIZED)
    return first_byte, index, length


# ---------------------------------------------------------------------------------------------
# encoding


def _encode_length(length: int) -> bytes:
    if length < 0 or length > _MAX_REMAINING_LENGTH:
        raise _malformed("remaining length out of range")
    out = bytearray()
    while True:
        byte = length % 128
        length //= 128
        if length:
            byte |= 0x80
        out.append(byte)
        if not length:
            return bytes(out)


def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    return _bin(raw)


def _bin(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise _malformed("field longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _frame(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _encode_length(len(body)) + body


def encode_publish(topic: str, payload: bytes, qos: int = 0, packet_id: int | None = None,
                   retain: bool = False, dup: bool = False) -> bytes:
    """Fast path for the packet the hub sends most."""
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    topic_raw = topic.encode("utf-8")
    head = struct.pack("!H", len(topic_raw)) + topic_raw
    if qos:
        head += struct.pack("!H", packet_id or 0)
    return bytes((0x30 | flags,)) + _encode_length(len(head) + len(payload)) + head + payload


def encode(packet: Packet) -> bytes:
    if isinstance(packet, Publish):
        return encode_publish(packet.topic, packet.payload, packet.qos, packet.packet_id, packet.retain,
                              packet.dup)
    if isinstance(packet, ConnAck):
        return _frame(0x20, bytes((1 if packet.session_present else 0, packet.return_code)))
    if isinstance(packet, PubAck):
        return _frame(0x40, struct.pack("!H", packet.packet_id))
    if isinstance(packet, PubRec):
        return _frame(0x50, struct.pack("!H", packet.packet_id))
    if isinstance(packet, PubRel):
        return _frame(0x62, struct.pack("!H", packet.packet_id))
    if isinstance(packet, PubComp):
        return _frame(0x70, struct.pack("!H", packet.packet_id))
    if isinstance(packet, SubAck):
        return _frame(0x90, struct.pack("!H", packet.packet_id) + bytes(packet.return_codes))
    if isinstance(packet, UnsubAck):
        return _frame(0xB0, struct.pack("!H", packet.packet_id))
    if isinstance(packet, PingReq):
        return b"\xc0\x00"
    if isinstance(packet, PingResp):
        return b"\xd0\x00"
    if isinstance(packet, Disconnect):
        return b"\xe0\x00"
    if isinstance(packet, Subscribe):
        body = struct.pack("!H", packet.packet_id) + b"".join(_str(t) + bytes((q,)) for t, q in packet.topics)
        return _frame(0x82, body)
    if isinstance(packet, Unsubscribe):
        body = struct.pack("!H", packet.packet_id) + b"".join(_str(t) for t in packet.topics)
        return _frame(0xA2, body)
    return _encode_connect(packet)


def _encode_connect(packet: Connect) -> bytes:
    flags = 0x02 if packet.clean_session else 0
    payload = _str(packet.client_id)
    if packet.will is not None:
        flags |= 0x04 | (packet.will.qos << 3) | (0x20 if packet.will.retain else 0)
        payload += _str(packet.will.topic) + _bin(packet.will.message)
    if packet.username is not None:
        flags |= 0x80
        payload += _str(packet.username)
    if packet.password is not None:
        flags |= 0x40
        payload += _bin(packet.password)
    body = _str(packet.protocol_name) + bytes((packet.protocol_level, flags)) + struct.pack("!H", packet.keep_alive)
    return _frame(0x10, body + payload)
