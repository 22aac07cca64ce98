"""State of the stand-in: survives restarts, private keys and secret values sealed at rest, files
0600, a wrong master key refused, tokens checked for issuer, audience and lifetime."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kv_standin_util import start_standin

from edb.errors import LocalStackError
from edb_local.keyvault import CredentialFile
from edb_local.keyvault.at_rest import Sealer
from edb_local.keyvault.store import VaultStore
from edb_local.keyvault.tokens import Issuer, Principal, TokenInvalid
from edb_local.stack_ca import StackCA


def _kwargs(stack_ca: StackCA) -> dict[str, Any]:
    return {"verify_challenge_resource": False, "connection_verify": str(stack_ca.ca_path)}


def test_state_survives_restart_and_is_sealed_at_rest(stack_ca: StackCA, tmp_path: Path,
                                                      loopback_address: str) -> None:
    state = tmp_path / "keyvault"
    secret_value = "policy-" + os.urandom(8).hex()
    dek = os.urandom(32)
    vault = start_standin(stack_ca, state, loopback_address)
    with vault.running_in_thread():
        cred = CredentialFile.load(vault.credential_path("admin")).client_secret_credential()
        kek = KeyClient(vault.url, cred, **_kwargs(stack_ca)).create_rsa_key("kek", size=2048)
        wrapped = CryptographyClient(kek.id, cred, **_kwargs(stack_ca)).wrap_key(
            KeyWrapAlgorithm.rsa_oaep_256, dek).encrypted_key
        SecretClient(vault.url, cred, **_kwargs(stack_ca)).set_secret("s", secret_value)

    # at rest: no private key material and no secret value in the database file
    db = (state / "vault.sqlite3").read_bytes() + b"".join(
        p.read_bytes() for p in state.glob("vault.sqlite3-*") if p.is_file())
    assert secret_value.encode() not in db
    assert b"\x02\x01\x00\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01" not in db  # PKCS#8 RSA header
    for name in ("master.key", "issuer.key", "vault.sqlite3", "credentials/admin.json", "credentials/key-release.json"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name

    # restart (same state, new port): same key, same version, old credentials file rewritten
    vault.port = 0
    with vault.running_in_thread():
        cred = CredentialFile.load(vault.credential_path("admin")).client_secret_credential()
        again = KeyClient(vault.url, cred, **_kwargs(stack_ca)).get_key("kek")
        assert again.properties.version == kek.properties.version and again.key.n == kek.key.n
        assert CryptographyClient(again.id, cred, **_kwargs(stack_ca)).unwrap_key(
            KeyWrapAlgorithm.rsa_oaep_256, wrapped).key == dek
        assert SecretClient(vault.url, cred, **_kwargs(stack_ca)).get_secret("s").value == secret_value


def test_wrong_master_key_or_moved_blob_refused(tmp_path: Path) -> None:
    store = VaultStore(tmp_path)
    a = store.add_version("secret", "a", {}, b"value-a", enabled=True, nbf=None, exp=None, tags=None)
    b = store.add_version("secret", "b", {}, b"value-b", enabled=True, nbf=None, exp=None, tags=None)
    assert store.open(a) == b"value-a"
    swapped = type(a)(**{**a.__dict__, "sealed": b.sealed})  # b's blob in a's row
    with pytest.raises(LocalStackError) as exc:
        store.open(swapped)
    assert exc.value.code == "LOCAL_KV_SEALED"
    with pytest.raises(LocalStackError):
        Sealer(os.urandom(32)).open(a.sealed, a.label)
    store.close()


def test_master_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    Sealer.load_or_create(tmp_path)
    (tmp_path / "master.key").chmod(0o644)
    with pytest.raises(LocalStackError) as exc:
        Sealer.load_or_create(tmp_path)
    assert exc.value.code == "LOCAL_KV_MASTER_KEY"


def test_token_checks(tmp_path: Path) -> None:
    issuer = Issuer.load_or_create(tmp_path)
    token, expires = issuer.issue(Principal("admin", "admin"), "https://vault.azure.net/.default")
    assert issuer.verify(token) == Principal("admin", "admin")
    with pytest.raises(TokenInvalid):
        issuer.verify(token, now=expires + 1)
    old, _ = issuer.issue(Principal("admin", "admin"), "s", now=time.time() - 7200)
    with pytest.raises(TokenInvalid):
        issuer.verify(old)
    with pytest.raises(TokenInvalid):
        issuer.verify(token[:-4] + "AAAA")
    # the issuer key file is private and is an EC key
    key = serialization.load_pem_private_key((tmp_path / "issuer.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
