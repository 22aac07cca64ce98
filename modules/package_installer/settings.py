"""The installer's configuration, from the environment the deployment manifest gives it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edb.errors import ConfigError
from edb.schemas.packages import DEFAULT_MAX_PACKAGE_SIZE
from package_installer.downloader import DownloadSettings
from package_installer.sources import PackageHosts

MAX_PARALLEL = 4


@dataclass(frozen=True)
class LegacySettings:
    """LEGACY v1 key flow (weaker; see docs/modules.md). Present only when explicitly enabled."""

    wrap_url: str  # the key release service's /api/WrapKey
    function_key_file: Path | None = None  # a file (mounted volume), never an env value: env is in the twin


@dataclass(frozen=True)
class InstallerSettings:
    tee_socket: Path
    key_release_url: str
    cache_dir: Path
    allowed_dirs: tuple[Path, ...] = ()
    allowed_hosts: PackageHosts = field(default_factory=PackageHosts)  # EDB_PACKAGE_HOSTS; empty: no HTTPS
    ca_file: Path | None = None  # None: the system trust store
    max_package_bytes: int = DEFAULT_MAX_PACKAGE_SIZE
    #: installs at once: one package stuck on a slow source never holds back the others. At most
    #: MAX_PARALLEL, the TEE's open install transactions per caller (edb_tee.install.MAX_OPEN_PER_OWNER);
    #: the TEE still completes one install at a time.
    max_parallel: int = 3
    resync_interval_s: float = 60.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 60.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    download_deadline_s: float = 3600.0
    download_min_rate_bps: float = 16384.0
    download_rate_window_s: float = 30.0
    key_release_attempts: int = 3  # per install attempt; the reconcile loop's backoff does the rest
    legacy: LegacySettings | None = None  # None: v1 packages are refused (INSTALL_LEGACY_UNSUPPORTED)

    def download(self) -> DownloadSettings:
        return DownloadSettings(cache_dir=self.cache_dir, allowed_dirs=self.allowed_dirs, ca_file=self.ca_file,
                                connect_timeout_s=self.connect_timeout_s, read_timeout_s=self.read_timeout_s,
                                deadline_s=self.download_deadline_s, min_rate_bps=self.download_min_rate_bps,
                                rate_window_s=self.download_rate_window_s, allowed_hosts=self.allowed_hosts)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InstallerSettings:
        env = os.environ if env is None else env

        def required(name: str) -> str:
            value = env.get(name)
            if not value:
                raise ConfigError(f"{name} is not set", code="CONFIG_MISSING")
            return value

        def number(name: str, default: float) -> float:
            raw = env.get(name)
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{name} must be a number", code="CONFIG_INVALID") from None

        dirs = tuple(Path(p) for p in env.get("EDB_PACKAGE_FILE_DIRS", "").split(os.pathsep) if p)
        ca = env.get("EDB_CA_CERT")
        key_release_url = required("EDB_KEY_RELEASE_URL")
        return cls(
            tee_socket=Path(required("EDB_TEE_SOCKET")),
            key_release_url=key_release_url,
            cache_dir=Path(env.get("EDB_PACKAGE_CACHE") or "/var/lib/edb/packages"),
            allowed_dirs=dirs,
            allowed_hosts=PackageHosts.parse(env.get("EDB_PACKAGE_HOSTS", "")),
            ca_file=Path(ca) if ca else None,
            max_package_bytes=int(number("EDB_MAX_PACKAGE_BYTES", DEFAULT_MAX_PACKAGE_SIZE)),
            max_parallel=min(MAX_PARALLEL, max(1, int(number("EDB_INSTALL_PARALLEL", 3)))),
            resync_interval_s=number("EDB_RESYNC_INTERVAL_S", 60.0),
            backoff_base_s=number("EDB_BACKOFF_BASE_S", 2.0),
            backoff_cap_s=number("EDB_BACKOFF_CAP_S", 60.0),
            connect_timeout_s=number("EDB_DOWNLOAD_CONNECT_TIMEOUT_S", 10.0),
            read_timeout_s=number("EDB_DOWNLOAD_READ_TIMEOUT_S", 30.0),
            download_deadline_s=number("EDB_DOWNLOAD_DEADLINE_S", 3600.0),
            download_min_rate_bps=number("EDB_DOWNLOAD_MIN_RATE_BPS", 16384.0),
            download_rate_window_s=number("EDB_DOWNLOAD_RATE_WINDOW_S", 30.0),
            legacy=legacy_from_env(env, key_release_url),
        )


def legacy_from_env(env: Mapping[str, str], key_release_url: str) -> LegacySettings | None:
    """``EDB_LEGACY_V1_ENABLED=1`` turns the legacy v1 key flow on; anything but a clear yes/no is refused."""
    flag = env.get("EDB_LEGACY_V1_ENABLED", "").strip().lower()
    if flag in ("", "0", "false", "no", "off"):
        return None
    if flag not in ("1", "true", "yes", "on"):
        raise ConfigError("EDB_LEGACY_V1_ENABLED must be 1 or 0", code="CONFIG_INVALID")
    url = env.get("EDB_LEGACY_WRAP_URL") or key_release_url.rstrip("/") + "/api/WrapKey"
    if not url.startswith("https://") or "?" in url:
        raise ConfigError("EDB_LEGACY_WRAP_URL must be an https URL without a query (the function key goes in "
                          "EDB_LEGACY_WRAP_KEY_FILE)", code="CONFIG_INVALID")
    key_file = env.get("EDB_LEGACY_WRAP_KEY_FILE")
    return LegacySettings(wrap_url=url, function_key_file=Path(key_file) if key_file else None)
