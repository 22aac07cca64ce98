"""The stack's components: ONE table. Adding a component is adding one entry.

Each entry says how to tell it is installed, what it needs first (``depends_on``), what to prepare
before it starts (provisioning, registration), the command that runs it, its ports, and its health
check. A component whose code is not in this checkout yet stays in the table and shows as
"not installed" instead of being faked; components that depend on it start without it unless they
cannot work without it (``requires``).
"""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edb.errors import ConfigError
from edb_local.azurite import azurite_command, azurite_table_command
from edb_local.azurite import not_installed_reason as azurite_missing
from edb_local.azurite import table_not_installed_reason as azurite_table_missing
from edb_local.keyvault.credential_file import CredentialFile
from edb_local.supervisor.context import StackContext
from edb_local.supervisor.errors import COMPONENT_BLOCKED, DEVICE_PROVISION, SupervisorError
from edb_local.supervisor.health import Health, agent_connected, https_responds, tls_handshake, unix_socket_accepts


@dataclass(frozen=True)
class Component:
    name: str
    description: str
    missing: Callable[[StackContext], str | None]  # None when installed, else why not
    command: Callable[[StackContext], list[str]]
    health: Callable[[StackContext], Health]
    depends_on: tuple[str, ...] = ()  # started (and healthy) first, when installed
    requires: tuple[str, ...] = ()  # cannot run without these: blocked if they are missing
    prepare: Callable[[StackContext], None] | None = None
    env: Callable[[StackContext], dict[str, str]] | None = None
    ports: tuple[str, ...] = ()
    stop_timeout_s: float = 10.0


def _module_missing(*modules: str) -> Callable[[StackContext], str | None]:
    def check(_: StackContext) -> str | None:
        for name in modules:
            try:
                found = importlib.util.find_spec(name) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                return f"{name} is not in this checkout yet"
        return None
    return check


def _edb(ctx: StackContext, *args: str) -> list[str]:
    return [ctx.python, "-m", "edb.cli.main", *args]


# -- hub -------------------------------------------------------------------------------------------

def _hub_command(ctx: StackContext) -> list[str]:
    creds = ctx.server_credentials("hub")
    return [ctx.python, "-m", "edb_local.hub", "--state-dir", str(ctx.paths.component_dir("hub").resolve()),
            "--address", ctx.address, "--hub-name", ctx.settings.hub_name, "--cert", str(creds.cert_path),
            "--key", str(creds.key_path), "--owner-key-file", str(ctx.owner_key_file),
            "--file-upload-connection-string-file", str(ctx.hub_file_upload_file), "--file-upload-ca", str(ctx.ca)]


def _hub_health(ctx: StackContext) -> Health:
    mqtt = tls_handshake(ctx.address, ctx.settings.ports["mqtt"], ctx.ca)
    if not mqtt.ok:
        return mqtt
    https = https_responds(ctx.address, ctx.settings.ports["https"], ctx.ca, "/edb/health", require_ok=True)
    return Health(https.ok, f"mqtts://{ctx.address}:{ctx.settings.ports['mqtt']}, {https.detail}")


# -- Key Vault stand-in and key release service ----------------------------------------------------

def _keyvault_command(ctx: StackContext) -> list[str]:
    creds = ctx.server_credentials("keyvault")
    return [ctx.python, "-m", "edb_local.keyvault", "serve",
            "--state-dir", str(ctx.paths.component_dir("keyvault").resolve()), "--address", ctx.address,
            "--port", str(ctx.settings.ports["keyvault"]), "--cert", str(creds.cert_path),
            "--key", str(creds.key_path), "--ca", str(ctx.ca)]


def _keyvault_health(ctx: StackContext) -> Health:
    return https_responds(ctx.address, ctx.settings.ports["keyvault"], ctx.ca)


def _manufacturer_roots(ctx: StackContext) -> Path | None:
    directory = ctx.paths.root.resolve() / "manufacturer"
    path = directory / "ca.pem"  # edb_tee.manufacturer.ManufacturerCA
    return path if path.exists() else None


