"""Fixtures for the key release service tests: a Key Vault stand-in (one per session/worker, from
tests/conftest.py) with a real KEK (RSA 3072, wrapKey/unwrapKey), a manufacturer CA, a publisher, and a
service factory whose Key Vault access uses the stand-in's least-privilege ``key-release`` credential."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.secrets import SecretClient
from kr_helpers import Manufacturer, Publisher

from edb.keys.azure_keyvault import KeyVaultKek
from edb_local.keyvault import CredentialFile, KeyVaultStandIn
from edb_local.stack_ca import StackCA
from key_release_service.audit import AuditLog
from key_release_service.config import ServiceConfig
from key_release_service.keyvault import AzureVaultGateway
from key_release_service.policy import CONTENT_TYPE, ReleasePolicy, build_policy, policy_secret_name
from key_release_service.service import KeyReleaseService


@pytest.fixture(scope="session")
def kek_key(key_client: KeyClient) -> KeyVaultKey:
    return key_client.create_rsa_key("edb-kek", size=3072, key_operations=["wrapKey", "unwrapKey"])


@pytest.fixture(scope="session")
def kek(kek_key: KeyVaultKey, keyvault: KeyVaultStandIn, admin_credential: ClientSecretCredential,
        sdk_kwargs: dict[str, Any]) -> KeyVaultKek:
    # the orchestrator's KEK provider (edb.keys) over the stand-in: unversioned id, versioned kid out
    return KeyVaultKek(f"{keyvault.url}/keys/{kek_key.name}", admin_credential, **sdk_kwargs)


@pytest.fixture(scope="session")
def manufacturer() -> Manufacturer:
    return Manufacturer()


@pytest.fixture(scope="session")
def publisher() -> Publisher:
    return Publisher()


@pytest.fixture(scope="session")
def set_policy(secret_client: SecretClient) -> Callable[..., ReleasePolicy]:
    def put(package_id: str, **kwargs: Any) -> ReleasePolicy:
        kwargs.setdefault("device_classes", ["trustbox-edge-201"])
        kwargs.setdefault("measurements", ["ab" * 32])
        policy = build_policy(package_id, **kwargs)
        secret_client.set_secret(policy_secret_name(package_id), policy.dumps(), content_type=CONTENT_TYPE)
        return policy

    return put


@pytest.fixture
def audit_lines() -> list[str]:
    return []


@pytest.fixture
def base_config(keyvault: KeyVaultStandIn, manufacturer: Manufacturer, publisher: Publisher,
                stack_ca: StackCA) -> ServiceConfig:
    return ServiceConfig(
        vault_url=keyvault.url, manufacturer_roots=(manufacturer.root,), publisher_roots=(publisher.root,),
        credential=str(keyvault.credential_path("key-release")), vault_ca=str(stack_ca.ca_path),
        kek_names=frozenset({"edb-kek"}), policy_cache_s=0.0, rate_burst=1000, rate_per_minute=6000.0,
        nonce_rate_burst=1000, nonce_rate_per_minute=6000.0,
    )


@pytest.fixture
async def make_service(base_config: ServiceConfig, audit_lines: list[str]) -> AsyncIterator[
        Callable[..., KeyReleaseService]]:
    made: list[KeyReleaseService] = []

    def make(**overrides: Any) -> KeyReleaseService:
        if overrides.get("legacy_enabled"):  # ProvisionKey needs the role with set on edb-legacy-*
            overrides.setdefault("credential", base_config.credential.replace("key-release.json",
                                                                              "key-release-legacy.json"))
        config = dataclasses.replace(base_config, **overrides)
        credential = CredentialFile.load(config.credential).client_secret_credential(aio=True)
        gateway = AzureVaultGateway(config.vault_url, credential, ca_file=config.vault_ca)
        service = KeyReleaseService(config, gateway, audit=AuditLog(audit_lines.append))
        made.append(service)
        return service

    yield make
    for service in made:
        await service.close()


@pytest.fixture
def tmp_audit(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"
