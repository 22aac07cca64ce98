"""``edb keyvault ...`` against the stand-in with configuration only (URL + CA + credential file)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from azure.keyvault.keys import KeyClient
from click.testing import CliRunner, Result

from edb.cli.main import root
from edb_local.keyvault import KeyVaultStandIn
from edb_local.stack_ca import StackCA


def _invoke(keyvault: KeyVaultStandIn, stack_ca: StackCA, tmp_path: Path, *args: str, as_json: bool = True) -> Result:
    base = ["keyvault", "--state-dir", str(tmp_path / "state"), "--vault-url", keyvault.url,
            "--credential", str(keyvault.credential_path("admin")), "--ca", str(stack_ca.ca_path)]
    if as_json:
        base.append("--json")
    return CliRunner().invoke(root, [*base, *args], catch_exceptions=False)


def _ok(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    return data


def test_init_rotate_disable_and_versions(keyvault: KeyVaultStandIn, stack_ca: StackCA, tmp_path: Path,
                                          key_client: KeyClient) -> None:
    tag = uuid.uuid4().hex[:8]
    kek, signer = f"cli-kek-{tag}", f"cli-signer-{tag}"
    first = _ok(_invoke(keyvault, stack_ca, tmp_path, "init", "--kek-name", kek, "--signer-name", signer))
    assert first["kek"]["created"] and first["signer"]["created"]
    made = key_client.get_key(kek)
    assert made.key_operations == ["wrapKey", "unwrapKey"] and len(made.key.n) * 8 == 3072
    sig = key_client.get_key(signer)
    assert sig.key.crv == "P-256" and sig.key_operations == ["sign", "verify"]
    again = _ok(_invoke(keyvault, stack_ca, tmp_path, "init", "--kek-name", kek, "--signer-name", signer))
    assert not again["kek"]["created"] and again["kek"]["kid"] == first["kek"]["kid"]

    rotated = _ok(_invoke(keyvault, stack_ca, tmp_path, "rotate", "--kek-name", kek))
    listed = _ok(_invoke(keyvault, stack_ca, tmp_path, "versions", "--key-name", kek))["versions"]
    assert [v["version"] for v in listed][-1] == rotated["version"] and len(listed) == 2
    old = listed[0]["version"]
    disabled = _ok(_invoke(keyvault, stack_ca, tmp_path, "disable", old, "--key-name", kek))
    assert disabled["enabled"] is False
    assert key_client.get_key(kek, old).properties.enabled is False
    _ok(_invoke(keyvault, stack_ca, tmp_path, "enable", old, "--key-name", kek))
    assert key_client.get_key(kek, old).properties.enabled is True

    # the signing key is not a KEK: refusing to treat it as one
    wrong = _invoke(keyvault, stack_ca, tmp_path, "init", "--kek-name", signer, "--signer-name", signer)
    assert wrong.exit_code == 2 and json.loads(wrong.output)["error"]["code"] == "KEY_INVALID"
    missing = _invoke(keyvault, stack_ca, tmp_path, "disable", "0" * 32, "--key-name", kek)
    assert missing.exit_code == 2 and json.loads(missing.output)["error"]["code"] == "KEY_NOT_FOUND"


def test_policy_set_show_revoke(keyvault: KeyVaultStandIn, stack_ca: StackCA, tmp_path: Path) -> None:
    pid = f"cli-pkg-{uuid.uuid4().hex[:8]}"
    stored = _ok(_invoke(keyvault, stack_ca, tmp_path, "policy", "set", pid, "--device-class", "trustbox-edge-201",
                         "--device", "edge-1", "--min-tee-svn", "2", "--measurement", "AB" * 32,
                         "--min-security-version", "1"))
    assert stored["secret"].startswith(f"{keyvault.url}/secrets/edb-policy-{pid}/")
    shown = _ok(_invoke(keyvault, stack_ca, tmp_path, "policy", "show", pid))["policy"]
    assert shown["devices"] == ["edge-1"] and shown["measurements"] == ["ab" * 32] and shown["minTeeSvn"] == 2
    revoked = _ok(_invoke(keyvault, stack_ca, tmp_path, "policy", "revoke", pid, "1.0.0"))["policy"]
    assert revoked["revokedVersions"] == ["1.0.0"] and revoked["devices"] == ["edge-1"]
    text = _invoke(keyvault, stack_ca, tmp_path, "policy", "show", pid, as_json=False)
    assert text.exit_code == 0 and '"revokedVersions"' in text.output

    usage = _invoke(keyvault, stack_ca, tmp_path, "policy", "set", pid, "--device-class", "x")
    assert usage.exit_code == 2 and "--any-measurement" in usage.output
    nobody = _invoke(keyvault, stack_ca, tmp_path, "policy", "set", pid, "--any-measurement")
    assert nobody.exit_code == 2 and json.loads(nobody.output)["error"]["code"] == "KR_POLICY_INVALID"
    unknown = _invoke(keyvault, stack_ca, tmp_path, "policy", "show", "never-set")
    assert unknown.exit_code == 2 and json.loads(unknown.output)["error"]["code"] == "KEY_NOT_FOUND"


def test_settings_come_from_local_env(keyvault: KeyVaultStandIn, stack_ca: StackCA, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "local.env").write_text(
        f"EDB_KEYVAULT_URL={keyvault.url}\nEDB_CA_CERT={stack_ca.ca_path}\n"
        f"EDB_KEYVAULT_CREDENTIAL={keyvault.credential_path('admin')}\n")
    result = CliRunner().invoke(root, ["keyvault", "--state-dir", str(state), "--json", "versions",
                                       "--key-name", "no-such-key"], catch_exceptions=False)
    assert result.exit_code == 2 and json.loads(result.output)["error"]["code"] == "KEY_NOT_FOUND"
    unconfigured = CliRunner().invoke(root, ["keyvault", "--state-dir", str(tmp_path / "none"), "versions"])
    assert unconfigured.exit_code == 2 and "EDB_KEYVAULT_URL" in unconfigured.output
