"""Fixtures shared by every test area. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from edb_local.net import free_loopback_address
from edb_local.stack_ca import StackCA

if TYPE_CHECKING:  # the Key Vault pieces are imported by the fixtures, only in the sessions that use them
    from azure.keyvault.keys import KeyClient
    from azure.keyvault.secrets import SecretClient

    from edb_local.keyvault import KeyVaultStandIn, LocalTokenCredential


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
def admin_credential(keyvault: KeyVaultStandIn) -> LocalTokenCredential:
    from edb_local.keyvault import LocalTokenCredential

    return LocalTokenCredential.from_file(keyvault.credential_path("admin"))


@pytest.fixture(scope="session")
def key_client(keyvault: KeyVaultStandIn, admin_credential: LocalTokenCredential,
               sdk_kwargs: dict[str, Any]) -> KeyClient:
    from azure.keyvault.keys import KeyClient

    return KeyClient(keyvault.url, admin_credential, **sdk_kwargs)


@pytest.fixture(scope="session")
def secret_client(keyvault: KeyVaultStandIn, admin_credential: LocalTokenCredential,
                  sdk_kwargs: dict[str, Any]) -> SecretClient:
    from azure.keyvault.secrets import SecretClient

    return SecretClient(keyvault.url, admin_credential, **sdk_kwargs)
