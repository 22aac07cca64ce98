"""`edb package` with Key Vault KEKs against the stand-in, configured exactly like `edb keyvault`
(credential and CA from `<state>/local.env` or flags): rotate, rewrap, verify with the new version,
disable the old version. Every failure is a typed code in the JSON, never a traceback."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.identity import ClientSecretCredential
from click.testing import CliRunner

from edb.cli.main import root
from edb.keys.azure_keyvault import KeyVaultKek
from edb.keys.errors import CHALLENGE_REFUSED, KeyProviderError
from edb_local.keyvault import KeyVaultStandIn
from edb_local.stack_ca import StackCA


class Edb:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> dict[str, Any]:
        result = self.runner.invoke(root, [*args, "--json"], env={"EDB_STATE_DIR": str(self.state)},
                                    catch_exceptions=False)
        assert result.exit_code == code, result.output
        data: dict[str, Any] = json.loads(result.stdout)  # one JSON object, also on failure
        assert data["ok"] is (code == 0)
        return data

    def keyvault(self, *args: str, code: int = 0) -> dict[str, Any]:
        result = self.runner.invoke(root, ["keyvault", "--state-dir", str(self.state), "--json", *args],
                                    catch_exceptions=False)
        assert result.exit_code == code, result.output
        return dict(json.loads(result.output))


@pytest.fixture
def edb(keyvault: KeyVaultStandIn, stack_ca: StackCA, tmp_path: Path) -> Edb:
    state = tmp_path / "state"
    state.mkdir()
    (state / "local.env").write_text(f"EDB_KEYVAULT_URL={keyvault.url}\nEDB_KEYVAULT_CA={stack_ca.ca_path}\n"
                                     f"EDB_KEYVAULT_CREDENTIAL={keyvault.credential_path('admin')}\n")
    run = Edb(state)
    run("pki", "init", "--kek-bits", "2048")  # the publisher signing key stays local here
    return run


def test_rotate_rewrap_verify_then_disable_the_old_version(edb: Edb, keyvault: KeyVaultStandIn,
                                                           tmp_path: Path) -> None:
    name = f"edb-kek-{uuid.uuid4().hex[:8]}"
    edb.keyvault("init", "--kek-name", name, "--signer-name", f"signer-{name}")
    key = f"{keyvault.url}/keys/{name}"
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(3000))
    old_pkg, new_pkg = tmp_path / "old.cpk", tmp_path / "new.cpk"
    built = edb("package", "build", str(model), "-o", str(old_pkg), "--id", "kv-model", "--version", "1.0.0",
                "--security-version", "1", "--target-class", "edge", "--chunk-size", "1KiB", "--kek", key,
                "--skip-preflight")
    old_kid = built["kid"]
    assert old_kid.startswith(key + "/")  # the exact version Key Vault wrapped with

    new_kid = edb.keyvault("rotate", "--kek-name", name)["kid"]
    rewrapped = edb("package", "rewrap", str(old_pkg), "-o", str(new_pkg), "--old-kek", old_kid, "--new-kek", key)
    assert (rewrapped["oldKid"], rewrapped["kid"]) == (old_kid, new_kid)
    checks = edb("package", "verify", str(new_pkg), "--kek", key)["checks"]
    assert [c["status"] for c in checks if c["check"] == "decrypt"] == ["ok"]  # unwrapped with the new version

    edb.keyvault("disable", old_kid.rsplit("/", 1)[1], "--key-name", name)
    refused = edb("package", "verify", str(old_pkg), "--kek", key, code=2)
    assert refused["error"]["code"] == "KEY_DISABLED"  # revoked: the old package no longer opens
    assert edb("package", "verify", str(new_pkg), "--kek", key)["ok"]  # the rewrapped one is fine
    refused = edb("package", "rewrap", str(old_pkg), "-o", str(tmp_path / "again.cpk"), "--old-kek", old_kid,
                  "--new-kek", key, code=2)
    assert refused["error"]["code"] == "KEY_DISABLED" and not (tmp_path / "again.cpk").exists()


def test_key_vault_failures_are_typed_json(edb: Edb, keyvault: KeyVaultStandIn, stack_ca: StackCA,
                                           tmp_path: Path) -> None:
    name = f"cli-kek-{uuid.uuid4().hex[:8]}"  # not a KEK name the key release role may use
    edb.keyvault("init", "--kek-name", name, "--signer-name", f"signer-{name}")
    key = f"{keyvault.url}/keys/{name}"
    model = tmp_path / "model.bin"
    model.write_bytes(b"m" * 100)
    pkg = tmp_path / "p.cpk"
    edb("package", "build", str(model), "-o", str(pkg), "--id", "m", "--version", "1", "--security-version", "1",
        "--target-class", "edge", "--kek", key, "--skip-preflight")
    unrelated_ca = StackCA.load_or_create(tmp_path / "unrelated").ca_path
    cases = [
        (["--credential", str(tmp_path / "missing.json")], "CONFIG_INVALID"),
        (["--credential", "default"], "KEY_AUTH_FAILED"),  # DefaultAzureCredential has nothing (or a foreign token)
        (["--credential", str(keyvault.credential_path("key-release"))], "KEY_UNAVAILABLE"),  # 403 ForbiddenByRbac
    ]
    for flags, code in cases:
        failed = edb("package", "verify", str(pkg), "--kek", key, *flags, code=2)
        assert failed["error"]["code"] == code, (flags, failed)
        failed = edb("package", "rewrap", str(pkg), "-o", str(tmp_path / "x.cpk"), "--old-kek", key,
                     "--new-kek", key, *flags, code=2)
        assert failed["error"]["code"] == code, (flags, failed)
    # TLS that does not verify: fail closed (once: the SDK retries connection errors with backoff)
    failed = edb("package", "verify", str(pkg), "--kek", key, "--ca-bundle", str(unrelated_ca), code=2)
    assert failed["error"]["code"] == "KEY_UNAVAILABLE"
    not_a_key = edb("package", "verify", str(pkg), "--kek", f"{keyvault.url}/secrets/{name}", code=2)
    assert not_a_key["error"]["code"] == "KEY_INVALID"


def test_a_refused_challenge_is_typed(keyvault: KeyVaultStandIn, stack_ca: StackCA,
                                      admin_credential: ClientSecretCredential, key_client: Any) -> None:
    """The SDK raises ValueError when the challenge's resource is not the vault's domain (what
    `edb package rewrap` used to die of against the stand-in): now KEY_CHALLENGE_REFUSED."""
    name = f"edb-kek-{uuid.uuid4().hex[:8]}"
    key_client.create_rsa_key(name, size=2048, key_operations=["wrapKey", "unwrapKey"])
    kek = KeyVaultKek(f"{keyvault.url}/keys/{name}", admin_credential, connection_verify=str(stack_ca.ca_path))
    with pytest.raises(KeyProviderError) as exc:
        kek.wrap(os.urandom(32))
    assert exc.value.code == CHALLENGE_REFUSED
