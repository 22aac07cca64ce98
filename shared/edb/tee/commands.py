"""Trusted applications (by UUID) and their command ids: the interface both sides compile against.

UUIDs are uuid5(NAMESPACE_URL, "urn:edb:tee:ta:<name>"), fixed forever. Command ids never change
meaning; new commands get new ids.
"""

from __future__ import annotations

import uuid
from enum import IntEnum

#: Device identity and attestation: device info, evidence, installed list, legacy public key.
DEVICE_TA = uuid.UUID("0951e614-8954-506d-a9c7-0d773173c2ac")
#: Package installation: begin / evidence / complete / abort, uninstall. Installer role only.
INSTALLER_TA = uuid.UUID("8986ad07-51ce-5ee4-b306-3de8c030568f")
#: Model execution: load / infer / unload. Runner role only.
RUNNER_TA = uuid.UUID("a8fcc782-9e92-5e96-b1eb-fc46bc8c7fba")

TA_NAMES = {DEVICE_TA: "device", INSTALLER_TA: "installer", RUNNER_TA: "runner"}


class DeviceCmd(IntEnum):
    DEVICE_INFO = 1  # () -> Blob(json DeviceInfo)
    GET_EVIDENCE = 2  # (Text nonce, Blob user_data) -> Blob(json Evidence)
    LIST_INSTALLED = 3  # () -> Blob(json [InstalledPackage])
    LEGACY_PUBLIC_KEY = 4  # () -> Blob(SPKI DER of the RSA-2048 legacy key)
    STATUS = 5  # () -> Blob(json: hardening, loaded models, open installs)


class InstallerCmd(IntEnum):
    BEGIN_INSTALL = 1  # (Text name, Fd package) -> Blob(json InstallTicket)
    GET_INSTALL_EVIDENCE = 2  # (Text txn, Text nonce) -> Blob(json Evidence)
    COMPLETE_INSTALL = 3  # (Text txn, Text jwe) -> Blob(json InstallSummary)
    COMPLETE_INSTALL_LEGACY = 4  # (Text txn, Text wrapped key base64) -> Blob(json InstallSummary)
    ABORT_INSTALL = 5  # (Text txn) -> ()
    UNINSTALL = 6  # (Text name) -> ()


class RunnerCmd(IntEnum):
    LOAD_MODEL = 1  # (Text name, Value(flags)) -> Blob(json ModelHandle)
    INFER = 2  # (Value(handle), Tensor | ShmTensor...) -> Tensor | ShmTensor...
    UNLOAD = 3  # (Value(handle)) -> ()
    ATTACH_REGION = 4  # (Fd memfd, Value(threshold)) -> Value(size): this connection's shared-memory region
    MODEL_METADATA = 5  # (Value(handle)) -> Blob(json ModelMetadata): producer, opsets, metadata_props


#: LOAD_MODEL flags
LOAD_PREPACK = 1  # let ONNX Runtime prepack weights: faster batched MatMul/Conv, about 2x model memory
LOAD_IN_PLACE = 2  # use the weights in place (about 1x model memory); neither flag: the TEE decides by size
