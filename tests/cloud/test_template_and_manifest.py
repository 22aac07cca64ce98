"""deployment.template.json, its iotedgedev-style expansion, and the manifest rules."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from edb_cloud.manifest import (
    Endpoints,
    ManifestError,
    parse_route,
    project_endpoints,
    require_valid,
    validate_manifest,
)
from edb_cloud.template import (
    TemplateError,
    expand_string,
    expand_template,
    expand_template_file,
    join_create_options,
    load_env,
    parse_env_text,
    split_create_options,
)

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "modules"
TEMPLATE = ROOT / "deployment.template.json"
DEFAULTS = ROOT / "cloud" / "edb_cloud" / "defaults.env"
ENV = {**parse_env_text(DEFAULTS.read_text()), "EDB_KEY_RELEASE_URL": "https://kr.example/api"}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return expand_template_file(TEMPLATE, ENV, modules_dir=MODULES, platform="amd64")


def test_the_shipped_template_expands_to_a_valid_manifest(manifest: dict[str, Any]) -> None:
    assert validate_manifest(manifest, project_endpoints()) == []
    assert "$schema-template" not in manifest
    text = json.dumps(manifest)
    assert "${" not in text


def test_template_lists_the_suite_with_images_from_module_json(manifest: dict[str, Any]) -> None:
    modules = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    assert set(modules) == {"tee_service", "package_installer", "inference_runner", "telemetry_reporter",
                            "simulated_sensor"}
    for module_id, module in modules.items():
        meta = json.loads((MODULES / module_id / "module.json").read_text())
        assert module["settings"]["image"] == f"localhost:5000/{module_id}:{meta['image']['tag']['version']}-amd64"
    arm = expand_template_file(TEMPLATE, ENV, modules_dir=MODULES, platform="arm64v8")
    image = arm["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["package_installer"]["settings"]
    assert image["image"].endswith("-arm64v8")


def test_shared_bind_mounts_and_env(manifest: dict[str, Any]) -> None:
    modules = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]

    def binds(module_id: str) -> list[str]:
        return json.loads(join_create_options(modules[module_id]["settings"]))["HostConfig"].get("Binds", [])

    tee_bind = "/var/run/edb-tee:/run/edb-tee"
    for module_id in ("tee_service", "package_installer", "inference_runner"):
        assert tee_bind in binds(module_id)
    assert "edb-package-cache:/var/lib/edb/packages" in binds("package_installer")
    env = modules["package_installer"]["env"]
    assert env["EDB_TEE_SOCKET"] == {"value": "/run/edb-tee/tee.sock"}
    assert env["EDB_KEY_RELEASE_URL"] == {"value": "https://kr.example/api"}


def test_every_output_and_input_of_every_module_is_routed(manifest: dict[str, Any]) -> None:
    routes = manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
    parsed = [parse_route(n, r if isinstance(r, str) else r["route"]) for n, r in routes.items()]
    for module_id, endpoints in project_endpoints().items():
        for output in endpoints.outputs:
            assert any(r.source_module == module_id and r.source_output == output for r in parsed), output
        for input_name in endpoints.inputs:
            assert any(r.sink_module == module_id and r.sink_input == input_name for r in parsed), input_name
    upstream = {r.source_output for r in parsed if r.sink == "$upstream"}
    assert upstream == {"alerts", "telemetry", "resultsUpstream"}  # results: a sampled copy (twin results)


def test_initial_desired_properties(manifest: dict[str, Any]) -> None:
    content = manifest["modulesContent"]
    assert content["inference_runner"]["properties.desired"]["model"] == {"name": "digits"}
    assert content["$edgeHub"]["properties.desired"]["storeAndForwardConfiguration"]["timeToLiveSecs"] > 0


def test_module_packaging_files_exist_and_run_as_non_root() -> None:
    for module_id in ("package_installer", "inference_runner", "telemetry_reporter", "simulated_sensor",
                      "tee_service"):
        folder = MODULES / module_id
        meta = json.loads((folder / "module.json").read_text())
        assert meta["$schema-version"] == "0.0.1" and meta["image"]["contextPath"] == "../../"
        assert (folder / "requirements.txt").is_file()
        for platform, dockerfile in meta["image"]["tag"]["platforms"].items():
            text = (folder / dockerfile).read_text()
            assert "COPY shared/edb" in text, (module_id, platform)
            user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
            assert user_lines and user_lines[-1] not in ("USER root", "USER 0")
        if module_id != "tee_service":
            assert (folder / "main.py").is_file() and (folder / "endpoints.py").is_file()


def test_split_create_options_into_512_character_parts() -> None:
    options = {"HostConfig": {"Binds": [f"/host/{i:04d}:/container/{i:04d}" for i in range(60)]}}
    parts = split_create_options(options)
    assert list(parts) == ["createOptions", *[f"createOptions{i:02d}" for i in range(1, len(parts))]]
    assert all(len(p) <= 512 for p in parts.values()) and len(parts) > 1
    assert json.loads(join_create_options(parts)) == options
    with pytest.raises(TemplateError) as info:
        split_create_options({"x": "y" * 5000})
    assert info.value.code == "CONFIG_CREATE_OPTIONS_TOO_LONG"


def test_long_create_options_in_a_template_are_split_and_still_valid(manifest: dict[str, Any]) -> None:
    template = json.loads(TEMPLATE.read_text())
    module = template["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["simulated_sensor"]
    module["settings"]["createOptions"]["Labels"] = {f"label{i}": "v" * 40 for i in range(30)}
    expanded = expand_template(template, ENV, modules_dir=MODULES)
    settings = expanded["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["simulated_sensor"]["settings"]
    assert "createOptions01" in settings
    assert validate_manifest(expanded, project_endpoints()) == []


def test_variables_bare_braced_undefined_and_iot_edge_names() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_string("$A-${B}-$edgeHub-$upstream", env, modules_dir=MODULES, platform="amd64") == \
        "1-two-$edgeHub-$upstream"
    with pytest.raises(TemplateError) as info:
        expand_string("${NOPE}", env, modules_dir=MODULES, platform="amd64")
    assert info.value.code == "CONFIG_UNDEFINED_VARIABLE"
    with pytest.raises(TemplateError):
        expand_string("${MODULES.nosuchmodule}", env, modules_dir=MODULES, platform="amd64")
    with pytest.raises(TemplateError):
        expand_string("${MODULES.package_installer.s390x}", {"CONTAINER_REGISTRY_SERVER": "r"},
                      modules_dir=MODULES, platform="amd64")
    assert expand_string("${MODULES.package_installer.arm64v8}", {"CONTAINER_REGISTRY_SERVER": "r"},
                         modules_dir=MODULES, platform="amd64") == "r/package_installer:0.1.0-arm64v8"


def test_env_files_override_in_order_and_process_env_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a.env", tmp_path / ".env"
    first.write_text("# comment\nexport A=1\nB='quoted value'\nC=\"x\"\nD='HostName=h;Key=a'\"'\"'b='\n")
    second.write_text("A=2\n\n")
    env = load_env([first, second, tmp_path / "missing.env"], environ={"C": "from-shell"})
    assert env == {"A": "2", "B": "quoted value", "C": "from-shell", "D": "HostName=h;Key=a'b="}
    bad = tmp_path / "bad.env"
    bad.write_text("not a line\n")
    with pytest.raises(TemplateError):
        load_env([bad], environ={})


def test_keys_are_never_expanded() -> None:
    template = {"modulesContent": {"$edgeAgent": {"properties.desired": {"modules": {}}}, "$A": {"v": "$A"}}}
    out = expand_template(template, {"A": "x"}, modules_dir=MODULES)
    assert out["modulesContent"]["$A"] == {"v": "x"}


def mutate(manifest: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


AGENT = ["modulesContent", "$edgeAgent", "properties.desired"]
HUB = ["modulesContent", "$edgeHub", "properties.desired"]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ([*AGENT, "schemaVersion"], "1.0", "schemaVersion"),
        ([*HUB, "schemaVersion"], KeyError, "schemaVersion"),
        ([*AGENT, "runtime", "type"], "rkt", "runtime"),
        ([*AGENT, "systemModules", "edgeHub", "restartPolicy"], "never", "edgeHub must be"),
        ([*AGENT, "modules", "inference_runner", "restartPolicy"], "sometimes", "restartPolicy"),
        ([*AGENT, "modules", "inference_runner", "status"], "paused", "status"),
        ([*AGENT, "modules", "inference_runner", "settings", "image"], "", "image"),
        ([*AGENT, "modules", "inference_runner", "settings", "createOptions"], "x" * 513, "512"),
        ([*AGENT, "modules", "inference_runner", "settings", "createOptions"], {"a": 1}, "string"),
        ([*AGENT, "modules", "inference_runner", "settings", "createOptions03"], "{}", "consecutive"),
        ([*AGENT, "modules", "inference_runner", "env", "EDB_TEE_SOCKET"], "bare", "env"),
        ([*HUB, "routes", "r"], "FROM /messages/modules/inference_runner/outputs/nope INTO $upstream", "no output"),
        ([*HUB, "routes", "r"], 'FROM /messages/* INTO BrokeredEndpoint("/modules/telemetry_reporter/inputs/x")',
         "no input"),
        ([*HUB, "routes", "r"], 'FROM /messages/* INTO BrokeredEndpoint("/modules/ghost/inputs/x")', "ghost"),
        ([*HUB, "routes", "r"], "SELECT * FROM devices", "FROM <source>"),
        ([*HUB, "routes", "r"], "FROM /messages/modules/a/b/c INTO $upstream", "source"),
        ([*HUB, "routes", "r"], "FROM /messages/* INTO $downstream", "sink"),
        ([*HUB, "routes", "r"], {"route": "FROM /messages/* INTO $upstream", "priority": 10}, "priority"),
        ([*HUB, "routes", "r"], {"route": "FROM /* INTO $upstream", "timeToLiveSecs": -1}, "timeToLiveSecs"),
        ([*HUB, "storeAndForwardConfiguration"], {}, "storeAndForward"),
        (["modulesContent", "ghost"], {"properties.desired": {}}, "does not run"),
        (["modulesContent", "inference_runner", "properties.desired", "big"], "x" * 40000, "bytes"),
        (["modulesContent", "inference_runner", "properties.desired", "model"], {"minVersion": None}, "null"),
    ],
)
def test_manifest_rules_catch_violations(manifest: dict[str, Any], path: list[str], value: Any,
                                         expected: str) -> None:
    problems = validate_manifest(mutate(manifest, path, value), project_endpoints())
    assert any(expected in p for p in problems), problems
    with pytest.raises(ManifestError):
        require_valid(mutate(manifest, path, value), project_endpoints())


def test_route_grammar_accepts_every_documented_source_form() -> None:
    for source in ("/*", "/messages/*", "/messages/modules/*", "/messages/modules/m/*",
                   "/messages/modules/m/outputs/*", "/messages/modules/m/outputs/o", "/twinChangeNotifications"):
        route = parse_route("r", f"FROM {source} WHERE messageType = 'alert' AND $body.x > 1 INTO $upstream")
        assert route.source == source and route.condition is not None
    route = parse_route("r", 'from /messages/modules/m/outputs/o into BrokeredEndpoint("/modules/n/inputs/i")')
    assert (route.source_module, route.source_output, route.sink_module, route.sink_input) == ("m", "o", "n", "i")
    assert Endpoints(("i",), ("o",)).inputs == ("i",)


def test_devcontainer_sets_the_project_up() -> None:
    import re

    text = (ROOT / ".devcontainer" / "devcontainer.json").read_text()
    config = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))  # JSON with comments
    assert config["build"]["dockerfile"] == "Dockerfile" and config["postCreateCommand"] == "make setup"
    assert "net.ipv4.ip_unprivileged_port_start=0" in " ".join(config["runArgs"])
    dockerfile = (ROOT / ".devcontainer" / "Dockerfile").read_text()
    assert "nodejs" in dockerfile and "python:1-3.11" in dockerfile and "USER vscode" in dockerfile
