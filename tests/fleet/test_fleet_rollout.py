"""The fleet simulator and progressive rollouts end to end, on a whole local stack: simulated devices
(each its own hub identity and TEE state, the real installer, runner and reporter code, the real key
release flow) receive a version through a phased plan; the orchestrator is "killed" after the first
phase and resumed from the state it keeps in the hub; a version that fails to load on a canary device
halts the rollout and sends the canary phase back, with every device serving a model throughout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edb_local.fleet.simulate import FaultPlan, assign_faults
from edb_local.fleet.spec import chunks, pick


def edb(*args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDB_")}
    return subprocess.run([sys.executable, "-m", "edb.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


def ok(*args: str, timeout: float = 240.0) -> dict[str, Any]:
    out = edb(*args, "--json", timeout=timeout)
    assert out.returncode == 0, f"{args}: {out.stdout[-1500:]} {out.stderr[-1500:]}"
    doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return doc


@pytest.fixture
def stack() -> Iterator[Path]:
    state = Path(tempfile.mkdtemp(prefix="edb-fleet-", dir="/tmp"))  # short: Unix socket paths
    try:
        from edb.pki.devpki import init_publisher_pki

        init_publisher_pki(state / "pki")
        ok("local", "up", "--state-dir", str(state))
        yield state
    finally:
        edb("fleet", "down", "--state-dir", str(state), "--json", timeout=120)
        edb("local", "down", "--state-dir", str(state), "--json", timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def serving_everywhere(state: Path, ids: list[str]) -> dict[str, str]:
    """Every simulated device's serving version (a failed load of a newer one still serves the old,
    reported "serving" with the failure in model.lastLoadFailure)."""
    from edb_cloud.config import CloudConfig
    from edb_cloud.iothub import HubService

    config = CloudConfig.load(state, environ={})
    hub = HubService(config.iothub_connection_string, config.ca_cert)
    found = {}
    for twin in hub.module_twins("inference_runner"):
        model = twin.reported.get("model") or {}
        if twin.device_id in ids and model.get("state") in ("serving", "failed") and model.get("version"):
            found[twin.device_id] = str(model["version"])
    return found


def test_phased_rollout_resume_after_kill_and_breach_rollback(stack: Path, tmp_path: Path) -> None:
    cloud = ("cloud", "--state-dir", str(stack))
    ok(*cloud, "init")
    ok(*cloud, "train-demo", "--variant", "v1")
    model = str(next((stack / "cloud" / "models").glob("*.onnx")))
    for version in ("1.0.0", "2.0.0"):
        ok(*cloud, "build", model, "--name", "digits", "--version", version, "--security-version", "1",
           "--device-class", "trustbox-edge-201")
        ok(*cloud, "publish", str(stack / "cloud" / "packages" / f"digits-{version}.cpk"))
    ok(*cloud, "deploy", "--target-condition", "tags.fleet='sim'", "--deployment-id", "fleet-base")
    fleet = ok("fleet", "simulate", "--devices", "4", "--state-dir", str(stack), "--fail-load", "0.25",
               "--fail-load-version", "2.0.0", "--frame-interval", "0.5")
    assert fleet["devices"] == 4
    ids = [f"sim-{n:04d}" for n in range(4)]
    (failing,) = pick(ids, 0.25, "fail-load")
    healthy = sorted(set(ids) - {failing})

    plan = tmp_path / "plan.json"
    gates = {"minSoakSeconds": 1, "maxInstallFailureRate": 0.0, "minReporting": 1.0, "timeoutSeconds": 90}
    plan.write_text(json.dumps({"target": "tags.fleet='sim'", "phases": [
        {"name": "half", "percent": 50, "gates": gates}, {"name": "all", "percent": 100, "gates": gates}]}))
    # started without waiting: the orchestrator "dies" after creating the first phase
    started = ok(*cloud, "rollout", "digits", "--version", "1.0.0", "--plan", str(plan), "--no-wait")
    assert started["status"] == "running"
    again = ok(*cloud, "rollout", "digits", "--version", "1.0.0", "--plan", str(plan), "--no-wait")
    assert again["rollout"] == started["rollout"]  # started twice: the same rollout
    resumed = ok(*cloud, "rollout", "resume", "digits", timeout=200)  # a new process, state from the hub
    assert resumed["status"] == "done", resumed
    assert serving_everywhere(stack, ids) == dict.fromkeys(ids, "1.0.0")

    canary = sorted([failing, healthy[0]])
    plan.write_text(json.dumps({"target": "tags.fleet='sim'", "phases": [
        {"name": "canary", "condition": " OR ".join(f"deviceId = '{d}'" for d in canary), "gates": gates},
        {"name": "rest", "percent": 100, "gates": gates}]}))
    breach = edb(*cloud, "rollout", "digits", "--version", "2.0.0", "--plan", str(plan), "--json", timeout=200)
    assert breach.returncode == 1, breach.stdout + breach.stderr
    doc = json.loads(breach.stdout.strip().splitlines()[-1])
    assert doc["status"] == "halted" and "breach in phase canary" in doc["reason"], doc
    status = ok(*cloud, "rollout", "status", "digits")
    assert status["phase"]["name"] == "canary" and status["values"]["counts"]["rolled-back"] == 2
    refused = edb(*cloud, "rollout", "digits", "--version", "1.0.0", "--plan", str(plan), "--json")
    assert json.loads(refused.stdout)["error"]["code"] == "CLOUD_ROLLOUT_ACTIVE"

    from edb_cloud.config import CloudConfig
    from edb_cloud.iothub import HubService

    config = CloudConfig.load(stack, environ={})
    hub = HubService(config.iothub_connection_string, config.ca_cert)
    desired = {t.device_id: (t.desired.get("packages") or {}).get("digits", {}).get("version")
               for t in hub.module_twins("package_installer") if t.device_id in ids}
    # the whole canary phase went back to 1.0.0 (the healthy canary too), the rest never left it
    assert desired == dict.fromkeys(ids, "1.0.0")
    serving = serving_everywhere(stack, ids)
    assert set(serving) == set(ids) and serving[failing] == "1.0.0"  # nobody left without a model
    fleet_status = ok("fleet", "status", "--state-dir", str(stack))
    assert fleet_status["notServing"] == 0 and fleet_status["faults"]["failLoad"] == 1


def test_fault_assignment_and_process_chunks_are_stable() -> None:
    ids = [f"d{n}" for n in range(200)]
    faults = assign_faults(ids, FaultPlan(fail_load_fraction=0.2, fail_load_version="2.0.0", offline_fraction=0.05))
    assert sum(1 for f in faults.values() if f.fail_load == "2.0.0") == 40
    assert sum(1 for f in faults.values() if f.offline) == 10
    assert faults == assign_faults(list(reversed(ids)), FaultPlan(0.2, "2.0.0", 0.05))
    assert [len(c) for c in chunks(ids, 64)] == [64, 64, 64, 8]
    with pytest.raises(ValueError):
        pick(ids, 1.5, "x")
