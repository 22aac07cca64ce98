"""Build-time preflight: `edb package build` and `edb cloud build` load the model with the TEE's own
loader before encrypting and refuse what the TEE would refuse (CPK_MODEL_UNSUPPORTED, the TEE's code
and ONNX Runtime's whole cause); ``--skip-preflight`` builds it anyway. Nothing is written when a
build is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from corpus import conv_nchwc, sequence_only, unknown_operator

from edb.cli.main import root
from edb_cloud.cli import cloud


@pytest.fixture
def edb(tmp_path: Path) -> Any:
    runner = CliRunner()
    env = {"EDB_STATE_DIR": str(tmp_path / ".edb")}

    def run(*args: str, code: int = 0) -> dict[str, Any]:
        result = runner.invoke(root, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    run("pki", "init", "--kek-bits", "2048", "--json")
    return run


def build_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["package", "build", str(model), "-o", str(out), "--id", "m", "--version", "1", "--security-version", "1",
            "--target-class", "edge", *extra, "--json"]


def test_a_model_onnxruntime_refuses_is_refused_at_build_with_the_whole_cause(edb: Any, tmp_path: Path) -> None:
    model = tmp_path / "bad.onnx"
    model.write_bytes(unknown_operator())
    out = tmp_path / "bad.cpk"
    for layout in ("plain", "aligned"):
        error = edb(*build_args(model, out, "--onnx-layout", layout), code=2)["error"]
        assert error["code"] == "CPK_MODEL_UNSUPPORTED"
        assert "(TEE_MODEL_INVALID)" in error["message"]
        assert "No Op registered for NoSuchOperator" in error["message"]  # the root cause, not cut off
        assert not out.exists()
    built = edb(*build_args(model, out, "--skip-preflight"))
    assert built["ok"] and built["preflight"] == "skipped" and out.exists()


def test_a_model_with_no_output_that_can_cross_is_refused(edb: Any, tmp_path: Path) -> None:
    model = tmp_path / "seq.onnx"
    model.write_bytes(sequence_only())
    error = edb(*build_args(model, tmp_path / "s.cpk"), code=2)["error"]
    assert error["code"] == "CPK_MODEL_UNSUPPORTED" and "(TEE_OUTPUT_UNSUPPORTED)" in error["message"]


def test_not_a_model_or_not_a_model_media_type_is_refused(edb: Any, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\xff" * 600)
    error = edb(*build_args(blob, tmp_path / "b.cpk"), code=2)["error"]
    assert error["code"] == "CPK_MODEL_UNSUPPORTED" and "(LAYOUT_INVALID)" in error["message"]
    model = tmp_path / "m.onnx"
    model.write_bytes(conv_nchwc())
    error = edb(*build_args(model, tmp_path / "t.cpk", "--media-type", "text/plain"), code=2)["error"]
    assert error["code"] == "CPK_MODEL_UNSUPPORTED" and "--skip-preflight" in error["message"]


def test_the_nchwc_model_of_the_issue_builds_and_says_how_the_tee_will_load_it(edb: Any, tmp_path: Path) -> None:
    model = tmp_path / "conv.onnx"
    model.write_bytes(conv_nchwc())
    built = edb(*build_args(model, tmp_path / "c.cpk", "--onnx-layout", "aligned"))
    assert built["preflight"]["weights"] == "copied"
    assert built["preflight"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 256, 64, 1]}]


def test_cloud_build_preflights_before_any_key_is_touched(tmp_path: Path) -> None:
    """No Key Vault is configured here: the preflight refusal comes first; skipped, the build goes on
    to the missing Key Vault."""
    model = tmp_path / "bad.onnx"
    model.write_bytes(unknown_operator())
    env = {"EDB_STATE_DIR": "", "EDB_KEYVAULT_URL": ""}
    base = ["--state-dir", str(tmp_path), "build", str(model), "--name", "bad", "--version", "1.0.0",
            "--security-version", "1", "--device", "dev-1", "--json"]
    result = CliRunner().invoke(cloud, base, env=env)
    error = json.loads(result.output)["error"]
    assert result.exit_code != 0 and error["code"] == "CPK_MODEL_UNSUPPORTED", result.output
    assert "No Op registered for NoSuchOperator" in error["message"]
    result = CliRunner().invoke(cloud, [*base, "--skip-preflight"], env=env)
    assert json.loads(result.output)["error"]["code"] != "CPK_MODEL_UNSUPPORTED", result.output
    assert not (tmp_path / "cloud" / "packages" / "bad-1.0.0.cpk").exists()