def _publisher_pki_dir(ctx: StackContext) -> Path:
    return ctx.paths.root.resolve() / "pki"


def _keyrelease_missing(ctx: StackContext) -> str | None:
    return _module_missing("key_release_service.cli")(ctx)


def _keyrelease_prepare(ctx: StackContext) -> None:
    from edb.pki.devpki import PublisherPki, init_publisher_pki

    ctx.paths.component_dir("keyrelease").mkdir(parents=True, exist_ok=True)  # audit.jsonl lives here
    if not PublisherPki(_publisher_pki_dir(ctx)).exists():
        init_publisher_pki(_publisher_pki_dir(ctx))
    if _manufacturer_roots(ctx) is None:
        raise SupervisorError("no manufacturer root yet: the device must be provisioned first (edb device "
                              "provision), which needs the TEE component", code=COMPONENT_BLOCKED)


def _keyrelease_env(ctx: StackContext) -> dict[str, str]:
    roots = _manufacturer_roots(ctx)
    # least privilege: only the legacy routes' identity may create class keys (edb-legacy-*)
    credential = ctx.keyvault_key_release_credential
    if ctx.settings.legacy_v1:
        credential = credential.with_name("key-release-legacy.json")
    try:
        # its managed identity, as a Functions app gets one (DefaultAzureCredential reads these)
        identity = CredentialFile.load(credential).environment(managed_identity=True)
    except ConfigError as exc:
        raise SupervisorError(f"the Key Vault stand-in wrote no credential for the key release service: {exc}",
                              code=COMPONENT_BLOCKED) from None
    return {
        "EDB_KEYVAULT_URL": ctx.keyvault_url,
        "EDB_KEYVAULT_CREDENTIAL": "default",
        **identity,
        "EDB_KEYVAULT_CA": str(ctx.ca),
        "EDB_KR_MANUFACTURER_ROOTS": str(roots) if roots else "",
        "EDB_KR_PUBLISHER_ROOTS": str(_publisher_pki_dir(ctx) / "root.pem"),
        "EDB_KR_AUDIT_LOG": str(ctx.paths.component_dir("keyrelease").resolve() / "audit.jsonl"),
        # the nonce MAC key: made on first start (0600), kept across restarts
        "EDB_KR_NONCE_KEY_FILE": str(ctx.paths.component_dir("keyrelease").resolve() / "nonce.key"),
        # spent nonces in Azurite's Table service, as a scaled-out deployment shares them (the
        # in-memory store only when Azurite is not installed)
        **({"EDB_KR_NONCE_STORE": ctx.table_connection_string, "EDB_KR_NONCE_STORE_CA": str(ctx.ca)}
           if azurite_table_missing(ctx.root) is None else {"EDB_KR_NONCE_STORE": "memory"}),
        # the legacy routes are off unless the stack was set up with --legacy-v1 (and then need the key)
        "EDB_KR_LEGACY_ENABLED": "1" if ctx.settings.legacy_v1 else "0",
        **({"EDB_KR_LEGACY_API_KEY": ctx.legacy_function_key_file.read_text().strip()}
           if ctx.settings.legacy_v1 else {}),
    }


def _keyrelease_command(ctx: StackContext) -> list[str]:
    creds = ctx.server_credentials("keyrelease")
    return [ctx.python, "-m", "key_release_service", "serve", "--address", ctx.address,
            "--port", str(ctx.settings.ports["keyrelease"]), "--cert", str(creds.cert_path),
            "--key", str(creds.key_path)]


def _keyrelease_health(ctx: StackContext) -> Health:
    return https_responds(ctx.address, ctx.settings.ports["keyrelease"], ctx.ca, "/healthz", require_ok=True)


# -- Azurite ---------------------------------------------------------------------------------------

