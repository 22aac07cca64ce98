"""Process entry point: ``python -m inference_runner.main``.

Environment: ``EDB_TEE_SOCKET`` (the TEE service's socket); ``EDB_OIP_LISTEN`` (``host:port`` of
the Open Inference Protocol endpoint; unset: no endpoint), ``EDB_OIP_MAX_BODY_BYTES`` (64 MiB),
``EDB_OIP_MAX_CONCURRENCY`` (8); ``EDB_OIP_GRPC_LISTEN`` (the same protocol over gRPC, when
``grpcio`` and the service stubs are installed: :mod:`.oip_grpc`). Everything else comes from the
module twin (``model``, ``batching``, ``limits``, ``results``, ``stats``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from edb.module_runtime import ModuleRuntime, configure_logging
from inference_runner.oip_grpc import GrpcEndpoint
from inference_runner.oip_grpc import available as grpc_available
from inference_runner.oip_server import DEFAULT_MAX_BODY, DEFAULT_MAX_CONCURRENCY, OipServer, parse_listen
from inference_runner.service import RunnerFailed, RunnerService

log = logging.getLogger("inference_runner")


def oip_settings() -> tuple[tuple[str, int] | None, int, int]:
    """(listen address or None, max body bytes, max concurrency) from the environment; ValueError."""
    listen = os.environ.get("EDB_OIP_LISTEN", "").strip()
    address = parse_listen(listen) if listen else None
    max_body = int(os.environ.get("EDB_OIP_MAX_BODY_BYTES", str(DEFAULT_MAX_BODY)))
    concurrency = int(os.environ.get("EDB_OIP_MAX_CONCURRENCY", str(DEFAULT_MAX_CONCURRENCY)))
    if not 1024 <= max_body <= 256 * 1024 * 1024 or not 1 <= concurrency <= 256:
        raise ValueError("EDB_OIP_MAX_BODY_BYTES must be 1024..256 MiB and EDB_OIP_MAX_CONCURRENCY 1..256")
    return address, max_body, concurrency


async def start_grpc(server: OipServer) -> GrpcEndpoint | None:
    """The gRPC endpoint if ``EDB_OIP_GRPC_LISTEN`` asks for one and it can be served; else None
    (logged: REST keeps serving)."""
    listen = os.environ.get("EDB_OIP_GRPC_LISTEN", "").strip()
    if not listen:
        return None
    if not grpc_available():
        log.error("EDB_OIP_GRPC_LISTEN is set but grpcio / the service stubs (tritonclient[grpc]) are not installed")
        return None
    try:
        host, port = parse_listen(listen)
        endpoint = GrpcEndpoint(server)
        bound = await endpoint.start(host, port)
    except (ValueError, RuntimeError, OSError) as exc:
        log.error("the OIP gRPC endpoint cannot listen on %s: %s", listen[:80], exc)
        return None
    log.info("Open Inference Protocol gRPC endpoint on %s:%d", host, bound)
    return endpoint


async def run(tee_socket: str, oip: tuple[tuple[str, int] | None, int, int]) -> None:
    from edb.tee.client import TeeClient

    with TeeClient(tee_socket) as tee:
        module = ModuleRuntime.from_edge_environment()
        service = RunnerService(module.client, tee)
        background: set[asyncio.Task[None]] = set()

        async def on_state_change() -> None:
            if module.client.connected:  # patches sent while we were away are lost: read the twin again
                task = asyncio.create_task(service.load_twin())
                background.add(task)
                task.add_done_callback(background.discard)

        module.on_message(service.on_message)
        module.on_desired_patch(service.on_desired_patch)
        module.on_method(service.handle_method)
        module.on_connection_state_change(on_state_change)
        address, max_body, concurrency = oip
        server = OipServer(service, max_body_bytes=max_body, max_concurrency=concurrency)
        async with module.connected() as stop:
            log.info("connected; TEE at %s", tee_socket)
            if address is not None:
                try:
                    port = await server.start(*address)
                    log.info("Open Inference Protocol endpoint on %s:%d", address[0], port)
                    service.oip_status = {"listening": True, "address": f"{address[0]}:{port}"}
                except OSError as exc:  # messages keep being served; the twin says why the endpoint is not
                    log.error("the Open Inference Protocol endpoint cannot listen on %s:%d: %s", *address, exc)
                    service.oip_status = {"listening": False, "address": f"{address[0]}:{address[1]}",
                                          "error": {"code": "RUNNER_OIP_LISTEN_FAILED", "message": str(exc)[:200]}}
            grpc_endpoint = await start_grpc(server)
            try:
                await service.run(stop)
            finally:
                if grpc_endpoint is not None:
                    await grpc_endpoint.stop()
                await server.stop()


def main() -> int:
    configure_logging()
    tee_socket = os.environ.get("EDB_TEE_SOCKET")
    if not tee_socket:
        log.error("configuration: EDB_TEE_SOCKET is not set")
        return 2
    try:
        oip = oip_settings()
    except ValueError as exc:
        log.error("configuration: %s", exc)
        return 2
    try:
        asyncio.run(run(tee_socket, oip))
    except RunnerFailed as exc:  # already logged and reported; non-zero so restartPolicy applies
        log.critical("exiting: %s", exc.message)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
