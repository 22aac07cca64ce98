"""A module's container create request from its createOptions (pure: edb_local.agent.containers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edb_local.agent.containers import (
    CA_IN_CONTAINER,
    LABEL_MODULE,
    LABEL_STACK,
    WORKLOAD_SOCKET_IN_CONTAINER,
    container_request,
    numeric_user,
)
from edb_local.agent.environment import EdgeModuleIdentity
from edb_local.agent.errors import DeploymentError

IDENTITY = EdgeModuleIdentity(hub_hostname="hub.local", device_id="dev-1", module_id="inference_runner",
                              gateway_hostname="127.1.2.3", generation_id="g1", workload_uri="unix:///host/x.sock")


def _request(options: dict[str, Any], env: dict[str, str] | None = None,
             defaults: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return container_request(
        module_id="inference_runner", image="localhost:5000/inference_runner:0.1.0-amd64", fingerprint="fp",
        create_options=options, manifest_env=env or {}, host_defaults=defaults or {}, identity=IDENTITY,
        stack="abc", workload_socket=Path("/state/agent/workload/inference_runner.sock"),
        ca_file=Path("/state/ca/ca.pem"))


def test_security_options_pass_through_to_docker_untouched() -> None:
    host = {"ReadonlyRootfs": True, "CapDrop": ["ALL"], "CapAdd": ["NET_BIND_SERVICE"],
            "SecurityOpt": ["no-new-privileges"], "Tmpfs": {"/tmp": "size=8m"}}
    body = _request({"User": "10003:10001", "HostConfig": host}).body
    assert body["User"] == "10003:10001"
    for key, value in host.items():
        assert body["HostConfig"][key] == value
    assert body["Image"] == "localhost:5000/inference_runner:0.1.0-amd64"


def test_named_volumes_are_namespaced_per_stack_and_host_binds_kept() -> None:
    request = _request({"HostConfig": {
        "Binds": ["/run/edb-tee-host:/run/edb-tee", "edb-tee-state:/var/lib/edb-tee", "/drop:/var/lib/drop:ro"],
        "Mounts": [{"Type": "volume", "Source": "cache", "Target": "/cache"}]}})
    binds = request.body["HostConfig"]["Binds"]
    assert binds[:3] == ["/run/edb-tee-host:/run/edb-tee", "edb-abc-edb-tee-state:/var/lib/edb-tee",
                         "/drop:/var/lib/drop:ro"]
    assert request.body["HostConfig"]["Mounts"][0]["Source"] == "edb-abc-cache"
    assert request.volumes == ("edb-abc-edb-tee-state", "edb-abc-cache")


def test_the_module_gets_its_own_workload_socket_and_the_ca_read_only() -> None:
    request = _request({})
    assert f"/state/agent/workload/inference_runner.sock:{WORKLOAD_SOCKET_IN_CONTAINER}" in \
        request.body["HostConfig"]["Binds"]
    assert f"/state/ca/ca.pem:{CA_IN_CONTAINER}:ro" in request.body["HostConfig"]["Binds"]
    env = dict(item.split("=", 1) for item in request.body["Env"])
    assert env["IOTEDGE_WORKLOADURI"] == f"unix://{WORKLOAD_SOCKET_IN_CONTAINER}"
    assert env["IOTEDGE_GATEWAYHOSTNAME"] == "127.1.2.3" and env["EDB_CA_CERT"] == CA_IN_CONTAINER
    assert request.name == "edb-abc-inference_runner"


def test_environment_precedence_and_no_host_paths() -> None:
    body = _request({"Env": ["A=create", "B=create", "IOTEDGE_MODULEID=spoofed"]}, env={"B": "manifest"},
                    defaults={"EDB_KEY_RELEASE_URL": "https://127.1.2.3:7071", "EDB_TEE_SOCKET": "/host/tee.sock",
                              "PATH": "/host/bin"}).body
    env = dict(item.split("=", 1) for item in body["Env"])
    assert env["A"] == "create" and env["B"] == "manifest"
    assert env["IOTEDGE_MODULEID"] == "inference_runner"  # nothing overrides the IoT Edge identity
    assert env["EDB_KEY_RELEASE_URL"] == "https://127.1.2.3:7071"
    assert "EDB_TEE_SOCKET" not in env and "PATH" not in env  # host paths mean nothing in a container


def test_restart_policy_is_the_agents_and_labels_mark_the_stack() -> None:
    body = _request({"HostConfig": {"RestartPolicy": {"Name": "always"}}, "Labels": {"team": "ml"}}).body
    assert body["HostConfig"]["RestartPolicy"] == {"Name": "no"}
    assert body["Labels"]["team"] == "ml" and body["Labels"][LABEL_STACK] == "abc"
    assert body["Labels"][LABEL_MODULE] == "inference_runner"


@pytest.mark.parametrize("mode", [None, "host", "azure-iot-edge", "bridge", "default"])
def test_networks_become_the_host_network_of_the_stack_address(mode: str | None) -> None:
    host: dict[str, Any] = {"PortBindings": {"8883/tcp": [{"HostPort": "8883"}]}}
    if mode:
        host["NetworkMode"] = mode
    body = _request({"HostConfig": host, "NetworkingConfig": {"EndpointsConfig": {"x": {}}}}).body
    assert body["HostConfig"]["NetworkMode"] == "host"
    assert "PortBindings" not in body["HostConfig"] and "NetworkingConfig" not in body


@pytest.mark.parametrize("options", [
    {"HostConfig": {"NetworkMode": "container:other"}},
    {"HostConfig": {"NetworkMode": "my-own-network"}},
    {"HostConfig": {"Binds": ["../etc:/x"]}},
    {"HostConfig": {"Binds": "not-a-list"}},
    {"Env": ["NO_EQUALS_SIGN"]},
    {"Labels": ["not", "an", "object"]},
])
def test_options_outside_the_rules_are_the_modules_error(options: dict[str, Any]) -> None:
    with pytest.raises(DeploymentError):
        _request(options)


def test_numeric_user() -> None:
    assert numeric_user("10003:10001") == 10003 and numeric_user("10001") == 10001
    assert numeric_user("") == 0 and numeric_user(None) == 0
    assert numeric_user("edbrunner") is None
