"""``edb cloud publish``: upload a .cpk to Azure Blob storage (Azurite locally) and hand out a SAS URL.

Blobs are content-addressed (``<name>/<version>/<sha256>.cpk``), so a pointer in a twin always names
exactly the bytes it was computed from; a re-published version gets a new blob. The SAS is
read-only and time-limited. The package is ciphertext: publishing it is not a disclosure, the SAS
only limits who can fetch it (the key release service decides who can open it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edb.errors import ConfigError

if TYPE_CHECKING:
    from azure.storage.blob import ContentSettings

ProgressHook = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Uploaded:
    blob: str
    url: str  # with the SAS
    sha256: str
    size: int


def file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def publish_blob(
    path: Path,
    *,
    name: str,
    version: str,
    connection_string: str,
    container: str,
    connection_verify: str | bool,
    sas_days: float = 30.0,
    progress: ProgressHook | None = None,
) -> Uploaded:
    from azure.core.exceptions import AzureError, ResourceExistsError
    from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

    sha256, size = file_sha256(path)
    blob_name = f"{name}/{version}/{sha256}.cpk"
    service = BlobServiceClient.from_connection_string(connection_string, connection_verify=connection_verify)
    try:
        with contextlib.suppress(ResourceExistsError):
            service.create_container(container)
        blob = service.get_blob_client(container, blob_name)
        with path.open("rb") as fh:
            blob.upload_blob(fh, length=size, overwrite=True, max_concurrency=2,
                             content_settings=_content_settings(), progress_hook=progress)
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(days=sas_days)
        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate clock skew on devices
        permission = BlobSasPermissions(read=True)
        account_key = getattr(service.credential, "account_key", None)
        if account_key:
            sas = generate_blob_sas(service.account_name or "", container, blob_name, account_key=account_key,
                                    permission=permission, expiry=expiry, start=start, protocol="https")
        else:  # Entra ID credentials: a user delegation SAS
            key = service.get_user_delegation_key(start, expiry)
            sas = generate_blob_sas(service.account_name or "", container, blob_name, user_delegation_key=key,
                                    permission=permission, expiry=expiry, start=start, protocol="https")
    except AzureError as exc:
        raise ConfigError(f"blob upload failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                          code="CLOUD_BLOB_FAILED") from None
    finally:
        service.close()
    return Uploaded(blob=blob_name, url=f"{blob.url}?{sas}", sha256=sha256, size=size)


def _content_settings() -> ContentSettings:
    from azure.storage.blob import ContentSettings

    return ContentSettings(content_type="application/vnd.edb.cpk")
