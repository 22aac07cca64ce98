"""Which module events are security alerts, and of what type (pure)."""

from __future__ import annotations

import re
from types import ModuleType

from edb import onnx_layout
from edb.attestation import errors as attestation_errors
from edb.cpk import errors as cpk_errors
from edb.errors import EdbError
from edb.pki import errors as pki_errors
from edb.schemas import Alert, AlertType, EventKind, ModuleEvent
from edb.schemas.packages import KEY_FLOW_LEGACY
from edb.tee import errors as tee_errors

LEGACY_KEY_FLOW_CODE = "INSTALL_LEGACY_KEY_FLOW"

_CODE = re.compile(r"^[A-Z][A-Z0-9]*_[A-Z0-9_]+$")


def defined_codes(module: ModuleType, prefix: str) -> frozenset[str]:
    """Every error code an errors module defines: its module-level ``PREFIX_*`` string constants and
    the default codes of its exception classes. Read from the modules themselves, so a code added
    there is classified (by the rules below) without anyone copying it here."""
    codes: set[str] = set()
    for value in vars(module).values():
        if isinstance(value, str) and value.startswith(prefix) and _CODE.match(value):
            codes.add(value)
        elif isinstance(value, type) and issubclass(value, EdbError) and value.__module__ == module.__name__:
            codes.add(value.code)
    return frozenset(codes)


#: The areas whose codes speak about the authenticity and integrity of packages, evidence, released
#: keys, sealed state and models. Any code of theirs is ``tamper`` unless listed below as a rollback,
#: a denial, or an operational failure (so a new integrity code alerts by default: fail closed).
SECURITY_AREAS: tuple[tuple[ModuleType, str], ...] = (
    (cpk_errors, "CPK_"),
    (pki_errors, "PKI_"),
    (attestation_errors, "ATT_"),
    (tee_errors, "TEE_"),
    (onnx_layout, "LAYOUT_"),
)
AREA_CODES: frozenset[str] = frozenset().union(*(defined_codes(m, p) for m, p in SECURITY_AREAS))

#: Refusals by policy: the package or the device is not entitled (not a sign of modified bytes).
DENIAL_CODES: frozenset[str] = frozenset({
    cpk_errors.WRONG_TARGET, cpk_errors.EXPIRED,
    cpk_errors.KEY_UNAVAILABLE,  # a v1 class key this device was not given
    tee_errors.ACCESS_DENIED,  # a process outside the TEE's allow-list
    "INSTALL_PATH_OUTSIDE", "INSTALL_URL_SCHEME",
    "INSTALL_HOST_NOT_ALLOWED",  # a twin pointing at a host off the deployment's package host allow-list
})

#: Failures of the machinery, not of the bytes: the TEE or its socket is down or busy, a request
#: was out of order or malformed by our own client, the device is not set up, the model is too big,
#: an input did not fit. Retried, reported with their code, but no alert.
OPERATIONAL_CODES: frozenset[str] = frozenset({
    cpk_errors.UNREADABLE,  # the file could not be opened or read (I/O)
    tee_errors.UNAVAILABLE, tee_errors.CONNECTION_LOST, tee_errors.PROTOCOL, tee_errors.FRAME_TOO_LARGE,
    tee_errors.FRAME_TIMEOUT,  # a frame that did not arrive whole in time (the caller's connection, retried)
    tee_errors.VERSION, tee_errors.BUSY, tee_errors.UNKNOWN_TA, tee_errors.UNKNOWN_SESSION,
    tee_errors.UNKNOWN_COMMAND, tee_errors.BAD_PARAMETERS, tee_errors.DTYPE_UNSUPPORTED, tee_errors.INTERNAL,
    tee_errors.NOT_PROVISIONED, tee_errors.ALREADY_PROVISIONED, tee_errors.STATE_LOCKED,
    tee_errors.CONFIG_INVALID, tee_errors.BAD_NAME, tee_errors.NO_TRUST_ROOT, tee_errors.INSTALL_UNKNOWN,
    tee_errors.INSTALL_STATE, tee_errors.PACKAGE_FILE, tee_errors.LEGACY_DISABLED,
    tee_errors.LEGACY_UNSUPPORTED, tee_errors.NOT_INSTALLED,
    tee_errors.UNKNOWN_HANDLE, tee_errors.HANDLE_STALE, tee_errors.INFER_FAILED, tee_errors.INPUT_INVALID,
    # string tensors out of bounds or not UTF-8 (the caller's input)
    tee_errors.STRING_TOO_MANY, tee_errors.STRING_TOO_LONG, tee_errors.STRING_TOO_LARGE, tee_errors.STRING_INVALID,
})