def _azurite_command(ctx: StackContext) -> list[str]:
    creds = ctx.server_credentials("azurite")
    location = ctx.paths.component_dir("azurite").resolve()
    location.mkdir(parents=True, exist_ok=True)
    return azurite_command(address=ctx.address, port=ctx.settings.ports["azurite"], location=location,
                           cert=creds.cert_path, key=creds.key_path, root=ctx.root)


def _azurite_health(ctx: StackContext) -> Health:
    return https_responds(ctx.address, ctx.settings.ports["azurite"], ctx.ca, "/devstoreaccount1?comp=list")


def _tables_command(ctx: StackContext) -> list[str]:
    creds = ctx.server_credentials("azurite")  # the same host and address as the Blob service
    location = ctx.paths.component_dir("azurite-table").resolve()
    location.mkdir(parents=True, exist_ok=True)
    return azurite_table_command(address=ctx.address, port=ctx.settings.ports["azurite_table"], location=location,
                                 cert=creds.cert_path, key=creds.key_path, root=ctx.root)


def _tables_health(ctx: StackContext) -> Health:
    return https_responds(ctx.address, ctx.settings.ports["azurite_table"], ctx.ca, "/devstoreaccount1/Tables")


# -- TEE service (a device-level service, like OP-TEE: started by the host, not by the agent) ------

def _tee_missing(ctx: StackContext) -> str | None:
    reason = _module_missing("edb_tee.cli")(ctx)
    if reason is not None:
        return reason
    import click

    tee_cli = importlib.import_module("edb_tee.cli")
    groups = {name: getattr(tee_cli, name, None) for name in ("tee", "device")}
    for name, command in (("tee", "serve"), ("device", "provision")):
        group = groups[name]
        if not isinstance(group, click.Group) or command not in group.commands:
            return f"`edb {name} {command}` is not available yet"
    return None


def _device_provisioned(ctx: StackContext) -> bool:
    from edb_tee.paths import DeviceLayout

    return DeviceLayout(ctx.device_dir).provisioned()


def _tee_prepare(ctx: StackContext) -> None:
    if _device_provisioned(ctx) and _manufacturer_roots(ctx) is not None:
        return
    legacy = ("--allow-legacy-v1",) if ctx.settings.legacy_v1 else ()
    out = subprocess.run(
        _edb(ctx, "device", "provision", "--device-id", ctx.device_id, "--state-dir", str(ctx.paths.root.resolve()),
             *legacy),
        capture_output=True, text=True, timeout=120, check=False,
    )
    if out.returncode != 0:
        raise SupervisorError(f"edb device provision failed: {out.stderr.strip()[-400:]}", code=DEVICE_PROVISION)


def _tee_command(ctx: StackContext) -> list[str]:
    return _edb(ctx, "tee", "serve", "--device-dir", str(ctx.device_dir))


def _tee_health(ctx: StackContext) -> Health:
    health = unix_socket_accepts(ctx.tee_socket)
    return Health(health.ok, f"{health.detail}; {_tee_access(ctx)}")


def _tee_access(ctx: StackContext) -> str:
    """Who may use the TEE (the allow-list it was started with): the local stack keeps the
    single-uid development default, which does not separate the installer and runner roles."""
    from edb.errors import EdbError
    from edb_tee.access import summary
    from edb_tee.paths import DeviceLayout
    from edb_tee.provisioning import read_access

    try:
        return summary(read_access(DeviceLayout(ctx.device_dir)))
    except EdbError as exc:
        return f"allow-list unknown ({exc.code})"


# -- edge agent ------------------------------------------------------------------------------------

def _agent_prepare(ctx: StackContext) -> None:
    from edb_local.supervisor.registration import register_edge_device

    register_edge_device(ctx)


