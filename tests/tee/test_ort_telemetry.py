"""onnxruntime's telemetry stays off wherever this project loads it (shared/edb/ort.py).

onnxruntime 1.29+ on Linux writes a device id and an event store under
``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` at load and sends a process-information event
to Microsoft. The control run shows this version of it still does (so the test can fail); the
project's import path leaves nothing behind. CI variables silence it too, so they are removed from
the children's environment: otherwise both runs would be quiet and prove nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ORT_CI_VARIABLES = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
                    "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER")


def _files_left_by(code: str, home: Path) -> list[str]:
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ORT_CI_VARIABLES and k != "ORT_DISABLE_TELEMETRY"}
    env["HOME"] = str(home)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120, capture_output=True)
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


def test_a_bare_import_leaves_a_device_id_but_the_projects_import_leaves_nothing(tmp_path: Path) -> None:
    bare = _files_left_by("import onnxruntime", tmp_path / "bare")
    assert any(name.endswith(".onnxruntime/deviceid") for name in bare), bare  # the control
    ours = _files_left_by(
        "from edb.ort import onnxruntime as ort\n"
        "import numpy as np, onnx\n"
        "from onnx import TensorProto, helper\n"
        "x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])\n"
        "y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])\n"
        "g = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'g', [x], [y])\n"
        "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 13)])\n"
        "s = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])\n"
        "assert s.run(None, {'x': np.ones(1, np.float32)})[0][0] == 1\n", tmp_path / "ours")
    assert ours == []


def test_the_tee_loads_onnxruntime_through_the_switch() -> None:
    code = "import edb_tee.models, os; print(os.environ.get('ORT_DISABLE_TELEMETRY'))"
    out = subprocess.run([sys.executable, "-c", code],
                         env={k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"},
                         check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1"
