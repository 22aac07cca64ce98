"""Credentials as on Azure (issue 11 item 9): azure-identity's own credentials against the Key Vault
stand-in's issuer. ClientSecretCredential(authority=stand-in) through OpenID discovery, DefaultAzureCredential
unchanged from environment variables (EnvironmentCredential and the App Service managed identity endpoint),
the orchestrator's and the key release service's credential factories; wrong secrets, headers, scopes and
an untrusted CA refused."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from azure.identity import ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential
from azure.keyvault.keys import KeyClient

from edb_cloud.config import CloudConfig
from edb_cloud.keyvault.connection import IDENTITY_VARIABLES, VaultConnection
from edb_local.keyvault import CredentialFile, KeyVaultStandIn
from edb_local.keyvault.tokens import SCOPE

pytestmark = pytest.mark.timeout(90)
VARIABLES = (*IDENTITY_VARIABLES, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "MSI_ENDPOINT",
             "AZURE_TOKEN_CREDENTIALS")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No identity or CA variables from the outside; whatever a test sets is undone afterwards."""
    for name in VARIABLES:
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    yield monkeypatch


def _file(keyvault: KeyVaultStandIn, client: str = "admin") -> CredentialFile:
    return CredentialFile.load(keyvault.credential_path(client))


def _kek(key_client: KeyClient) -> str:
    return key_client.create_rsa_key(f"edb-kek-cred-{uuid.uuid4().hex[:8]}", size=2048,
                                     key_operations=["wrapKey", "unwrapKey"]).name


def test_discovery_document_names_the_token_endpoint(keyvault: KeyVaultStandIn, stack_ca: Any) -> None:
    for path, tenant in (("/edb-local/v2.0/.well-known/openid-configuration", "edb-local"),
                         ("/adfs/.well-known/openid-configuration", "adfs")):
        doc = requests.get(keyvault.url + path, verify=str(stack_ca.ca_path), timeout=10).json()
        assert doc["token_endpoint"] == f"{keyvault.url}/{tenant}/oauth2/v2.0/token"
        keys = requests.get(doc["jwks_uri"], verify=str(stack_ca.ca_path), timeout=10).json()["keys"]
        assert keys[0]["kty"] == "EC" and keys[0]["crv"] == "P-256" and "d" not in keys[0]
    assert requests.get(keyvault.url + "/other/v2.0/.well-known/openid-configuration", verify=str(stack_ca.ca_path),
                        timeout=10).status_code == 401  # not a tenant: the vault's challenge, no document


@pytest.mark.parametrize("tenant,kwargs", [("edb-local", {"disable_instance_discovery": True}), ("adfs", {})])
def test_client_secret_credential_with_the_stand_in_as_authority(
        keyvault: KeyVaultStandIn, key_client: KeyClient, sdk_kwargs: dict[str, Any], stack_ca: Any,
        clean_env: pytest.MonkeyPatch, tenant: str, kwargs: dict[str, Any]) -> None:
    f = _file(keyvault)
    cred = ClientSecretCredential(tenant, f.clientId, f.clientSecret, authority=keyvault.url,
                                  connection_verify=str(stack_ca.ca_path), **kwargs)
    name = _kek(key_client)
    assert KeyClient(keyvault.url, cred, **sdk_kwargs).get_key(name).name == name

    wrong = ClientSecretCredential(tenant, f.clientId, "not-the-secret", authority=keyvault.url,
                                   connection_verify=str(stack_ca.ca_path), **kwargs)
    with pytest.raises(ClientAuthenticationError) as err:
        wrong.get_token(SCOPE)
    assert "wrong secret" in str(err.value)
    with pytest.raises(ClientAuthenticationError):
        ClientSecretCredential(tenant, "nobody", f.clientSecret, authority=keyvault.url,
                               connection_verify=str(stack_ca.ca_path), **kwargs).get_token(SCOPE)
    with pytest.raises(ClientAuthenticationError) as scope:
        cred.get_token("https://management.azure.com/.default")
    assert "only https://vault.azure.net/.default is issued" in str(scope.value)


def test_default_azure_credential_unchanged_from_environment_variables(
        keyvault: KeyVaultStandIn, key_client: KeyClient, sdk_kwargs: dict[str, Any], stack_ca: Any,
        clean_env: pytest.MonkeyPatch) -> None:
    """EnvironmentCredential: AZURE_TENANT_ID/CLIENT_ID/CLIENT_SECRET + AZURE_AUTHORITY_HOST, the CA through
    REQUESTS_CA_BUNDLE; `DefaultAzureCredential()` exactly as on Azure."""
    name = _kek(key_client)
    for variable, value in _file(keyvault).environment().items():
        clean_env.setenv(variable, value)
    clean_env.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    assert KeyClient(keyvault.url, DefaultAzureCredential(), **sdk_kwargs).get_key(name).name == name

    clean_env.setenv("AZURE_CLIENT_SECRET", "wrong")
    with pytest.raises(ClientAuthenticationError):
        DefaultAzureCredential().get_token(SCOPE)


