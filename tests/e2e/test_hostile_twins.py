"""Hostile desired properties end as failed reported states with codes; nothing crashes, v1 keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_stack import DEVICE, INSTALLER, NAME, E2EStack, file_server, wait_for

from edb.schemas import PackageState
from edb_cloud.iothub import CloudError
from edb_local.stack_ca import StackCA

SHA = "ab" * 32


def test_hostile_twins_are_refused_with_codes_and_nothing_crashes(e2e: E2EStack, tmp_path: Path) -> None:
    installer_pid = e2e.pid(f"module.{INSTALLER}")
    drop = Path(e2e.config.require("EDB_PACKAGE_DROP_DIR", "drop dir"))
    v2 = e2e.releases["2.0.0"]
    ca = StackCA.load_or_create(e2e.state_dir / "ca")
    with file_server(ca, tmp_path / "certs") as server:
        server.redirects["moved.cpk"] = "https://127.9.8.7/digits.cpk"  # another host
        hostile = {
            "huge": {"version": "v" * 3000, "url": v2.url, "sha256": v2.sha256, "size": v2.size},
            "enormous": {"version": "2.0.0", "url": v2.url, "sha256": v2.sha256, "size": 10**18},
            "types": {"version": 2, "url": ["x"], "sha256": None, "size": "10"},
            "text": "not an object",
            "a/b": {"version": "1", "url": v2.url, "sha256": v2.sha256, "size": v2.size},
            "ftp": {"version": "1", "url": "ftp://example.com/x.cpk", "sha256": SHA, "size": 10},
            "plainhttp": {"version": "1", "url": "http://example.com/x.cpk", "sha256": SHA, "size": 10},
            "traversal": {"version": "1", "url": f"file://{drop}/../pki/root.key", "sha256": SHA, "size": 10},
            "redirect": {"version": "1", "url": server.url("moved.cpk"), "sha256": SHA, "size": 10},
            # a twin writer probing the device's network: not on the list of package hosts
            "probe": {"version": "1", "url": "https://127.9.8.7:22/x.cpk", "sha256": SHA, "size": 10},
            "mismatch": {"version": "2.0.0", "url": v2.url, "sha256": SHA, "size": v2.size},
        }
        expected = {
            "huge": "INSTALL_INVALID_DESIRED",
            "enormous": "INSTALL_TOO_LARGE",
            "types": "INSTALL_INVALID_DESIRED",
            "text": "INSTALL_INVALID_DESIRED",
            "ftp": "INSTALL_URL_SCHEME",
            "plainhttp": "INSTALL_URL_SCHEME",
            "traversal": "INSTALL_PATH_OUTSIDE",
            "redirect": "INSTALL_REDIRECT_REFUSED",
            "probe": "INSTALL_HOST_NOT_ALLOWED",
            "mismatch": "INSTALL_HASH_MISMATCH",
        }
        e2e.hub.patch_module_desired(DEVICE, INSTALLER, {"packages": hostile})

        def all_failed() -> dict[str, str] | None:
            reported = e2e.hub.module_twin(DEVICE, INSTALLER).reported.get("packages") or {}
            codes = {n: ((v or {}).get("error") or {}).get("code") for n, v in reported.items()
                     if (v or {}).get("state") == PackageState.FAILED.value}
            return codes if all(n in codes for n in expected) and len(codes) >= len(expected) + 1 else None

        codes = wait_for("every hostile entry reported failed", all_failed, 60)
    for name, code in expected.items():
        assert codes[name] == code, (name, codes[name])
    # "a/b" cannot be a twin key of ours: reported under a safe label with the name code
    (label,) = [n for n in codes if n.startswith("invalid-")]
    assert codes[label] == "INSTALL_INVALID_NAME"

    # IoT Hub itself refuses names with '.', '$' or spaces (so "../x" never reaches a device)
    with pytest.raises(CloudError) as refused:
        e2e.hub.patch_module_desired(DEVICE, INSTALLER, {"packages": {"../etc": hostile["ftp"]}})
    assert "HTTP 400" in refused.value.message

    # a section of the wrong type is reported and uninstalls nothing
    e2e.hub.patch_module_desired(DEVICE, INSTALLER, {"packages": ["not", "an", "object"]})
    wait_for("the malformed section reported", lambda: ((e2e.hub.module_twin(DEVICE, INSTALLER).reported
                                                          .get("packages") or {}).get("_section") or {})
             .get("state") == "failed", 30)

    # nothing crashed and nothing was disturbed
    assert e2e.pid(f"module.{INSTALLER}") == installer_pid
    installed = [(p.name, p.version) for p in e2e.tee_installed()]
    assert installed == [(NAME, "1.0.0")]
    assert e2e.serving() == "1.0.0"
    r = e2e.reported_package()
    assert r is not None and r.installed_version == "1.0.0"
