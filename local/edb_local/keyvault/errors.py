"""Key Vault's error responses, as the real service shapes them.

Body: ``{"error": {"code": ..., "message": ..., "innererror": {"code": ...}}}``. The Azure SDK turns
401/403/404/409 into typed exceptions by status, and shows ``code`` and ``message`` to the user, so
the stand-in uses the same status codes and codes the real vault uses for the same situation.
"""

from __future__ import annotations

from typing import Any


class VaultError(Exception):
    """Raised inside request handling; the app turns it into Key Vault's error body."""

    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner is not None:
            error["innererror"] = {"code": self.inner}
        return {"error": error}


def bad_parameter(message: str) -> VaultError:
    return VaultError(400, "BadParameter", message)


def key_not_found(name: str) -> VaultError:
    return VaultError(
        404,
        "KeyNotFound",
        f"A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you "
        "may be able to recover it using the correct recovery command.",
    )


def secret_not_found(name: str) -> VaultError:
    return VaultError(
        404,
        "SecretNotFound",
        f"A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret "
        "you may be able to recover it using the correct recovery command.",
    )


def deleted_not_found(kind: str, name: str) -> VaultError:
    code = "KeyNotFound" if kind == "key" else "SecretNotFound"
    return VaultError(404, code, f"Deleted {kind} not found: {name}")


def disabled(operation: str, kind: str = "key") -> VaultError:
    inner = "KeyDisabled" if kind == "key" else "SecretDisabled"
    return VaultError(403, "Forbidden", f"Operation {operation} is not allowed on a disabled {kind}.", inner)


def operation_forbidden(operation: str) -> VaultError:
    return VaultError(403, "Forbidden", f"Operation {operation} is not permitted on this key.", "KeyOperationForbidden")


def not_in_validity_window(operation: str, kind: str = "key") -> VaultError:
    return VaultError(
        403, "Forbidden", f"Operation {operation} is not allowed on a {kind} outside its validity period.",
        "KeyExpired" if kind == "key" else "SecretExpired",
    )


def access_denied(client_id: str, permission: str) -> VaultError:
    return VaultError(
        403,
        "Forbidden",
        f"Caller is not authorized to perform action on resource. Caller: appid={client_id}; "
        f"Action: {permission}",
        "ForbiddenByRbac",
    )


def deleted_conflict(kind: str, name: str) -> VaultError:
    return VaultError(
        409,
        "Conflict",
        f"{kind.capitalize()} {name} is currently in a deleted but recoverable state, and its name cannot be "
        f"reused; in this state, the {kind} can only be recovered or purged.",
        "ObjectIsDeletedButRecoverable",
    )
