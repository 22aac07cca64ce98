"""Register the simulated device and its system module identities in the hub (service API).

An IoT Edge device is created with ``capabilities.iotEdge``; IoT Hub gives it ``$edgeAgent`` and
``$edgeHub`` module identities. Whatever the hub already has is kept (a restart changes nothing).
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from azure.iot.hub import IoTHubRegistryManager
from msrest.exceptions import ClientException, HttpOperationError

from edb_local.supervisor.context import StackContext
from edb_local.supervisor.errors import SupervisorError

SYSTEM_MODULES = ("$edgeAgent", "$edgeHub")


@contextmanager
def ca_bundle(path: str) -> Iterator[None]:
    """azure-iot-hub (requests) reads its CA from REQUESTS_CA_BUNDLE; set it for this call only."""
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _status(exc: HttpOperationError) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def register_edge_device(ctx: StackContext) -> None:
    register_edge_device_with(ctx.service_connection_string, ctx.device_id, str(ctx.ca))


def register_edge_device_with(service_connection_string: str, device_id: str, ca_path: str) -> None:
    with ca_bundle(ca_path):
        registry = IoTHubRegistryManager.from_connection_string(service_connection_string)
        try:
            try:
                registry.get_device(device_id)
            except HttpOperationError as exc:
                if _status(exc) != 404:
                    raise
                registry.create_device_with_sas(device_id, _key(), _key(), "enabled", iot_edge=True)
            for module_id in SYSTEM_MODULES:
                try:
                    registry.get_module(device_id, module_id)
                except HttpOperationError as exc:
                    if _status(exc) != 404:
                        raise
                    registry.create_module_with_sas(device_id, module_id, None, _key(), _key())
        except (HttpOperationError, ClientException) as exc:
            raise SupervisorError(f"cannot register device {device_id} in the hub: {type(exc).__name__}: {exc}",
                                  code="LOCAL_DEVICE_REGISTRATION") from None
