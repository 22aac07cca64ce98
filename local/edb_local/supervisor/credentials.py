"""Credentials and configuration files of the stack, generated into the state directory once.

- ``ca/``: the stack CA and one server certificate per TLS server, with an IP SAN for the stack's
  address (re-issued only if the address changed or the certificate nears expiry);
- ``hub/owner.key``: the hub's ``iothubowner`` key (0600, base64);
- ``agent/service-connection-string``: what the agent uses to manage module identities (0600);
- ``agent/module.env``: the host defaults every module gets (never a key);
- ``keyrelease/legacy-function-key``: only with ``--legacy-v1``, the function key of the legacy
  WrapKey/ProvisionKey routes (0600; modules get its path, ``EDB_LEGACY_WRAP_KEY_FILE``);
- ``local.env``: everything a developer or a tool needs to talk to the stack (0600: it holds the
  hub owner connection string).
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from edb.errors import ConfigError
from edb_local.keyvault.credential_file import CredentialFile
from edb_local.stack_ca import StackCA
from edb_local.supervisor.context import StackContext
from edb_local.supervisor.envfile import write_env_file

TLS_SERVERS = ("hub", "keyvault", "keyrelease", "azurite")
#: What modules get from the host (``agent/module.env``): locations, never credentials.
MODULE_ENV_KEYS = ("EDB_CA_CERT", "EDB_DEVICE_ID", "EDB_KEY_RELEASE_URL", "EDB_TEE_SOCKET")


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def ensure_credentials(ctx: StackContext) -> None:
    ca = StackCA.load_or_create(ctx.paths.ca_dir)
    for name in TLS_SERVERS:
        ca.issue_server(name, ips=[ctx.address], out_dir=ctx.paths.ca_dir)
    if not ctx.owner_key_file.exists():
        _write_secret(ctx.owner_key_file, base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    _write_secret(ctx.service_connection_string_file, ctx.service_connection_string + "\n")
    _write_secret(ctx.hub_file_upload_file, ctx.blob_connection_string + "\n")
    ctx.package_drop_dir.mkdir(parents=True, exist_ok=True)
    if ctx.settings.legacy_v1 and not ctx.legacy_function_key_file.exists():
        _write_secret(ctx.legacy_function_key_file, secrets.token_urlsafe(32) + "\n")
    values = local_env_values(ctx)
    write_local_env(ctx)
    module_keys = MODULE_ENV_KEYS + (("EDB_LEGACY_WRAP_KEY_FILE",) if ctx.settings.legacy_v1 else ())
    write_env_file(ctx.module_env_file, {k: values[k] for k in module_keys},
                   header="Host defaults for every module the edge agent runs (no credentials).")


def operator_identity(ctx: StackContext) -> dict[str, str]:
    """AZURE_TENANT_ID/CLIENT_ID/CLIENT_SECRET/AUTHORITY_HOST of the Key Vault stand-in's admin client,
    once the stand-in has written its credential file (``edb local up`` rewrites local.env after
    starting the stack)."""
    try:
        return CredentialFile.load(ctx.keyvault_admin_credential).environment()
    except ConfigError:
        return {}


def write_local_env(ctx: StackContext) -> None:
    write_env_file(ctx.paths.local_env, local_env_values(ctx),
                   header="The local stack (edb local up). Source it: set -a; . .edb/local.env; set +a")


def local_env_values(ctx: StackContext) -> dict[str, str]:
    return {
        "EDB_STATE_DIR": str(ctx.paths.root.resolve()),
        "EDB_DEVICE_ID": ctx.device_id,
        "EDB_CA_CERT": str(ctx.ca),
        "EDB_IOTHUB_CONNECTION_STRING": ctx.service_connection_string,
        "EDB_EVENTHUB_CONNECTION_STRING": ctx.eventhub_connection_string,
        "EDB_IOTHUB_HOSTNAME": ctx.settings.hub_name,
        "EDB_IOTHUB_GATEWAY": ctx.address,
        "EDB_KEYVAULT_URL": ctx.keyvault_url,
        # DefaultAzureCredential, as on Azure: the stand-in's admin principal (EnvironmentCredential)
        "EDB_KEYVAULT_CREDENTIAL": "default",
        **operator_identity(ctx),
        "EDB_KEYVAULT_CA": str(ctx.ca),
        "EDB_KEY_RELEASE_URL": ctx.key_release_url,
        "EDB_BLOB_CONNECTION_STRING": ctx.blob_connection_string,
        "EDB_TABLE_CONNECTION_STRING": ctx.table_connection_string,
        "EDB_PKI_DIR": str(ctx.paths.root.resolve() / "pki"),
        # deployment.template.json placeholders (cloud/edb_cloud/defaults.env has the device values)
        "EDB_TEE_SOCKET_DIR": str(ctx.tee_socket_dir),
        "EDB_TEE_SOCKET_NAME": ctx.tee_socket.name,
        "EDB_TEE_SOCKET": str(ctx.tee_socket),
        "EDB_PACKAGE_DROP_DIR": str(ctx.package_drop_dir),
        # the inference runner's Open Inference Protocol endpoint, on the stack's own 127.x address
        "EDB_OIP_LISTEN": f"{ctx.address}:{ctx.settings.ports['oip']}",
        "EDB_OIP_URL": f"http://{ctx.address}:{ctx.settings.ports['oip']}",
        # the installer's allow-list of package hosts: this stack's Azurite (blob) address
        "EDB_PACKAGE_HOSTS": f"{ctx.address}:{ctx.settings.ports['azurite']}",
        # LEGACY v1 key flow (edb local up --legacy-v1): where the WrapKey function key is
        **({"EDB_LEGACY_WRAP_KEY_FILE": str(ctx.legacy_function_key_file)} if ctx.settings.legacy_v1 else {}),
    }
