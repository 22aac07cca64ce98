"""`edb cloud` commands that need no service: train-demo and deploy --dry-run, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from click.testing import CliRunner

from edb_cloud.cli import cloud
from edb_cloud.template import join_create_options


def test_train_demo_exports_an_accurate_onnx_model(tmp_path: Path) -> None:
    out = tmp_path / "digits.onnx"
    result = CliRunner().invoke(cloud, ["--state-dir", str(tmp_path), "train-demo", "--variant", "v1",
                                        "--out", str(out), "--json"], env={"EDB_STATE_DIR": ""})
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["ok"] and doc["accuracy"] >= 0.95 and doc["testSamples"] == 450
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]


def test_deploy_dry_run_writes_the_expanded_manifest(tmp_path: Path) -> None:
    env_file = tmp_path / "site.env"
    env_file.write_text("EDB_KEY_RELEASE_URL=https://kr.example/api\nCONTAINER_REGISTRY_SERVER=myacr.azurecr.io\n")
    runner = CliRunner()
    result = runner.invoke(cloud, ["--state-dir", str(tmp_path), "--env-file", str(env_file), "deploy", "--dry-run",
                                   "--platform", "arm64v8", "--json"], env={"EDB_KEY_RELEASE_URL": None})
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    manifest = json.loads(Path(doc["manifest"]).read_text())
    modules = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    assert modules["package_installer"]["settings"]["image"] == "myacr.azurecr.io/package_installer:0.1.0-arm64v8"
    assert json.loads(join_create_options(modules["inference_runner"]["settings"]))["HostConfig"]["Binds"]
    assert doc["target"] == "dry run" and doc["manifest"].endswith("deployment.arm64v8.json")

    missing = runner.invoke(cloud, ["--state-dir", str(tmp_path / "empty"), "deploy", "--dry-run", "--json"],
                            env={"EDB_KEY_RELEASE_URL": None})
    assert missing.exit_code == 2
    assert json.loads(missing.output)["error"]["code"] == "CONFIG_UNDEFINED_VARIABLE"


def test_build_cpk_v1_refuses_what_v1_cannot_express(tmp_path: Path) -> None:
    """LEGACY v1 packages have no security version and numeric MAJOR.MINOR.REVISION versions; their class
    key lives in Key Vault. Each refusal comes before any key is created or any file is written."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    runner = CliRunner()
    base = ["--state-dir", str(tmp_path), "build", str(model), "--name", "digits", "--format", "cpk-v1", "--json"]
    env = {"EDB_STATE_DIR": "", "EDB_KEYVAULT_URL": ""}
    for extra, code in ((["--version", "1.0.0", "--security-version", "3"], "CONFIG_INVALID"),
                        (["--version", "1.0.0-beta"], "CONFIG_INVALID"),
                        (["--version", "1.0.0"], "CONFIG_MISSING")):  # no Key Vault: no class key
        result = runner.invoke(cloud, [*base, *extra], env=env)
        assert result.exit_code != 0 and json.loads(result.output)["error"]["code"] == code, result.output
    assert not (tmp_path / "cloud" / "packages").exists()
    # a v2 build still needs its security version
    result = runner.invoke(cloud, ["--state-dir", str(tmp_path), "build", str(model), "--name", "digits",
                                   "--version", "1.0.0", "--json"], env=env)
    assert json.loads(result.output)["error"]["code"] == "CONFIG_MISSING"


def test_publish_refuses_a_name_other_than_the_signed_id(tmp_path: Path) -> None:
    """The installer installs a package only under its signed id (INSTALL_NAME_MISMATCH); publishing a
    pointer under another name is refused up front, before anything is uploaded."""
    import datetime as dt

    from edb.cpk import PackageIdentity, Target, build
    from edb.keys.local import LocalKek
    from edb.pki.devpki import init_publisher_pki

    pki = init_publisher_pki(tmp_path / "pki")
    model = tmp_path / "m.bin"
    model.write_bytes(b"model bytes" * 100)
    now = dt.datetime.now(dt.UTC)
    package = tmp_path / "digits.cpk"
    build(model, package, identity=PackageIdentity("digits", "1.0.0", 1, Target(device_classes=("c",)),
                                                   created=now, expires=now + dt.timedelta(days=1)),
          kek=LocalKek.from_file(pki.kek), signer=pki.signer())
    result = CliRunner().invoke(cloud, ["--state-dir", str(tmp_path), "publish", str(package), "--name", "other",
                                        "--json"], env={"EDB_STATE_DIR": "", "EDB_BLOB_CONNECTION_STRING": ""})
    assert result.exit_code == 2, result.output
    assert json.loads(result.output)["error"]["code"] == "CONFIG_INVALID"
    assert "signed id" in json.loads(result.output)["error"]["message"]
