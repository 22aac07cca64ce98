"""The Open Inference Protocol endpoint (KServe v2 REST) for modules on the same device (aiohttp).

Routes: ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2/models/{name}[/versions/{v}]``, ``GET /v2/models/{name}[/versions/{v}]/ready``,
``POST /v2/models/{name}[/versions/{v}]/infer``. The model name is the package name the runner
serves (twin ``model.name``) and the version its installed version; any other name or version is
404. Inference requests join the runner's batches (:meth:`RunnerService.submit`): the same
limits, stats and result messages as inputs that arrive as messages, and large tensors cross to
the TEE through the shared-memory region.

Bounded: a body above ``max_body_bytes`` is 413 before it is read; more than ``max_concurrency``
requests in flight is 429. Every refusal is a JSON ``{"error", "code"}`` with a 4xx status
(5xx only for the runner's or the TEE's own failures). Listen only on the module network (the
container's interface, no published port) or, in the local stack, its 127.x address.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edb.schemas import ErrorInfo
from inference_runner import oip
from inference_runner.decode import DecodedInput
from inference_runner.oip import OipError, error_body
from inference_runner.signature import BAD_INPUT, INPUT_MISMATCH, INPUT_NOT_FINITE, TENSOR_TOO_LARGE

if TYPE_CHECKING:
    from inference_runner.service import RunnerService

log = logging.getLogger("inference_runner.oip")

DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_MAX_CONCURRENCY = 8
#: error codes of an answer that are the caller's fault (4xx); anything else is the server's (5xx)
_CLIENT_CODES = {BAD_INPUT: 400, INPUT_MISMATCH: 400, INPUT_NOT_FINITE: 400, TENSOR_TOO_LARGE: 413,
                 "RUNNER_UNSUPPORTED_CONTENT_TYPE": 415, "TEE_INPUT_INVALID": 400, "TEE_STRING_TOO_LARGE": 413,
                 "TEE_STRING_INVALID": 400, "RUNNER_NO_MODEL": 503, "RUNNER_STOPPING": 503}


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(error_body(code, message[:500]), status=status)


class OipServer:
    def __init__(self, service: RunnerService, *, max_body_bytes: int = DEFAULT_MAX_BODY,
                 max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.refused_busy = 0
        self._runner: web.AppRunner | None = None

    def count_refusal(self, code: str) -> None:
        """Refusals by code, in the runner's reported ``oip.refused`` (bounded: codes are ours)."""
        refused = self.service.oip_status.setdefault("refused", {})
        if code in refused or len(refused) < 32:
            refused[code] = refused.get(code, 0) + 1
        self.service.mark_report_dirty()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._errors])
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            app.router.add_get(base, self.metadata)
            app.router.add_get(base + "/ready", self.model_ready)
            app.router.add_post(base + "/infer", self.infer)
        return app

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); the port actually bound."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except OipError as exc:
            self.count_refusal(exc.code)
            return _json_error(exc.status, exc.code, exc.message)
        except web.HTTPRequestEntityTooLarge:
            self.count_refusal(oip.TOO_LARGE)
            return _json_error(413, oip.TOO_LARGE, f"the body is above the limit of {self.max_body_bytes} bytes")
        except web.HTTPNotFound:
            return _json_error(404, "RUNNER_OIP_NOT_FOUND", f"no route {request.method} {request.path[:100]}")
        except web.HTTPMethodNotAllowed:
            return _json_error(405, "RUNNER_OIP_METHOD", f"{request.method} is not allowed on {request.path[:100]}")
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug: the caller gets a 500 with a code, the endpoint goes on
            log.exception("OIP request failed")
            return _json_error(500, "RUNNER_INTERNAL", f"internal error ({type(exc).__name__})")

    # -- health and metadata ----------------------------------------------------------------------

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "edb-inference-runner", "version": "1",
                                  "extensions": ["binary_tensor_data"]})

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.service.serving() is not None
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    def _model(self, request: web.Request) -> tuple[Any, Any]:
        return self.model_for(request.match_info["name"], request.match_info.get("version"))

    def model_for(self, name: str, version: str | None) -> tuple[Any, Any]:
        """The serving model and its signature if ``name`` (and ``version``) is what serves."""
        serving = self.service.serving()
        spec = self.service.spec
        if serving is None and spec is not None and spec.name == name:  # wanted, not loaded (yet)
            raise OipError(f"model {name[:64]!r} is not serving yet", code=oip.NOT_READY, status=503)
        if serving is None or serving[0].name != name:
            raise OipError(f"model {name[:64]!r} is not served here", code=oip.UNKNOWN_MODEL, status=404)
        model, signature = serving
        if version is not None and version != model.version:
            raise OipError(f"model {name[:64]!r} version {version[:64]!r} is not served (serving {model.version})",
                           code=oip.UNKNOWN_MODEL, status=404)
        return model, signature

    async def metadata(self, request: web.Request) -> web.Response:
        model, signature = self._model(request)
        meta = self.service.model_metadata
        if meta is not None and (meta.name, meta.version) != (model.name, model.version):
            meta = None
        return web.json_response(oip.model_metadata(model.name, model.version, signature, meta))

    async def model_ready(self, request: web.Request) -> web.Response:
        model, _ = self._model(request)
        return web.json_response({"name": model.name, "ready": True})

    # -- inference ---------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> bytes | bytearray:
        length = request.content_length
        if length is not None and not request.headers.get("Transfer-Encoding"):
            return await _read_exactly(request, length)  # the length was checked against the limit
        return await request.read()  # chunked: bounded by client_max_size (413)

    async def infer(self, request: web.Request) -> web.StreamResponse:
        if self.in_flight >= self.max_concurrency:
            self.refused_busy += 1
            raise OipError(f"more than {self.max_concurrency} requests in flight; retry later", code=oip.BUSY,
                           status=429)
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise OipError(f"the body of {length} bytes is above the limit of {self.max_body_bytes}",
                           code=oip.TOO_LARGE, status=413)
        self.in_flight += 1
        try:
            return await self._infer(request)
        finally:
            self.in_flight -= 1

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        model, signature = self._model(request)
        body = await self._body(request)
        header, binary = oip.split_body(body, request.headers.get("Inference-Header-Content-Length"))
        parsed = oip.parse_infer(header, binary, signature, self.service.limits)
        future = self.service.submit(f"oip-{uuid.uuid4()}", DecodedInput(parsed.tensors, parsed.expected))
        reply = await asyncio.shield(future)  # a disconnecting caller does not cancel the batch's answer
        if reply.error is not None or reply.answer is None:
            error = reply.error or ErrorInfo("RUNNER_INTERNAL", "no answer")
            raise OipError(error.message, code=error.code, status=_CLIENT_CODES.get(error.code, 500))
        version = reply.model.version if reply.model is not None else model.version
        head, chunks = oip.encode_response(model.name, version, parsed, reply.answer.arrays)
        if not chunks:
            return web.Response(body=head, content_type="application/json")
        response = web.StreamResponse(headers={"Inference-Header-Content-Length": str(len(head))})
        response.content_type = "application/octet-stream"
        response.content_length = len(head) + sum(len(c) for c in chunks)
        await response.prepare(request)
        await response.write(head)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response


async def _read_exactly(request: web.Request, length: int) -> bytearray:
    """The body of a request with a Content-Length, received straight into one buffer (one copy;
    ``request.read()`` makes two). Fewer bytes than declared is a 400."""
    buf = bytearray(length)
    view = memoryview(buf)
    pos = 0
    while pos < length:
        chunk = await request.content.readany()
        if not chunk:
            raise OipError(f"the body ended after {pos} of its {length} bytes")
        if len(chunk) > length - pos:
            raise OipError("the body is longer than its Content-Length")
        view[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    return buf


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) from ``EDB_OIP_LISTEN``; raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"EDB_OIP_LISTEN must be host:port, got {value[:80]!r}")
    return host.strip("[]"), int(port)


def client_code(code: str) -> int:
    return _CLIENT_CODES.get(code, 500)


__all__ = ["OipServer", "client_code", "parse_listen"]
