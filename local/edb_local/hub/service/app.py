"""HTTPS on port 443: the IoT Hub service REST API (azure-iot-hub 2.7, api-version 2021-04-12),
the edgeHub gateway endpoint for module-to-module methods, and the `/edb/*` extensions.

The service API and the gateway share ``POST /twins/{d}/modules/{m}/methods``; they are told apart
by authentication: an `iothubowner` token (``skn=``) is the service, a module token together with
``x-ms-edge-moduleId`` is a module calling through its edgeHub.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from edb_local.hub import c2d, errors
from edb_local.hub.core import HubCore
from edb_local.hub.deployments import parse_target_condition
from edb_local.hub.errors import HubError
from edb_local.hub.fileupload import FileUploads, StorageAccount
from edb_local.hub.monitor_format import upstream_event
from edb_local.hub.service import bulk
from edb_local.hub.topics import Identity

log = logging.getLogger("edb_local.hub.service")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS = {
    errors.NOT_FOUND: (404, "DeviceNotFound"),
    errors.DEVICE_NOT_ONLINE: (404, "DeviceNotOnline"),
    errors.CONFLICT: (409, "DeviceAlreadyExists"),
    errors.PRECONDITION_FAILED: (412, "PreconditionFailed"),
    errors.C2D_LOCK_LOST: (412, "DeviceMessageLockLost"),
    errors.METHOD_TIMEOUT: (504, "GatewayTimeout"),
    errors.NOT_IMPLEMENTED: (501, "NotImplemented"),
    errors.FILE_UPLOAD_THROTTLED: (429, "ThrottlingException"),
    errors.UNREACHABLE: (503, "ServiceUnavailable"),
}
_MAX_BODY = 1024 * 1024
_UNAUTHENTICATED = ("/edb/health",)   # (the WebSocket paths are taken by the front middleware)
#: routes a device calls with its own SAS token (file upload)
_DEVICE_ROUTES = ("file-upload-start", "file-upload-complete")
#: routes IoT Hub's ServiceConnect permission allows (the `service` policy as well as `iothubowner`)
_SERVICE_CONNECT_ROUTES = ("c2d-purge", "feedback-receive", "feedback-complete", "feedback-abandon")
#: Who is calling: None for the service (an `iothubowner` token), else the module calling through edgeHub.
CALLER: web.RequestKey[Identity | None] = web.RequestKey("caller", Identity | None)  # type: ignore[arg-type]


def error_response(exc: HubError) -> web.Response:
    if exc.code.startswith("HUB_AUTH_"):
        status, name = 401, "IotHubUnauthorizedAccess"
    else:
        status, name = _STATUS.get(exc.code, (400, "ArgumentInvalid"))
    body = {"error": exc.to_dict(), "Message": f"ErrorCode:{name};{exc.message}", "ExceptionMessage": ""}
    return web.json_response(body, status=status)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw, parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HubError("request body is not JSON (NaN and Infinity are not JSON either)",
                       code=errors.BAD_REQUEST) from None


def _not_json(name: str) -> Any:
    """IoT Hub's parser refuses NaN/Infinity/-Infinity, which Python's json accepts by default."""
    raise ValueError(f"{name} is not JSON")


def _etag_response(doc: dict[str, Any], status: int = 200) -> web.Response:
    response = web.json_response(doc, status=status)
    if doc.get("etag"):
        response.headers["ETag"] = f'"{doc["etag"]}"'
    return response


def _top(request: web.Request, default: int = 1000) -> int:
    try:
        return max(1, min(int(request.query.get("top", default)), 10_000))
    except ValueError:
        raise HubError("top must be an integer", code=errors.BAD_REQUEST) from None


def _timeout(value: Any, default: int) -> float:
    """A method timeout in seconds: a number, or a string holding a whole number (the Azure CLI
    sends ``"responseTimeoutInSeconds": "30"``; IoT Hub accepts it)."""
    if value is None:
        return float(default)
    if isinstance(value, str) and value.strip().isdigit():
        return float(int(value.strip()))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HubError("timeouts must be numbers of seconds", code=errors.BAD_REQUEST)
    return float(value)


class ServiceApi:
    def __init__(self, core: HubCore) -> None:
        self.core = core
        self.state = core.state
        config = core.config
        self.uploads = FileUploads(StorageAccount.from_connection_string(config.file_upload_connection_string),
                                   config.file_upload_container, ca_path=config.file_upload_ca) \
            if config.file_upload_connection_string else None

    def app(self, front: Sequence[Middleware] = ()) -> web.Application:
        """``front``: middlewares after the error mapping and before authentication (the
        WebSocket endpoint, whose clients authenticate inside their own protocol)."""
        app = web.Application(middlewares=[self._errors, *front, self._auth], client_max_size=_MAX_BODY)
        r = app.router
        r.add_get("/edb/health", self.health)
        r.add_get("/edb/messages", self.messages)
        r.add_get("/devices", self.list_devices)
        r.add_post("/devices", self.bulk_devices)
        r.add_post("/devices/query", self.query)
        r.add_get("/devices/{id}", self.get_device)
        r.add_put("/devices/{id}", self.put_device)
        r.add_delete("/devices/{id}", self.delete_device)
        r.add_get("/devices/{id}/modules", self.list_modules)
        r.add_get("/devices/{id}/modules/{mid}", self.get_module)
        r.add_put("/devices/{id}/modules/{mid}", self.put_module)
        r.add_delete("/devices/{id}/modules/{mid}", self.delete_module)
        r.add_post("/devices/{id}/applyConfigurationContent", self.apply_content)
        r.add_delete("/devices/{id}/commands", self.purge_c2d, name=_SERVICE_CONNECT_ROUTES[0])
        r.add_get("/messages/serviceBound/feedback", self.receive_feedback, name=_SERVICE_CONNECT_ROUTES[1])
        r.add_delete("/messages/serviceBound/feedback/{lockToken}", self.complete_feedback,
                     name=_SERVICE_CONNECT_ROUTES[2])
        r.add_post("/messages/serviceBound/feedback/{lockToken}/abandon", self.abandon_feedback,
                   name=_SERVICE_CONNECT_ROUTES[3])
        r.add_post("/devices/{id}/files", self.file_upload_start, name=_DEVICE_ROUTES[0])
        r.add_post("/devices/{id}/files/notifications", self.file_upload_complete, name=_DEVICE_ROUTES[1])
        r.add_get("/twins/{id}", self.get_twin)
        r.add_patch("/twins/{id}", self.patch_twin)
        r.add_put("/twins/{id}", self.put_twin)
        r.add_post("/twins/{id}/methods", self.invoke_device_method)
        r.add_get("/twins/{id}/modules/{mid}", self.get_twin)
        r.add_patch("/twins/{id}/modules/{mid}", self.patch_twin)
        r.add_put("/twins/{id}/modules/{mid}", self.put_twin)
        r.add_post("/twins/{id}/modules/{mid}/methods", self.invoke_module_method)
        r.add_get("/configurations", self.list_configurations)
        r.add_post("/configurations/testQueries", self.test_queries)
        r.add_get("/configurations/{cid}", self.get_configuration)
        r.add_put("/configurations/{cid}", self.put_configuration)
        r.add_delete("/configurations/{cid}", self.delete_configuration)
        r.add_get("/statistics/devices", self.device_statistics)
        r.add_get("/statistics/service", self.service_statistics)
        return app

    # -- middlewares -------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except HubError as exc:
            if exc.code.startswith("HUB_AUTH_"):
                self.core.refuse(exc.code, f"https {request.remote}", f"{request.method} {request.path[:200]}")
            return error_response(exc)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _UNAUTHENTICATED:
            return await handler(request)   # (WebSocket clients authenticate in their own protocol)
        if request.match_info.http_exception is not None:
            # an IoT Hub API the stand-in lacks: say so before authentication, so that nobody goes
            # hunting for a credential problem (docs/iothub-standin.md lists what is supported)
            raise HubError(f"{request.method} {request.path[:200]} is not implemented by the hub stand-in",
                           code=errors.NOT_IMPLEMENTED)
        authorization = request.headers.get("Authorization")
        edge_module = request.headers.get("x-ms-edge-moduleId")
        if request.match_info.route.name in _DEVICE_ROUTES:
            device = Identity(request.match_info["id"])
            self.core.authenticate_identity_request(authorization, device)
            request[CALLER] = device
        elif edge_module is not None and request.method == "POST" and request.path.endswith("/methods"):
            request[CALLER] = self.core.authenticate_module_request(authorization, edge_module)
        else:
            self.core.authenticate_service(
                authorization, service_connect=request.match_info.route.name in _SERVICE_CONNECT_ROUTES)
            request[CALLER] = None  # the service: any target
        return await handler(request)

    # -- /edb extensions ---------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "hubName": self.core.config.hub_name,
                                  "connectedClients": len(self.core.sessions),
                                  "upstreamLastSeq": self.core.store.upstream_last_seq()})

    async def messages(self, request: web.Request) -> web.Response:
        """Upstream messages after ``since`` in the `az iot hub monitor-events` event shape;
        ``wait`` (seconds, up to 30) long-polls for the first new one."""
        try:
            since = int(request.query.get("since", "0"))
            limit = max(1, min(int(request.query.get("limit", "500")), 5000))
            wait = max(0.0, min(float(request.query.get("wait", "0")), 30.0))
        except ValueError:
            raise HubError("since, limit and wait must be numbers", code=errors.BAD_REQUEST) from None
        rows = await self.core.wait_upstream(since, limit, wait)
        events = [{"seq": row.seq, **upstream_event(row)} for row in rows]
        return web.json_response({"messages": events, "next": rows[-1].seq if rows else since,
                                  "last": self.core.store.upstream_last_seq()})

    # -- file upload (a device with its own token) -------------------------------------------

    def _uploads(self) -> FileUploads:
        if self.uploads is None:
            raise HubError("file upload needs a storage account; this hub has none configured",
                           code=errors.NOT_IMPLEMENTED)
        return self.uploads

    async def file_upload_start(self, request: web.Request) -> web.Response:
        uploads = self._uploads()
        body = await _json_body(request)
        info = uploads.start(request.match_info["id"], body.get("blobName") if isinstance(body, dict) else None)
        try:
            await uploads.ensure_container()
        except Exception as exc:  # storage down or untrusted: the device must not get a useless URI
            uploads.pending.pop(info["correlationId"], None)
            raise HubError(f"the file upload storage account is unreachable ({type(exc).__name__})",
                           code=errors.UNREACHABLE) from None
        return web.json_response(info)

    async def file_upload_complete(self, request: web.Request) -> web.Response:
        self._uploads().complete(request.match_info["id"], await _json_body(request))
        return web.Response(status=204)

    # -- identities --------------------------------------------------------------------------

    async def list_devices(self, request: web.Request) -> web.Response:
        devices = self.state.devices()[:_top(request)]
        return web.json_response([self.state.identity_json(d.identity) for d in devices])

    async def bulk_devices(self, request: web.Request) -> web.Response:
        result = bulk.apply_bulk(self.state, bulk.parse_entries(await _json_body(request)))
        if result.created:
            self.state.reconcile_deployments(result.created)
        for device_id in result.deleted:
            self._forget_device(device_id)
        return web.json_response(result.to_json(), status=200 if not result.errors else 400)

    def _forget_device(self, device_id: str) -> None:
        """A deleted device: close its (and its modules') connections, drop what was queued for it."""
        for session_identity in [i for i in self.core.sessions if i.device_id == device_id]:
            self.core.sessions[session_identity].close()
        self.core.store.delete_pending_for(device_id)
        self.core.c2d.forget(device_id)

    async def get_device(self, request: web.Request) -> web.Response:
        return _etag_response(self.state.identity_json(Identity(request.match_info["id"])))

    async def put_device(self, request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        record, _created = self.state.put_identity(device_id, None, await _json_body(request),
                                                   request.headers.get("If-Match"))
        if _created:
            self.state.reconcile_deployments([device_id])
        return _etag_response(self.state.identity_json(record.identity))

    async def delete_device(self, request: web.Request) -> web.Response:
        identity = Identity(request.match_info["id"])
        self.state.delete_identity(identity, request.headers.get("If-Match"))
        self._forget_device(identity.device_id)
        return web.Response(status=204)

    async def list_modules(self, request: web.Request) -> web.Response:
        modules = self.state.modules(request.match_info["id"])
        return web.json_response([self.state.identity_json(m.identity) for m in modules])

    async def get_module(self, request: web.Request) -> web.Response:
        identity = Identity(request.match_info["id"], request.match_info["mid"])
        return _etag_response(self.state.identity_json(identity))

    async def put_module(self, request: web.Request) -> web.Response:
        device_id, module_id = request.match_info["id"], request.match_info["mid"]
        record, created = self.state.put_identity(device_id, module_id, await _json_body(request),
                                                  request.headers.get("If-Match"))
        return _etag_response(self.state.identity_json(record.identity), status=201 if created else 200)

    async def delete_module(self, request: web.Request) -> web.Response:
        identity = Identity(request.match_info["id"], request.match_info["mid"])
        self.state.delete_identity(identity, request.headers.get("If-Match"))
        session = self.core.sessions.get(identity)
        if session is not None:
            session.close()
        self.core.store.delete_pending_for(identity.device_id, identity.module_id)
        self.core.queues.pop(identity, None)
        return web.Response(status=204)

    # -- cloud-to-device: purge and feedback ---------------------------------------------------

    async def purge_c2d(self, request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        purged = self.core.c2d.purge(device_id)
        return web.json_response({"deviceId": device_id, "totalMessagesPurged": purged})

    async def receive_feedback(self, request: web.Request) -> web.Response:
        """The next feedback message, locked: its records as the body, the lock token in `ETag`
        (quoted, as IoT Hub's HTTPS receive of device-bound messages has it), the message's system
        properties in `iothub-*` headers; 204 when there is none."""
        message = self.core.c2d.receive_feedback()
        if message is None:
            return web.Response(status=204)
        headers = {
            "ETag": f'"{message.lock_token}"',
            "iothub-messageid": message.message_id,
            "iothub-sequencenumber": str(message.sequence_number),
            "iothub-enqueuedtime": c2d.iso_utc(message.enqueued),
            "iothub-expiry": c2d.iso_utc(message.expires),
            "iothub-deliverycount": str(message.delivery_count),
            "iothub-userid": self.core.config.hub_name,
        }
        return web.Response(body=json.dumps(message.body()).encode(), headers=headers,
                            content_type=c2d.FEEDBACK_CONTENT_TYPE)

    async def complete_feedback(self, request: web.Request) -> web.Response:
        self.core.c2d.settle_feedback(request.match_info["lockToken"], complete=True)
        return web.Response(status=204)

    async def abandon_feedback(self, request: web.Request) -> web.Response:
        self.core.c2d.settle_feedback(request.match_info["lockToken"], complete=False)
        return web.Response(status=204)

    # -- twins -------------------------------------------------------------------------------

    @staticmethod
    def _twin_identity(request: web.Request) -> Identity:
        return Identity(request.match_info["id"], request.match_info.get("mid"))

    async def get_twin(self, request: web.Request) -> web.Response:
        return _etag_response(self.state.twin_json(self._twin_identity(request)))

    async def patch_twin(self, request: web.Request) -> web.Response:
        identity = self._twin_identity(request)
        self.state.update_twin(identity, await _json_body(request), request.headers.get("If-Match"), replace=False)
        return _etag_response(self.state.twin_json(identity))

    async def put_twin(self, request: web.Request) -> web.Response:
        identity = self._twin_identity(request)
        self.state.update_twin(identity, await _json_body(request), request.headers.get("If-Match"), replace=True)
        return _etag_response(self.state.twin_json(identity))

    # -- methods -----------------------------------------------------------------------------

    async def _invoke(self, request: web.Request, target: Identity) -> web.Response:
        self.core.authorize_method_call(request[CALLER], target)
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("methodName"), str) or not body["methodName"]:
            raise HubError("methodName is required", code=errors.BAD_REQUEST)
        status, payload = await self.core.methods.invoke(
            target, body["methodName"], body.get("payload"),
            response_timeout=_timeout(body.get("responseTimeoutInSeconds"), 30),
            connect_timeout=_timeout(body.get("connectTimeoutInSeconds"), 0))
        return web.json_response({"status": status, "payload": payload})

    async def invoke_device_method(self, request: web.Request) -> web.Response:
        return await self._invoke(request, Identity(request.match_info["id"]))

    async def invoke_module_method(self, request: web.Request) -> web.Response:
        return await self._invoke(request, Identity(request.match_info["id"], request.match_info["mid"]))

    # -- configurations ----------------------------------------------------------------------

    async def list_configurations(self, request: web.Request) -> web.Response:
        ids = sorted(self.state.configurations)[:_top(request, 20)]
        return web.json_response([self.state.configuration_json(cid) for cid in ids])

    async def get_configuration(self, request: web.Request) -> web.Response:
        return _etag_response(self.state.configuration_json(request.match_info["cid"]))

    async def put_configuration(self, request: web.Request) -> web.Response:
        doc, created = self.state.put_configuration(request.match_info["cid"], await _json_body(request),
                                                    request.headers.get("If-Match"))
        return _etag_response(doc, status=201 if created else 200)

    async def delete_configuration(self, request: web.Request) -> web.Response:
        self.state.delete_configuration(request.match_info["cid"], request.headers.get("If-Match"))
        return web.Response(status=204)

    async def test_queries(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        condition = body.get("targetCondition", "") if isinstance(body, dict) else ""
        errors_out = ""
        try:
            parse_target_condition(condition)
        except HubError as exc:
            errors_out = exc.message
        return web.json_response({"targetConditionError": errors_out, "customMetricQueryErrors": {}})

    async def apply_content(self, request: web.Request) -> web.Response:
        self.state.apply_configuration_content(request.match_info["id"], await _json_body(request))
        return web.Response(status=204)

    # -- queries and statistics --------------------------------------------------------------

    async def query(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise HubError("body must be {\"query\": \"SELECT ...\"}", code=errors.BAD_REQUEST)
        item_type, items = self.state.query(body["query"])
        try:
            page = max(1, min(int(request.headers.get("x-ms-max-item-count", "1000")), 1000))
            start = int(request.headers.get("x-ms-continuation") or 0)
        except ValueError:
            raise HubError("bad paging headers", code=errors.BAD_REQUEST) from None
        chunk = items[start:start + page]
        response = web.json_response(chunk)
        response.headers["x-ms-item-type"] = item_type
        if start + page < len(items):
            response.headers["x-ms-continuation"] = str(start + page)
        return response

    async def device_statistics(self, request: web.Request) -> web.Response:
        devices = self.state.devices()
        enabled = sum(1 for d in devices if d.status == "enabled")
        return web.json_response({"totalDeviceCount": len(devices), "enabledDeviceCount": enabled,
                                  "disabledDeviceCount": len(devices) - enabled})

    async def service_statistics(self, request: web.Request) -> web.Response:
        connected = {i.device_id for i in self.core.sessions}
        return web.json_response({"connectedDeviceCount": len(connected)})