#: An authentic package (signature, digests and tags verified before these are possible) whose model
#: does not load on this device: ONNX Runtime refuses it, none of its outputs can cross the boundary,
#: it is larger than the TEE accepts, the layout cannot carry one of its constructs, or the build's
#: preflight refused it. The operator must act (a ``model`` alert, severity ``error``), but nothing
#: was modified: not ``tamper``. A layout that does not parse (``LAYOUT_INVALID``) stays tamper.
MODEL_CODES: frozenset[str] = frozenset({
    tee_errors.MODEL_INVALID, tee_errors.OUTPUT_UNSUPPORTED, tee_errors.MODEL_TOO_LARGE,
    onnx_layout.LAYOUT_UNSUPPORTED, cpk_errors.MODEL_UNSUPPORTED,
})
#: The severity of a ``model`` alert (tamper, denial and rollback alerts are ``critical``).
MODEL_ALERT_SEVERITY = "error"

#: Integrity failures found by the installer itself: the bytes or the pointer are not what the twin
#: and the publisher say.
INSTALLER_TAMPER_CODES: frozenset[str] = frozenset({
    "INSTALL_HASH_MISMATCH", "INSTALL_SIZE_MISMATCH", "INSTALL_REDIRECT_REFUSED",
    "INSTALL_VERSION_MISMATCH",  # signed as another version than the twin names
    "INSTALL_NAME_MISMATCH",  # signed as another package than the twin names
})

#: Rollback attempts whose code does not say ROLLBACK (the key release policy's floor).
_ROLLBACK_CODES = frozenset({"KR_PACKAGE_SVN_TOO_LOW",
                             tee_errors.STATE_ROLLED_BACK})  # the TEE's replay-protected record was replayed
#: Transient key release outcomes: retried by the installer, not an alert.
_TRANSIENT_SUFFIXES = ("_UNAVAILABLE", "_TIMEOUT", "_RATE_LIMITED", "_NETWORK", "_BUSY", "_INTERNAL",
                       "_KEYVAULT_ERROR", "_UNREACHABLE", "_DEADLINE_EXCEEDED", "_BAD_RESPONSE")
#: Key release failures of the service's own configuration (HTTP 500): an operator's problem, not a denial.
_KR_SERVICE_FAULTS = frozenset({"KR_POLICY_INVALID"})


def classify_code(code: str) -> AlertType | None:
    if code in MODEL_CODES:
        return AlertType.MODEL
    if "ROLLBACK" in code or code in _ROLLBACK_CODES:
        return AlertType.ROLLBACK
    if code in DENIAL_CODES:
        return AlertType.DENIAL
    if code in INSTALLER_TAMPER_CODES or (code in AREA_CODES and code not in OPERATIONAL_CODES):
        return AlertType.TAMPER
    if code.startswith("KR_") and not code.endswith(_TRANSIENT_SUFFIXES) and code not in _KR_SERVICE_FAULTS:
        return AlertType.DENIAL
    return None


def classify(event: ModuleEvent) -> Alert | None:
    """An alert for a failed install or load whose code is a security signal or a model that does not
    load; None otherwise."""
    if event.event not in (EventKind.PACKAGE_FAILED, EventKind.MODEL_FAILED) or event.error is None:
        return None
    if event.retryable:  # the installer tries again by itself: a transient failure, not an attack
        return None
    alert_type = classify_code(event.error.code)
    if alert_type is None:
        return None
    severity = MODEL_ALERT_SEVERITY if alert_type is AlertType.MODEL else "critical"
    return Alert(alert_type, event.error.code, event.error.message, event.package, event.version, event.source,
                 at=event.at, severity=severity)


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