def _agent_command(ctx: StackContext) -> list[str]:
    agent_dir = ctx.paths.component_dir("agent").resolve()
    argv = [ctx.python, "-m", "edb_local.agent", "--state-dir", str(ctx.paths.root.resolve()),
            "--device-id", ctx.device_id, "--hub-name", ctx.settings.hub_name, "--gateway", ctx.address,
            "--ca", str(ctx.ca), "--service-connection-string-file", str(ctx.service_connection_string_file),
            "--module-env-file", str(ctx.module_env_file), "--host-service", f"tee={ctx.tee_socket}",
            "--module-map", str(agent_dir / "module_map.json")]
    return argv


def _agent_health(ctx: StackContext) -> Health:
    return agent_connected(ctx.paths.component_dir("agent").resolve() / "health.json", ctx.paths.pid_file("agent"))


COMPONENTS: tuple[Component, ...] = (
    Component("hub", "IoT Hub + edgeHub stand-in (MQTT 8883, HTTPS 443, AMQP 5671)",
              _module_missing("edb_local.hub.__main__"),
              _hub_command, _hub_health, ports=("mqtt", "https")),
    Component("keyvault", "Key Vault stand-in", _module_missing("edb_local.keyvault.__main__"),
              _keyvault_command, _keyvault_health, ports=("keyvault",)),
    Component("azurite", "Blob storage (Azurite)", lambda ctx: azurite_missing(ctx.root), _azurite_command,
              _azurite_health, ports=("azurite",)),
    Component("tables", "Table storage (Azurite): the key release service's spent nonces",
              lambda ctx: azurite_table_missing(ctx.root), _tables_command, _tables_health, ports=("azurite_table",)),
    Component("tee", "TEE-simulated region (device service)", _tee_missing, _tee_command, _tee_health,
              prepare=_tee_prepare),
    Component("keyrelease", "key release service", _keyrelease_missing, _keyrelease_command, _keyrelease_health,
              depends_on=("keyvault", "tee", "tables"), requires=("keyvault", "tee"), prepare=_keyrelease_prepare,
              env=_keyrelease_env, ports=("keyrelease",)),
    Component("agent", "edge agent (runs the modules)", _module_missing("edb_local.agent.__main__"),
              _agent_command, _agent_health, depends_on=("hub", "tee"), requires=("hub",),
              prepare=_agent_prepare, stop_timeout_s=30.0),
)

BY_NAME = {c.name: c for c in COMPONENTS}


# -- the Docker runtime (edb local up --runtime docker) ---------------------------------------------
# The TEE is the tee_service container the agent runs (startupOrder 0), so there is no host TEE
# process: the factory's CA is made on the host before the key release service starts, and the
# device is provisioned in a one-shot container of the TEE image before the agent starts.

def _docker_keyrelease_prepare(ctx: StackContext) -> None:
    from edb_tee.manufacturer import ManufacturerCA

    ManufacturerCA.load_or_create(ctx.paths.root.resolve() / "manufacturer")
    _keyrelease_prepare(ctx)


def _docker_agent_prepare(ctx: StackContext) -> None:
    from edb_local.supervisor.docker_device import prepare_tee_socket_dir, provision_device_in_container

    prepare_tee_socket_dir(ctx)
    provision_device_in_container(ctx)
    _agent_prepare(ctx)


def _docker_agent_command(ctx: StackContext) -> list[str]:
    from edb_local.agent.containers import stack_id

    argv = _agent_command(ctx)
    at = argv.index("--host-service")
    del argv[at:at + 2]
    return [*argv, "--runtime", "docker", "--stack-id", stack_id(ctx.paths.root)]


DOCKER_COMPONENTS: tuple[Component, ...] = tuple(
    replace(c, depends_on=("keyvault", "tables"), requires=("keyvault",), prepare=_docker_keyrelease_prepare)
    if c.name == "keyrelease" else
    replace(c, depends_on=("hub",), prepare=_docker_agent_prepare, command=_docker_agent_command)
    if c.name == "agent" else c
    for c in COMPONENTS if c.name != "tee"
)


def components_for(runtime: str) -> tuple[Component, ...]:
    return DOCKER_COMPONENTS if runtime == "docker" else COMPONENTS
