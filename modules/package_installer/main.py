"""Process entry point: ``python -m package_installer.main`` (the image's CMD, the local agent's command).

Connects with ``IoTHubModuleClient.create_from_edge_environment()`` exactly as on a device, wires the
twin, connection and method handlers to :class:`~package_installer.service.InstallerService`, and
runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from edb.errors import EdbError
from package_installer.downloader import DownloadSettings
from package_installer.pipeline import InstallDeps
from package_installer.service import InstallerService
from package_installer.settings import InstallerSettings

log = logging.getLogger("package_installer")


async def run(settings: InstallerSettings, legacy: Any = None) -> None:
    from azure.iot.device import MethodResponse
    from azure.iot.device.aio import IoTHubModuleClient

    from edb.keyrelease.client import KeyReleaseClient, RetryPolicy
    from edb.tee.client import TeeClient

    tee = TeeClient(settings.tee_socket)
    key_release = KeyReleaseClient(
        settings.key_release_url, ca_bundle=str(settings.ca_file) if settings.ca_file else None,
        retry=RetryPolicy(max_attempts=settings.key_release_attempts, deadline_s=60.0),
    )
    download = DownloadSettings(cache_dir=settings.cache_dir, allowed_dirs=settings.allowed_dirs,
                                ca_file=settings.ca_file, connect_timeout_s=settings.connect_timeout_s,
                                read_timeout_s=settings.read_timeout_s)
    client = IoTHubModuleClient.create_from_edge_environment()
    service = InstallerService(client, InstallDeps(tee, key_release, download, legacy), settings,
                               tee_list=tee.list_installed, tee_uninstall=tee.uninstall)

    async def on_method(request: Any) -> None:
        status, payload = await service.handle_method(request.name, request.payload)
        await client.send_method_response(MethodResponse.create_from_method_request(request, status, payload))

    async def on_state_change() -> None:
        service.on_connection_state_change()

    loop = asyncio.get_running_loop()
    client.on_twin_desired_properties_patch_received = _on_loop(loop, service.on_desired_patch)
    client.on_method_request_received = _on_loop(loop, on_method)
    client.on_connection_state_change = _on_loop(loop, on_state_change)  # handler without argument

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await client.connect()
    log.info("connected; TEE at %s, key release at %s", settings.tee_socket, settings.key_release_url)
    try:
        await service.run(stop)
    finally:
        await client.shutdown()
        tee.close()


def _legacy_wrapper(settings: InstallerSettings) -> Any:
    """The WrapKey client when the weaker v1 key flow is explicitly enabled, else None."""
    if settings.legacy is None:
        return None
    from edb.keyrelease.legacy import LegacyWrapClient
    from package_installer.legacy import read_function_key

    log.warning("LEGACY v1 key flow ENABLED (weaker: no attestation for v1 packages) via %s",
                settings.legacy.wrap_url)
    return LegacyWrapClient(settings.legacy.wrap_url, function_key=read_function_key(settings.legacy.function_key_file),
                            ca_bundle=str(settings.ca_file) if settings.ca_file else None)


Handler = Callable[..., Coroutine[Any, Any, None]]


def _on_loop(loop: asyncio.AbstractEventLoop, handler: Handler) -> Handler:
    """The SDK runs coroutine handlers on its own event loop in another thread; the module's state
    lives on ``loop``, so each call is handed over to it (asyncio objects are not thread-safe)."""

    async def run(*args: Any) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(handler(*args), loop))

    return run


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        settings = InstallerSettings.from_env()
        legacy = _legacy_wrapper(settings)
    except EdbError as exc:
        log.error("configuration: %s", exc)
        return 2
    asyncio.run(run(settings, legacy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
