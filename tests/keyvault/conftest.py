"""Fixtures for the Key Vault stand-in tests: one stand-in per test session (xdist worker) on a
fresh loopback address, with a certificate from the session's stack CA, and SDK client factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient
from azure.keyvault.secrets import SecretClient
from kv_standin_util import start_standin

from edb_local.keyvault import KeyVaultStandIn, LocalTokenCredential
from edb_local.stack_ca import StackCA


@pytest.fixture(scope="session")
def keyvault(stack_ca: StackCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyVaultStandIn]:
    vault = start_standin(stack_ca, tmp_path_factory.mktemp("kv") / "keyvault")
    with vault.running_in_thread():
        yield vault


@pytest.fixture(scope="session")
def sdk_kwargs(stack_ca: StackCA) -> dict[str, Any]:
    return {"verify_challenge_resource": False, "connection_verify": str(stack_ca.ca_path)}


@pytest.fixture(scope="session")
def admin_credential(keyvault: KeyVaultStandIn) -> LocalTokenCredential:
    return LocalTokenCredential.from_file(keyvault.credential_path("admin"))


@pytest.fixture(scope="session")
def key_client(keyvault: KeyVaultStandIn, admin_credential: LocalTokenCredential,
               sdk_kwargs: dict[str, Any]) -> KeyClient:
    return KeyClient(keyvault.url, admin_credential, **sdk_kwargs)


@pytest.fixture(scope="session")
def secret_client(keyvault: KeyVaultStandIn, admin_credential: LocalTokenCredential,
                  sdk_kwargs: dict[str, Any]) -> SecretClient:
    return SecretClient(keyvault.url, admin_credential, **sdk_kwargs)


@pytest.fixture(scope="session")
def crypto_client(admin_credential: LocalTokenCredential,
                  sdk_kwargs: dict[str, Any]) -> Callable[..., CryptographyClient]:
    def make(key: Any, credential: Any = None) -> CryptographyClient:
        return CryptographyClient(key, credential or admin_credential, **sdk_kwargs)

    return make
