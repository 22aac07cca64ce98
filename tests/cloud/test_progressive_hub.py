"""Progressive rollouts against the hub stand-in with the real azure-iot-hub SDK (no devices needed:
the devices here never report): state kept in the hub (a new HubService sees the same rollout),
started twice, another version refused while active, pause / resume / abort, devices that never
report stall the phase at its timeout, and a population without a base refused before anything is
written."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_orchestrator_hub import SHA, config, edge_device, hub  # noqa: F401 - fixtures

from edb.errors import EdbError
from edb_cloud.composition import CompositionError
from edb_cloud.config import CloudConfig
from edb_cloud.deploy import default_template, deploy_to_fleet, render_manifest
from edb_cloud.iothub import HubService
from edb_cloud.progressive import Idle, PlanError, Stalled, Status, Wait, parse_plan
from edb_cloud.progressive_driver import find_rollout, set_status, start, step
from edb_cloud.releases import Release, ReleaseRegistry
from edb_local.hub import HubThread

PLAN = parse_plan({"target": "tags.fleet='t'", "phases": [
    {"name": "canary", "percent": 30, "gates": {"minSoakSeconds": 1, "maxInstallFailureRate": 0.0,
                                                "timeoutSeconds": 30}},
    {"name": "rest", "percent": 100, "gates": {"minSoakSeconds": 1, "timeoutSeconds": 30}}]})


def release(version: str) -> Release:
    return Release("digits", "digits", version, 1, f"https://blob.example/{version}.cpk?sig=x", SHA, 1234,
                   f"digits/{version}/{SHA}.cpk", "2026-11-26T00:00:00Z")


def desired_versions(service: HubService) -> dict[str, str | None]:
    return {t.device_id: ((t.desired.get("packages") or {}).get("digits") or {}).get("version")
            for t in service.module_twins("package_installer")}


def test_rollout_state_lives_in_the_hub(hub: HubThread, config: CloudConfig, tmp_path: Path) -> None:  # noqa: F811
    service = HubService(config.iothub_connection_string)
    registry = ReleaseRegistry(tmp_path / "releases.json")
    for version in ("1.0.0", "2.0.0"):
        registry.add(release(version))
    for n in range(3):
        edge_device(service, hub, f"t-{n}", {"fleet": "t"}, ("package_installer", "inference_runner"))

    with pytest.raises(CompositionError) as no_base:  # nothing under the devices yet
        start(service, registry, release("2.0.0"), PLAN, now=1000.0)
    assert no_base.value.code == "CLOUD_ROLLOUT_NO_BASE"
    assert service.deployments() == [] and all(
        not any(k.startswith("edbRollout") for k in (t.tags or {}))
        for t in service.query("SELECT * FROM devices"))  # no tag written either

    deploy_to_fleet(service, "base", render_manifest(config, default_template(), "amd64"),
                    target_condition="tags.fleet='t'", priority=10)
    rollout = start(service, registry, release("2.0.0"), PLAN, now=1000.0)
    assert rollout.state.status is Status.RUNNING and rollout.state.phase == 0
    versions = desired_versions(service)
    assert sorted(v for v in versions.values() if v) == ["2.0.0"]  # 30 % of 3: one canary

    # the orchestrator "dies": a new client reads the same rollout back from labels and tags
    again = HubService(config.iothub_connection_string)
    assert find_rollout(again, "digits") == find_rollout(service, "digits")
    assert start(again, registry, release("2.0.0"), PLAN, now=2000.0).state.rollout_id == rollout.state.rollout_id
    with pytest.raises(PlanError) as active:
        start(again, registry, release("1.0.0"), PLAN, now=2000.0)
    assert active.value.code == "CLOUD_ROLLOUT_ACTIVE"

    waiting = step(again, registry, "digits", now=1005.0).decision  # nobody reports
    assert isinstance(waiting, Wait) and "minReporting" in waiting.waiting_for
    set_status(again, "digits", Status.PAUSED, "looking at dashboards")
    assert isinstance(step(again, registry, "digits", now=1006.0).decision, Idle)
    with pytest.raises(EdbError):
        set_status(again, "digits", Status.PAUSED, "")  # paused already
    set_status(again, "digits", Status.RUNNING, "")
    stalled = step(again, registry, "digits", now=1031.0)  # past the phase's 30 s timeout
    assert isinstance(stalled.decision, Stalled) and stalled.rollout.state.status is Status.HALTED
    canary = next(d for d, v in versions.items() if v == "2.0.0")
    assert canary in (stalled.rollout.state.reason or "")
    set_status(again, "digits", Status.ABORTED, "give up")
    assert find_rollout(again, "digits").state.status is Status.ABORTED  # type: ignore[union-attr]
    assert desired_versions(again) == versions  # abort changes nothing on the devices
    follow_up = start(again, registry, release("1.0.0"), PLAN, now=3000.0)  # aborted: a new one may start
    assert follow_up.state.rollout_id != rollout.state.rollout_id
