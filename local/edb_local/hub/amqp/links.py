"""Sessions and links of one AMQP connection: the bookkeeping AMQP 1.0 asks of a peer (handles,
delivery ids and counts, link credit, multi-frame deliveries), with no I/O of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edb_local.hub.amqp.eventlog import Position

CREDIT_GRANTED = 100        # credit we give a client's sender link ($cbs, $management, devicebound)


@dataclass(slots=True)
class Link:
    name: str
    handle: int             # the client's handle; ours is the same number
    we_send: bool           # True: the client receives on this link
    address: str
    node: str               # "$cbs" | "$management" | "events" | "devicebound" | "feedback"
    max_message: int
    # sending side (we_send)
    credit: int = 0
    delivery_count: int = 0
    # receiving side
    granted: int = 0
    partial: bytearray | None = None
    partial_id: int | None = None
    partial_settled: bool = False
    # event receivers
    consumer_group: str = ""
    partition: int = 0
    cursor: int = 0         # the last store sequence number sent (or skipped)
    position: Position | None = None
    epoch: int | None = None
    runtime_metrics: bool = False
    # service-bound sources (feedback): deliveries awaiting the receiver's disposition
    send_settled: bool = False                                  # the receiver asked for pre-settled
    unsettled: dict[int, str] = field(default_factory=dict)     # delivery id -> lock token
    closed: bool = False


@dataclass(slots=True)
class Session:
    channel: int
    next_outgoing_id: int = 0
    links: dict[int, Link] = field(default_factory=dict)

    def next_delivery_id(self) -> int:
        value = self.next_outgoing_id
        self.next_outgoing_id = (value + 1) & 0xFFFFFFFF
        return value

    def node_sender(self, node: str) -> Link | None:
        """Our sending link to the client's receiver of a request/response node (replies go there:
        neither pyamqp nor uamqp sets reply-to)."""
        for link in self.links.values():
            if link.we_send and link.node == node and not link.closed:
                return link
        return None


def flow_credit(link: Link, remote_delivery_count: int | None, link_credit: int) -> int:
    """AMQP 1.0 2.6.7: credit = delivery-count(receiver) + link-credit(receiver) - delivery-count(sender).

    azure-eventhub's pyamqp receiver never advances the delivery-count it sends (it re-flows
    `delivery_count=0, link_credit=300` whenever its own credit runs out), so a receiver count
    behind ours is read as "link-credit is the new credit": the spec formula would stall it at 0.
    A receiver that counts (uamqp) gets the spec formula."""
    credit = max(0, link_credit)
    if remote_delivery_count is None or remote_delivery_count < link.delivery_count:
        return credit
    return max(0, remote_delivery_count + credit - link.delivery_count)


def field_at(fields: list[Any], index: int) -> Any:
    return fields[index] if index < len(fields) else None
