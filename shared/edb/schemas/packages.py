"""The package installer's twin (Contract 6): desired pointers in, reported install state out.

Desired ``packages.<name> = {version, url, sha256, size}`` (``null`` removes) comes from an
untrusted place (anyone who can write the twin, or a corrupted deployment), so parsing is strict:
each entry either becomes a :class:`DesiredPackage` or an :class:`ErrorInfo` with an ``INSTALL_*``
code that the installer reports as a failed state. Parsing never raises on hostile input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from edb.errors import InstallError
from edb.schemas.common import ErrorInfo, iso_utc

#: Package names become twin keys, file names in the cache and TEE object names: no dots
#: (twin keys cannot hold them), no slashes, nothing that could walk out of a directory, and
#: lower case only (the TEE's installed-name rule).
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MAX_URL_LENGTH = 2048
#: Default ceiling for a declared package size; the installer may configure a lower one.
DEFAULT_MAX_PACKAGE_SIZE = 2 * 1024**3
SUPPORTED_URL_SCHEMES = ("https", "file")
_ALLOWED_FIELDS = frozenset({"version", "url", "sha256", "size"})


class PackageState(StrEnum):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    RELEASING = "releasing"
    INSTALLING = "installing"
    INSTALLED = "installed"
    FAILED = "failed"


#: States that mean an install job is (or was, before a crash) in progress.
IN_PROGRESS_STATES = frozenset(
    {PackageState.DOWNLOADING, PackageState.VERIFYING, PackageState.RELEASING, PackageState.INSTALLING}
)


#: ``keyFlow`` of a package installed with the original tools' key flow (v1 packages: the class key
#: wrapped to the TEE's legacy RSA key by ``/api/WrapKey``; no attestation, no rollback floor).
#: Packages installed through attested key release carry no ``keyFlow``.
KEY_FLOW_LEGACY = "legacy-wrapkey"


def key_flow_for_format(package_format: str | None) -> str | None:
    """The ``keyFlow`` to report for a package of this format (``cpk-v1`` -> legacy, else None)."""
    return KEY_FLOW_LEGACY if package_format == "cpk-v1" else None


class DesiredPackageError(InstallError):
    """A desired package entry is malformed or hostile."""

    code = "INSTALL_INVALID_DESIRED"


@dataclass(frozen=True)
class DesiredPackage:
    name: str
    version: str
    url: str
    sha256: str
    size: int

    @property
    def identity(self) -> tuple[str, str, str, int]:
        """What makes two desired entries the same request (a change restarts the install)."""
        return (self.version, self.url, self.sha256, self.size)

    def to_twin(self) -> dict[str, Any]:
        return {"version": self.version, "url": self.url, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class InvalidDesired:
    """A desired entry that failed validation; reported as ``failed`` with ``error``."""

    name: str
    error: ErrorInfo
    #: A stable fingerprint of the bad value, so a changed value is re-evaluated.
    fingerprint: str


@dataclass(frozen=True)
class ReportedPackage:
    """Reported ``packages.<name>``. ``installedVersion`` says what still serves when a new one failed."""

    state: PackageState
    version: str | None
    security_version: int | None = None
    sha256: str | None = None
    error: ErrorInfo | None = None
    updated_at: str = field(default_factory=iso_utc)
    installed_version: str | None = None
    attempts: int = 0
    key_flow: str | None = None  # KEY_FLOW_LEGACY for a legacy v1 install; always written (null clears it)

    def to_twin(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "version": self.version,
            "securityVersion": self.security_version,
            "sha256": self.sha256,
            "error": self.error.to_json() if self.error else None,
            "updatedAt": self.updated_at,
            "installedVersion": self.installed_version,
            "attempts": self.attempts,
            "keyFlow": self.key_flow,
        }

    @classmethod
    def from_twin(cls, value: object) -> ReportedPackage | None:
        """Read back what we reported earlier (for convergence after a restart); None if unusable."""
        if not isinstance(value, Mapping):
            return None
        try:
            state = PackageState(str(value.get("state")))
        except ValueError:
            return None
        version = value.get("version")
        svn = value.get("securityVersion")
        sha = value.get("sha256")
        installed = value.get("installedVersion")
        attempts = value.get("attempts")
        updated = value.get("updatedAt")
        key_flow = value.get("keyFlow")
        return cls(
            state=state,
            version=version if isinstance(version, str) else None,
            security_version=svn if isinstance(svn, int) and not isinstance(svn, bool) else None,
            sha256=sha if isinstance(sha, str) else None,
            error=ErrorInfo.from_json(value.get("error")),
            updated_at=updated if isinstance(updated, str) else iso_utc(),
            installed_version=installed if isinstance(installed, str) else None,
            attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
            key_flow=key_flow if isinstance(key_flow, str) and len(key_flow) <= 32 else None,
        )


def _fingerprint(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:150]}...len={len(text)}"


def check_package_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = name[:40] if isinstance(name, str) else type(name).__name__
        raise DesiredPackageError(f"package name {shown!r} is not allowed", code="INSTALL_INVALID_NAME")
    return name


def check_url(url: object) -> str:
    """Scheme and shape only; where a ``file:`` URL may point is the installer's policy."""
    if not isinstance(url, str):
        raise DesiredPackageError("url must be a string", code="INSTALL_INVALID_DESIRED")
    if len(url) > MAX_URL_LENGTH:
        raise DesiredPackageError(f"url longer than {MAX_URL_LENGTH} characters", code="INSTALL_INVALID_URL")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise DesiredPackageError("url contains whitespace or control characters", code="INSTALL_INVALID_URL")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise DesiredPackageError(f"url does not parse: {exc}", code="INSTALL_INVALID_URL") from None
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_URL_SCHEMES:
        raise DesiredPackageError(
            f"url scheme {scheme[:20]!r} is not supported (https or file only)", code="INSTALL_URL_SCHEME"
        )
    if scheme == "https":
        if not parts.hostname:
            raise DesiredPackageError("https url has no host", code="INSTALL_INVALID_URL")
        if parts.username is not None or parts.password is not None:
            raise DesiredPackageError("credentials in the url are not allowed", code="INSTALL_INVALID_URL")
    if scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise DesiredPackageError("file url must be an absolute local path", code="INSTALL_INVALID_URL")
    return url


