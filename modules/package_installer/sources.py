"""Where a package may be fetched from: verified HTTPS, or a ``file:`` path inside an allowed directory.

Pure policy over strings and resolved paths; the downloader enforces the same rules again on the
opened file descriptor (so a symlink swapped in after this check is still caught).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from edb.errors import InstallError
from edb.schemas.packages import check_url


@dataclass(frozen=True)
class HttpsSource:
    url: str
    host: str
    port: int


@dataclass(frozen=True)
class FileSource:
    path: Path


Source = HttpsSource | FileSource


def resolve_source(url: str, allowed_dirs: tuple[Path, ...]) -> Source:
    """Classify and vet a desired URL. Raises :class:`InstallError` with an ``INSTALL_*`` code."""
    check_url(url)
    parts = urlsplit(url)
    if parts.scheme.lower() == "https":
        assert parts.hostname is not None  # check_url guarantees it
        return HttpsSource(url=url, host=parts.hostname.lower(), port=parts.port or 443)
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
        raise InstallError(
            f"redirect to another origin refused ({parts.scheme}://{(parts.hostname or '')[:60]})",
            code="INSTALL_REDIRECT_REFUSED",
        )
    return HttpsSource(url=location, host=first.host, port=first.port)
