"""Installer error codes (``INSTALL_*``). Codes are stable: they end up in twins and alerts."""

from __future__ import annotations

from edb.errors import EdbError, InstallError

#: Codes raised by this module, with whether a later attempt may succeed without a twin change.
RETRYABLE_CODES = frozenset(
    {
        "INSTALL_DOWNLOAD_FAILED",  # network error, connection reset, 5xx from the server
        "INSTALL_TIMEOUT",  # connect or read timeout
        "INSTALL_INCOMPLETE",  # the server closed before the declared size arrived
        "INSTALL_CACHE_INVALID",  # a cache entry that is not a regular file could not be removed or was swapped in
        "INSTALL_TEE_UNAVAILABLE",  # the TEE service socket is not answering
        "INSTALL_INTERNAL",  # an unexpected exception: retried, reported by type only
        # the TEE service restarted or is busy: its unfinished transactions are gone, start again
        "TEE_UNAVAILABLE",
        "TEE_CONNECTION_LOST",
        "TEE_BUSY",
        "TEE_INSTALL_UNKNOWN",
    }
)

NON_RETRYABLE_CODES = frozenset(
    {
        "INSTALL_INVALID_DESIRED",
        "INSTALL_INVALID_NAME",
        "INSTALL_INVALID_URL",
        "INSTALL_URL_SCHEME",
        "INSTALL_PATH_OUTSIDE",  # a file: URL outside the allowed directories
        "INSTALL_HOST_NOT_ALLOWED",  # an https URL whose host is not in EDB_PACKAGE_HOSTS
        "INSTALL_TOO_LARGE",  # declared or received size above a limit or above the declared size
        "INSTALL_SIZE_MISMATCH",  # the file is not the declared size
        "INSTALL_HASH_MISMATCH",  # the downloaded bytes are not the declared sha256
        "INSTALL_REDIRECT_REFUSED",  # a redirect to another scheme, host or port
        "INSTALL_HTTP_STATUS",  # 4xx from the server
        "INSTALL_NOT_FOUND",  # a file: URL that does not exist
        "INSTALL_REMOVED_BY_METHOD",  # the uninstall direct method holds this package back
        "INSTALL_VERSION_MISMATCH",  # the package is signed as another version than the twin names
        "INSTALL_NAME_MISMATCH",  # the package is signed as another package than the twin names
    }
)


class DownloadError(InstallError):
    code = "INSTALL_DOWNLOAD_FAILED"


def is_retryable(exc: BaseException) -> bool:
    """Whether the reconcile loop should try again by itself after a backoff.

    Denials, tampering and rollback never retry (they would only hammer the key release service
    or hide an attack); transient transport failures do.
    """
    retryable = getattr(exc, "retryable", None)
    if isinstance(retryable, bool):
        return retryable
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        if code in RETRYABLE_CODES:
            return True
        if code in NON_RETRYABLE_CODES:
            return False
        return code.endswith(("_UNAVAILABLE", "_TIMEOUT"))
    # Not one of ours: a transport error or a bug. Retried with backoff, reported by type only.
    return not isinstance(exc, EdbError)
