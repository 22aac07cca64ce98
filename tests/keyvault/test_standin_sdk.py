"""The real azure-keyvault-keys / -secrets clients against the stand-in, for every operation the
project uses (KEK and signer lifecycle, wrap/unwrap, sign/verify, policies as secrets)."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import (
    CryptographyClient,
    EncryptionAlgorithm,
    KeyWrapAlgorithm,
    SignatureAlgorithm,
)
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from edb_local.keyvault import CredentialFile, KeyVaultStandIn
from edb_local.keyvault.tokens import Issuer, Principal


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64u_dec(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw(keyvault: KeyVaultStandIn, cred: ClientSecretCredential, ca: str, method: str, path: str,
         body: dict[str, Any] | None = None, api: str | None = "7.6") -> requests.Response:
    token = cred.get_token("https://vault.azure.net/.default").token
    params = {"api-version": api} if api else {}
    return requests.request(method, keyvault.url + path, params=params, json=body, verify=ca, timeout=10,
                            headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def kek(key_client: KeyClient) -> KeyVaultKey:
    return key_client.create_rsa_key(_name("kek"), size=3072, key_operations=["wrapKey", "unwrapKey"],
                                     tags={"purpose": "edb-kek"})


def test_challenge_flow_and_error_shape(keyvault: KeyVaultStandIn, stack_ca: Any) -> None:
    r = requests.get(keyvault.url + "/keys/x", params={"api-version": "7.6"}, verify=str(stack_ca.ca_path),
                     timeout=10)
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'authorization="{keyvault.url}/edb-local"' in challenge
    assert 'resource="https://vault.azure.net"' in challenge
    assert r.json()["error"]["code"] == "Unauthorized"
    bad = requests.get(keyvault.url + "/keys/x", params={"api-version": "7.6"}, verify=str(stack_ca.ca_path),
                       headers={"Authorization": "Bearer a.b.c"}, timeout=10)
    assert bad.status_code == 401 and "WWW-Authenticate" in bad.headers


def test_token_endpoint_refuses_wrong_secret(keyvault: KeyVaultStandIn, stack_ca: Any) -> None:
    r = requests.post(f"{keyvault.url}/edb-local/oauth2/v2.0/token", verify=str(stack_ca.ca_path), timeout=10,
                      data={"grant_type": "client_credentials", "client_id": "admin", "client_secret": "nope",
                            "scope": "https://vault.azure.net/.default"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_token_of_another_vault_refused(keyvault: KeyVaultStandIn, stack_ca: Any, tmp_path: Any) -> None:
    """A well-formed token from another issuer (another stand-in's key) is not accepted."""
    other = Issuer.load_or_create(tmp_path)
    token, _ = other.issue(Principal("admin", "admin"), "https://vault.azure.net/.default")
    r = requests.get(keyvault.url + "/keys", params={"api-version": "7.6"}, verify=str(stack_ca.ca_path),
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "Unauthorized"


def test_kek_lifecycle_wrap_unwrap_rotate_disable(
    key_client: KeyClient, kek: KeyVaultKey, crypto_client: Callable[..., CryptographyClient]
) -> None:
    assert kek.key_type == "RSA" and kek.key_operations == ["wrapKey", "unwrapKey"]
    assert kek.properties.tags == {"purpose": "edb-kek"}
    public = rsa.RSAPublicNumbers(int.from_bytes(kek.key.e, "big"), int.from_bytes(kek.key.n, "big")).public_key()
    assert public.key_size == 3072  # a real JWK
    dek = os.urandom(32)
    client = crypto_client(kek.id)
    for alg in (KeyWrapAlgorithm.rsa_oaep_256, KeyWrapAlgorithm.rsa_oaep):
        wrapped = client.wrap_key(alg, dek)  # the SDK wraps locally with the served JWK ...
        assert client.unwrap_key(alg, wrapped.encrypted_key).key == dek  # ... the vault unwraps
    # a DEK wrapped by anyone holding only the public key unwraps too
    by_hand = public.encrypt(dek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                               label=None))
    assert client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, by_hand).key == dek

    # rotate: a new version; the old one still unwraps what it wrapped
    old_wrapped = client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, dek).encrypted_key
    rotated = key_client.create_rsa_key(kek.name, size=3072, key_operations=["wrapKey", "unwrapKey"])
    assert rotated.properties.version != kek.properties.version
    versions = [p.version for p in key_client.list_properties_of_key_versions(kek.name)]
    assert kek.properties.version in versions and rotated.properties.version in versions
    assert key_client.get_key(kek.name).properties.version == rotated.properties.version

    # disable the old version: unwrap is refused with Key Vault's 403 KeyDisabled; GET still works
    key_client.update_key_properties(kek.name, kek.properties.version, enabled=False)
    with pytest.raises(HttpResponseError) as exc:
        crypto_client(kek.id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, old_wrapped)
    assert exc.value.status_code == 403
    assert exc.value.error.code == "Forbidden" and exc.value.error.innererror["code"] == "KeyDisabled"
    assert key_client.get_key(kek.name, kek.properties.version).properties.enabled is False
    key_client.update_key_properties(kek.name, kek.properties.version, enabled=True)
    assert crypto_client(kek.id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, old_wrapped).key == dek


