"""Device trusted app: identity, evidence, installed list, legacy public key, status."""

from __future__ import annotations

from edb.tee.commands import DeviceCmd
from edb.tee.protocol import Blob, Param, Text
from edb_tee.tas.base import Call, Handler, json_blob


def device_info(c: Call) -> list[Param]:
    c.expect()
    return json_blob(c.core.device_info().to_json())


def get_evidence(c: Call) -> list[Param]:
    nonce, user_data = c.expect(Text, Blob)
    return json_blob(c.core.evidence(nonce.text, bytes(user_data.data)).to_json())


def list_installed(c: Call) -> list[Param]:
    c.expect()
    return json_blob([p.to_json() for p in c.core.list_installed()])


def legacy_public_key(c: Call) -> list[Param]:
    c.expect()
    return [Blob(c.core.legacy_public_key())]


def status(c: Call) -> list[Param]:
    c.expect()
    return json_blob(c.core.status())


COMMANDS: dict[int, Handler] = {
    DeviceCmd.DEVICE_INFO: device_info,
    DeviceCmd.GET_EVIDENCE: get_evidence,
    DeviceCmd.LIST_INSTALLED: list_installed,
    DeviceCmd.LEGACY_PUBLIC_KEY: legacy_public_key,
    DeviceCmd.STATUS: status,
}