def parse_desired_package(name: str, value: object, *, max_size: int = DEFAULT_MAX_PACKAGE_SIZE) -> DesiredPackage:
    """Validate one desired entry or raise :class:`DesiredPackageError` with a precise code."""
    check_package_name(name)
    if not isinstance(value, Mapping):
        raise DesiredPackageError(f"packages.{name} must be an object or null", code="INSTALL_INVALID_DESIRED")
    unknown = sorted(str(k)[:40] for k in value if k not in _ALLOWED_FIELDS)
    if unknown:
        raise DesiredPackageError(f"unknown fields {unknown[:5]}", code="INSTALL_INVALID_DESIRED")
    version, url, sha256, size = value.get("version"), value.get("url"), value.get("sha256"), value.get("size")
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise DesiredPackageError("version must be a short version string", code="INSTALL_INVALID_DESIRED")
    check_url(url)
    assert isinstance(url, str)
    if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256):
        raise DesiredPackageError("sha256 must be 64 lower-case hex digits", code="INSTALL_INVALID_DESIRED")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise DesiredPackageError("size must be a positive integer", code="INSTALL_INVALID_DESIRED")
    if size > max_size:
        raise DesiredPackageError(f"declared size {size} exceeds the limit {max_size}", code="INSTALL_TOO_LARGE")
    return DesiredPackage(name=name, version=version, url=url, sha256=sha256, size=size)


def parse_desired_packages(
    desired: Mapping[str, Any], *, max_size: int = DEFAULT_MAX_PACKAGE_SIZE
) -> dict[str, DesiredPackage | InvalidDesired]:
    """Every entry of the desired ``packages`` section, valid or not. Never raises.

    ``desired`` is the whole desired document (``$version`` and other keys are ignored). A missing
    or non-object ``packages`` section means "no packages": a wrong type there is reported under the
    pseudo-name ``_section`` so an operator sees it.
    """
    section = desired.get("packages")
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        return {
            "_section": InvalidDesired(
                "_section",
                ErrorInfo("INSTALL_INVALID_DESIRED", "desired.packages must be an object"),
                _fingerprint(section),
            )
        }
    result: dict[str, DesiredPackage | InvalidDesired] = {}
    for raw_name, value in section.items():
        if value is None:
            continue  # null removes; a merged document normally no longer holds it
        name = str(raw_name)
        try:
            result[name] = parse_desired_package(name, value, max_size=max_size)
        except DesiredPackageError as exc:
            # A name that cannot be a twin key is still reported under a safe, truncated label.
            key = name if NAME_PATTERN.fullmatch(name) else _safe_label(name)
            result[key] = InvalidDesired(key, ErrorInfo.from_exception(exc), _fingerprint(value))
    return result


def _safe_label(name: str) -> str:
    """A twin-key-safe stand-in for a hostile name (e.g. ``../x`` becomes ``invalid-2e2e2f78``)."""
    return "invalid-" + name.encode("utf-8", "replace")[:24].hex()[:48]
