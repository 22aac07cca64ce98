"""Trusted applications: thin adapters from (command id, parameters) to :class:`edb_tee.core.TeeCore`.

Each checks the exact parameter kinds it accepts (``TEE_BAD_PARAMETERS`` otherwise) and answers
structured results as JSON in a ``Blob``. Access (which roles may open a session to which trusted
app) is decided by the server before any command reaches them.
"""

from __future__ import annotations

import uuid

from edb.tee.commands import DEVICE_TA, INSTALLER_TA, RUNNER_TA
from edb_tee.tas import device, installer, runner
from edb_tee.tas.base import Call, Connection, TrustedApp

REGISTRY: dict[uuid.UUID, TrustedApp] = {
    DEVICE_TA: TrustedApp(DEVICE_TA, "device", device.COMMANDS),
    INSTALLER_TA: TrustedApp(INSTALLER_TA, "installer", installer.COMMANDS),
    RUNNER_TA: TrustedApp(RUNNER_TA, "runner", runner.COMMANDS),
}

__all__ = ["REGISTRY", "Call", "Connection", "TrustedApp"]
