"""`edb cloud build`'s release policy is not the weakest by default (issue 13, item 4).

Against the Key Vault stand-in and a real TEE service process: without a measurement the build is
refused before anything is written; by default the policy pins the running local TEE's measurement
and security version and the package's own security version; given measurements are pinned as
given; "any measurement" only with --allow-any-measurement, which warns on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edb.pki.devpki import init_publisher_pki
from edb.tee.client import TeeClient
from edb_cloud.cli import cloud
from edb_cloud.config import CloudConfig
from edb_cloud.keyvault.policies import get_policy
from edb_cloud.publisher import init_publisher
from edb_local.stack_ca import StackCA

DEVICE = "policy-test-device"


def tiny_model() -> bytes:
    node = helper.make_node("Relu", ["input"], ["output"])
    graph = helper.make_graph([node], "relu", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture
def env(tmp_path: Path, keyvault: Any, stack_ca: StackCA) -> dict[str, str]:
    state = tmp_path / "state"
    values = {"EDB_STATE_DIR": str(state), "EDB_KEYVAULT_URL": keyvault.url,
              "EDB_KEYVAULT_CREDENTIAL": str(keyvault.credential_path("admin")),
              "EDB_KEYVAULT_CA": str(stack_ca.ca_path), "EDB_DEVICE_ID": DEVICE, "EDB_TEE_SOCKET": ""}
    init_publisher_pki(state / "pki")
    init_publisher(CloudConfig.load(state, environ=values))
    return values


@pytest.fixture
def local_tee(tmp_path: Path, env: dict[str, str]) -> Iterator[Path]:
    from edb.pki.certs import load_pem_certificates_file
    from edb_tee.provisioning import provision

    roots = load_pem_certificates_file(Path(env["EDB_STATE_DIR"]) / "pki" / "root.pem")
    result = provision(tmp_path / "device", DEVICE, publisher_roots=roots)
    socket = result.layout.socket
    log = open(tmp_path / "tee.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "edb_tee", "serve", "--device-dir", str(result.layout.root)],
                            stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 120
    while not socket.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "tee.log").read_text()[-2000:]
        time.sleep(0.05)
    try:
        yield socket
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def build(env: dict[str, str], tmp_path: Path, name: str, *extra: str) -> Any:
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_model())
    return CliRunner().invoke(cloud, ["build", str(model), "--name", name, "--version", "1.0.0",
                                      "--security-version", "3", "--json", *extra], env=env)


def policy(env: dict[str, str], name: str) -> Any:
    from edb_cloud.publisher import _vault

    return get_policy(_vault(CloudConfig.load(Path(env["EDB_STATE_DIR"]), environ=env)).secret_client(), name)


def test_no_measurement_no_build(env: dict[str, str], tmp_path: Path) -> None:
    result = build(env, tmp_path, "nomeasure")
    assert result.exit_code != 0
    assert json.loads(result.stdout)["error"]["code"] == "CONFIG_MISSING"
    assert "--allow-any-measurement" in json.loads(result.stdout)["error"]["message"]
    assert policy(env, "nomeasure") is None
    assert not (Path(env["EDB_STATE_DIR"]) / "cloud" / "packages" / "nomeasure-1.0.0.cpk").exists()
    bad = build(env, tmp_path, "badmeasure", "--measurement", "xyz")
    assert json.loads(bad.stdout)["error"]["code"] == "CONFIG_INVALID" and policy(env, "badmeasure") is None
    both = build(env, tmp_path, "both", "--measurement", "ab" * 32, "--allow-any-measurement")
    assert json.loads(both.stdout)["error"]["code"] == "CONFIG_INVALID" and policy(env, "both") is None


def test_default_pins_the_local_tee_and_the_package_security_version(env: dict[str, str], tmp_path: Path,
                                                                     local_tee: Path) -> None:
    with TeeClient(local_tee) as tee:
        info = tee.device_info()
    result = build({**env, "EDB_TEE_SOCKET": str(local_tee)}, tmp_path, "pinned")
    assert result.exit_code == 0, result.output
    assert "created (1 pinned TEE measurement(s)" in json.loads(result.stdout)["policy"]
    p = policy(env, "pinned")
    assert p.measurements == frozenset({info.measurement})
    assert (p.min_tee_svn, p.min_security_version, p.devices) == (info.tee_svn, 3, frozenset({DEVICE}))


def test_given_measurements_and_the_loud_any(env: dict[str, str], tmp_path: Path) -> None:
    a, b = "AB" * 32, "cd" * 32
    result = build(env, tmp_path, "given", "--measurement", a, "--measurement", b, "--min-security-version", "2")
    assert result.exit_code == 0, result.output
    p = policy(env, "given")
    assert p.measurements == frozenset({a.lower(), b}) and (p.min_tee_svn, p.min_security_version) == (1, 2)

    loud = build(env, tmp_path, "anything", "--allow-any-measurement")
    assert loud.exit_code == 0, loud.output
    assert "WARNING: --allow-any-measurement" in loud.stderr and "ANY TEE measurement" in loud.stderr
    assert "ANY TEE measurement" in json.loads(loud.stdout)["policy"]
    p = policy(env, "anything")
    assert p.measurements is None and p.min_security_version == 3  # still the package's own version
    assert os.path.exists(json.loads(loud.stdout)["path"])
