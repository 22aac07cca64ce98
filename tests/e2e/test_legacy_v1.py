"""LEGACY v1 packages end to end on a stack set up with `edb local up --legacy-v1`: the class key is
provisioned with ProvisionKey, the orchestrator builds the package with the v1 writer (`edb cloud
build --format cpk-v1`), the installer gets the key with WrapKey for the TEE's legacy RSA key and
hands it to `complete_install_legacy`; the runner serves it. With the installer's legacy setting
off, the same package is refused with INSTALL_LEGACY_UNSUPPORTED and nothing changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests
from e2e_stack import DEVICE, INSTALLER, NAME, E2EStack, edb, json_lines, wait_for

from edb.schemas import PackageState
from edb_cloud.demo_checks import metrics_with_results
from edb_cloud.releases import Release

LEGACY_ON = {"EDB_LEGACY_V1_ENABLED": "1"}


def _audit(stack: E2EStack) -> list[dict[str, Any]]:
    path = stack.state_dir / "keyrelease" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _build_and_publish_v1(stack: E2EStack, model: Path, version: str) -> Release:
    """ProvisionKey (the original flow's key creation), then the orchestrator's v1 build, then Blob."""
    from edb.schemas.common import iso_utc
    from edb_cloud.blob import publish_blob

    key_file = Path(stack.config.require("EDB_LEGACY_WRAP_KEY_FILE", "the legacy function key file"))
    response = requests.post(f"{stack.config.require('EDB_KEY_RELEASE_URL', 'kr')}/api/ProvisionKey/{NAME}",
                             headers={"x-functions-key": key_file.read_text().strip()},
                             verify=str(stack.config.ca_cert), timeout=30)
    assert response.status_code in (200, 201) and response.json()["key_name"] == NAME
    out = edb("cloud", "--state-dir", str(stack.state_dir), "build", str(model), "--name", NAME, "--version", version,
              "--format", "cpk-v1", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    (built,) = json_lines(out.stdout)
    assert built["format"] == "cpk-v1" and built["keyName"] == NAME
    up = publish_blob(Path(built["path"]), name=NAME, version=version,
                      connection_string=stack.config.blob_connection_string, container=stack.config.blob_container,
                      connection_verify=stack.config.connection_verify())
    return Release(NAME, NAME, version, 0, up.url, up.sha256, up.size, up.blob, iso_utc())


def test_v1_package_installs_with_the_legacy_wrapkey_flow_and_serves(stack_dir: Path, digits_model: Path) -> None:
    stack = E2EStack(stack_dir)
    stack.start(digits_model, (("2.0.0", 2),), installer_env=LEGACY_ON, legacy_v1=True)
    v1 = _build_and_publish_v1(stack, digits_model, "1.0.0")
    stack.rollout(v1)
    reported = stack.wait_state("1.0.0", PackageState.INSTALLED, timeout=60)
    assert reported.key_flow == "legacy-wrapkey"
    assert [(p.name, p.version, p.format) for p in stack.tee_installed()] == [(NAME, "1.0.0", "cpk-v1")]
    status, payload = stack.hub.invoke_module_method(DEVICE, INSTALLER, "status", {})
    assert status == 200 and payload["installed"][NAME]["keyFlow"] == "legacy-wrapkey"
    stack.wait_serving("1.0.0")
    wait_for("answers from the legacy model upstream", lambda: metrics_with_results(stack.upstream(), f"{NAME}@1.0.0"),
             60)
    wraps = [r for r in _audit(stack) if r["event"] == "legacy-wrap"]
    assert [(r["decision"], r["code"], r["package"]) for r in wraps] == [("allow", "KR_OK", NAME)]

    def legacy_warnings() -> list[Any]:
        return [e for e in stack.upstream() if e.application.get("alertType") == "legacy-key-flow"]

    (warning,) = wait_for("the reporter's legacy warning", legacy_warnings, 30)
    assert warning.application["messageType"] == "alert" and warning.application["severity"] == "warning"
    assert warning.payload["code"] == "INSTALL_LEGACY_KEY_FLOW" and warning.payload["package"] == NAME
    installed_events = [e for e in stack.upstream() if isinstance(e.payload, dict)
                        and e.payload.get("event") == "package.installed"]
    assert all(e.payload.get("keyFlow") in (None, "legacy-wrapkey") for e in installed_events)

    # moving over to manifest v2: the attested release flow replaces it, and keyFlow is cleared
    stack.rollout(stack.releases["2.0.0"])
    reported = stack.wait_state("2.0.0", PackageState.INSTALLED, timeout=60)
    assert reported.key_flow is None
    assert "keyFlow" not in stack.hub.module_twin(DEVICE, INSTALLER).reported["packages"][NAME]
    stack.wait_serving("2.0.0")
    assert len(legacy_warnings()) == 1  # raised once, not for every install


def test_v1_package_refused_when_the_installer_has_legacy_off(stack_dir: Path, digits_model: Path) -> None:
    stack = E2EStack(stack_dir)
    # the TEE and the key release service allow the legacy flow; the installer is not configured for it
    stack.start(digits_model, (("1.0.0", 1),), legacy_v1=True)
    stack.rollout(stack.releases["1.0.0"])
    stack.wait_state("1.0.0", PackageState.INSTALLED)
    stack.wait_serving("1.0.0")
    v1 = _build_and_publish_v1(stack, digits_model, "1.5.0")
    stack.rollout(v1)
    reported = stack.wait_state("1.5.0", PackageState.FAILED, code="INSTALL_LEGACY_UNSUPPORTED", timeout=60)
    assert reported.installed_version == "1.0.0" and reported.key_flow is None
    assert [(p.name, p.version, p.format) for p in stack.tee_installed()] == [(NAME, "1.0.0", "cpk-v2")]
    assert stack.serving() == "1.0.0"
    assert not [r for r in _audit(stack) if r["event"] == "legacy-wrap"]  # no key was asked for
    assert not [e for e in stack.upstream() if e.application.get("alertType") == "legacy-key-flow"]
