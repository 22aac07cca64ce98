"""Fixtures for the orchestrator tests: a real Azurite on a fresh loopback address, with TLS."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edb_local.net import free_port
from edb_local.stack_ca import StackCA

ROOT = Path(__file__).resolve().parents[2]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _wait_listening(address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"azurite did not listen on {address}:{port}")


@pytest.fixture
def azurite(stack_ca: StackCA, loopback_address: str, tmp_path: Path) -> Iterator[str]:
    """Connection string of a running Azurite (HTTPS, stack CA certificate)."""
    assert AZURITE.exists(), "run `make setup` (npm ci) first"
    port = free_port(loopback_address)
    creds = stack_ca.issue_server("azurite", ips=[loopback_address], out_dir=tmp_path / "certs")
    process = subprocess.Popen(
        [str(AZURITE), "--blobHost", loopback_address, "--blobPort", str(port), "--location",
         str(tmp_path / "azurite"), "--cert", str(creds.cert_path), "--key", str(creds.key_path),
         "--skipApiVersionCheck", "--silent", "--disableTelemetry"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(loopback_address, port, 30)
        yield (f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
               f"BlobEndpoint=https://{loopback_address}:{port}/{ACCOUNT};")
    finally:
        process.terminate()
        process.wait(10)