def test_managed_identity_endpoint(keyvault: KeyVaultStandIn, key_client: KeyClient, sdk_kwargs: dict[str, Any],
                                   stack_ca: Any, clean_env: pytest.MonkeyPatch) -> None:
    """IDENTITY_ENDPOINT + IDENTITY_HEADER (App Service / Functions): DefaultAzureCredential picks the
    managed identity, which gets the key release service's least-privilege role, not more."""
    name = _kek(key_client)
    release = _file(keyvault, "key-release")
    for variable, value in release.environment(managed_identity=True).items():
        clean_env.setenv(variable, value)
    cred = DefaultAzureCredential(connection_verify=str(stack_ca.ca_path))
    as_release = KeyClient(keyvault.url, cred, **sdk_kwargs)
    assert as_release.get_key(name).name == name
    with pytest.raises(HttpResponseError) as forbidden:
        as_release.create_rsa_key(f"app-{uuid.uuid4().hex[:8]}")
    assert forbidden.value.status_code == 403

    clean_env.setenv("IDENTITY_HEADER", release.identityHeader[:-2] + "xx")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(connection_verify=str(stack_ca.ca_path)).get_token(SCOPE)


@pytest.mark.parametrize("headers,query,status", [
    ({}, {"resource": "https://vault.azure.net"}, 401),
    ({"X-IDENTITY-HEADER": "key-release"}, {"resource": "https://vault.azure.net"}, 401),
    ({"X-IDENTITY-HEADER": "admin.guess"}, {"resource": "https://vault.azure.net"}, 401),
    ("good", {"resource": "https://management.azure.com"}, 400),
    ("good", {"resource": "https://vault.azure.net", "client_id": "admin"}, 400),
    ("good", {"resource": "https://vault.azure.net", "api-version": "2017-09-01"}, 400),
])
def test_managed_identity_endpoint_refusals(keyvault: KeyVaultStandIn, stack_ca: Any, headers: Any,
                                            query: dict[str, str], status: int) -> None:
    release = _file(keyvault, "key-release")
    if headers == "good":
        headers = {"X-IDENTITY-HEADER": release.identityHeader}
    response = requests.get(release.identityEndpoint, params={"api-version": "2019-08-01", **query},
                            headers=headers, verify=str(stack_ca.ca_path), timeout=10)
    assert response.status_code == status and "access_token" not in response.text


def test_identity_header_is_no_client_secret(keyvault: KeyVaultStandIn, stack_ca: Any) -> None:
    release = _file(keyvault, "key-release")
    client, _, secret = release.identityHeader.partition(".")
    for client_id in (f"msi:{client}", client):
        response = requests.post(f"{keyvault.url}/adfs/oauth2/v2.0/token", verify=str(stack_ca.ca_path), timeout=10,
                                 data={"grant_type": "client_credentials", "client_id": client_id,
                                       "client_secret": secret, "scope": SCOPE})
        assert response.status_code == 401 and "access_token" not in response.text


def test_the_stack_ca_must_be_trusted(keyvault: KeyVaultStandIn, clean_env: pytest.MonkeyPatch) -> None:
    f = _file(keyvault)
    for variable, value in f.environment().items():
        clean_env.setenv(variable, value)
    with pytest.raises((ServiceRequestError, ClientAuthenticationError)) as err:
        DefaultAzureCredential().get_token(SCOPE)  # no CA given: the system store does not know it
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value) or "certificate verify failed" in str(err.value)


def test_orchestrator_uses_default_azure_credential_from_local_env(
        keyvault: KeyVaultStandIn, key_client: KeyClient, stack_ca: Any, clean_env: pytest.MonkeyPatch,
        tmp_path: Any) -> None:
    """`edb keyvault` / `edb cloud`: EDB_KEYVAULT_CREDENTIAL=default and local.env's AZURE_* variables."""
    name = _kek(key_client)
    state = tmp_path / "state"
    state.mkdir()
    lines = {**_file(keyvault).environment(), "EDB_KEYVAULT_URL": keyvault.url,
             "EDB_KEYVAULT_CREDENTIAL": "default", "EDB_KEYVAULT_CA": str(stack_ca.ca_path)}
    (state / "local.env").write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    connection = VaultConnection.from_settings(CloudConfig.load(state, environ={}))
    assert connection is not None and lines["AZURE_CLIENT_SECRET"] not in repr(connection)
    assert connection.key_client().get_key(name).name == name
    # the settings reach azure-identity while the credential is built, and leave no trace in the process
    import os

    assert not any(os.environ.get(variable) for variable in IDENTITY_VARIABLES)
    (state / "local.env").write_text("".join(f"{k}={v}\n" for k, v in {**lines, "AZURE_CLIENT_SECRET": "no"}.items()))
    stale = VaultConnection.from_settings(CloudConfig.load(state, environ={}))
    assert stale is not None
    with pytest.raises(ClientAuthenticationError):
        stale.key_client().get_key(name)


async def test_key_release_service_credential_is_its_managed_identity(
        keyvault: KeyVaultStandIn, key_client: KeyClient, stack_ca: Any, clean_env: pytest.MonkeyPatch) -> None:
    from azure.keyvault.keys.aio import KeyClient as AsyncKeyClient

    from key_release_service.config import ServiceConfig
    from key_release_service.service import make_credential

    name = await asyncio.to_thread(_kek, key_client)
    for variable, value in _file(keyvault, "key-release").environment(managed_identity=True).items():
        clean_env.setenv(variable, value)
    config = ServiceConfig(vault_url=keyvault.url, manufacturer_roots=(), publisher_roots=(), credential="default",
                           vault_ca=str(stack_ca.ca_path))
    credential = make_credential(config)
    async with AsyncKeyClient(keyvault.url, credential, verify_challenge_resource=False,
                              connection_verify=str(stack_ca.ca_path)) as client:
        assert (await client.get_key(name)).name == name
    await credential.close()
