"""Key Vault object names are case-insensitive (Azure: "MyKey" and "mykey" are the same key); the
stand-in matches it, through the real azure-keyvault-keys / -secrets SDKs (issue 13 item 9)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from azure.keyvault.secrets import SecretClient


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_key_names_case_insensitive(key_client: KeyClient, admin_credential: ClientSecretCredential,
                                    sdk_kwargs: dict[str, Any]) -> None:
    name = _name("CaseKek")
    first = key_client.create_rsa_key(name, size=2048, key_operations=["wrapKey", "unwrapKey"])
    fetched = key_client.get_key(name.lower())
    assert fetched.id == first.id and fetched.name == name  # the first spelling is kept

    second = key_client.create_rsa_key(name.upper(), size=2048, key_operations=["wrapKey", "unwrapKey"])
    assert second.name == name and second.properties.version != first.properties.version
    versions = list(key_client.list_properties_of_key_versions(name.swapcase()))
    assert len(versions) == 2
    assert [p.name for p in key_client.list_properties_of_keys()].count(name) == 1

    crypto = CryptographyClient(f"{key_client.vault_url}/keys/{name.lower()}/{first.properties.version}",
                                admin_credential, **sdk_kwargs)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, bytes(32))
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == bytes(32)

    key_client.begin_delete_key(name.upper()).wait()
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(name)
    with pytest.raises(ResourceExistsError):  # the soft-deleted name is taken in any spelling
        key_client.create_rsa_key(name.lower(), size=2048)
    assert key_client.get_deleted_key(name.lower()).name == name
    key_client.begin_recover_deleted_key(name.swapcase()).wait()
    assert key_client.get_key(name.upper()).id == second.id


def test_secret_names_case_insensitive(secret_client: SecretClient) -> None:
    name = _name("edb-policy-Case")
    secret_client.set_secret(name, "one")
    assert secret_client.get_secret(name.upper()).value == "one"
    secret_client.set_secret(name.lower(), "two")  # a new version of the same secret
    assert secret_client.get_secret(name).value == "two"
    assert len(list(secret_client.list_properties_of_secret_versions(name.swapcase()))) == 2
    assert [p.name for p in secret_client.list_properties_of_secrets()].count(name) == 1