def test_key_ops_are_enforced(kek: KeyVaultKey, crypto_client: Callable[..., CryptographyClient]) -> None:
    with pytest.raises(HttpResponseError) as exc:
        crypto_client(kek.id).sign(SignatureAlgorithm.ps256, hashlib.sha256(b"x").digest())
    assert exc.value.status_code == 403 and exc.value.error.innererror["code"] == "KeyOperationForbidden"


def test_unwrap_garbage_is_bad_parameter(kek: KeyVaultKey, crypto_client: Callable[..., CryptographyClient]) -> None:
    with pytest.raises(HttpResponseError) as exc:
        crypto_client(kek.id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, os.urandom(384))
    assert exc.value.status_code == 400 and exc.value.error.code == "BadParameter"


def test_signing_key_es256_and_rsa_ps256(
    key_client: KeyClient, crypto_client: Callable[..., CryptographyClient]
) -> None:
    signer = key_client.create_ec_key(_name("signer"), curve="P-256", key_operations=["sign", "verify"])
    assert signer.key.crv == "P-256" and signer.key_operations == ["sign", "verify"]
    digest = hashlib.sha256(b"manifest bytes").digest()
    client = crypto_client(signer.id)
    raw = client.sign(SignatureAlgorithm.es256, digest).signature
    assert len(raw) == 64
    assert client.verify(SignatureAlgorithm.es256, digest, raw).is_valid
    assert not client.verify(SignatureAlgorithm.es256, hashlib.sha256(b"other").digest(), raw).is_valid
    # the served JWK is the real public key: verify the signature with cryptography directly
    pub = ec.EllipticCurvePublicNumbers(int.from_bytes(signer.key.x, "big"), int.from_bytes(signer.key.y, "big"),
                                        ec.SECP256R1()).public_key()
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    pub.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    rsa_key = key_client.create_rsa_key(_name("rsa"), size=2048)
    rclient = crypto_client(rsa_key.id)
    sig = rclient.sign(SignatureAlgorithm.ps256, digest).signature
    assert rclient.verify(SignatureAlgorithm.ps256, digest, sig).is_valid
    for alg in (EncryptionAlgorithm.rsa_oaep_256, EncryptionAlgorithm.rsa_oaep):
        ct = rclient.encrypt(alg, b"secret").ciphertext
        assert rclient.decrypt(alg, ct).plaintext == b"secret"


def test_server_side_verify_and_encrypt(
    keyvault: KeyVaultStandIn, key_client: KeyClient, admin_credential: ClientSecretCredential, stack_ca: Any
) -> None:
    """The operations CryptographyClient does locally are also served (other SDKs call them)."""
    ca = str(stack_ca.ca_path)
    key = key_client.create_ec_key(_name("ec"), curve="P-256")
    digest = hashlib.sha256(b"m").digest()
    path = f"/keys/{key.name}/{key.properties.version}"
    sig = _raw(keyvault, admin_credential, ca, "POST", path + "/sign", {"alg": "ES256", "value": _b64u(digest)})
    assert sig.status_code == 200 and sig.json()["kid"] == key.id
    ok = _raw(keyvault, admin_credential, ca, "POST", path + "/verify",
              {"alg": "ES256", "digest": _b64u(digest), "value": sig.json()["value"]})
    assert ok.json() == {"value": True}
    short = _raw(keyvault, admin_credential, ca, "POST", path + "/sign", {"alg": "ES256", "value": _b64u(b"x")})
    assert short.status_code == 400 and short.json()["error"]["code"] == "BadParameter"


def test_any_api_version_but_one_is_required(
    keyvault: KeyVaultStandIn, kek: KeyVaultKey, admin_credential: ClientSecretCredential, stack_ca: Any
) -> None:
    ca = str(stack_ca.ca_path)
    for api in ("2016-10-01", "7.4", "7.6-preview.2"):
        assert _raw(keyvault, admin_credential, ca, "GET", f"/keys/{kek.name}", api=api).status_code == 200
    missing = _raw(keyvault, admin_credential, ca, "GET", f"/keys/{kek.name}", api=None)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "BadParameter"


