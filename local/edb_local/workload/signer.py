"""The workload API's decisions (pure): who may get which signature.

IoT Edge's workload API signs whatever a module sends with the module's key. This stand-in is
stricter, because the only thing a module needs signed is its own SAS token: the data must be
``quote("{hub}/devices/{device}/modules/{module}", safe="") + "\\n" + expiry`` for the calling
module, with an expiry in the future and at most ``MAX_TOKEN_LIFETIME_S`` ahead. So a compromised
module cannot mint tokens for another identity, nor one that never expires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from edb_local.workload.errors import (
    BAD_REQUEST,
    GENERATION_MISMATCH,
    SIGN_REFUSED,
    UNKNOWN_MODULE,
    WRONG_MODULE,
    WorkloadError,
)

MAX_TOKEN_LIFETIME_S = 31 * 24 * 3600
_EXPIRY = re.compile(r"^[0-9]{1,12}$")


@dataclass(frozen=True)
class ModuleCredential:
    module_id: str
    generation_id: str
    primary_key: bytes = field(repr=False)  # the decoded SAS key; never printed

    @classmethod
    def from_base64(cls, module_id: str, generation_id: str, key_b64: str) -> ModuleCredential:
        return cls(module_id, generation_id, base64.b64decode(key_b64, validate=True))


def sas_resource(hub_hostname: str, device_id: str, module_id: str) -> str:
    """The quoted resource URI the SDK signs (``azure.iot.device`` ``_form_sas_uri``)."""
    return quote(f"{hub_hostname}/devices/{device_id}/modules/{module_id}", safe="")


class WorkloadSigner:
    def __init__(self, hub_hostname: str, device_id: str) -> None:
        self.hub_hostname = hub_hostname
        self.device_id = device_id
        self._credentials: dict[str, ModuleCredential] = {}

    def set_credential(self, credential: ModuleCredential) -> None:
        self._credentials[credential.module_id] = credential

    def remove(self, module_id: str) -> None:
        self._credentials.pop(module_id, None)

    def generation_id(self, module_id: str) -> str | None:
        credential = self._credentials.get(module_id)
        return credential.generation_id if credential else None

    def sign(self, *, caller: str, module_id: str, generation_id: str, body: Any, now: float) -> str:
        """The base64 HMAC-SHA256 ``digest`` for a sign request arriving on ``caller``'s socket."""
        if module_id != caller:
            raise WorkloadError(f"the socket of {caller} cannot sign for {module_id}", code=WRONG_MODULE)
        credential = self._credentials.get(module_id)
        if credential is None:
            raise WorkloadError(f"no identity for module {module_id}", code=UNKNOWN_MODULE)
        if not hmac.compare_digest(generation_id.encode(), credential.generation_id.encode()):
            raise WorkloadError(f"generation id of {module_id} does not match its identity",
                                code=GENERATION_MISMATCH)
        data = self._data_to_sign(body)
        self._check_is_own_sas_string(module_id, data, now)
        digest = hmac.new(credential.primary_key, data, hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    @staticmethod
    def _data_to_sign(body: Any) -> bytes:
        if not isinstance(body, Mapping):
            raise WorkloadError("sign request must be a JSON object", code=BAD_REQUEST)
        if body.get("keyId") != "primary":
            raise WorkloadError("keyId must be \"primary\"", code=BAD_REQUEST)
        if body.get("algo") != "HMACSHA256":
            raise WorkloadError("algo must be \"HMACSHA256\"", code=BAD_REQUEST)
        data = body.get("data")
        if not isinstance(data, str) or len(data) > 4096:
            raise WorkloadError("data must be a base64 string", code=BAD_REQUEST)
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise WorkloadError("data is not base64", code=BAD_REQUEST) from None

    def _check_is_own_sas_string(self, module_id: str, data: bytes, now: float) -> None:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise WorkloadError("data is not a SAS string-to-sign", code=SIGN_REFUSED) from None
        resource, sep, expiry = text.partition("\n")
        expected = sas_resource(self.hub_hostname, self.device_id, module_id)
        if not sep or not hmac.compare_digest(resource.encode(), expected.encode()):
            raise WorkloadError(f"data is not a SAS string-to-sign for {module_id}", code=SIGN_REFUSED)
        if not _EXPIRY.match(expiry):
            raise WorkloadError("SAS expiry is not a number", code=SIGN_REFUSED)
        if not now < int(expiry) <= now + MAX_TOKEN_LIFETIME_S:
            raise WorkloadError("SAS expiry is in the past or too far ahead", code=SIGN_REFUSED)
