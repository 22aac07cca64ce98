"""Parsing `$edgeAgent` desired properties, the module map, createOptions and module environment."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edb_local.agent.create_options import HealthCheck, Mount, parse_create_options, rewrite_container_paths
from edb_local.agent.deployment import DEFAULT_STARTUP_ORDER, parse_deployment
from edb_local.agent.environment import EdgeModuleIdentity, module_environment
from edb_local.agent.errors import DeploymentError, ImageNotMappedError
from edb_local.agent.module_map import BUILTIN_MODULES, ModuleMap, parse_extra_entries, repository_of


def manifest(**modules: Any) -> dict[str, Any]:
    return {
        "schemaVersion": "1.1",
        "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
        "systemModules": {"edgeAgent": {"type": "docker"}, "edgeHub": {"type": "docker"}},
        "modules": modules,
        "$version": 7,
    }


def module(image: str = "localhost:5000/package_installer:0.1.0-amd64", **extra: Any) -> dict[str, Any]:
    return {"version": "1.0", "type": "docker", "status": "running", "restartPolicy": "always",
            "settings": {"image": image, **extra.pop("settings", {})}, **extra}


def test_parses_a_schema_1_1_deployment() -> None:
    doc = manifest(
        installer=module(env={"B": {"value": 2}, "A": {"value": "x"}}, startupOrder=1,
                         settings={"createOptions": json.dumps({"HostConfig": {"Binds": ["/h:/c"]}})}),
        sensor=module("${MODULES.simulated_sensor}", status="stopped", restartPolicy="on-failure"),
    )
    dep = parse_deployment(doc)
    assert dep.desired_version == 7 and dep.schema_version == "1.1"
    inst, sensor = dep.modules["installer"], dep.modules["sensor"]
    assert inst.env == (("A", "x"), ("B", "2")) and inst.startup_order == 1
    assert inst.create_options == {"HostConfig": {"Binds": ["/h:/c"]}}
    assert sensor.status == "stopped" and sensor.restart_policy == "on-failure"
    assert sensor.startup_order == DEFAULT_STARTUP_ORDER
    assert [m.module_id for m in dep.ordered_modules()] == ["installer", "sensor"]


def test_split_create_options_are_joined() -> None:
    options = json.dumps({"Env": ["X=" + "y" * 600]})
    settings = {"createOptions": options[:512], "createOptions01": options[512:]}
    dep = parse_deployment(manifest(m=module(settings=settings)))
    assert dep.modules["m"].create_options == json.loads(options)


def test_fingerprint_tracks_what_recreates_a_container() -> None:
    base = parse_deployment(manifest(m=module())).modules["m"]
    same = parse_deployment(manifest(m=module(restartPolicy="never", status="stopped"))).modules["m"]
    other = parse_deployment(manifest(m=module(env={"A": {"value": "1"}}))).modules["m"]
    assert base.fingerprint == same.fingerprint != other.fingerprint


@pytest.mark.parametrize(("doc", "code", "status"), [
    ({"$version": 3}, "LOCAL_AGENT_EMPTY_DEPLOYMENT", 417),
    ({"schemaVersion": "2.0", "modules": {}}, "LOCAL_AGENT_SCHEMA_VERSION", 412),
    (manifest(m=module(status="paused")), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(m=module(restartPolicy="sometimes")), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(m=module(startupOrder=-1)), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(m=module(startupOrder=True)), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(m={"version": "1", "settings": {}}), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(m=module(settings={"createOptions": "{not json"})), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(m=module(settings={"createOptions": "[1]"})), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(m=module(env={"1BAD": {"value": "x"}})), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(m=module(env={"A": "no-value-wrapper"})), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(m=module(env={"A": {"value": "a\x00b"}})), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(**{"../escape": module()}), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
    (manifest(**{"$edgeHub": module()}), "LOCAL_AGENT_INVALID_DEPLOYMENT", 400),
])
def test_invalid_deployments_are_refused_with_their_status(doc: dict[str, Any], code: str, status: int) -> None:
    with pytest.raises(DeploymentError) as err:
        parse_deployment(doc)
    assert err.value.code == code and err.value.status_code == status


def test_null_module_from_a_removal_patch_is_ignored() -> None:
    assert set(parse_deployment(manifest(a=module(), b=None)).modules) == {"a"}


@pytest.mark.parametrize(("image", "repository"), [
    ("${MODULES.package_installer}", "package_installer"),
    ("${MODULES.inference_runner.arm64v8}", "inference_runner"),
    ("localhost:5000/package_installer:0.1.0-amd64", "package_installer"),
    ("myacr.azurecr.io/edb/telemetry-reporter@sha256:abcd", "telemetry_reporter"),
    ("simulated_sensor", "simulated_sensor"),
])
def test_repository_of_images(image: str, repository: str) -> None:
    assert repository_of(image) == repository


def test_module_map_resolves_project_modules_and_the_host_provided_tee() -> None:
    mm = ModuleMap()
    entry = mm.resolve("localhost:5000/inference_runner:0.1.0-amd64")
    assert entry.argv("/py") == ["/py", "-m", "inference_runner.main"]
    tee = mm.resolve("${MODULES.tee_service}")
    assert tee.host_provided
    with pytest.raises(ValueError):
        tee.argv("/py")
    with pytest.raises(ImageNotMappedError) as err:
        mm.resolve("mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.0")
    assert err.value.code == "LOCAL_AGENT_IMAGE_NOT_MAPPED"


def test_extra_map_entries_cannot_override_builtins_and_are_validated() -> None:
    extra = parse_extra_entries({"echo-module": {"script": "/abs/echo.py"},
                                 "package_installer": {"script": "/evil.py"}})
    mm = ModuleMap(extra)
    assert mm.resolve("reg/echo_module:1").argv("/py") == ["/py", "/abs/echo.py"]
    assert mm.resolve("reg/package_installer:1") == BUILTIN_MODULES["package_installer"]
    for bad in ({"x": {"script": "relative.py"}}, {"x": {"module": "not a module"}}, {"x": {}}, []):
        with pytest.raises(ImageNotMappedError):
            parse_extra_entries(bad)


def test_create_options_binds_mounts_env_cmd_and_healthcheck() -> None:
    opts = parse_create_options("m", {
        "Env": ["CACHE=/data/cache", "PLAIN=x"],
        "Cmd": ["--verbose"],
        "HostConfig": {"Binds": ["/srv/edb:/data", "models:/models:ro"],
                       "Mounts": [{"Type": "bind", "Source": "/run/tee", "Target": "/var/run/tee"}],
                       "PortBindings": {"80/tcp": [{"HostPort": "8080"}]}},
        "Healthcheck": {"Test": ["CMD", "test", "-f", "/tmp/ok"], "Interval": 2_000_000_000, "Retries": 2},
    })
    assert opts.mounts == (Mount("/srv/edb", "/data"), Mount("models", "/models", True),
                           Mount("/run/tee", "/var/run/tee"))
    assert opts.args == ("--verbose",)
    assert opts.health_check == HealthCheck(("test", "-f", "/tmp/ok"), interval_s=2.0, retries=2)
    env = rewrite_container_paths({"CACHE": "/data/cache", "M": "/models", "S": "/var/run/tee/s.sock",
                                   "X": "/database"}, opts.mounts, "/state/agent/volumes")
    assert env == {"CACHE": "/srv/edb/cache", "M": "/state/agent/volumes/models",
                   "S": "/run/tee/s.sock", "X": "/database"}
    shell = parse_create_options("m", {"Healthcheck": {"Test": ["CMD-SHELL", "exit 0"]}}).health_check
    assert shell is not None and shell.argv == ("/bin/sh", "-c", "exit 0")
    assert parse_create_options("m", {"Healthcheck": {"Test": ["NONE"]}}).health_check is None


@pytest.mark.parametrize("options", [
    {"HostConfig": {"Binds": ["nocolon"]}},
    {"HostConfig": {"Binds": ["/h:relative"]}},
    {"HostConfig": {"Binds": ["/h/../etc:/c"]}},
    {"HostConfig": {"Binds": ["bad/volume:/c"]}},
    {"HostConfig": {"Mounts": [{"Type": "tmpfs", "Target": "/t"}]}},
    {"HostConfig": {"Mounts": [{"Type": "bind", "Source": "vol", "Target": "/t"}]}},
    {"HostConfig": "x"},
    {"Env": ["NOEQUALS"]},
    {"Cmd": "not-a-list"},
    {"Healthcheck": {"Test": ["SHELL", "x"]}},
    {"Healthcheck": {"Test": ["CMD"]}},
    {"Healthcheck": {"Test": ["CMD", "x"], "Interval": -1}},
])
def test_invalid_create_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(DeploymentError) as err:
        parse_create_options("m", options)
    assert err.value.code == "LOCAL_AGENT_INVALID_DEPLOYMENT"


def test_module_environment_precedence_and_no_host_leakage() -> None:
    identity = EdgeModuleIdentity("hub.local", "dev1", "m", "127.1.2.3", "gen-1", "unix:///s/m.sock")
    opts = parse_create_options("m", {"Env": ["A=from-create", "B=/data/x"],
                                      "HostConfig": {"Binds": ["/srv:/data"]}})
    env = module_environment(
        agent_env={"PATH": "/bin", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "leak", "IOTEDGE_DEVICEID": "x"},
        host_defaults={"EDB_CA_CERT": "/ca.pem", "A": "from-host"},
        options=opts,
        manifest_env={"A": "from-manifest", "IOTEDGE_MODULEID": "spoofed"},
        identity=identity,
        volume_root="/v",
    )
    assert env["A"] == "from-manifest" and env["B"] == "/srv/x" and env["EDB_CA_CERT"] == "/ca.pem"
    assert "AWS_SECRET_ACCESS_KEY" not in env and env["PATH"] == "/bin"
    assert env["IOTEDGE_MODULEID"] == "m" and env["IOTEDGE_DEVICEID"] == "dev1"
    for name in ("IOTEDGE_IOTHUBHOSTNAME", "IOTEDGE_GATEWAYHOSTNAME", "IOTEDGE_MODULEGENERATIONID",
                 "IOTEDGE_WORKLOADURI", "IOTEDGE_APIVERSION"):
        assert env[name]
    assert not any("KEY" in name.upper() and name.startswith("IOTEDGE") for name in env)
