"""Release policies as Key Vault secrets (``edb-policy-<package id>``), read by the key release
service on every release (or after its short cache): changing one needs no redeployment."""

from __future__ import annotations

import dataclasses

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient

from edb.keys.errors import UNAVAILABLE, KeyProviderError
from key_release_service.codes import Denied
from key_release_service.policy import CONTENT_TYPE, ReleasePolicy, parse_policy, policy_secret_name


def put_policy(client: SecretClient, policy: ReleasePolicy) -> str:
    """Store ``policy`` as a new version of its secret; returns the secret version id."""
    try:
        secret = client.set_secret(policy_secret_name(policy.package_id), policy.dumps(), content_type=CONTENT_TYPE,
                                   tags={"edb-role": "release-policy", "package-id": policy.package_id[:256]})
    except AzureError as exc:
        raise KeyProviderError(f"cannot store the policy ({type(exc).__name__})", code=UNAVAILABLE) from exc
    return str(secret.id)


def get_policy(client: SecretClient, package_id: str) -> ReleasePolicy | None:
    try:
        secret = client.get_secret(policy_secret_name(package_id))
    except ResourceNotFoundError:
        return None
    except AzureError as exc:
        raise KeyProviderError(f"cannot read the policy ({type(exc).__name__})", code=UNAVAILABLE) from exc
    try:
        return parse_policy(secret.value or "", expected_package_id=package_id)
    except Denied as exc:
        raise KeyProviderError(exc.message, code=exc.code) from exc


def add_revoked_version(client: SecretClient, package_id: str, version: str) -> ReleasePolicy:
    policy = get_policy(client, package_id)
    if policy is None:
        raise KeyProviderError(f"no release policy for {package_id}", code="KEY_NOT_FOUND")
    updated = dataclasses.replace(policy, revoked_versions=policy.revoked_versions | {version})
    put_policy(client, updated)
    return updated
