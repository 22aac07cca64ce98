"""Everything a component's entry in the table needs: paths, settings, credentials."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from edb_local.azurite import blob_connection_string, project_root, table_connection_string
from edb_local.stack_ca import ServerCredentials
from edb_local.supervisor.settings import StackPaths, StackSettings


@dataclass(frozen=True)
class StackContext:
    paths: StackPaths
    settings: StackSettings
    python: str = sys.executable
    root: Path = field(default_factory=project_root)

    @property
    def address(self) -> str:
        return self.settings.address

    @property
    def device_id(self) -> str:
        return self.settings.device_id

    @property
    def ca(self) -> Path:
        return self.paths.ca_cert.resolve()

    def server_credentials(self, name: str) -> ServerCredentials:
        ca_dir = self.paths.ca_dir.resolve()
        return ServerCredentials(ca_dir / f"{name}.pem", ca_dir / f"{name}.key", ca_dir / "ca.pem")

    @property
    def owner_key_file(self) -> Path:
        return self.paths.component_dir("hub").resolve() / "owner.key"

    def owner_key(self) -> str:
        return self.owner_key_file.read_text().strip()

    @property
    def service_connection_string(self) -> str:
        host = self.address if self.settings.ports["https"] == 443 else f"{self.address}:{self.settings.ports['https']}"
        return f"HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey={self.owner_key()}"

    @property
    def eventhub_connection_string(self) -> str:
        """The hub's Event Hub-compatible endpoint (AMQP on address:5671), `service` policy."""
        from edb_local.hub.config import eventhub_connection_string

        return eventhub_connection_string(self.address, self.settings.hub_name, self.owner_key())

    @property
    def service_connection_string_file(self) -> Path:
        return self.paths.component_dir("agent").resolve() / "service-connection-string"

    @property
    def device_dir(self) -> Path:
        return self.paths.device_dir(self.device_id).resolve()

    @property
    def tee_socket(self) -> Path:
        """Where `edb tee serve --device-dir` listens by default (edb_tee.paths.DeviceLayout); with
        the Docker runtime, where the TEE container makes it (run/tee, bound at /run/edb-tee)."""
        if self.settings.runtime == "docker":
            return self.paths.run.resolve() / "tee" / "tee.sock"
        try:
            from edb_tee.paths import DeviceLayout
        except ImportError:
            return self.device_dir / "tee.sock"
        return Path(DeviceLayout(self.device_dir).socket)

    @property
    def tee_socket_dir(self) -> Path:
        return self.tee_socket.parent

    @property
    def keyvault_url(self) -> str:
        return self.settings.url("keyvault")

    @property
    def keyvault_admin_credential(self) -> Path:
        return self.paths.component_dir("keyvault").resolve() / "credentials" / "admin.json"

    @property
    def keyvault_key_release_credential(self) -> Path:
        return self.paths.component_dir("keyvault").resolve() / "credentials" / "key-release.json"

    @property
    def key_release_url(self) -> str:
        return self.settings.url("keyrelease")

    @property
    def legacy_function_key_file(self) -> Path:
        """LEGACY: the function key of the key release service's WrapKey/ProvisionKey routes (0600)."""
        return self.paths.component_dir("keyrelease").resolve() / "legacy-function-key"

    @property
    def hub_file_upload_file(self) -> Path:
        """The storage connection string the hub hands file-upload SAS URIs from (0600)."""
        return self.paths.component_dir("hub").resolve() / "file-upload-connection-string"

    @property
    def blob_connection_string(self) -> str:
        return blob_connection_string(self.address, self.settings.ports["azurite"])

    @property
    def table_connection_string(self) -> str:
        """Azurite's Table service: the key release service's shared spent-nonce store."""
        return table_connection_string(self.address, self.settings.ports["azurite_table"])

    @property
    def module_env_file(self) -> Path:
        return self.paths.component_dir("agent").resolve() / "module.env"

    @property
    def package_drop_dir(self) -> Path:
        return self.paths.root.resolve() / "drop"
