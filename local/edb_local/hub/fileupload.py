"""File upload as IoT Hub does it (azure-iot-device ``get_storage_info_for_blob`` /
``notify_blob_upload_status``): the hub hands a device a SAS URI for one blob ``{device}/{name}`` in
the file-upload container of a storage account (Azurite locally), the device uploads with
azure-storage-blob, then tells the hub how it went.

https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-file-upload: the SAS allows read, create and
write on that one blob for ``sas_ttl_secs`` (IoT Hub's default: one hour); at most 10 uploads per
device are outstanding at once (more is throttled, 429); a notification for an unknown correlation id,
or for another device's upload, is refused. Completed successful uploads are kept (bounded) as file
upload notifications, in the shape the service SDK's file notification receiver gets.

No sockets here except :meth:`FileUploads.ensure_container` (one async call to the storage account).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobSasPermissions, generate_blob_sas

from edb_local.hub import errors
from edb_local.hub.errors import HubError

MAX_OUTSTANDING_PER_DEVICE = 10
MAX_BLOB_NAME = 1024
MAX_NOTIFICATIONS_KEPT = 1000


@dataclass(frozen=True)
class StorageAccount:
    name: str
    key: str
    blob_endpoint: str     # https://<account>.blob.core.windows.net or https://<ip>:<port>/<account> (Azurite)

    @classmethod
    def from_connection_string(cls, text: str) -> StorageAccount:
        fields = dict(part.split("=", 1) for part in text.strip().split(";") if "=" in part)
        name, key = fields.get("AccountName"), fields.get("AccountKey")
        if not name or not key:
            raise HubError("the file upload connection string needs AccountName and AccountKey",
                           code=errors.CONFIG_INVALID)
        scheme = fields.get("DefaultEndpointsProtocol", "https")
        suffix = fields.get("EndpointSuffix", "core.windows.net")
        endpoint = fields.get("BlobEndpoint") or f"{scheme}://{name}.blob.{suffix}"
        if not endpoint.startswith("https://"):
            raise HubError("the file upload storage account must be reached over https", code=errors.CONFIG_INVALID)
        return cls(name, key, endpoint.rstrip("/"))

    @property
    def host_name(self) -> str:
        """What IoT Hub returns as ``hostName``: the blob endpoint without its scheme (for Azurite's
        path-style endpoint that includes ``/<account>``, so ``https://{hostName}/{container}/{blob}``
        is the blob's URL either way)."""
        return self.blob_endpoint.removeprefix("https://")


@dataclass(frozen=True)
class PendingUpload:
    device_id: str
    blob_name: str
    expires: float


def check_blob_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_BLOB_NAME:
        raise HubError(f"blobName must be 1..{MAX_BLOB_NAME} characters", code=errors.BAD_REQUEST)
    if name.startswith("/") or any(ord(c) < 0x20 or c == "\\" for c in name) or ".." in name.split("/"):
        raise HubError("blobName must be a relative name without control characters or '..'",
                       code=errors.BAD_REQUEST)
    return name


class FileUploads:
    def __init__(self, account: StorageAccount, container: str, *, ca_path: Path | None,
                 sas_ttl_secs: int = 3600) -> None:
        self.account = account
        self.container = container
        self.ca_path = ca_path
        self.sas_ttl_secs = sas_ttl_secs
        self.pending: dict[str, PendingUpload] = {}
        self.notifications: deque[dict[str, Any]] = deque(maxlen=MAX_NOTIFICATIONS_KEPT)
        self._container_ready = False

    async def ensure_container(self) -> None:
        if self._container_ready:
            return
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob.aio import BlobServiceClient

        kwargs: dict[str, Any] = {"connection_verify": str(self.ca_path)} if self.ca_path else {}
        async with BlobServiceClient(self.account.blob_endpoint, credential={
                "account_name": self.account.name, "account_key": self.account.key}, **kwargs) as service:
            with contextlib.suppress(ResourceExistsError):
                await service.create_container(self.container)
        self._container_ready = True

    def _expire(self, now: float) -> None:
        for correlation_id in [c for c, p in self.pending.items() if p.expires <= now]:
            del self.pending[correlation_id]

    def start(self, device_id: str, blob_name: Any, now: float | None = None) -> dict[str, str]:
        """The storage info for one upload (``POST /devices/{id}/files``)."""
        now = time.time() if now is None else now
        name = f"{device_id}/{check_blob_name(blob_name)}"
        self._expire(now)
        if sum(1 for p in self.pending.values() if p.device_id == device_id) >= MAX_OUTSTANDING_PER_DEVICE:
            raise HubError(f"{device_id} has {MAX_OUTSTANDING_PER_DEVICE} file uploads outstanding",
                           code=errors.FILE_UPLOAD_THROTTLED)
        expiry = dt.datetime.fromtimestamp(now + self.sas_ttl_secs, dt.UTC)
        sas = generate_blob_sas(self.account.name, self.container, name, account_key=self.account.key,
                                permission=BlobSasPermissions(read=True, create=True, write=True),
                                expiry=expiry, start=expiry - dt.timedelta(seconds=self.sas_ttl_secs + 300),
                                protocol="https")
        correlation_id = secrets.token_urlsafe(24)
        self.pending[correlation_id] = PendingUpload(device_id, name, now + self.sas_ttl_secs)
        return {"correlationId": correlation_id, "hostName": self.account.host_name,
                "containerName": self.container, "blobName": name, "sasToken": f"?{sas}"}

    def complete(self, device_id: str, body: Any, now: float | None = None) -> None:
        """``POST /devices/{id}/files/notifications``: close the upload, keep a notification on success."""
        now = time.time() if now is None else now
        if not isinstance(body, dict) or not isinstance(body.get("correlationId"), str):
            raise HubError("correlationId is required", code=errors.BAD_REQUEST)
        if not isinstance(body.get("isSuccess"), bool):
            raise HubError("isSuccess must be true or false", code=errors.BAD_REQUEST)
        self._expire(now)
        upload = self.pending.get(body["correlationId"])
        if upload is None or upload.device_id != device_id:
            raise HubError("no file upload with that correlationId for this device", code=errors.BAD_REQUEST)
        del self.pending[body["correlationId"]]
        if body["isSuccess"]:
            self.notifications.append({
                "deviceId": device_id, "blobName": upload.blob_name,
                "blobUri": f"{self.account.blob_endpoint}/{self.container}/{upload.blob_name}",
                "lastUpdatedTime": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
                "enqueuedTimeUtc": dt.datetime.fromtimestamp(now, dt.UTC).isoformat()})
