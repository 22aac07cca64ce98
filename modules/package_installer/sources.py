"""Where a package may be fetched from: verified HTTPS from an allowed host, or a ``file:`` path
inside an allowed directory.

Pure policy over strings and resolved paths; the downloader enforces the same rules again on the
opened file descriptor (so a symlink swapped in after this check is still caught).

Package hosts (``EDB_PACKAGE_HOSTS``): without an allow-list, whoever can write the twin could make
the device connect to any HTTPS endpoint it can reach and learn from the outcome. The list is
fail-closed: unset or empty, no HTTPS source is allowed (``file:`` sources have their own list);
``*`` allows any host and is logged as a warning. Deployments set it to the storage account the
packages are published to (``edb cloud`` derives it from ``EDB_BLOB_CONNECTION_STRING``; the local
stack sets its Azurite address).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from edb.errors import ConfigError, InstallError
from edb.schemas.packages import check_url

log = logging.getLogger("package_installer.sources")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class PackageHosts:
    """The HTTPS hosts packages may come from: ``host`` (any port) or ``host:port`` entries."""

    entries: frozenset[tuple[str, int | None]] = frozenset()
    any_host: bool = False

    @classmethod
    def parse(cls, text: str) -> PackageHosts:
        """``EDB_PACKAGE_HOSTS``: entries separated by commas or spaces; ``*`` alone allows any host."""
        items = [i for i in re.split(r"[\s,]+", text.strip().lower()) if i]
        if items == ["*"]:
            return cls(any_host=True)
        entries: set[tuple[str, int | None]] = set()
        for item in items:
            host, _, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
            if not _HOST.match(host) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
                raise ConfigError(f"EDB_PACKAGE_HOSTS: {item[:80]!r} is not host or host:port", code="CONFIG_INVALID")
            entries.add((host, int(port) if port else None))
        return cls(frozenset(entries))

    def allows(self, host: str, port: int) -> bool:
        host = host.lower()
        return self.any_host or (host, port) in self.entries or (host, None) in self.entries


@dataclass(frozen=True)
class HttpsSource:
    url: str
    host: str
    port: int


@dataclass(frozen=True)
class FileSource:
    path: Path


Source = HttpsSource | FileSource


def resolve_source(url: str, allowed_dirs: tuple[Path, ...], allowed_hosts: PackageHosts) -> Source:
    """Classify and vet a desired URL. Raises :class:`InstallError` with an ``INSTALL_*`` code."""
    check_url(url)
    parts = urlsplit(url)
    if parts.scheme.lower() == "https":
        assert parts.hostname is not None  # check_url guarantees it
        source = HttpsSource(url=url, host=parts.hostname.lower(), port=parts.port or 443)
        if not allowed_hosts.allows(source.host, source.port):  # before any connection is made
            raise InstallError("the package host is not on this device's list of package hosts (EDB_PACKAGE_HOSTS)",
                               code="INSTALL_HOST_NOT_ALLOWED")
        return source
    raw_path = unquote(parts.path)
    if "\x00" in raw_path:
        raise InstallError("file path contains NUL", code="INSTALL_INVALID_URL")
    path = Path(raw_path)
    if not path.is_absolute():
        raise InstallError("file path must be absolute", code="INSTALL_INVALID_URL")
    real = Path(os.path.realpath(path))
    if not is_inside(real, allowed_dirs):
        raise InstallError(
            "file path is outside the directories this installer may read packages from",
            code="INSTALL_PATH_OUTSIDE",
        )
    return FileSource(path=real)


def is_inside(path: Path, allowed_dirs: tuple[Path, ...]) -> bool:
    """``path`` (already resolved) lies strictly inside one of ``allowed_dirs`` (resolved here)."""
    for directory in allowed_dirs:
        root = Path(os.path.realpath(directory))
        if path != root and path.is_relative_to(root):
            return True
    return False


def same_origin(first: HttpsSource, location: str) -> HttpsSource:
    """Vet a redirect target: only https to the same host and port. Raises INSTALL_REDIRECT_REFUSED.

    A relative ``Location`` is resolved against the URL that answered with it.
    """
    try:
        location = urljoin(first.url, location)
        parts = urlsplit(location)
        port = parts.port
    except ValueError:
        raise InstallError("redirect location does not parse", code="INSTALL_REDIRECT_REFUSED") from None
    if parts.scheme.lower() != "https" or (parts.hostname or "").lower() != first.host or (port or 443) != first.port:
        # where it pointed is the remote's answer: in the module log, not in the reported error
        log.warning("redirect to another origin refused: %s://%s", parts.scheme[:10], (parts.hostname or "")[:60])
        raise InstallError("redirect to another origin refused", code="INSTALL_REDIRECT_REFUSED")
    return HttpsSource(url=location, host=first.host, port=first.port)
