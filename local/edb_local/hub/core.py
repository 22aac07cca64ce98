"""The hub's behaviour between the transports: authentication, sessions, twins over MQTT,
edgeHub routing and store-and-forward, direct methods, the upstream log.

Transports call in (the MQTT protocol objects in ``mqtt/server.py``, the HTTPS handlers in
``service/``); this module never touches a socket itself: it talks to a connected client through
the small :class:`ClientSession` interface.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edb_local.hub import errors, twin_events
from edb_local.hub.amqp.auth import SERVICE_POLICY, policy_keys
from edb_local.hub.c2d_hub import CloudToDevice
from edb_local.hub.config import OWNER_POLICY, HubConfig
from edb_local.hub.delivery import InputQueue, QueuedMessage
from edb_local.hub.errors import HubError
from edb_local.hub.message import HubMessage
from edb_local.hub.methods_hub import METHODS_FILTER, DirectMethods
from edb_local.hub.mqtt.codec import Connect, Publish
from edb_local.hub.routing import Delivery, RouteTable, parse_edgehub_desired, route_message, route_twin_change
from edb_local.hub.sas import parse_token, verify_token
from edb_local.hub.session import ClientSession
from edb_local.hub.state import HubState
from edb_local.hub.store import Store, UpstreamRow
from edb_local.hub.topics import (
    Identity,
    MethodResponse,
    PropertyBag,
    TelemetryPublish,
    TwinGet,
    TwinReportedPatch,
    allowed_subscriptions,
    check_username,
    classify_publish,
    desired_patch_topic,
    encode_c2d_topic,
    encode_input_topic,
    identity_from_client_id,
    model_id_from_username,
    twin_response_topic,
)
from edb_local.hub.twin import Twin

log = logging.getLogger("edb_local.hub")

DESIRED_FILTER = "$iothub/twin/PATCH/properties/desired/#"
TWIN_RES_FILTER = "$iothub/twin/res/#"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Something the hub refused: kept (bounded) for tests and diagnostics, and logged."""

    at: float
    code: str
    who: str
    detail: str


