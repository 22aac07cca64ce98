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


def _executable(service: str, root: Path | None) -> Path:
    return (root or project_root()) / "node_modules" / ".bin" / f"azurite-{service}"


def azurite_blob_executable(root: Path | None = None) -> Path:
    return _executable("blob", root)


def azurite_table_executable(root: Path | None = None) -> Path:
    return _executable("table", root)


def _not_installed(service: str, root: Path | None) -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed (Azurite needs node 18+)"
    if not _executable(service, root).exists():
        return f"node_modules/.bin/azurite-{service} missing: run `make setup` (npm ci)"
    return None


def not_installed_reason(root: Path | None = None) -> str | None:
    return _not_installed("blob", root)


def table_not_installed_reason(root: Path | None = None) -> str | None:
    return _not_installed("table", root)


def _command(service: str, *, address: str, port: int, location: Path, cert: Path, key: Path,
             root: Path | None) -> list[str]:
    return [
        str(_executable(service, root)),
        f"--{service}Host", address, f"--{service}Port", str(port),
        "--location", str(location),
        "--cert", str(cert), "--key", str(key),
        "--skipApiVersionCheck", "--silent", "--disableTelemetry",
    ]


def azurite_command(*, address: str, port: int, location: Path, cert: Path, key: Path,
                    root: Path | None = None) -> list[str]:
    """``azurite-blob`` on ``address:port`` over HTTPS."""
    return _command("blob", address=address, port=port, location=location, cert=cert, key=key, root=root)


def azurite_table_command(*, address: str, port: int, location: Path, cert: Path, key: Path,
                          root: Path | None = None) -> list[str]:
    """``azurite-table`` on ``address:port`` over HTTPS."""
    return _command("table", address=address, port=port, location=location, cert=cert, key=key, root=root)


def _endpoint(address: str, port: int) -> str:
    return f"https://{address}:{port}/{ACCOUNT_NAME}"


def blob_endpoint(address: str, port: int) -> str:
    return _endpoint(address, port)


def table_endpoint(address: str, port: int) -> str:
    return _endpoint(address, port)


def _connection_string(kind: str, address: str, port: int) -> str:
    return (f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"{kind}Endpoint={_endpoint(address, port)};")


def blob_connection_string(address: str, port: int) -> str:
    return _connection_string("Blob", address, port)


def table_connection_string(address: str, port: int) -> str:
    return _connection_string("Table", address, port)
