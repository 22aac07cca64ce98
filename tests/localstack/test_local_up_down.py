"""`edb local up | status | down` on a fresh state directory, then a restart that keeps state.

Runs the real CLI in subprocesses (as a developer would), so the components really are detached
background processes that outlive the `up` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from azure.data.tables import TableServiceClient
from azure.eventhub import EventHubConsumerClient
from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import ConfigurationContent
from azure.storage.blob import BlobServiceClient
from click.testing import CliRunner

from edb_local.cli import local
from edb_local.supervisor.envfile import read_env_file
from edb_local.supervisor.pidfile import is_alive, read_pid_file

FIXTURE = Path(__file__).parents[1] / "agent" / "fixtures" / "fixture_module.py"
REQUIRED_ENV = ("EDB_IOTHUB_CONNECTION_STRING", "EDB_EVENTHUB_CONNECTION_STRING", "EDB_DEVICE_ID", "EDB_CA_CERT",
                "EDB_KEYVAULT_URL", "EDB_KEY_RELEASE_URL", "EDB_BLOB_CONNECTION_STRING", "EDB_TABLE_CONNECTION_STRING")
ALWAYS_THERE = ("hub", "keyvault", "azurite", "tables", "tee", "keyrelease", "agent")


def edb_local(*args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "edb.cli.main", "local", *args, "--json"],
                         capture_output=True, text=True, timeout=180, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON from edb local {args}: {out.stdout}\n{out.stderr}"
    return out.returncode, json.loads(lines[-1])


def states(doc: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["state"] for c in doc["components"]}


def wait_for(probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def module_pid(state: Path) -> int | None:
    record = read_pid_file(state / "run" / "module.sleeper.pid")
    return record.pid if record is not None and is_alive(record) else None


def test_up_status_down_and_restart_keeps_state(tmp_path: Path, monkeypatch: Any) -> None:
    state = tmp_path / "edb"
    (state / "agent").mkdir(parents=True)
    (state / "agent" / "module_map.json").write_text(json.dumps({"fixture": {"script": str(FIXTURE)}}))
    try:
        code, doc = edb_local("up", "--state-dir", str(state), "--device-id", "dev-under-test")
        assert code == 0 and doc["ok"], doc
        first = states(doc)
        assert all(first[c] == "running" for c in ALWAYS_THERE), first

        env = read_env_file(state / "local.env")
        assert all(env.get(k) for k in REQUIRED_ENV)
        assert env["EDB_DEVICE_ID"] == "dev-under-test"
        assert (state / "local.env").stat().st_mode & 0o777 == 0o600
        module_env = read_env_file(state / "agent" / "module.env")
        assert "EDB_IOTHUB_CONNECTION_STRING" not in module_env and module_env["EDB_CA_CERT"] == env["EDB_CA_CERT"]

        # The values in local.env work with the real SDKs.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", env["EDB_CA_CERT"])
        registry = IoTHubRegistryManager.from_connection_string(env["EDB_IOTHUB_CONNECTION_STRING"])
        device_key = registry.get_device("dev-under-test").authentication.symmetric_key.primary_key
        consumer = EventHubConsumerClient.from_connection_string(
            env["EDB_EVENTHUB_CONNECTION_STRING"], "$Default", connection_verify=env["EDB_CA_CERT"])
        assert consumer.get_eventhub_properties()["partition_ids"] == ["0", "1", "2", "3"]
        consumer.close()
        blobs = BlobServiceClient.from_connection_string(env["EDB_BLOB_CONNECTION_STRING"],
                                                         connection_verify=env["EDB_CA_CERT"])
        blobs.create_container("packages")
        blobs.get_container_client("packages").upload_blob("hello.txt", b"kept across restarts")
        # the Table service (the key release service's spent nonces) answers the real SDK over verified TLS
        with TableServiceClient.from_connection_string(env["EDB_TABLE_CONNECTION_STRING"],
                                                       connection_verify=env["EDB_CA_CERT"]) as tables:
            assert isinstance(list(tables.list_tables()), list)
        # DefaultAzureCredential, unchanged, from local.env's AZURE_* variables (the Key Vault stand-in's
        # admin principal): the same credential code as on Azure
        assert env["EDB_KEYVAULT_CREDENTIAL"] == "default"
        for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST"):
            monkeypatch.setenv(name, env[name])
        from azure.identity import DefaultAzureCredential
        from azure.keyvault.secrets import SecretClient

        vault = SecretClient(env["EDB_KEYVAULT_URL"], DefaultAzureCredential(), verify_challenge_resource=False,
                             connection_verify=env["EDB_CA_CERT"])
        assert vault.set_secret("edb-policy-localstack", "{}").value == "{}"

        # A module deployed through the hub is run by the agent.
        modules = {"sleeper": {"version": "1", "type": "docker", "status": "running", "restartPolicy": "always",
                               "settings": {"image": "${MODULES.fixture}"},
                               "env": {"FIXTURE_MODE": {"value": "sleep"},
                                       "FIXTURE_LOG": {"value": str(tmp_path / "starts.log")}}}}
        IoTHubConfigurationManager.from_connection_string(env["EDB_IOTHUB_CONNECTION_STRING"]) \
            .apply_configuration_on_edge_device("dev-under-test", ConfigurationContent(modules_content={
                "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": modules}},
                "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {}}}}))
        pid_before = wait_for(lambda: module_pid(state))

        code, doc = edb_local("status", "--state-dir", str(state))
        assert code == 0 and states(doc) == first
        assert "sleeper=running" in next(c["detail"] for c in doc["components"] if c["name"] == "agent")
        for name in ALWAYS_THERE:
            assert (state / "logs" / f"{name}.log").exists()
        component_pids = {c["name"]: c["pid"] for c in doc["components"] if c["pid"]}
        listing = CliRunner().invoke(local, ["logs", "--state-dir", str(state)])
        assert listing.exit_code == 0 and "module:sleeper" in listing.output and "hub" in listing.output
        hub_log = CliRunner().invoke(local, ["logs", "--state-dir", str(state), "hub", "-n", "3"])
        assert hub_log.exit_code == 0 and len(hub_log.output.splitlines()) == 3
        outside = CliRunner().invoke(local, ["logs", "--state-dir", str(state), "../local.env"])
        assert outside.exit_code != 0 and "SharedAccessKey" not in outside.output

        code, doc = edb_local("down", "--state-dir", str(state))
        assert code == 0 and set(states(doc).values()) == {"stopped"}
        # No orphans: every component and the module process are gone.
        assert wait_for(lambda: all(_gone(p) for p in [*component_pids.values(), pid_before]), 20)
        code, doc = edb_local("status", "--state-dir", str(state))
        assert all(s in ("stopped", "not installed") for s in states(doc).values())

        # Restart: same address, CA, device keys, blobs and deployment; the module runs again.
        settings_before = (state / "stack.json").read_text()
        ca_before = (state / "ca" / "ca.pem").read_bytes()
        code, doc = edb_local("up", "--state-dir", str(state))
        assert code == 0 and states(doc) == first
        assert (state / "stack.json").read_text() == settings_before
        assert (state / "ca" / "ca.pem").read_bytes() == ca_before
        assert read_env_file(state / "local.env") == env
        registry = IoTHubRegistryManager.from_connection_string(env["EDB_IOTHUB_CONNECTION_STRING"])
        assert registry.get_device("dev-under-test").authentication.symmetric_key.primary_key == device_key
        assert blobs.get_container_client("packages").download_blob("hello.txt").readall() == b"kept across restarts"
        pid_after = wait_for(lambda: module_pid(state))
        assert pid_after != pid_before
        # No key ever reaches a log: the hub owner key, the device key, the agent's and the module's keys.
        release_identity = json.loads((state / "keyvault" / "credentials" / "key-release.json").read_text())
        keys = [(state / "hub" / "owner.key").read_text().strip(), device_key, env["AZURE_CLIENT_SECRET"],
                release_identity["clientSecret"], release_identity["identityHeader"].partition(".")[2],
                registry.get_module("dev-under-test", "$edgeAgent").authentication.symmetric_key.primary_key,
                registry.get_module("dev-under-test", "sleeper").authentication.symmetric_key.primary_key]
        for log in (state / "logs").rglob("*.log"):
            text = log.read_text(errors="replace")
            assert not any(key in text for key in keys), f"a key leaked into {log}"
        # `up` again while running changes nothing.
        code, doc = edb_local("up", "--state-dir", str(state))
        assert code == 0 and {c["name"]: c["pid"] for c in doc["components"] if c["pid"]} == {
            c["name"]: c["pid"] for c in edb_local("status", "--state-dir", str(state))[1]["components"] if c["pid"]}
    finally:
        edb_local("down", "--state-dir", str(state))


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def test_state_dir_of_another_device_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "edb"
    state.mkdir()
    (state / "stack.json").write_text(json.dumps({"address": "127.9.9.9", "device_id": "dev-a",
                                                  "hub_name": "h.local", "ports": {}}))
    out = subprocess.run([sys.executable, "-m", "edb.cli.main", "local", "up", "--state-dir", str(state),
                          "--device-id", "dev-b"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "LOCAL_STATE_MISMATCH" in out.stderr
    assert not (state / "run").exists() or not any((state / "run").iterdir())
    assert "ca" not in os.listdir(state)  # no credentials were generated for the wrong device


def test_legacy_v1_cannot_be_turned_on_for_an_existing_stack(tmp_path: Path) -> None:
    """Its device was provisioned without the legacy key (and its TEE measurement depends on it)."""
    state = tmp_path / "edb"
    state.mkdir()
    (state / "stack.json").write_text(json.dumps({"address": "127.9.9.9", "device_id": "dev-a",
                                                  "hub_name": "h.local", "ports": {}}))
    result = CliRunner().invoke(local, ["up", "--state-dir", str(state), "--legacy-v1", "--json"])
    assert result.exit_code != 0 and getattr(result.exception, "code", None) == "LOCAL_STATE_MISMATCH"
    assert "ca" not in os.listdir(state)


def test_status_of_an_empty_state_dir_creates_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(local, ["status", "--state-dir", str(tmp_path / "none"), "--json"])
    assert result.exit_code == 0
    assert {c["state"] for c in json.loads(result.output)["components"]} == {"stopped"}
    assert not (tmp_path / "none").exists()
