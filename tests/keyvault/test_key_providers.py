"""edb.keys Key Vault providers (KeyVaultKek, KeyVaultSigner) against the stand-in, and a whole
package built with them: the orchestrator's path to Key Vault with the real SDK."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import uuid
from typing import Any

import pytest
from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edb.cpk import PackageIdentity, Target, build, decrypt_payload, open_package, verify_package
from edb.keys.azure_keyvault import KeyVaultKek, KeyVaultSigner
from edb.keys.base import WrappedKey
from edb.keys.errors import DISABLED, RETRYABLE_CODES, WRONG_KID, KeyProviderError
from edb.pki.issue import issue_leaf, make_name, make_root_ca
from edb.pki.oids import PUBLISHER_SIGNING_EKU
from edb_local.keyvault import KeyVaultStandIn


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_kek_provider_wrap_unwrap_rotation_and_revocation(
    keyvault: KeyVaultStandIn, key_client: KeyClient, admin_credential: ClientSecretCredential,
    sdk_kwargs: dict[str, Any],
) -> None:
    name = _name("kek")
    first = key_client.create_rsa_key(name, size=3072, key_operations=["wrapKey", "unwrapKey"])
    kek = KeyVaultKek(f"{keyvault.url}/keys/{name}", admin_credential, **sdk_kwargs)
    dek = os.urandom(32)
    wrapped = kek.wrap(dek)
    assert wrapped.kid == first.id and wrapped.alg == "RSA-OAEP-256"  # versioned kid recorded
    assert kek.unwrap(wrapped) == dek

    second = key_client.create_rsa_key(name, size=3072, key_operations=["wrapKey", "unwrapKey"])
    fresh = KeyVaultKek(f"{keyvault.url}/keys/{name}", admin_credential, **sdk_kwargs)
    rewrapped = fresh.wrap(dek)
    assert rewrapped.kid == second.id
    assert fresh.unwrap(wrapped) == dek  # the old version still opens old packages

    key_client.update_key_properties(name, first.properties.version, enabled=False)
    with pytest.raises(KeyProviderError) as exc:
        fresh.unwrap(wrapped)
    assert exc.value.code == DISABLED == "KEY_DISABLED"  # Key Vault's 403 KeyDisabled: revoked, not an outage
    assert exc.value.code not in RETRYABLE_CODES
    assert fresh.unwrap(rewrapped) == dek

    other = WrappedKey(kid=f"{keyvault.url}/keys/{_name('other')}/{'a' * 32}", alg="RSA-OAEP-256", value=b"x" * 384)
    with pytest.raises(KeyProviderError) as exc:
        fresh.unwrap(other)
    assert exc.value.code == WRONG_KID


def test_signer_provider_and_a_package_built_with_key_vault_keys(
    keyvault: KeyVaultStandIn, key_client: KeyClient, admin_credential: ClientSecretCredential,
    sdk_kwargs: dict[str, Any],
) -> None:
    signing = key_client.create_ec_key(_name("signer"), curve="P-256", key_operations=["sign", "verify"])
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(signing.key.x, "big"), int.from_bytes(signing.key.y, "big"),
                                           ec.SECP256R1()).public_key()
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_root_ca(root_key, make_name("KV Test Publisher Root"))
    leaf = issue_leaf(root_key, root, public, make_name("KV Test Publisher"), ekus=[PUBLISHER_SIGNING_EKU])
    signer = KeyVaultSigner(signing.id, [leaf], admin_credential, **sdk_kwargs)
    digest = hashlib.sha256(b"manifest").digest()
    public.verify(signer.sign_digest(digest), b"manifest", ec.ECDSA(hashes.SHA256()))  # DER, verifies

    kek_name = _name("pkgkek")
    key_client.create_rsa_key(kek_name, size=3072, key_operations=["wrapKey", "unwrapKey"])
    kek = KeyVaultKek(f"{keyvault.url}/keys/{kek_name}", admin_credential, **sdk_kwargs)
    payload = os.urandom(1000)
    now = dt.datetime.now(dt.UTC)
    out = io.BytesIO()
    result = build(io.BytesIO(payload), out, kek=kek, signer=signer, chunk_size=256, identity=PackageIdentity(
        package_id="kv-built", version="2.0.0", security_version=2, target=Target(device_classes=("c",)),
        created=now - dt.timedelta(minutes=1), expires=now + dt.timedelta(days=1)))
    assert result.manifest.kid.startswith(f"{keyvault.url}/keys/{kek_name}/")
    with open_package(io.BytesIO(out.getvalue())) as reader:
        verified = verify_package(reader, trust_roots=[root], now=now, device_class="c")
        sink = bytearray(verified.manifest.plaintext_size)
        decrypt_payload(verified, kek.unwrap(result.manifest.wrapped_dek), sink)
    assert bytes(sink) == payload

    key_client.update_key_properties(signing.name, signing.properties.version, enabled=False)
    with pytest.raises(KeyProviderError) as disabled:
        KeyVaultSigner(signing.id, [leaf], admin_credential, **sdk_kwargs).sign_digest(digest)
    assert disabled.value.code == DISABLED  # a disabled signing key is revoked, not unavailable