def test_not_found_soft_delete_recover_purge(key_client: KeyClient) -> None:
    with pytest.raises(ResourceNotFoundError) as exc:
        key_client.get_key(_name("missing"))
    assert exc.value.error.code == "KeyNotFound"
    name = _name("gone")
    key_client.create_ec_key(name)
    deleted = key_client.begin_delete_key(name).result()
    assert deleted.recovery_id and deleted.scheduled_purge_date is not None
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(name)
    with pytest.raises(ResourceExistsError):  # a deleted name cannot be reused until purged
        key_client.create_ec_key(name)
    assert name in [d.name for d in key_client.list_deleted_keys()]
    key_client.begin_recover_deleted_key(name).wait()
    assert key_client.get_key(name).name == name
    key_client.begin_delete_key(name).wait()
    key_client.purge_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        key_client.get_deleted_key(name)
    key_client.create_ec_key(name)  # the name is free again


def test_update_tags_and_list(key_client: KeyClient) -> None:
    name = _name("tagged")
    key = key_client.create_ec_key(name)
    updated = key_client.update_key_properties(name, key.properties.version, tags={"a": "1", "b": "2"})
    assert updated.properties.tags == {"a": "1", "b": "2"}
    assert name in [p.name for p in key_client.list_properties_of_keys()]
    with pytest.raises(HttpResponseError) as exc:
        key_client.update_key_properties(name, key.properties.version, tags={f"t{i}": "v" for i in range(16)})
    assert exc.value.status_code == 400


def test_paging_follows_next_link(key_client: KeyClient) -> None:
    name = _name("paged")
    for _ in range(27):
        key_client.create_ec_key(name)
    assert len(list(key_client.list_properties_of_key_versions(name))) == 27


def test_secrets_versions_and_disable(secret_client: SecretClient) -> None:
    name = _name("policy")
    first = secret_client.set_secret(name, '{"v": 1}', content_type="application/json", tags={"k": "v"})
    second = secret_client.set_secret(name, '{"v": 2}')
    assert secret_client.get_secret(name).value == '{"v": 2}'
    assert secret_client.get_secret(name, first.properties.version).value == '{"v": 1}'
    assert first.properties.content_type == "application/json"
    assert len(list(secret_client.list_properties_of_secret_versions(name))) == 2
    secret_client.update_secret_properties(name, second.properties.version, enabled=False)
    with pytest.raises(HttpResponseError) as exc:
        secret_client.get_secret(name)
    assert exc.value.status_code == 403 and exc.value.error.innererror["code"] == "SecretDisabled"
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_secret(_name("nope"))


def _forbidden_by_rbac(call: Callable[[], Any]) -> None:
    with pytest.raises(HttpResponseError) as exc:
        call()
    assert exc.value.status_code == 403 and exc.value.error.innererror["code"] == "ForbiddenByRbac"


@pytest.mark.parametrize("client_id", ["key-release", "key-release-legacy"])
def test_release_role_is_least_privilege(
    keyvault: KeyVaultStandIn, key_client: KeyClient, secret_client: SecretClient, sdk_kwargs: dict[str, Any],
    admin_credential: ClientSecretCredential, client_id: str,
) -> None:
    """keys get/unwrapKey on the KEK only; secrets get on edb-policy-* and edb-legacy-*; set only on
    edb-legacy-* and only for the legacy role. Nothing else: it can never rewrite its own policies."""
    tag = uuid.uuid4().hex[:8]
    kek = key_client.create_rsa_key(f"edb-kek-{tag}", size=2048, key_operations=["wrapKey", "unwrapKey"])
    other_key = key_client.create_rsa_key(f"app-key-{tag}", size=2048, key_operations=["wrapKey", "unwrapKey"])
    policy, legacy, other = f"edb-policy-{tag}", f"edb-legacy-{tag}", f"app-secret-{tag}"
    for name in (policy, legacy, other):
        secret_client.set_secret(name, "v1")
    cred = CredentialFile.load(keyvault.credential_path(client_id)).client_secret_credential()
    keys = KeyClient(keyvault.url, cred, **sdk_kwargs)
    secrets = SecretClient(keyvault.url, cred, **sdk_kwargs)

    assert keys.get_key(kek.name).id  # keys/get on the KEK: allowed
    dek = os.urandom(32)
    crypto = CryptographyClient(kek.id, cred, **sdk_kwargs)
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256,
                             crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, dek).encrypted_key).key == dek
    assert secrets.get_secret(policy).value == "v1" and secrets.get_secret(legacy).value == "v1"

    _forbidden_by_rbac(lambda: secrets.set_secret(policy, '{"allow": "everyone"}'))  # its own policies: never
    _forbidden_by_rbac(lambda: secrets.update_secret_properties(policy, enabled=False))
    _forbidden_by_rbac(lambda: secrets.begin_delete_secret(policy))
    _forbidden_by_rbac(lambda: secrets.get_secret(other))  # anything else in the vault: not even read
    _forbidden_by_rbac(lambda: secrets.set_secret(other, "x"))
    _forbidden_by_rbac(lambda: list(secrets.list_properties_of_secrets()))
    _forbidden_by_rbac(lambda: keys.get_key(other_key.name))
    wrapped_elsewhere = CryptographyClient(other_key.id, admin_credential, **sdk_kwargs).wrap_key(
        KeyWrapAlgorithm.rsa_oaep_256, dek).encrypted_key
    _forbidden_by_rbac(lambda: CryptographyClient(other_key.id, cred, **sdk_kwargs).unwrap_key(
        KeyWrapAlgorithm.rsa_oaep_256, wrapped_elsewhere))
    _forbidden_by_rbac(lambda: keys.create_rsa_key(_name("nope")))
    _forbidden_by_rbac(lambda: keys.create_rsa_key(kek.name))  # no new KEK versions either
    _forbidden_by_rbac(lambda: keys.update_key_properties(kek.name, enabled=False))
    _forbidden_by_rbac(lambda: keys.begin_delete_key(kek.name))
    if client_id == "key-release-legacy":  # ProvisionKey's namespace, and nothing more
        assert secrets.set_secret(legacy, "v2").value == "v2"
    else:
        _forbidden_by_rbac(lambda: secrets.set_secret(legacy, "v2"))
    assert secret_client.get_secret(policy).value == "v1" and secret_client.get_secret(other).value == "v1"