def redact_topic(topic: str) -> str:
    """A topic fit for a log line: no property bag (application property values) and no query."""
    path = topic.split("?")[0]
    if "/messages/events/" in path:
        path = path.split("/messages/events/")[0] + "/messages/events/..."
    elif "/inputs/" in path:
        path = path.split("/inputs/")[0] + "/inputs/..."
    return path[:160]


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HubCore:
    def __init__(self, config: HubConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.state = HubState(store)
        self.state.on_desired = self._on_desired
        self.state.connection_info = self._connection_info
        self.state.on_twin_change = self._service_twin_change
        self.sessions: dict[Identity, ClientSession] = {}
        self._conn_times: dict[Identity, tuple[float, float]] = {}
        self.route_tables: dict[str, RouteTable] = {}
        self.queues: dict[Identity, InputQueue] = {}      # module inputs (edgeHub store-and-forward)
        self.refusals: deque[Refusal] = deque(maxlen=1000)
        self.methods = DirectMethods(self.state, self.sessions)
        self._upstream_waiters: list[asyncio.Future[None]] = []
        self.upstream_listeners: list[Callable[[], None]] = []   # the AMQP endpoint's receivers
        self._wake_scheduled = False
        self.counters = {"telemetry_in": 0, "upstream": 0, "inputs_queued": 0, "inputs_acked": 0}
        self.c2d = CloudToDevice(config, store, self.state, self.sessions, self.counters, self.refuse)
        for identity, twin in self.state.twins.items():
            if identity.module_id == "$edgeHub":
                self._load_routes(identity.device_id, twin, report=False)
        for row in store.pending():
            message = QueuedMessage(row.priority, row.seq, row.input, row.expires, row.body, row.props)
            if row.module_id:
                self._queue(Identity(row.device_id, row.module_id)).push(message)
            else:   # C2D messages are stored with module_id "" (the module column is NOT NULL)
                self.c2d.queue(row.device_id).push(message)

    # -- diagnostics -------------------------------------------------------------------------

    def refuse(self, code: str, who: object, detail: str) -> None:
        """Record a refusal. ``detail`` must hold no secret and no payload (topics are passed
        through :func:`redact_topic` by callers)."""
        self.refusals.append(Refusal(time.time(), code, str(who), detail))
        log.warning("refused %s: %s (%s)", who, code, detail)

    def refusal_codes(self) -> list[str]:
        return [r.code for r in self.refusals]

    def _connection_info(self, identity: Identity) -> tuple[bool, str, str]:
        updated, activity = self._conn_times.get(identity, (0.0, 0.0))
        return identity in self.sessions, _iso(updated), _iso(activity)

    # -- authentication ----------------------------------------------------------------------

    def authenticate_device(self, connect: Connect) -> tuple[Identity, int]:
        """Check a CONNECT; returns the identity and the token's expiry (epoch seconds)."""
        identity = identity_from_client_id(connect.client_id)
        check_username(connect.username, identity, self.config.device_host_names)
        model_id = model_id_from_username(connect.username)
        if connect.password is None:
            raise HubError("no SAS token in the password", code=errors.AUTH_BAD_TOKEN)
        try:
            token = parse_token(connect.password.decode("utf-8"))
        except UnicodeDecodeError:
            raise HubError("password is not UTF-8", code=errors.AUTH_BAD_TOKEN) from None
        if token.key_name is not None:
            raise HubError("device connections take device or module tokens only", code=errors.AUTH_BAD_TOKEN)
        record = self.state.identities.get(identity)
        if record is None:
            raise HubError("unknown identity", code=errors.AUTH_UNKNOWN_IDENTITY)
        device = self.state.identities.get(Identity(identity.device_id))
        if device is None or device.status != "enabled":
            raise HubError("device is disabled", code=errors.AUTH_DISABLED_IDENTITY)
        verify_token(token, expected_resources=[identity.sas_resource(h) for h in self.config.device_host_names],
                     keys=record.keys)
        self.state.set_model_id(identity, model_id)  # authenticated: the twin shows what it announced
        return identity, token.expiry

    def authenticate_service(self, authorization: str | None, *, service_connect: bool = False) -> None:
        """The `Authorization` header of a service (azure-iot-hub) request: an `iothubowner` token
        for this hub's service host name. ``service_connect``: the request needs only IoT Hub's
        ServiceConnect permission (C2D purge and feedback), which the `service` policy has too."""
        if not authorization:
            raise HubError("no Authorization header", code=errors.AUTH_MISSING)
        token = parse_token(authorization)
        keys = policy_keys(self.config.owner_key)
        if token.key_name != OWNER_POLICY and not (service_connect and token.key_name == SERVICE_POLICY):
            raise HubError("unknown shared access policy, or one without this permission",
                           code=errors.AUTH_UNKNOWN_POLICY)
        hosts = {self.config.service_host, self.config.address, self.config.hub_name}
        verify_token(token, expected_resources=hosts, keys=[keys[token.key_name]])

    def authenticate_module_request(self, authorization: str | None, edge_module: str | None) -> Identity:
        """A module's own SAS token plus `x-ms-edge-moduleId: device/module` naming the same module
        (the edgeHub gateway endpoint for module-to-module methods)."""
        if not authorization:
            raise HubError("no Authorization header", code=errors.AUTH_MISSING)
        if not edge_module:
            raise HubError("no x-ms-edge-moduleId header", code=errors.AUTH_MISSING)
        identity = identity_from_client_id(edge_module)
        if identity.module_id is None:
            raise HubError("x-ms-edge-moduleId must be device/module", code=errors.AUTH_BAD_CLIENT_ID)
        self.authenticate_identity_request(authorization, identity)
        return identity

    def authenticate_identity_request(self, authorization: str | None, identity: Identity) -> None:
        """An HTTPS request a device or module makes with its own SAS token (file upload, methods
        through the gateway): the token must be that identity's, signed with its key, not expired."""
        if not authorization:
            raise HubError("no Authorization header", code=errors.AUTH_MISSING)
        token = parse_token(authorization)
        if token.key_name is not None:
            raise HubError("device and module requests take their own tokens", code=errors.AUTH_BAD_TOKEN)
        record = self.state.identities.get(identity)
        if record is None:
            raise HubError("unknown identity", code=errors.AUTH_UNKNOWN_IDENTITY)
        device = self.state.identities.get(Identity(identity.device_id))
        if device is None or device.status != "enabled":
            raise HubError("device is disabled", code=errors.AUTH_DISABLED_IDENTITY)
        verify_token(token, expected_resources=[identity.sas_resource(h) for h in self.config.device_host_names],
                     keys=record.keys)

    def authorize_method_call(self, caller: Identity | None, target: Identity) -> None:
        """The service (``caller`` None, an `iothubowner` token) may invoke any direct method; a
        module calling through its edgeHub only methods of modules on its own device, because an
        edgeHub reaches only its own device's clients."""
        if caller is None:
            return
        if target.module_id is None or target.device_id != caller.device_id:
            raise HubError(f"{caller} may invoke methods only on modules of device {caller.device_id}",
                           code=errors.AUTH_METHOD_TARGET)

    # -- sessions ----------------------------------------------------------------------------

    def attach(self, session: ClientSession) -> bool:
        """Register a newly authenticated connection; returns CONNACK's session-present flag."""
        identity = session.identity
        old = self.sessions.pop(identity, None)
        if old is not None:
            self.refuse(errors.MQTT_SESSION_TAKEN_OVER, identity, "a new connection replaced this one")
            self._release(identity)
            old.close()
        client_id = identity.client_id
        if session.clean_session:
            self.store.clear_session(client_id)
            present = False
            session.subscriptions = {}
        else:
            session.subscriptions = self.store.session(client_id)
            present = bool(session.subscriptions)
        self.sessions[identity] = session
        now = time.time()
        self._conn_times[identity] = (now, now)
        self.methods.wake_online(identity)
        asyncio.get_running_loop().call_soon(self.pump, identity)
        return present

    def detach(self, session: ClientSession) -> None:
        identity = session.identity
        if self.sessions.get(identity) is not session:
            return  # already replaced by a newer connection
        del self.sessions[identity]
        self._release(identity)
        if session.clean_session:
            self.store.clear_session(identity.client_id)
        self._conn_times[identity] = (time.time(), self._conn_times.get(identity, (0.0, 0.0))[1])

    def _release(self, identity: Identity) -> None:
        queue = self.queues.get(identity) if identity.module_id is not None else self.c2d.queues.get(identity.device_id)
        if queue is not None:
            queue.requeue_inflight()

    def inflight_packets(self, identity: Identity) -> Mapping[int, QueuedMessage]:
        """Packet ids of this identity's unacknowledged deliveries (a new packet id must avoid them)."""
        queue = self.queues.get(identity) if identity.module_id is not None else self.c2d.queues.get(identity.device_id)
        return queue.inflight if queue is not None else {}

    def touch(self, identity: Identity) -> None:
        updated, _ = self._conn_times.get(identity, (0.0, 0.0))
        self._conn_times[identity] = (updated, time.time())

    def subscribe(self, session: ClientSession, topics: tuple[tuple[str, int], ...]) -> list[int]:
        allowed = allowed_subscriptions(session.identity)
        codes: list[int] = []
        for topic_filter, qos in topics:
            if topic_filter not in allowed:
                self.refuse(errors.TOPIC_FORBIDDEN, session.identity, f"subscribe {redact_topic(topic_filter)!r}")
                codes.append(0x80)
                continue
            granted = min(qos, 1)
            session.subscriptions[topic_filter] = granted
            self.store.subscribe(session.identity.client_id, topic_filter, granted)
            codes.append(granted)
        if METHODS_FILTER in session.subscriptions:
            self.methods.wake_online(session.identity)
        return codes

    def unsubscribe(self, session: ClientSession, topics: tuple[str, ...]) -> None:
        for topic_filter in topics:
            session.subscriptions.pop(topic_filter, None)
            self.store.unsubscribe(session.identity.client_id, topic_filter)

    # -- publishes from clients --------------------------------------------------------------

    def on_publish(self, session: ClientSession, publish: Publish) -> bool:
        """Handle a client PUBLISH; False means the connection must be closed."""
        identity = session.identity
        if publish.qos == 2:
            self.refuse(errors.MQTT_QOS2_REFUSED, identity, "QoS 2 PUBLISH")
            return False
        try:
            request = classify_publish(publish.topic, identity)
        except HubError as exc:
            self.refuse(exc.code, identity, f"publish to {redact_topic(publish.topic)!r}")
            return False
        self.touch(identity)
        if isinstance(request, TelemetryPublish):
            if len(publish.payload) > self.config.max_message_bytes:
                self.refuse(errors.MESSAGE_TOO_LARGE, identity, f"{len(publish.payload)}-byte message")
                return False
            self.ingest(identity, request.bag, publish.payload)
        elif isinstance(request, TwinGet):
            self._twin_get(session, request.rid)
        elif isinstance(request, TwinReportedPatch):
            self._twin_reported(session, request.rid, publish.payload)
        elif isinstance(request, MethodResponse):
            self.methods.response(identity, request, publish.payload)
        if publish.qos == 1 and publish.packet_id is not None:
            packet_id = publish.packet_id
            self.store.after_commit(lambda: session.send_puback(packet_id))
        return True

    def on_puback(self, session: ClientSession, packet_id: int) -> None:
        if session.identity.module_id is None:
            self.c2d.puback(session.identity, packet_id)
            return
        queue = self.queues.get(session.identity)
        if queue is not None and queue.ack(packet_id, self.store):
            self.counters["inputs_acked"] += 1
            self.pump(session.identity)

    # -- twins -------------------------------------------------------------------------------

    @staticmethod
    def _respond(session: ClientSession, topic: str, payload: bytes) -> None:
        # Answered whether or not the client subscribed to $iothub/twin/res/#, as IoT Hub does: the
        # SDK's reconnect GET (ensure_desired_properties) is sent before that subscription exists.
        session.publish(topic, payload)

    def _twin_get(self, session: ClientSession, rid: str) -> None:
        twin = self.state.twin(session.identity)
        self._respond(session, twin_response_topic(200, rid), json.dumps(twin.mqtt_document()).encode())

    def _twin_reported(self, session: ClientSession, rid: str, payload: bytes) -> None:
        identity = session.identity
        try:
            patch = json.loads(payload.decode("utf-8"))  # NaN/Infinity parse, then validation refuses them
            twin = self.state.set_reported(identity, patch)
        except (UnicodeDecodeError, ValueError, RecursionError):
            self.refuse(errors.TWIN_INVALID, identity, "reported patch is not JSON")
            self._respond(session, twin_response_topic(400, rid), b"")
            return
        except HubError as exc:
            self.refuse(exc.code, identity, exc.message)
            self._respond(session, twin_response_topic(400, rid), b"")
            return
        self._respond(session, twin_response_topic(204, rid, twin.reported_version), b"")
        self._twin_change_notification(identity, twin_events.change_body(twin, reported=patch),
                                       twin_events.UPDATE, reported=True)

    def _on_desired(self, identity: Identity, twin: Twin, patch: dict[str, Any]) -> None:
        if identity.module_id == "$edgeHub":
            self._load_routes(identity.device_id, twin, report=True)
        session = self.sessions.get(identity)
        if session is not None and DESIRED_FILTER in session.subscriptions:
            session.publish(desired_patch_topic(twin.desired_version), json.dumps(patch).encode())

    # -- routing -----------------------------------------------------------------------------

    def _load_routes(self, device_id: str, twin: Twin, *, report: bool) -> None:
        """Compile `$edgeHub` desired routes; a bad configuration keeps the previous table and is
        reported in `$edgeHub` reported properties, as edgeHub does."""
        status: dict[str, Any]
        try:
            self.route_tables[device_id] = parse_edgehub_desired(twin.desired)
            status = {"code": 200, "description": ""}
        except HubError as exc:
            self.refuse(exc.code, Identity(device_id, "$edgeHub"), exc.message)
            status = {"code": 400, "description": f"{exc.code}: {exc.message}"}
        if report:
            self.state.set_reported(Identity(device_id, "$edgeHub"), {
                "schemaVersion": "1.1", "lastDesiredVersion": twin.desired_version, "lastDesiredStatus": status})

    def ingest(self, identity: Identity, bag: PropertyBag, body: bytes) -> None:
        """A message from a device or module: route it (edge modules) or take it upstream."""
        self.counters["telemetry_in"] += 1
        now = time.time()
        system = dict(bag.system)
        system["connectionDeviceId"] = identity.device_id
        if identity.module_id:
            system["connectionModuleId"] = identity.module_id
        system["enqueuedTime"] = _iso(now)
        message = HubMessage(body, system, dict(bag.application))
        device = self.state.identities.get(Identity(identity.device_id))
        if identity.module_id is not None and device is not None and device.iot_edge:
            table = self.route_tables.get(identity.device_id)
            if table is None:
                return  # edgeHub without routes forwards nothing
            for delivery in route_message(table, message, module_id=identity.module_id,
                                          output_name=system.get("outputName")):
                self._deliver(identity.device_id, delivery, message, now)
        else:
            self._upstream(identity, message, now)

    def _deliver(self, device_id: str, delivery: Delivery, message: HubMessage, now: float) -> None:
        if delivery.sink.upstream:
            sender = Identity(message.system["connectionDeviceId"], message.system.get("connectionModuleId"))
            self._upstream(sender, message, now)
            return
        assert delivery.sink.module is not None and delivery.sink.input is not None
        target = Identity(device_id, delivery.sink.module)
        props = message.to_record()
        expires = now + delivery.ttl_secs
        seq = self.store.add_pending(device_id, delivery.sink.module, delivery.sink.input, delivery.priority,
                                     expires, message.body, props)
        self._queue(target).push(QueuedMessage(delivery.priority, seq, delivery.sink.input, expires,
                                               message.body, props))
        self.counters["inputs_queued"] += 1
        self.pump(target)

    def _service_twin_change(self, identity: Identity, twin: Twin, tags: dict[str, Any] | None,
                             desired: dict[str, Any] | None, replaced: bool) -> None:
        body = twin_events.change_body(twin, tags=tags, desired=desired)
        self._twin_change_notification(identity, body, twin_events.REPLACE if replaced else twin_events.UPDATE,
                                       reported=False)

    def _twin_change_notification(self, identity: Identity, body: dict[str, Any], op_type: str, *,
                                  reported: bool) -> None:
        """IoT Hub emits a `twinChangeEvents` message for every twin change; with no custom route it
        reaches the built-in endpoint (`$upstream` here). An edge module's reported changes are
        edgeHub's: they go through the device's `/twinChangeNotifications` routes instead."""
        now = time.time()
        message = twin_events.twin_change_message(self.config.hub_name, identity, body, op_type, _iso(now))
        device = self.state.identities.get(Identity(identity.device_id))
        if identity.module_id is not None and device is not None and device.iot_edge:
            table = self.route_tables.get(identity.device_id)
            if not reported or table is None:
                return
            for delivery in route_twin_change(table, message):
                self._deliver(identity.device_id, delivery, message, now)
            return
        self._upstream(identity, message, now)

    def _queue(self, identity: Identity) -> InputQueue:
        queue = self.queues.get(identity)
        if queue is None:
            queue = self.queues[identity] = InputQueue()
        return queue

    def pump(self, identity: Identity) -> None:
        """Send queued messages to a connected, subscribed module (inputs) or device (C2D)."""
        if identity.module_id is None:
            self.c2d.pump(identity)
            return
        session = self.sessions.get(identity)
        queue = self.queues.get(identity)
        if session is None or queue is None or not queue.heap:
            return
        qos = session.subscriptions.get(f"{identity.topic_base}/inputs/#")
        if qos is None:
            return
        queue.pump(session, self.store, window=self.config.inflight_window, qos=qos)

    def input_topic(self, identity: Identity, message: QueuedMessage) -> str:
        if identity.module_id is None:
            return encode_c2d_topic(identity, message.props.get("system", {}), message.props.get("application", {}))
        return encode_input_topic(identity, message.input, message.props.get("system", {}),
                                  message.props.get("application", {}))

    def expire_pending(self) -> int:
        inputs = sum(queue.drop_expired(self.store) for queue in self.queues.values())
        return inputs + self.c2d.expire()

    # -- upstream (what IoT Hub receives) ----------------------------------------------------

    def _upstream(self, sender: Identity, message: HubMessage, now: float) -> None:
        self.store.add_upstream(sender.device_id, sender.module_id, message.body, message.to_record(), now)
        self.counters["upstream"] += 1
        if (self._upstream_waiters or self.upstream_listeners) and not self._wake_scheduled:
            self._wake_scheduled = True
            self.store.after_commit(self._wake_upstream)

    def _wake_upstream(self) -> None:
        self._wake_scheduled = False
        for listener in self.upstream_listeners:
            listener()
        waiters, self._upstream_waiters = self._upstream_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def upstream_since(self, since: int, limit: int) -> list[UpstreamRow]:
        return self.store.upstream_since(since, limit)

    async def wait_upstream(self, since: int, limit: int, timeout: float) -> list[UpstreamRow]:
        """Long poll: rows after ``since``, waiting up to ``timeout`` seconds for the first one."""
        rows = self.store.upstream_since(since, limit)
        if rows or timeout <= 0:
            return rows
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._upstream_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._upstream_waiters:
                self._upstream_waiters.remove(waiter)
        return self.store.upstream_since(since, limit)

    def close_all(self) -> None:
        for session in list(self.sessions.values()):
            session.close()
        self.methods.cancel_all()
