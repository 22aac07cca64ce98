"""The TEE client library (Contract 4): GlobalPlatform-shaped context/session/invoke over a Unix
socket, the wire protocol shared with the service, and typed wrappers for the modules.

- :class:`TeeClient` / :class:`AsyncTeeClient`: what the package installer and the runner use.
- :class:`TeeContext` / :class:`TeeSession`: the GlobalPlatform layer underneath.
- :mod:`edb.tee.protocol`: the frame codec (pure), :mod:`edb.tee.transport`: socket I/O.
"""

from edb.tee.aio import AsyncTeeClient
from edb.tee.client import TeeClient
from edb.tee.commands import DEVICE_TA, INSTALLER_TA, RUNNER_TA
from edb.tee.context import TeeContext, TeeSession
from edb.tee.types import (
    DeviceInfo,
    Evidence,
    InstalledPackage,
    InstallSummary,
    InstallTicket,
    ModelHandle,
    TensorSpec,
)

__all__ = [
    "DEVICE_TA",
    "INSTALLER_TA",
    "RUNNER_TA",
    "AsyncTeeClient",
    "DeviceInfo",
    "Evidence",
    "InstallSummary",
    "InstallTicket",
    "InstalledPackage",
    "ModelHandle",
    "TeeClient",
    "TeeContext",
    "TeeSession",
    "TensorSpec",
]