def test_disabled_key_refuses_every_operation(
    keyvault: KeyVaultStandIn, key_client: KeyClient, admin_credential: ClientSecretCredential, stack_ca: Any
) -> None:
    """encrypt, wrapKey and verify included (the SDK does those locally; other clients call the vault)."""
    ca = str(stack_ca.ca_path)
    rsa_key = key_client.create_rsa_key(_name("dis"), size=2048)
    ec_key = key_client.create_ec_key(_name("dis"), curve="P-256")
    digest = _b64u(hashlib.sha256(b"m").digest())
    calls = [
        (rsa_key, "encrypt", {"alg": "RSA-OAEP-256", "value": _b64u(b"x" * 32)}),
        (rsa_key, "wrapkey", {"alg": "RSA-OAEP-256", "value": _b64u(b"x" * 32)}),
        (rsa_key, "decrypt", {"alg": "RSA-OAEP-256", "value": _b64u(b"x" * 256)}),
        (rsa_key, "unwrapkey", {"alg": "RSA-OAEP-256", "value": _b64u(b"x" * 256)}),
        (ec_key, "sign", {"alg": "ES256", "value": digest}),
        (ec_key, "verify", {"alg": "ES256", "digest": digest, "value": _b64u(b"s" * 64)}),
    ]
    for key, op, body in calls:  # enabled: the public-key operations answer
        if op in ("encrypt", "wrapkey", "verify"):
            path = f"/keys/{key.name}/{key.properties.version}/{op}"
            assert _raw(keyvault, admin_credential, ca, "POST", path, body).status_code == 200, op
    for key in (rsa_key, ec_key):
        key_client.update_key_properties(key.name, key.properties.version, enabled=False)
    for key, op, body in calls:
        r = _raw(keyvault, admin_credential, ca, "POST", f"/keys/{key.name}/{key.properties.version}/{op}", body)
        assert r.status_code == 403, op
        assert r.json()["error"]["code"] == "Forbidden" and r.json()["error"]["innererror"]["code"] == "KeyDisabled"


def test_secret_soft_delete_recover_purge_and_key_rotate(secret_client: SecretClient, key_client: KeyClient) -> None:
    name = _name("sec")
    secret_client.set_secret(name, "v1")
    secret_client.begin_delete_secret(name).wait()
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_secret(name)
    assert secret_client.get_deleted_secret(name).name == name
    secret_client.begin_recover_deleted_secret(name).wait()
    assert secret_client.get_secret(name).value == "v1"
    secret_client.begin_delete_secret(name).wait()
    secret_client.purge_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_deleted_secret(name)

    key = key_client.create_rsa_key(_name("rot"), size=2048, key_operations=["wrapKey", "unwrapKey"], tags={"t": "1"})
    rotated = key_client.rotate_key(key.name)
    assert rotated.properties.version != key.properties.version
    assert rotated.key_operations == ["wrapKey", "unwrapKey"] and rotated.properties.tags == {"t": "1"}
    assert len(rotated.key.n) == 256
