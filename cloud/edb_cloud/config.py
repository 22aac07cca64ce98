"""Where the orchestrator's services are: configuration only, the same code for Azure and local.

Sources, later overriding earlier: ``<state-dir>/local.env`` (written by ``edb local up``), a
``.env`` in the current directory, ``--env-file`` files, then the process environment.

| setting | meaning |
|---|---|
| ``EDB_IOTHUB_CONNECTION_STRING`` | IoT Hub service connection string (registry write + service connect) |
| ``EDB_DEVICE_ID`` | default device for ``deploy``/``rollout``/``status`` |
| ``EDB_CA_CERT`` | PEM bundle to trust for every service (local stack); unset on Azure (system CAs) |
| ``EDB_KEYVAULT_URL`` | Key Vault holding the KEK and the signing key |
| ``EDB_BLOB_CONNECTION_STRING`` | Storage account (or Azurite) receiving packages |
| ``EDB_BLOB_CONTAINER`` | container name (default ``packages``) |
| ``EDB_KEY_RELEASE_URL`` | key release service base URL the devices call (goes into the deployment) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edb.errors import ConfigError
from edb_cloud.template import load_env

DEFAULT_STATE_DIR = Path(".edb")


def blob_host(connection_string: str) -> str:
    """``host`` or ``host:port`` of a storage connection string's blob endpoint ("" if none):
    ``BlobEndpoint=...`` when given (Azurite, custom domains), else ``<account>.blob.<suffix>``."""
    fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    endpoint = fields.get("BlobEndpoint")
    if endpoint:
        return urlsplit(endpoint).netloc.lower()
    account, suffix = fields.get("AccountName"), fields.get("EndpointSuffix", "core.windows.net")
    return f"{account}.blob.{suffix}".lower() if account else ""
DEFAULTS_ENV = Path(__file__).with_name("defaults.env")


@dataclass(frozen=True)
class CloudConfig:
    state_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, state_dir: Path | None = None, env_files: Sequence[Path] = (),
             environ: Mapping[str, str] | None = None) -> CloudConfig:
        environ = os.environ if environ is None else environ
        state = Path(state_dir or environ.get("EDB_STATE_DIR") or DEFAULT_STATE_DIR)
        files = [DEFAULTS_ENV, state / "local.env", Path(".env"), *env_files]
        return cls(state_dir=state, env=load_env(files, environ))

    def get(self, name: str) -> str | None:
        value = self.env.get(name)
        return value if value else None

    def require(self, name: str, what: str) -> str:
        value = self.get(name)
        if value is None:
            raise ConfigError(f"{name} is not set ({what}); run `edb local up` or set it in the environment",
                              code="CONFIG_MISSING")
        return value

    @property
    def iothub_connection_string(self) -> str:
        return self.require("EDB_IOTHUB_CONNECTION_STRING", "the IoT Hub service connection string")

    @property
    def device_id(self) -> str | None:
        return self.get("EDB_DEVICE_ID")

    @property
    def ca_cert(self) -> Path | None:
        value = self.get("EDB_CA_CERT")
        return Path(value) if value else None

    @property
    def blob_connection_string(self) -> str:
        return self.require("EDB_BLOB_CONNECTION_STRING", "the storage account receiving packages")

    @property
    def blob_container(self) -> str:
        return self.get("EDB_BLOB_CONTAINER") or "packages"

    @property
    def cloud_dir(self) -> Path:
        """The orchestrator's own records (published releases, built packages, models)."""
        return self.state_dir / "cloud"

    def connection_verify(self) -> str | bool:
        """The ``connection_verify`` argument for azure-core clients: a CA path, or True (system CAs)."""
        return str(self.ca_cert) if self.ca_cert is not None else True

    def template_env(self) -> dict[str, str]:
        """Variables for deployment.template.json (``edb local up`` writes the local stack's own
        ``EDB_TEE_SOCKET_DIR``, ``EDB_TEE_SOCKET_NAME``, ``EDB_PACKAGE_DROP_DIR`` and
        ``EDB_PACKAGE_HOSTS``). ``EDB_PACKAGE_HOSTS`` (the installer's allow-list of package hosts)
        defaults to the blob endpoint packages are published to; with no storage configured it is
        empty, and the installer then refuses every https source (fail closed)."""
        env = dict(self.env)
        if not env.get("EDB_PACKAGE_HOSTS"):
            env["EDB_PACKAGE_HOSTS"] = blob_host(env.get("EDB_BLOB_CONNECTION_STRING") or "")
        return env
