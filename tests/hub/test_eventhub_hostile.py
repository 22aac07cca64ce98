"""Hostile AMQP clients against the Event Hub-compatible endpoint: no SASL, an unknown mechanism,
links without a token, oversized frames, a consumer that never reads. Each is refused with a code,
costs only its own connection, and loses nothing from the log other consumers read."""

from __future__ import annotations

import json
import struct
import time

import pytest
from eventhub_helpers import RawAmqp, consumer, receive, wait_for

from edb_local.hub import HubThread
from edb_local.hub.amqp import codec
from edb_local.hub.amqp.auth import service_policy_key
from edb_local.hub.amqp.connection import WRITE_HIGH
from edb_local.hub.amqp.endpoint import MAX_EVENT_MESSAGE
from edb_local.hub.amqp.eventlog import partition_of
from edb_local.hub.topics import Identity, PropertyBag
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(120)


def partition_address(hub: HubThread, device: str) -> str:
    return (f"amqps://{hub.config.address}/{hub.config.eventhub_name}/ConsumerGroups/$Default/Partitions/"
            f"{partition_of(device, hub.config.eventhub_partitions)}")


def ingest(hub: HubThread, device: str, count: int, size: int = 64) -> None:
    def run() -> None:
        for n in range(count):
            body = json.dumps({"n": n, "pad": "x" * size}).encode()
            hub.server.core.ingest(Identity(device), PropertyBag({}, {}), body)

    hub.call(run)


def test_a_connection_without_sasl_is_refused(hub: HubThread, stack_ca: StackCA) -> None:
    raw = RawAmqp(hub, str(stack_ca.ca_path))
    raw.send(codec.AMQP_HEADER)
    assert raw.read_exact(8) == codec.SASL_HEADER     # the server says what it speaks, then closes
    assert raw.closed()
    assert "HUB_AMQP_SASL_REFUSED" in hub.server.core.refusal_codes()


def test_unknown_sasl_mechanism_and_bad_plain_password_are_refused(hub: HubThread, stack_ca: StackCA) -> None:
    raw = RawAmqp(hub, str(stack_ca.ca_path))
    assert raw.sasl(b"EXTERNAL") == 1 and raw.closed()
    raw = RawAmqp(hub, str(stack_ca.ca_path))
    assert raw.sasl(b"PLAIN", b"\x00iothubowner@sas.root.hub\x00SharedAccessSignature sr=x&sig=y&se=1") == 1
    assert raw.closed()
    assert hub.server.core.refusal_codes().count("HUB_AMQP_SASL_REFUSED") == 2


def test_links_without_a_token_are_detached_unauthorized(hub: HubThread, stack_ca: StackCA) -> None:
    ingest(hub, "secret-dev", 3)
    raw = RawAmqp(hub, str(stack_ca.ca_path))
    raw.open_session()
    raw.attach(0, partition_address(hub, "secret-dev"), receiver=True)
    raw.flow(0, 100)
    detach = raw.until(codec.DETACH)
    error = detach.fields[2]
    assert error[0] == b"amqp:unauthorized-access" and b"HUB_AMQP_UNAUTHORIZED" in error[1]
    raw.attach(1, f"amqps://{hub.config.address}/messages/devicebound", receiver=False)
    detach = raw.until(codec.DETACH)
    assert detach.fields[2][0] == b"amqp:unauthorized-access"
    raw.close()


def test_oversized_frames_close_only_that_connection(hub: HubThread, stack_ca: StackCA) -> None:
    raw = RawAmqp(hub, str(stack_ca.ca_path))
    raw.open_session()
    raw.send(struct.pack(">IBcH", 64 * 1024 * 1024, 2, b"\x00", 0))   # declares 64 MiB, sends nothing more
    close = raw.until(codec.CLOSE)
    assert close.fields[0][0] == b"amqp:connection:framing-error"
    assert raw.closed()
    assert "HUB_AMQP_FRAME_TOO_LARGE" in hub.server.core.refusal_codes()
    ingest(hub, "after-big", 2)
    events = receive(consumer(hub, str(stack_ca.ca_path)), 2)
    assert [json.loads(e.body_as_str())["n"] for e in events] == [0, 1]


def test_a_consumer_that_never_reads_costs_a_bounded_buffer_and_loses_nothing(
        hub: HubThread, stack_ca: StackCA) -> None:
    config = hub.config
    stalled = RawAmqp(hub, str(stack_ca.ca_path))
    stalled.open_session()
    audience = f"sb://{config.address}/{config.eventhub_name}"
    from azure.eventhub._pyamqp.utils import generate_sas_token

    token = generate_sas_token(audience, "service", service_policy_key(config.owner_key), int(time.time()) + 600)
    assert stalled.put_token(token, audience) == 200
    stalled.attach(2, partition_address(hub, "flood-dev"), receiver=True)
    stalled.until(codec.ATTACH)
    stalled.flow(2, 100_000)                      # all the credit it wants, then it never reads again
    total = 1500
    for _ in range(3):
        ingest(hub, "flood-dev", total // 3, size=16 * 1024)   # 24 MB in all

    def stalled_buffers() -> list[tuple[bool, int]]:
        endpoint = hub.server.amqp
        assert endpoint is not None
        return [(c.paused, c.transport.get_write_buffer_size() if c.transport else 0)
                for c in endpoint.connections]

    paused = wait_for(lambda: [b for b in hub.call(stalled_buffers) if b[0]])
    assert paused, "the stalled connection never reached its write high-water mark"
    # another consumer reads everything meanwhile (the hub keeps serving others)
    events = receive(consumer(hub, str(stack_ca.ca_path)), total, timeout=60,
                     partition_id=str(partition_of("flood-dev", config.eventhub_partitions)))
    assert [json.loads(e.body_as_str())["n"] for e in events] == [n for _ in range(3) for n in range(total // 3)]
    assert all(size <= WRITE_HIGH + 2 * MAX_EVENT_MESSAGE for _, size in hub.call(stalled_buffers))
    stalled.close()
    # the log outlives both consumers: a new one from the start still sees every message
    again = receive(consumer(hub, str(stack_ca.ca_path)), total, timeout=60,
                    partition_id=str(partition_of("flood-dev", config.eventhub_partitions)))
    assert len(again) == total and len({e.sequence_number for e in again}) == total


def test_an_oversized_c2d_delivery_detaches_its_link(hub: HubThread, stack_ca: StackCA) -> None:
    from edb_local.hub.amqp import fastcodec
    from edb_local.hub.sas import make_token

    config = hub.config
    raw = RawAmqp(hub, str(stack_ca.ca_path))
    raw.open_session()
    token = make_token(config.address, config.owner_key, expiry=int(time.time()) + 600, key_name="iothubowner",
                       quote_plus=True)
    assert raw.put_token(token, f"https://{config.address}") == 200
    raw.attach(2, f"amqps://{config.address}/messages/devicebound", receiver=False)
    raw.until(codec.ATTACH)
    chunk = b"\x00" * 60_000
    raw.send(fastcodec.transfer_frame(0, 2, 0, chunk, more=True))       # 60 KB, more to come
    raw.send(fastcodec.transfer_frame(0, 2, None, chunk, more=True))    # 120 KB: over the link's limit
    detach = raw.until(codec.DETACH)
    assert detach.fields[0] == 2 and detach.fields[2][0] == b"amqp:link:message-size-exceeded"
    assert "HUB_AMQP_MESSAGE_TOO_LARGE" in hub.server.core.refusal_codes()
    raw.close()
