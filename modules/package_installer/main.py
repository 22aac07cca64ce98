"""Process entry point: ``python -m package_installer.main`` (the image's CMD, the local agent's command).

Connects with ``IoTHubModuleClient.create_from_edge_environment()`` exactly as on a device, wires the
twin, connection and method handlers to :class:`~package_installer.service.InstallerService`, and
runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from edb.errors import EdbError
from edb.module_runtime import ModuleRuntime, configure_logging
from package_installer.pipeline import InstallDeps
from package_installer.service import InstallerService
from package_installer.settings import InstallerSettings

log = logging.getLogger("package_installer")


async def run(settings: InstallerSettings, legacy: Any = None) -> None:
    from edb.keyrelease.client import KeyReleaseClient, RetryPolicy
    from edb.tee.client import TeeClient

    with TeeClient(settings.tee_socket) as tee:
        key_release = KeyReleaseClient(
            settings.key_release_url, ca_bundle=str(settings.ca_file) if settings.ca_file else None,
            retry=RetryPolicy(max_attempts=settings.key_release_attempts, deadline_s=60.0),
        )
        download = settings.download()
        if settings.allowed_hosts.any_host:
            log.warning("EDB_PACKAGE_HOSTS=*: packages may come from ANY https host a twin names")
        elif not settings.allowed_hosts.entries:
            log.warning("EDB_PACKAGE_HOSTS is empty: https package sources are refused (INSTALL_HOST_NOT_ALLOWED)")
        module = ModuleRuntime.from_edge_environment()
        service = InstallerService(module.client, InstallDeps(tee, key_release, download, legacy), settings,
                                   tee_list=tee.list_installed, tee_uninstall=tee.uninstall)

        async def on_state_change() -> None:
            service.on_connection_state_change()

        module.on_desired_patch(service.on_desired_patch)
        module.on_method(service.handle_method)
        module.on_connection_state_change(on_state_change)
        async with module.connected() as stop:
            log.info("connected; TEE at %s, key release at %s", settings.tee_socket, settings.key_release_url)
            await service.run(stop)


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


def main() -> int:
    configure_logging()
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
