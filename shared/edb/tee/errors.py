"""Error codes of the TEE-simulated region (``TEE_*``) and their mapping across the socket.

Errors cross the TEE boundary as ``(code, message)``; :func:`error_from_wire` rebuilds the typed
exception on the client so ``except PackageError`` still works for a package the TEE refused.
Codes never change meaning once released.
"""

from __future__ import annotations

from edb.attestation.errors import AttestationError
from edb.errors import EdbError, KeyProviderError, PackageError, TeeError

# transport and protocol
UNAVAILABLE = "TEE_UNAVAILABLE"  # cannot connect to the service (not running, wrong path)
CONNECTION_LOST = "TEE_CONNECTION_LOST"  # the service went away mid-request
PROTOCOL = "TEE_PROTOCOL"  # malformed frame or message
FRAME_TOO_LARGE = "TEE_FRAME_TOO_LARGE"  # declared frame length above the limit
VERSION = "TEE_VERSION"  # no common protocol version
ACCESS_DENIED = "TEE_ACCESS_DENIED"  # peer credentials not on the allow-list (service or trusted app)
BUSY = "TEE_BUSY"  # a connection or unfinished-frame quota is spent (edb_tee.quotas)
FRAME_TIMEOUT = "TEE_FRAME_TIMEOUT"  # a frame did not arrive whole within its deadline
UNKNOWN_TA = "TEE_UNKNOWN_TA"
UNKNOWN_SESSION = "TEE_UNKNOWN_SESSION"
UNKNOWN_COMMAND = "TEE_UNKNOWN_COMMAND"
BAD_PARAMETERS = "TEE_BAD_PARAMETERS"  # wrong parameter kinds, counts or values
DTYPE_UNSUPPORTED = "TEE_DTYPE_UNSUPPORTED"
# string tensors (UTF-8, bounded by edb.tee.protocol.Limits)
STRING_TOO_MANY = "TEE_STRING_TOO_MANY"  # more elements in one string tensor than limits.max_strings
STRING_TOO_LONG = "TEE_STRING_TOO_LONG"  # one element longer than limits.max_string_bytes (UTF-8 bytes)
STRING_TOO_LARGE = "TEE_STRING_TOO_LARGE"  # a string tensor's UTF-8 bytes above limits.max_string_total
STRING_INVALID = "TEE_STRING_INVALID"  # not UTF-8 (or not encodable: lone surrogates), or a length table that lies
# shared-memory tensor regions (edb.tee.shm)
SHM_INVALID = "TEE_SHM_INVALID"  # region fd not a read-write, shrink-sealed tmpfs memfd; empty; or its I/O failed
SHM_TOO_LARGE = "TEE_SHM_TOO_LARGE"  # region larger than the TEE maps (edb.tee.shm.MAX_REGION_BYTES)
SHM_BOUNDS = "TEE_SHM_BOUNDS"  # a region tensor outside the region or not 64-byte aligned
SHM_NOT_ATTACHED = "TEE_SHM_NOT_ATTACHED"  # a region tensor on a connection without a region
INTERNAL = "TEE_INTERNAL"  # a bug; details only in the service log

# device state
NOT_PROVISIONED = "TEE_NOT_PROVISIONED"
ALREADY_PROVISIONED = "TEE_ALREADY_PROVISIONED"
STATE_LOCKED = "TEE_STATE_LOCKED"  # another TEE process serves this device directory
CONFIG_INVALID = "TEE_CONFIG_INVALID"

# sealed storage
SEALED_TAMPERED = "TEE_SEALED_TAMPERED"  # authentication of a sealed object failed
SEALED_NAME_MISMATCH = "TEE_SEALED_NAME_MISMATCH"  # object swapped with another object
SEALED_ROLLBACK = "TEE_SEALED_ROLLBACK"  # object replaced by an older copy of itself
SEALED_MISSING = "TEE_SEALED_MISSING"
RPMB_TAMPERED = "TEE_RPMB_TAMPERED"  # replay-protected store fails authentication
RPMB_ROLLBACK = "TEE_RPMB_ROLLBACK"  # replay-protected store older than the running TEE's view
STATE_ROLLED_BACK = "TEE_STATE_ROLLED_BACK"  # replay-protected store older than a sealed object written after it

# install
BAD_NAME = "TEE_BAD_NAME"
NAME_MISMATCH = "TEE_NAME_MISMATCH"  # the install name is not the package's signed id
NO_TRUST_ROOT = "TEE_NO_TRUST_ROOT"
ROLLBACK = "TEE_ROLLBACK"  # package security version below the floor
INSTALL_UNKNOWN = "TEE_INSTALL_UNKNOWN"  # no such install transaction (or not yours)
INSTALL_STATE = "TEE_INSTALL_STATE"  # steps called out of order
KEY_MISMATCH = "TEE_KEY_MISMATCH"  # released key does not belong to the manifest's wrapped DEK
PACKAGE_FILE = "TEE_PACKAGE_FILE"  # the passed descriptor is not a readable regular file
LEGACY_DISABLED = "TEE_LEGACY_DISABLED"
LEGACY_UNSUPPORTED = "TEE_LEGACY_UNSUPPORTED"
NOT_INSTALLED = "TEE_NOT_INSTALLED"

# models
MODEL_TOO_LARGE = "TEE_MODEL_TOO_LARGE"
MODEL_INVALID = "TEE_MODEL_INVALID"  # ONNX Runtime refused the model, or the layout is malformed
UNKNOWN_HANDLE = "TEE_UNKNOWN_HANDLE"
HANDLE_STALE = "TEE_HANDLE_STALE"  # after a TEE restart the installed version changed
INFER_FAILED = "TEE_INFER_FAILED"
INPUT_INVALID = "TEE_INPUT_INVALID"
OUTPUT_UNSUPPORTED = "TEE_OUTPUT_UNSUPPORTED"  # no output of the model can cross the boundary (only seq/map)


def error_from_wire(code: str, message: str) -> EdbError:
    """The typed exception for a code received from the TEE."""
    if code.startswith("ATT_"):
        return AttestationError(message, code=code)
    if code.startswith("CPK_") or code.startswith("LAYOUT_"):
        return PackageError(message, code=code)
    if code.startswith("KEY_"):
        return KeyProviderError(message, code=code)
    return TeeError(message, code=code)
