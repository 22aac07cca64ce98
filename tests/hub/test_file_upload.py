"""File upload with the real SDKs: azure-iot-device asks the hub for a SAS URI, azure-storage-blob
uploads to a real Azurite, the device notifies the hub. Refusals: a wrong key, another device's
upload, a SAS used for another blob, bad names, too many outstanding uploads, no storage (501)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.device.exceptions import ClientError
from azure.iot.hub import IoTHubRegistryManager
from azure.storage.blob import BlobClient, BlobServiceClient
from hub_helpers import new_key

from edb_local.hub import HubConfig, HubThread
from edb_local.hub.sas import make_token
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def upload_hub(hub_config: HubConfig, azurite: str, stack_ca: StackCA,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[HubThread]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    config = dataclasses.replace(hub_config, file_upload_connection_string=azurite, file_upload_ca=stack_ca.ca_path)
    with HubThread(config) as running:
        yield running


@pytest.fixture
async def devices(upload_hub: HubThread, stack_ca: StackCA) -> AsyncIterator[Callable[[str], Any]]:
    registry = IoTHubRegistryManager.from_connection_string(upload_hub.config.service_connection_string)
    clients: list[IoTHubDeviceClient] = []

    def make(device_id: str, key: str | None = None) -> IoTHubDeviceClient:
        real = new_key()
        registry.create_device_with_sas(device_id, real, real, "enabled")
        client = IoTHubDeviceClient.create_from_connection_string(
            upload_hub.config.device_connection_string(device_id, key or real),
            server_verification_cert=stack_ca.ca_pem)
        clients.append(client)
        return client

    yield make
    for client in clients:
        with contextlib.suppress(Exception):
            await client.shutdown()


def _blob_url(info: dict[str, str], blob_name: str | None = None) -> str:
    return f"https://{info['hostName']}/{info['containerName']}/{blob_name or info['blobName']}{info['sasToken']}"


async def test_device_uploads_a_blob_to_azurite(upload_hub: HubThread, devices: Callable[[str], Any],
                                                azurite: str, stack_ca: StackCA) -> None:
    client = devices("dev-up")
    info = await client.get_storage_info_for_blob("logs/run-1.txt")
    assert info["blobName"] == "dev-up/logs/run-1.txt" and info["containerName"] == "fileupload"
    assert info["sasToken"].startswith("?") and "sig=" in info["sasToken"]
    blob = BlobClient.from_blob_url(_blob_url(info), connection_verify=str(stack_ca.ca_path))
    await asyncio.to_thread(blob.upload_blob, b"line 1\nline 2\n")
    await client.notify_blob_upload_status(info["correlationId"], True, 200, "uploaded")

    service = BlobServiceClient.from_connection_string(azurite, connection_verify=str(stack_ca.ca_path))
    stored = service.get_blob_client("fileupload", "dev-up/logs/run-1.txt").download_blob().readall()
    assert stored == b"line 1\nline 2\n"
    notes = upload_hub.call(_notifications, upload_hub)
    assert [(n["deviceId"], n["blobName"]) for n in notes] == [("dev-up", "dev-up/logs/run-1.txt")]

    # the SAS is for that one blob: another name in the container is refused by storage
    other = BlobClient.from_blob_url(_blob_url(info, "dev-other/x.txt"), connection_verify=str(stack_ca.ca_path))
    with pytest.raises(HttpResponseError) as err:
        await asyncio.to_thread(other.upload_blob, b"x")
    assert err.value.status_code == 403
    # a correlation id completes once
    with pytest.raises(Exception):  # noqa: B017 (the SDK's ServiceError; the status is in its message)
        await client.notify_blob_upload_status(info["correlationId"], True, 200, "again")


async def test_file_upload_refusals(upload_hub: HubThread, devices: Callable[..., Any], stack_ca: StackCA) -> None:
    impostor = devices("dev-key", key=new_key())
    with pytest.raises(ClientError):
        await impostor.get_storage_info_for_blob("a.txt")
    assert "HUB_AUTH_BAD_SIGNATURE" in upload_hub.call(upload_hub.server.core.refusal_codes)

    owner, thief = devices("dev-own"), devices("dev-thief")
    info = await owner.get_storage_info_for_blob("a.txt")
    with pytest.raises(Exception):  # noqa: B017 (400: not this device's upload)
        await thief.notify_blob_upload_status(info["correlationId"], True, 200, "mine now")
    await owner.notify_blob_upload_status(info["correlationId"], False, 500, "gave up")  # still the owner's

    url = f"https://{upload_hub.config.address}/devices/dev-own/files?api-version=2021-04-12"
    key = upload_hub.call(lambda: upload_hub.server.core.state.identities[_device("dev-own")].keys[0])
    token = make_token(f"{upload_hub.config.hub_name}/devices/dev-own", key, expiry=int(time.time()) + 60)

    def start(name: Any) -> requests.Response:
        return requests.post(url, json={"blobName": name}, headers={"Authorization": token},
                             verify=str(stack_ca.ca_path), timeout=10)

    for bad in ("", "../escape.txt", "/abs.txt", "a\\b", "x" * 1025, 7):
        response = start(bad)
        assert response.status_code == 400 and response.json()["error"]["code"] == "HUB_BAD_REQUEST", bad
    assert all(start(f"f{i}.txt").status_code == 200 for i in range(10))
    throttled = start("f10.txt")
    assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "HUB_FILE_UPLOAD_THROTTLED"
    # a device token is no service token, and a service token is no device token
    assert requests.get(f"https://{upload_hub.config.address}/devices?api-version=2021-04-12",
                        headers={"Authorization": token}, verify=str(stack_ca.ca_path), timeout=10).status_code == 401


def _notifications(hub: HubThread) -> list[dict[str, Any]]:
    assert hub.server.service is not None and hub.server.service.uploads is not None
    return list(hub.server.service.uploads.notifications)


def _device(device_id: str) -> Any:
    from edb_local.hub.topics import Identity

    return Identity(device_id)


async def test_file_upload_without_storage_is_501_not_an_auth_error(hub: HubThread, registry: IoTHubRegistryManager,
                                                                   stack_ca: StackCA, tmp_path: Path) -> None:
    key = new_key()
    registry.create_device_with_sas("dev-nos", key, key, "enabled")
    token = make_token(f"{hub.config.hub_name}/devices/dev-nos", key, expiry=int(time.time()) + 60)
    response = requests.post(f"https://{hub.config.address}/devices/dev-nos/files?api-version=2021-04-12",
                             json={"blobName": "a.txt"}, headers={"Authorization": token},
                             verify=str(stack_ca.ca_path), timeout=10)
    assert response.status_code == 501 and response.json()["error"]["code"] == "HUB_NOT_IMPLEMENTED"
