"""Fixtures for the Key Vault stand-in tests. The stand-in itself and its admin SDK clients
(``keyvault``, ``sdk_kwargs``, ``admin_credential``, ``key_client``, ``secret_client``) are in
tests/conftest.py, shared with tests/keyrelease."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from azure.identity import ClientSecretCredential
from azure.keyvault.keys.crypto import CryptographyClient


@pytest.fixture(scope="session")
def crypto_client(admin_credential: ClientSecretCredential,
                  sdk_kwargs: dict[str, Any]) -> Callable[..., CryptographyClient]:
    def make(key: Any, credential: Any = None) -> CryptographyClient:
        return CryptographyClient(key, credential or admin_credential, **sdk_kwargs)

    return make
