"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), optional.

Served when ``EDB_OIP_GRPC_LISTEN=host:port`` is set and ``grpcio`` and the service's generated
stubs are installed (``tritonclient[grpc]`` ships them for Triton's ``GRPCInferenceService``, a
superset of the KServe v2 service with the same package, messages and method names); otherwise the
runner logs that gRPC is unavailable and serves REST only. A request is translated into the REST
form (typed contents -> JSON ``data``, ``raw_input_contents`` -> the binary extension) and checked
by the same :func:`.oip.parse_infer`, so both transports refuse the same lies with the same codes;
the code leads the gRPC status message (``RUNNER_INPUT_MISMATCH: ...``). Outputs are returned as
``raw_output_contents``.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from inference_runner import oip
from inference_runner.decode import DecodedInput
from inference_runner.oip import OipError, encode_response

if TYPE_CHECKING:
    from inference_runner.oip_server import OipServer

log = logging.getLogger("inference_runner.oip")

#: InferTensorContents field per datatype (typed, non-raw contents)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def available() -> bool:
    try:
        import grpc  # noqa: F401
        from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: F401
    except ImportError:
        return False
    return True


def _status(status: int) -> Any:
    import grpc

    return {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
            413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
            503: grpc.StatusCode.UNAVAILABLE}.get(status, grpc.StatusCode.INTERNAL)


def rest_form(request: Any) -> tuple[dict[str, Any], bytes]:
    """A ModelInferRequest as the REST header and binary body :func:`.oip.parse_infer` checks."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise OipError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs: list[dict[str, Any]] = []
    for i, tensor in enumerate(request.inputs):
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            item["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            field = _CONTENTS.get(tensor.datatype)
            if field is None:
                raise OipError(f"input {tensor.name[:60]!r}: {tensor.datatype[:20]} needs raw_input_contents")
            values = list(getattr(tensor.contents, field))
            if tensor.datatype == "BYTES":
                try:
                    values = [bytes(v).decode("utf-8") for v in values]
                except UnicodeDecodeError:
                    raise OipError(f"input {tensor.name[:60]!r}: BYTES elements must be UTF-8 text") from None
            item["data"] = values
        inputs.append(item)
    header: dict[str, Any] = {"inputs": inputs}
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [{"name": o.name} for o in request.outputs]
    return header, b"".join(raw)


class GrpcEndpoint:
    """The gRPC servicer over the REST endpoint's service, limits and concurrency counter."""

    def __init__(self, rest: OipServer) -> None:
        self.rest = rest
        self._server: Any = None

    async def start(self, host: str, port: int) -> int:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        servicer = _servicer(self)
        options = [("grpc.max_receive_message_length", self.rest.max_body_bytes),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        self._server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        bound = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        return int(bound)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None

    async def infer(self, request: Any) -> Any:
        from tritonclient.grpc import service_pb2

        rest = self.rest
        if rest.in_flight >= rest.max_concurrency:
            raise OipError(f"more than {rest.max_concurrency} requests in flight; retry later", code=oip.BUSY,
                           status=429)
        rest.in_flight += 1
        try:
            model, signature = rest.model_for(request.model_name, request.model_version or None)
            header, binary = rest_form(request)
            parsed = oip.parse_infer(header, memoryview(binary), signature, rest.service.limits)
            future = rest.service.submit(f"oip-{uuid.uuid4()}", DecodedInput(parsed.tensors, parsed.expected))
            reply = await future
        finally:
            rest.in_flight -= 1
        if reply.error is not None or reply.answer is None:
            from inference_runner.oip_server import client_code

            code = reply.error.code if reply.error else "RUNNER_INTERNAL"
            raise OipError(reply.error.message if reply.error else "no answer", code=code, status=client_code(code))
        binary_all = oip.InferRequest(parsed.id, parsed.tensors, tuple(
            oip.RequestedOutput(o.name, True) for o in parsed.outputs) if parsed.outputs else None, True)
        version = reply.model.version if reply.model is not None else model.version
        head, chunks = encode_response(model.name, version, binary_all, reply.answer.arrays)
        import json

        doc = json.loads(head)
        response = service_pb2.ModelInferResponse(model_name=doc["model_name"], model_version=doc["model_version"],
                                                  id=doc.get("id", ""))
        for out in doc["outputs"]:
            response.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
        response.raw_output_contents.extend(bytes(c) for c in chunks)
        return response


def _servicer(endpoint: GrpcEndpoint) -> Any:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    rest = endpoint.rest

    async def fail(context: Any, exc: OipError) -> None:
        rest.count_refusal(exc.code)
        await context.abort(_status(exc.status), f"{exc.code}: {exc.message[:500]}")

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ServerLive(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerReadyResponse(ready=rest.service.serving() is not None)

        async def ModelReady(self, request: Any, context: Any) -> Any:
            try:
                rest.model_for(request.name, request.version or None)
            except OipError:
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=True)

        async def ServerMetadata(self, request: Any, context: Any) -> Any:
            return service_pb2.ServerMetadataResponse(name="edb-inference-runner", version="1",
                                                      extensions=["binary_tensor_data"])

        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            try:
                model, signature = rest.model_for(request.name, request.version or None)
            except OipError as exc:
                await fail(context, exc)
            doc = oip.model_metadata(model.name, model.version, signature, None)
            response = service_pb2.ModelMetadataResponse(name=doc["name"], versions=doc["versions"],
                                                         platform=doc["platform"])
            for kind in ("inputs", "outputs"):
                for t in doc[kind]:
                    getattr(response, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            return response

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            try:
                return await endpoint.infer(request)
            except OipError as exc:
                await fail(context, exc)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # a bug: INTERNAL with a code, the endpoint goes on
                log.exception("OIP gRPC request failed")
                await context.abort(grpc.StatusCode.INTERNAL, f"RUNNER_INTERNAL: {type(exc).__name__}")

    return Servicer()

