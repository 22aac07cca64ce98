"""Fixtures shared by every test area. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from edb_local.net import free_loopback_address, free_port
from edb_local.stack_ca import StackCA

if TYPE_CHECKING:  # the Key Vault pieces are imported by the fixtures, only in the sessions that use them
    from azure.identity import ClientSecretCredential
    from azure.keyvault.keys import KeyClient
    from azure.keyvault.secrets import SecretClient

    from edb_local.keyvault import KeyVaultStandIn


@pytest.fixture(scope="session")
def stack_ca(tmp_path_factory: pytest.TempPathFactory) -> StackCA:
    """A local-stack CA for TLS servers under test (one per test session / xdist worker)."""
    return StackCA.load_or_create(tmp_path_factory.mktemp("stack-ca"))


@pytest.fixture
def loopback_address() -> str:
    """A fresh 127.x.y.z whose 8883/443/8443 ports are free, so servers never collide."""
    return free_loopback_address()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "edb-state"
    d.mkdir()
    return d


# -- Azurite (tests/cloud, tests/hub file upload): a real Azurite on a fresh loopback address, with TLS --

ROOT = Path(__file__).resolve().parents[1]
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


# -- Key Vault stand-in (tests/keyvault, tests/keyrelease) -------------------------------------------


@pytest.fixture(scope="session")
def keyvault(stack_ca: StackCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyVaultStandIn]:
    """A Key Vault stand-in (one per test session / xdist worker) on a fresh loopback address, with a
    certificate from the session's stack CA."""
    from kv_standin_util import start_standin

    vault = start_standin(stack_ca, tmp_path_factory.mktemp("kv") / "keyvault")
    with vault.running_in_thread():
        yield vault


@pytest.fixture(scope="session")
def sdk_kwargs(stack_ca: StackCA) -> dict[str, Any]:
    """Keyword arguments of the Azure Key Vault SDK clients for the stand-in."""
    return {"verify_challenge_resource": False, "connection_verify": str(stack_ca.ca_path)}


@pytest.fixture(scope="session")
def admin_credential(keyvault: KeyVaultStandIn) -> ClientSecretCredential:
    from edb_local.keyvault import CredentialFile

    return CredentialFile.load(keyvault.credential_path("admin")).client_secret_credential()


@pytest.fixture(scope="session")
def key_client(keyvault: KeyVaultStandIn, admin_credential: ClientSecretCredential,
               sdk_kwargs: dict[str, Any]) -> KeyClient:
    from azure.keyvault.keys import KeyClient

    return KeyClient(keyvault.url, admin_credential, **sdk_kwargs)


@pytest.fixture(scope="session")
def secret_client(keyvault: KeyVaultStandIn, admin_credential: ClientSecretCredential,
                  sdk_kwargs: dict[str, Any]) -> SecretClient:
    from azure.keyvault.secrets import SecretClient

    return SecretClient(keyvault.url, admin_credential, **sdk_kwargs)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Tests that could not run on this machine are listed last, loudly: a skip here is never silent
    (each such skip's reason starts with "NOT RUN:" and names what is missing and how to get it)."""
    not_run = [report for report in terminalreporter.stats.get("skipped", [])
               if "NOT RUN:" in str(getattr(report, "longrepr", ""))]
    if not_run:
        terminalreporter.section(f"{len(not_run)} TESTS NOT RUN ON THIS MACHINE", sep="!", red=True, bold=True)
        for report in not_run:
            reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
            terminalreporter.write_line(f"{report.nodeid}: {reason}", red=True)
