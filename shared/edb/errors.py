"""One exception hierarchy with stable error codes.

Every failure the project can name ends in an :class:`EdbError` whose ``code`` is a stable,
upper-case identifier (``CPK_TAG_MISMATCH``, ``TEE_ROLLBACK``, ``KR_NONCE_REPLAYED``, ...).
Codes are part of the public interface: they appear in CLI ``--json`` output, twin reported
properties, telemetry and HTTP error bodies, and must never change meaning once released.
Messages are for humans and may change; they must never contain key material or plaintext.

Each area defines its codes next to its code (for example ``edb.cpk.errors``) as subclasses of
the area's base class below, so ``except PackageError`` catches every package failure.
"""

from __future__ import annotations

from typing import Any


class EdbError(Exception):
    """Base of every error the project raises on purpose."""

    #: Default code for the class; instances may carry a more specific one.
    code: str = "EDB_ERROR"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The ``{"code", "message"}`` object used in JSON outputs, twins and HTTP bodies."""
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class PackageError(EdbError):
    """A confidential package (.cpk) is malformed, hostile, or fails verification (CPK_*)."""

    code = "CPK_ERROR"


class KeyProviderError(EdbError):
    """A KEK or signing key could not be used (KEY_*)."""

    code = "KEY_ERROR"


class TeeError(EdbError):
    """The TEE-simulated region refused or failed a request (TEE_*)."""

    code = "TEE_ERROR"


class KeyReleaseError(EdbError):
    """The key release service denied or failed a request (KR_*)."""

    code = "KR_ERROR"


class LocalStackError(EdbError):
    """A local stand-in could not start or answer (LOCAL_*, HUB_*)."""

    code = "LOCAL_ERROR"


class InstallError(EdbError):
    """The package installer module could not converge a package (INSTALL_*)."""

    code = "INSTALL_ERROR"


class ConfigError(EdbError):
    """Configuration is missing or invalid (CONFIG_*)."""

    code = "CONFIG_ERROR"
