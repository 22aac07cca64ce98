"""deployment.vision.template.json (make demo-vision): a valid manifest with the camera module, the
runner's OIP endpoint and every result routed upstream."""

from __future__ import annotations

from pathlib import Path

from edb_cloud.manifest import parse_route, project_endpoints, require_valid
from edb_cloud.template import expand_template_file, parse_env_text

ROOT = Path(__file__).resolve().parents[2]
ENV = {**parse_env_text((ROOT / "cloud" / "edb_cloud" / "defaults.env").read_text()),
       "EDB_KEY_RELEASE_URL": "https://kr.example/api"}


def test_the_vision_template_expands_to_a_valid_manifest_with_the_camera() -> None:
    manifest = expand_template_file(ROOT / "deployment.vision.template.json", ENV, modules_dir=ROOT / "modules",
                                    platform="amd64")
    require_valid(manifest, project_endpoints())
    content = manifest["modulesContent"]
    modules = content["$edgeAgent"]["properties.desired"]["modules"]
    assert "camera_sensor" in modules and "simulated_sensor" not in modules
    assert modules["camera_sensor"]["env"]["EDB_OIP_URL"]["value"] == "http://inference_runner:8000"
    assert modules["inference_runner"]["env"]["EDB_OIP_LISTEN"]["value"] == "0.0.0.0:8000"
    # the endpoint is on the module network only: no published port for the runner
    assert "PortBindings" not in modules["inference_runner"]["settings"]["createOptions"]
    routes = content["$edgeHub"]["properties.desired"]["routes"]
    parsed = [parse_route(n, r if isinstance(r, str) else r["route"]) for n, r in routes.items()]
    assert {r.source_output for r in parsed if r.sink == "$upstream"} == {"alerts", "telemetry", "resultsUpstream"}
    assert content["inference_runner"]["properties.desired"]["results"] == {"upstreamFraction": 1}
    assert content["camera_sensor"]["properties.desired"]["camera"]["model"] == \
        content["inference_runner"]["properties.desired"]["model"]["name"] == "textorient"


def test_the_vision_template_runs_the_same_modules_as_the_main_one() -> None:
    """The vision template swaps the sensor for the camera; every module both run (and the runtime
    and system modules) must be defined identically, so a setting added to one (a package host
    allow-list, a read-only root) cannot be missing from the other."""
    import json

    def agent(name: str) -> dict[str, object]:
        doc = json.loads((ROOT / name).read_text())
        desired: dict[str, object] = doc["modulesContent"]["$edgeAgent"]["properties.desired"]
        return desired

    main, vision = agent("deployment.template.json"), agent("deployment.vision.template.json")
    assert vision["runtime"] == main["runtime"] and vision["systemModules"] == main["systemModules"]
    main_modules, vision_modules = main["modules"], vision["modules"]
    assert isinstance(main_modules, dict) and isinstance(vision_modules, dict)
    shared = set(main_modules) & set(vision_modules)
    assert shared == {"tee_service", "package_installer", "inference_runner", "telemetry_reporter"}
    for name in shared:
        assert vision_modules[name] == main_modules[name], name
    for module in vision_modules.values():  # every module of the vision demo has a read-only root too
        assert module["settings"]["createOptions"]["HostConfig"].get("ReadonlyRootfs") is True
