"""Azurite, the official Azure Storage emulator (npm ``azurite``, installed by ``make setup``), as
the local stack's Blob storage (``azurite-blob``) and Table storage (``azurite-table``: the key
release service's shared spent-nonce table): HTTPS with a stack CA certificate, on the stack's address.

Flags: ``--silent`` because Azurite's access log prints request URLs, and a URL with a SAS token is
a credential; ``--disableTelemetry`` because a local stack phones nobody; ``--skipApiVersionCheck``
so a newer azure-storage-blob than the pinned Azurite knows still works.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def project_root() -> Path:
    """The checkout that holds package.json and node_modules/ (local/edb_local/azurite.py -> root)."""
    return Path(__file__).resolve().parents[2]


def azurite_blob_executable(root: Path | None = None) -> Path:
    return (root or project_root()) / "node_modules" / ".bin" / "azurite-blob"


def azurite_table_executable(root: Path | None = None) -> Path:
    return (root or project_root()) / "node_modules" / ".bin" / "azurite-table"


def not_installed_reason(root: Path | None = None) -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed (Azurite needs node 18+)"
    if not azurite_blob_executable(root).exists():
        return "node_modules/.bin/azurite-blob missing: run `make setup` (npm ci)"
    return None


def table_not_installed_reason(root: Path | None = None) -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed (Azurite needs node 18+)"
    if not azurite_table_executable(root).exists():
        return "node_modules/.bin/azurite-table missing: run `make setup` (npm ci)"
    return None


def azurite_command(*, address: str, port: int, location: Path, cert: Path, key: Path,
                    root: Path | None = None) -> list[str]:
    return [
        str(azurite_blob_executable(root)),
        "--blobHost", address, "--blobPort", str(port),
        "--location", str(location),
        "--cert", str(cert), "--key", str(key),
        "--skipApiVersionCheck", "--silent", "--disableTelemetry",
    ]


def blob_endpoint(address: str, port: int) -> str:
    return f"https://{address}:{port}/{ACCOUNT_NAME}"


def blob_connection_string(address: str, port: int) -> str:
    return (f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={blob_endpoint(address, port)};")


def azurite_table_command(*, address: str, port: int, location: Path, cert: Path, key: Path,
                          root: Path | None = None) -> list[str]:
    return [
        str(azurite_table_executable(root)),
        "--tableHost", address, "--tablePort", str(port),
        "--location", str(location),
        "--cert", str(cert), "--key", str(key),
        "--skipApiVersionCheck", "--silent", "--disableTelemetry",
    ]


def table_endpoint(address: str, port: int) -> str:
    return f"https://{address}:{port}/{ACCOUNT_NAME}"


def table_connection_string(address: str, port: int) -> str:
    return (f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint={table_endpoint(address, port)};")
