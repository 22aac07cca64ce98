"""Which module events are security alerts, and of what type (pure)."""

from __future__ import annotations

from edb.schemas import Alert, AlertType, EventKind, ModuleEvent
from edb.schemas.packages import KEY_FLOW_LEGACY

LEGACY_KEY_FLOW_CODE = "INSTALL_LEGACY_KEY_FLOW"

#: Integrity failures: the bytes are not what the publisher signed.
_TAMPER_CODES = frozenset(
    {
        "CPK_BAD_MAGIC",
        "CPK_TRUNCATED",
        "CPK_STREAM_OUT_OF_BOUNDS",
        "CPK_MANIFEST_INVALID",
        "CPK_TAG_MISMATCH",
        "CPK_DIGEST_MISMATCH",
        "CPK_SIGNATURE_INVALID",
        "CPK_UNTRUSTED_SIGNER",
        "INSTALL_HASH_MISMATCH",
        "INSTALL_SIZE_MISMATCH",
        "INSTALL_REDIRECT_REFUSED",
        "TEE_KEY_MISMATCH",
    }
)
#: Refusals by policy: the package or device is not entitled to the key.
_DENIAL_CODES = frozenset({"CPK_WRONG_TARGET", "CPK_EXPIRED", "INSTALL_PATH_OUTSIDE", "INSTALL_URL_SCHEME"})
#: Transient key release outcomes: retried by the installer, not an alert.
_TRANSIENT_SUFFIXES = ("_UNAVAILABLE", "_TIMEOUT", "_RATE_LIMITED", "_NETWORK", "_BUSY", "_INTERNAL",
                       "_KEYVAULT_ERROR", "_UNREACHABLE", "_DEADLINE_EXCEEDED", "_BAD_RESPONSE")
#: Rollback attempts whose code does not say ROLLBACK (the key release policy's floor).
_ROLLBACK_CODES = frozenset({"KR_PACKAGE_SVN_TOO_LOW"})


def classify_code(code: str) -> AlertType | None:
    if "ROLLBACK" in code or code in _ROLLBACK_CODES:
        return AlertType.ROLLBACK
    if code in _TAMPER_CODES or (code.startswith("TEE_") and "TAMPER" in code):
        return AlertType.TAMPER
    if code in _DENIAL_CODES:
        return AlertType.DENIAL
    if code.startswith("KR_") and not code.endswith(_TRANSIENT_SUFFIXES):
        return AlertType.DENIAL
    return None


def classify(event: ModuleEvent) -> Alert | None:
    """An alert for a failed install or load whose code is a security signal; None otherwise."""
    if event.event not in (EventKind.PACKAGE_FAILED, EventKind.MODEL_FAILED) or event.error is None:
        return None
    if event.retryable:  # the installer tries again by itself: a transient failure, not an attack
        return None
    alert_type = classify_code(event.error.code)
    if alert_type is None:
        return None
    return Alert(alert_type, event.error.code, event.error.message, event.package, event.version, event.source,
                 at=event.at)


def legacy_install(event: ModuleEvent) -> tuple[Alert, str] | None:
    """A warning (not an attack) for a package installed with the weaker legacy v1 key flow, and the
    key under which it is raised only once (per package name: the first legacy install of it)."""
    if event.event is not EventKind.PACKAGE_INSTALLED or event.key_flow != KEY_FLOW_LEGACY:
        return None
    alert = Alert(AlertType.LEGACY_KEY_FLOW, LEGACY_KEY_FLOW_CODE,
                  "installed with the legacy v1 key flow: no attestation, no publisher pinning, no rollback "
                  "protection; move this package to manifest v2", event.package, event.version, event.source,
                  at=event.at, severity="warning")
    return alert, f"legacy-key-flow:{event.package}"
